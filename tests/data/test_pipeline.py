"""iterate, num_batches and augment_batch: determinism, resume, schedules, shards and augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunekit import PrunekitError, data


def indexed(n: int, shape=(3, 8, 8), augment: str | None = None) -> data.Dataset:
    """A dataset whose label is the sample index, so batches reveal which samples they hold."""
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    c = shape[0]
    return data.Dataset(
        "idx", images, torch.arange(n), [str(i) for i in range(n)], (0.4,) * c, (0.2,) * c, augment
    )


def run(ds, bs, **kw):
    return list(data.iterate(ds, bs, **kw))


def same(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------- iterate


def test_batches_are_normalised_floats_in_order():
    ds = indexed(10)
    batches = run(ds, 4, shuffle=False, augment=None)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == list(range(10))
    assert torch.allclose(x, (ds.images.float() / 255 - 0.4) / 0.2, atol=1e-5)
    xb, _ = run(ds, 4, shuffle=False, augment=None, dtype=torch.bfloat16)[0]
    assert xb.dtype == torch.bfloat16 and torch.allclose(xb.float(), x[:4], atol=0.05)
    x64, _ = run(ds, 4, shuffle=False, augment=None, dtype=torch.float64)[0]
    assert x64.dtype == torch.float64


def test_order_depends_only_on_seed_and_epoch():
    ds = indexed(50, augment="crop_flip")
    torch.manual_seed(1)
    a = run(ds, 8, shuffle=True, seed=3, epoch=2)
    torch.manual_seed(999)  # global RNG state must not matter
    torch.rand(17)
    b = run(ds, 8, shuffle=True, seed=3, epoch=2)
    assert same(a, b)
    order = torch.cat([y for _, y in a])
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    other_epoch = torch.cat([y for _, y in run(ds, 8, shuffle=True, seed=3, epoch=3)])
    other_seed = torch.cat([y for _, y in run(ds, 8, shuffle=True, seed=4, epoch=2)])
    assert not torch.equal(order, other_epoch) and not torch.equal(order, other_seed)
    assert torch.equal(order, data.epoch_order(50, shuffle=True, seed=3, epoch=2))


@pytest.mark.parametrize("bs", [7, [3, 5, 9], lambda i: 4 if i < 3 else 8])
def test_resume_mid_epoch_gives_the_exact_tail(bs):
    ds = indexed(61, augment="crop_flip")
    full = run(ds, bs, shuffle=True, seed=11, epoch=5)
    for k in (0, 1, 3, len(full) - 1, len(full)):
        tail = run(ds, bs, shuffle=True, seed=11, epoch=5, start_batch=k)
        assert same(tail, full[k:]), k
    assert run(ds, bs, shuffle=True, start_batch=len(full) + 3) == []


def test_augmentation_applies_by_default_and_can_be_turned_off():
    ds = indexed(16, augment="crop_flip")
    plain = torch.cat([x for x, _ in run(ds, 16, shuffle=False, augment=None)])
    aug = torch.cat([x for x, _ in run(ds, 16, shuffle=False)])
    assert not torch.equal(plain, aug) and aug.shape == plain.shape
    zero = (0 - 0.4) / 0.2  # padding is black before normalisation
    assert (aug == zero).any()
    again = torch.cat([x for x, _ in run(ds, 16, shuffle=False)])
    assert torch.equal(aug, again)
    flipped = torch.cat([x for x, _ in run(ds, 16, shuffle=False, augment="flip")])
    assert all(
        torch.equal(flipped[i], plain[i]) or torch.equal(flipped[i], plain[i].flip(-1)) for i in range(16)
    )
    with pytest.raises(PrunekitError):
        run(ds, 4, shuffle=False, augment="mixup")


def test_growing_batch_schedule():
    ds = indexed(1000, shape=(1, 2, 2))
    hybrid = lambda i: 64 if i < 5 else 128  # noqa: E731 - SGHT-style growth within the epoch
    sizes = [len(y) for _, y in run(ds, hybrid, shuffle=True)]
    assert sizes[:5] == [64] * 5 and sizes[5:-1] == [128] * 5 and sizes[-1] == 1000 - 320 - 640 == 40
    assert data.num_batches(ds, hybrid) == len(sizes) == 11
    assert data.num_batches(ds, hybrid, drop_last=True) == 10
    assert [len(y) for _, y in run(ds, hybrid, shuffle=True, drop_last=True)][-1] == 128
    seq = [len(y) for _, y in run(ds.subset(20), [2, 3, 5], shuffle=False)]
    assert seq == [2, 3, 5, 5, 5] and data.num_batches(20, [2, 3, 5]) == 5
    assert data.num_batches(ds, 64) == 16 and data.num_batches(ds, 64, drop_last=True) == 15
    for bad in (0, -3, [], [4, 0], lambda i: 2.5, True, "64"):
        with pytest.raises(PrunekitError):
            run(ds, bad, shuffle=False)


@pytest.mark.parametrize("n, world", [(60, 2), (60, 3), (61, 4), (5, 8)])
def test_world_size_shards_are_disjoint_equal_and_cover(n, world):
    ds = indexed(n, shape=(1, 2, 2))
    shards = []
    for rank in range(world):
        ys = [y for _, y in run(ds, 4, shuffle=True, seed=2, epoch=1, rank=rank, world_size=world)]
        assert len(ys) == data.num_batches(ds, 4, rank=rank, world_size=world)
        shards.append(torch.cat(ys).tolist() if ys else [])
    lengths = {len(s) for s in shards}
    assert lengths == {n // world}  # equal: every rank takes the same number of steps
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))  # disjoint
    assert len(flat) == n - n % world  # covering (all but the remainder, < world_size samples)
    if n % world == 0:
        assert sorted(flat) == list(range(n))
    # the shards are slices of the single-process permutation of the same (seed, epoch)
    perm = data.epoch_order(n, shuffle=True, seed=2, epoch=1).tolist()
    assert set(flat) <= set(perm[: n - n % world])
    with pytest.raises(PrunekitError):
        run(ds, 4, shuffle=True, rank=world, world_size=world)


def test_resume_with_sharding_and_augmentation():
    ds = indexed(40, augment="crop_flip")
    full = run(ds, 3, shuffle=True, seed=1, epoch=4, rank=1, world_size=3)
    assert same(run(ds, 3, shuffle=True, seed=1, epoch=4, rank=1, world_size=3, start_batch=2), full[2:])
    other_rank = run(ds, 3, shuffle=True, seed=1, epoch=4, rank=0, world_size=3)
    assert not any(
        set(y1.tolist()) & set(y2.tolist()) for (_, y1), (_, y2) in zip(full, other_rank, strict=True)
    )


def test_iterate_real_dataset_shapes():
    ds = data.load("synthetic", "train", n=70, shape=(3, 32, 32), augment="crop_flip")
    x, y = next(iter(data.iterate(ds, 32, shuffle=True, device="cpu")))
    assert x.shape == (32, 3, 32, 32) and y.shape == (32,) and x.device.type == "cpu"
    assert data.num_batches(ds, 32) == 3


def test_iterate_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ds = indexed(50, augment="crop_flip")
    cpu = run(ds, 8, shuffle=True, seed=5, epoch=1)
    gpu = run(ds, 8, shuffle=True, seed=5, epoch=1, device="cuda")
    assert all(
        xg.is_cuda and torch.allclose(xg.cpu(), xc, atol=1e-5) and torch.equal(yg.cpu(), yc)
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True)
    )


# --------------------------------------------------------------------------------------------- augment_batch


def reference(x: torch.Tensor, recipe: str, seed: int) -> torch.Tensor:
    """Hand-written per-image version of the documented recipe (draws: y offsets, x offsets, flips)."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    offsets = torch.randint(0, 9, (2, b), generator=g)
    flips = torch.rand(b, generator=g) < 0.5
    out = []
    for i in range(b):
        img = x[i]
        if "crop" in recipe:
            padded = F.pad(img, (4, 4, 4, 4))
            oy, ox = int(offsets[0, i]), int(offsets[1, i])
            img = padded[:, oy : oy + h, ox : ox + w]
        if "flip" in recipe and flips[i]:
            img = img.flip(-1)
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("recipe", ["crop_flip", "crop", "flip"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_batch_matches_hand_made_reference(recipe, dtype):
    x = (torch.arange(64 * 3 * 32 * 32) % 251 + 1).reshape(64, 3, 32, 32).to(dtype)
    out = data.augment_batch(x, recipe, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, reference(x, recipe, 7))


def test_augment_batch_really_crops_and_flips():
    x = torch.arange(1, 1 + 32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).repeat(256, 3, 1, 1)
    out = data.augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    flipped = shifted = identical = 0
    for i in range(256):
        img = out[i, 0]
        identical += torch.equal(img, x[0, 0])
        nonzero = img[img > 0]
        # a flip reverses the order of pixel values along rows; a crop shifts them and pads with zeros
        mid = img[16][img[16] > 0]  # row 16 stays inside the image whatever the vertical shift
        if mid[0] > mid[-1]:
            flipped += 1
        if (img == 0).any():
            shifted += 1
        assert set(nonzero.long().tolist()) <= set(range(1, 1025))
    assert 90 < flipped < 166 and shifted > 150 and identical < 30
    # hand-made example: a 1-pixel shift right of a 2x2 corner, no flip
    tiny = torch.zeros(1, 1, 32, 32)
    tiny[0, 0, 0, 0] = 5
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        oy, ox = torch.randint(0, 9, (2, 1), generator=g)[:, 0].tolist()
        flip = bool(torch.rand(1, generator=g)[0] < 0.5)
        res = data.augment_batch(tiny, "crop_flip", torch.Generator().manual_seed(seed))[0, 0]
        r, c = 4 - oy, 4 - ox  # where the pixel lands after padding by 4 and cropping at (oy, ox)
        if 0 <= r < 32 and 0 <= c < 32:
            c = 31 - c if flip else c
            assert res[r, c] == 5 and res.sum() == 5
        else:
            assert res.sum() == 0


def test_augment_batch_errors_and_empty_batch():
    g = torch.Generator()
    with pytest.raises(PrunekitError):
        data.augment_batch(torch.zeros(2, 3, 8, 8), "cutout", g)
    with pytest.raises(PrunekitError):
        data.augment_batch(torch.zeros(3, 8, 8), "flip", g)
    assert data.augment_batch(torch.zeros(0, 3, 8, 8), "crop_flip", g).shape == (0, 3, 8, 8)
