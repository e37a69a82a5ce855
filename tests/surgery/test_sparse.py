"""Unstructured sparsity: MaskSet through optimizer steps, sparse files (bit-exact, small, validated)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import MaskSet, keep_count, load_sparse, save_sparse, topk_mask
from prunekit.surgery.sparse import decode_file, ideal_bytes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


X = torch.randn(4, 3, 8, 8)

# ---------------------------------------------------------------------------------------------------------
# MaskSet


def test_from_topk_keeps_exactly_k_per_layer() -> None:
    model = net()
    with torch.no_grad():
        model[4].weight[:, :100] = 0.5  # many ties at the threshold
    ms = MaskSet.from_topk(model, 0.25)
    assert ms.layers == ["0", "4", "6"]
    for name, n in (("0", 216), ("4", 4608), ("6", 64)):
        assert int(ms.mask(name).sum()) == round(0.25 * n)
        w = model.get_submodule(name).weight.detach().abs()
        kept, dropped = w[ms.mask(name)], w[~ms.mask(name)]
        assert kept.min() >= dropped.max()
    counts = MaskSet.from_topk(model, {"0": 10, "6": 0.5})
    assert counts.layers == ["0", "6"] and int(counts.mask("0").sum()) == 10 and int(counts.mask("6").sum()) == 32
    sp = counts.sparsity()
    assert sp["kept"] == {"0": 10, "6": 32}
    assert sp["layers"]["6"] == pytest.approx(0.5)
    assert sp["global"] == pytest.approx(1 - 42 / 280)


def test_one_rounding_rule_for_every_topk() -> None:
    """A keep fraction rounds half up (not Python's half-to-even) in MaskSet, IHT and torch-global alike."""
    assert [keep_count(0.5, n) for n in (1, 3, 5, 7)] == [1, 2, 3, 4]  # round(2.5) would give 2
    assert keep_count(0.01, 10) == 1 and keep_count(1.0, 10) == 10  # never empty, never more than n
    model = nn.Sequential(nn.Linear(5, 2), nn.Linear(2, 1))  # 10 and 2 weights
    ms = MaskSet.from_topk(model, 0.25)
    assert ms.sparsity()["kept"] == {"0": 3, "1": 1}  # 2.5 -> 3, 0.5 -> 1
    assert int(MaskSet.from_topk(model, 0.25, scope="global").sparsity()["global"] * 12 + 0.5) == 9  # keeps 3
    w = torch.tensor([[0.1, -3.0, 2.0], [-0.5, 0.0, 1.0]])
    assert topk_mask(w, 2).tolist() == [[False, True, True], [False, False, False]]  # by |w|, shaped like w
    assert int(topk_mask(w, 99).sum()) == 6 and int(topk_mask(w, 0).sum()) == 0


def test_global_scope_uses_one_threshold() -> None:
    model = net()
    ms = MaskSet.from_topk(model, 500, scope="global")
    total = sum(int(ms.mask(n).sum()) for n in ms.layers)
    assert total == 500
    kept = torch.cat([model.get_submodule(n).weight.detach().abs()[ms.mask(n)] for n in ms.layers])
    dropped = torch.cat([model.get_submodule(n).weight.detach().abs()[~ms.mask(n)] for n in ms.layers])
    assert kept.min() >= dropped.max()


def test_bad_arguments() -> None:
    model = net()
    for kwargs, msg in [({"keep": 1.5}, r"\(0, 1\]"), ({"keep": True}, "fraction"), ({"keep": 10_000}, "cannot keep"),
                        ({"keep": 0.5, "scope": "block"}, "scope"), ({"keep": 0.5, "layers": ["2"]}, "no layer"),
                        ({"keep": {"0": 0.5}, "scope": "global"}, "scope='layer'")]:
        with pytest.raises(PrunekitError, match=msg):
            MaskSet.from_topk(model, **kwargs)
    with pytest.raises(PrunekitError, match="shape"):
        MaskSet(model, {"0": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(PrunekitError, match="bool"):
        MaskSet(model, {"0": torch.ones(8, 3, 3, 3)})


def test_masks_survive_momentum_and_weight_decay() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    # dense steps first, so the momentum buffers of the weights about to be masked are not zero
    for _ in range(2):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
    ms = MaskSet.from_topk(model, 0.3)
    ms.apply_()
    for _ in range(5):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
        ms.apply_()
        for n in ms.layers:
            w = model.get_submodule(n).weight
            assert int((w[~ms.mask(n)] != 0).sum()) == 0
            assert int((w != 0).sum()) == int(ms.mask(n).sum())  # kept weights stay alive
    # grads and momentum of frozen weights can be zeroed too
    opt.zero_grad()
    model(X).square().mean().backward()
    ms.mask_grads_()
    ms.mask_optimizer_state_(opt)
    for n in ms.layers:
        w = model.get_submodule(n).weight
        assert int((w.grad[~ms.mask(n)] != 0).sum()) == 0
        assert int((opt.state[w]["momentum_buffer"][~ms.mask(n)] != 0).sum()) == 0
    before = {n: model.get_submodule(n).weight.detach().clone() for n in ms.layers}
    opt.step()
    for n in ms.layers:  # with masked grads and momentum, the step alone keeps the zeros
        w = model.get_submodule(n).weight
        assert torch.equal(w[~ms.mask(n)], before[n][~ms.mask(n)])


def test_mask_state_dict_round_trip_and_device_follow() -> None:
    model = net()
    ms = MaskSet.from_topk(model, 0.5)
    state = ms.state_dict()
    assert all(v.dtype == torch.bool and v.device.type == "cpu" for v in state.values())
    other = MaskSet.from_topk(model, 0.1)
    other.load_state_dict(state)
    assert all(torch.equal(other.mask(n), state[n]) for n in state)
    with pytest.raises(PrunekitError):
        other.load_state_dict({"0": torch.ones(2, dtype=torch.bool)})
    bad = dict(state)
    bad["nope"] = state["0"]
    with pytest.raises(PrunekitError, match="no layer 'nope'"):
        other.load_state_dict(bad)


def test_mask_refuses_a_model_changed_by_surgery() -> None:
    from prunekit.surgery import remove_channels

    model = net()
    ms = MaskSet.from_topk(model, 0.5)
    remove_channels(model, {"0": [0]}, X)
    with pytest.raises(PrunekitError, match="was the model pruned"):
        ms.apply_()


# ---------------------------------------------------------------------------------------------------------
# sparse files


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 8: torch.int64, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def sparse_net(density: float, seed: int = 0) -> nn.Module:
    model = net(seed)
    model(X)  # BN statistics as after training
    MaskSet.from_topk(model, density).apply_()
    return model.eval()


@pytest.mark.parametrize("density", [0.5, 0.1, 0.01])
def test_sparse_round_trip_is_bit_exact_and_small(tmp_path: Path, density: float) -> None:
    model = sparse_net(density)
    with torch.no_grad():
        model[6].bias[0] = -0.0  # a negative zero and a NaN survive as values
        model[6].bias[1] = float("nan")
    path = save_sparse(model, tmp_path / "m.safetensors", extra={"note": "x"})
    back = load_sparse(path, model=net(seed=9))
    for k, v in model.state_dict().items():
        assert torch.equal(bits(back.state_dict()[k]), bits(v)), k
    size = path.stat().st_size
    dense = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    ideal = sum(ideal_bytes(v) for v in model.state_dict().values())
    assert size < 1.2 * ideal + 4096  # header: entries, architecture, safetensors index
    if density <= 0.1:
        assert size < 0.3 * dense
    _, doc = decode_file(path)
    encs = {e["key"]: e["enc"] for e in doc["entries"]}
    assert encs["4.weight"] == ("bitmap" if density > 0.05 else "index")
    assert encs["1.running_mean"] == "dense"


def test_all_zero_and_empty_tensors_round_trip(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # BN bias, running mean, batch count: all 0
    with torch.no_grad():
        model[0].weight.zero_()
    path = save_sparse(model, tmp_path / "z.safetensors")
    back = load_sparse(path, model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_zoo_model_reloads_from_the_sparse_file_alone(tmp_path: Path) -> None:
    models = pytest.importorskip("prunekit.models")
    from prunekit.surgery import remove_channels

    model = models.create("lenet5").eval()
    x = torch.randn(2, *model.input_shape)
    remove_channels(model, {"conv1": [0, 1]} if hasattr(model, "conv1") else {}, x)
    MaskSet.from_topk(model, 0.2).apply_()
    path = save_sparse(model, tmp_path / "lenet.safetensors")
    back = load_sparse(path)
    assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


# --------------------------------------------------------------------------------------------- corruption


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return tensors, json.loads(meta["prunekit"])


def _write(path: Path, tensors: dict[str, torch.Tensor], doc: dict) -> Path:
    save_file(tensors, str(path), metadata={"prunekit": json.dumps(doc)})
    return path


def _entry(doc: dict, key: str) -> dict:
    return next(e for e in doc["entries"] if e["key"] == key)


def test_corrupt_sparse_files_are_rejected(tmp_path: Path) -> None:
    good = save_sparse(sparse_net(0.3), tmp_path / "good.safetensors")
    idx = save_sparse(sparse_net(0.01), tmp_path / "idx.safetensors")
    cases = []

    t, d = _read(good)
    _entry(d, "4.weight")["shape"] = [16, 289]
    cases.append(("forged shape", t, d, "need"))

    t, d = _read(good)
    b = t["bitmap"].clone()
    b[0] ^= 1  # flip one occupancy bit
    t["bitmap"] = b
    cases.append(("popcount", t, d, "set bits but"))

    t, d = _read(good)
    _entry(d, "0.weight")["nnz"] += 1
    cases.append(("nnz", t, d, "need|set bits"))

    t, d = _read(idx)
    key = next(e["key"] for e in d["entries"] if e["enc"] == "index" and e["nnz"] > 1)
    name = f"index/{_entry(d, key)['index_dtype']}"
    i = t[name].clone()
    i[0] = 10_000
    t[name] = i
    cases.append(("index range", t, d, "out of range or not strictly increasing"))

    t, d = _read(good)
    _entry(d, "0.weight")["dtype"] = "complex64"
    cases.append(("dtype", t, d, "unknown dtype"))

    t, d = _read(good)
    d["entries"].append({"key": "huge", "dtype": "float32", "shape": [2**30, 64], "enc": "index", "nnz": 0,
                         "index_dtype": "int64"})
    cases.append(("bomb", t, d, "unexpected|max_expand"))

    t, d = _read(good)
    d["entries"].append(dict(d["entries"][0]))
    cases.append(("duplicate", t, d, "twice"))

    t, d = _read(good)
    t["extra"] = torch.zeros(3)
    cases.append(("extra tensor", t, d, "unexpected tensor"))

    t, d = _read(good)
    d["format"] = "prunekit-model/1"
    cases.append(("format", t, d, "not a prunekit sparse"))

    t, d = _read(good)
    _entry(d, "0.weight")["enc"] = "rle"
    cases.append(("encoding", t, d, "unknown encoding"))

    t, d = _read(good)
    _entry(d, "0.weight")["shape"] = [-1, 3]
    cases.append(("negative", t, d, "bad shape"))

    for what, tensors, doc, msg in cases:
        path = _write(tmp_path / f"{what}.safetensors", tensors, doc)
        with pytest.raises(PrunekitError, match=msg):
            load_sparse(path, model=net())
    # a valid file that does not fit the model, and a truncated file
    with pytest.raises(PrunekitError, match="weights do not fit|shape"):
        load_sparse(good, model=nn.Sequential(nn.Conv2d(3, 8, 3)))
    raw = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PrunekitError, match="not a valid safetensors"):
        load_sparse(tmp_path / "cut.safetensors", model=net())
    with pytest.raises(PrunekitError, match="no architecture"):
        load_sparse(good)


def test_padding_bits_must_be_zero(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False))  # 9 weights -> 2 bitmap bytes, 7 padding bits
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    path = save_sparse(model, tmp_path / "p.safetensors")
    t, d = _read(path)
    if _entry(d, "0.weight")["enc"] != "bitmap":
        pytest.skip("encoder chose another layout")
    b = t["bitmap"].clone()
    b[-1] |= np.uint8(0x80).item()
    t["bitmap"] = b
    with pytest.raises(PrunekitError, match="padding"):
        load_sparse(_write(tmp_path / "q.safetensors", t, d), model=nn.Sequential(nn.Linear(3, 3, bias=False)))


def test_file_size_tracks_the_ideal() -> None:
    w = torch.randn(256, 256)
    w[torch.rand_like(w) > 0.1] = 0
    nnz = int((w != 0).sum())
    assert ideal_bytes(w) == nnz * 4 + min(math.ceil(w.numel() / 8), nnz * 4)


def test_prunekit_load_reads_sparse_files_too(tmp_path: Path) -> None:
    """``prunekit.load`` is the one entry point: a sparse file loads as the dense network it encodes."""
    import prunekit
    from prunekit import models

    torch.manual_seed(0)
    model = models.create("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) < 0.3)
    save_sparse(model, tmp_path / "m.safetensors")
    loaded = prunekit.load(tmp_path / "m.safetensors")
    ref = load_sparse(tmp_path / "m.safetensors")
    for (n, a), (_, b), (_, c) in zip(loaded.state_dict().items(), ref.state_dict().items(),
                                      model.state_dict().items(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c), n
