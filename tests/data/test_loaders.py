"""prunekit.data loaders on small generated files: every format, every corrupt case, and the decode cache."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit import PrunekitError, data
from prunekit.data import formats, loaders
from tests.helpers import idx_bytes

RNG = np.random.default_rng(0)


pytestmark = pytest.mark.usefixtures("isolated")  # tests/data/conftest.py


# --------------------------------------------------------------------------------------------- helpers


def write(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_mnist(folder: Path, n: dict[str, int] | None = None, gz: bool = True, size: int = 28):
    """Small MNIST-layout IDX files; returns {split: (images [N,H,W], labels [N])}."""
    n = n or {"train": 12, "test": 7}
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = RNG.integers(0, 256, size=(n[split], size, size), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n[split], dtype=np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(images, 2051), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049), gz)
        out[split] = (images, labels)
    return out


def cifar_records(images: np.ndarray, *label_cols: np.ndarray) -> bytes:
    cols = [np.asarray(c, dtype=np.uint8)[:, None] for c in label_cols]
    return np.concatenate([*cols, images.reshape(len(images), -1)], axis=1).tobytes()


def write_cifar10_bin(folder: Path, per_batch: int = 4):
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        images = RNG.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=per_batch, dtype=np.uint8)
        (d / name).write_bytes(cifar_records(images, labels))
        split = "test" if i == 5 else "train"
        out[split][0].append(images)
        out[split][1].append(labels)
    return d, {s: (np.concatenate(a), np.concatenate(b)) for s, (a, b) in out.items()}


def write_cifar100_bin(folder: Path, n: int = 6):
    d = folder / "cifar-100-binary"
    d.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        images = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        coarse = RNG.integers(0, 20, size=n)
        fine = RNG.integers(0, 100, size=n)
        (d / f"{split}.bin").write_bytes(cifar_records(images, coarse, fine))
        out[split] = (images, fine)
    return d, out


def image_bytes(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def flat_colour(rgb, size=(32, 32)) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (*size, 3)).copy()


COLOURS = {"cat": (200, 30, 40), "dog": (20, 180, 60)}


def add_member(
    tf: tarfile.TarFile, name: str, payload: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


def write_jpg_archive(path: Path, counts=None, extra=None) -> Path:
    """A cifar10-jpg.tar.xz look-alike with two classes of flat-coloured 32x32 JPEGs."""
    counts = counts or {"train": 3, "test": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as tf:
        for split, k in counts.items():
            add_member(tf, f"{split}/", kind=tarfile.DIRTYPE)
            for cls, rgb in COLOURS.items():
                add_member(tf, f"{split}/{cls}/", kind=tarfile.DIRTYPE)
                for i in range(k):
                    add_member(tf, f"{split}/{cls}/{i:04d}.jpg", image_bytes(flat_colour(rgb), "JPEG"))
        for args in extra or []:
            add_member(tf, *args)
    return path


def write_image_folder(root: Path, layout=("train", "test"), size=(6, 5), fmt="PNG") -> dict:
    """root/<split>/<class>/*.png with random exact pixels; returns {split: [(array, class)]}."""
    out = {}
    for split in layout:
        items = []
        for cls in ("b_dog", "a_cat"):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                arr = RNG.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                (folder / f"{i}.{fmt.lower()}").write_bytes(image_bytes(arr, fmt))
                items.append((arr, cls))
        out[split] = items
    return out


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# --------------------------------------------------------------------------------------------- names


def test_names_and_errors_for_unknown_name_split_kwargs():
    assert data.names() == [
        "cifar10",
        "cifar100",
        "digits",
        "fashion-mnist",
        "imagefolder",
        "mnist",
        "synthetic",
    ]
    with pytest.raises(PrunekitError) as e:
        data.load("imagenet")
    one_line_error(e, "imagenet", "cifar10", "synthetic")
    with pytest.raises(PrunekitError) as e:
        data.load("digits", "val")
    one_line_error(e, "'val'", "train, test")
    with pytest.raises(PrunekitError) as e:
        data.load("synthetic", bogus=1)
    one_line_error(e, "bogus", "num_classes")
    assert data.load("Synthetic", n=4).name == "synthetic"  # case-insensitive, aliases accepted


def test_digits_split_is_deterministic_and_disjoint():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == 1797 and 340 <= len(test) <= 380
    assert train.input_shape == (1, 8, 8) and train.num_classes == 10 and train.augment is None
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.mean == test.mean and train.std == test.std
    # every class is in both splits, and the split is the same on every call
    assert set(test.labels.tolist()) == set(range(10))
    assert torch.equal(data.load("digits", "test").images, test.images)


def test_synthetic_is_learnable_and_seeded():
    a = data.load("synthetic", "train", n=200, shape=(1, 8, 8), num_classes=4, seed=3)
    b = data.load("synthetic", "train", n=200, shape=(1, 8, 8), num_classes=4, seed=3)
    t = data.load("synthetic", "test", n=100, shape=(1, 8, 8), num_classes=4, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images[:100], t.images)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 4 and len(a) == 200
    # nearest class mean (from train) classifies test well above chance: the data is learnable
    x, xt = a.images.flatten(1).float(), t.images.flatten(1).float()
    means = torch.stack([x[a.labels == c].mean(0) for c in range(4)])
    pred = torch.cdist(xt, means).argmin(1)
    assert (pred == t.labels).float().mean() > 0.9


def test_dataset_subset_and_validation():
    ds = data.load("synthetic", n=10, shape=(3, 4, 4))
    assert len(ds.subset(3)) == 3 and torch.equal(ds.subset(3).images, ds.images[:3])
    assert len(ds.subset(100)) == 10
    sub = ds.subset([4, 1])
    assert torch.equal(sub.labels, ds.labels[[4, 1]]) and sub.classes == ds.classes and sub.mean == ds.mean
    assert len(ds.subset(torch.arange(10) % 2 == 0)) == 5 and len(ds.subset([])) == 0
    with pytest.raises(PrunekitError):
        ds.subset([10])
    with pytest.raises(PrunekitError):
        ds.subset(-1)
    with pytest.raises(PrunekitError):
        data.Dataset(
            "x", torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), ["a"], (0.5,), (0.2,), None
        )
    with pytest.raises(PrunekitError):
        data.Dataset(
            "x",
            torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
            torch.zeros(3, dtype=torch.long),
            ["a"],
            (0.5,),
            (0.2,),
            None,
        )


# --------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gz_and_plain(tmp_path, gz):
    truth = write_mnist(tmp_path / "mnist", gz=gz)
    for split in ("train", "test"):
        ds = data.load("mnist", split, root=tmp_path)
        images, labels = truth[split]
        assert ds.input_shape == (1, 28, 28) and ds.name == "mnist" and ds.num_classes == 10
        assert np.array_equal(ds.images[:, 0].numpy(), images)
        assert np.array_equal(ds.labels.numpy(), labels) and ds.labels.dtype == torch.int64
        assert ds.augment is None and ds.mean == (0.1307,)


def test_fashion_mnist_found_via_env_and_system_dir(tmp_path, monkeypatch, no_system_data):
    truth = write_mnist(tmp_path / "store" / "fashion-mnist")
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "store"))
    ds = data.load("fashion-mnist", "test")
    assert np.array_equal(ds.labels.numpy(), truth["test"][1]) and ds.classes[0] == "T-shirt/top"
    monkeypatch.delenv("PRUNEKIT_DATA")
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "store" / "fashion-mnist"]})
    assert len(data.load("fashion-mnist", "train")) == 12


def test_search_order_cwd_data_and_shared(tmp_path, monkeypatch, no_system_data):
    write_mnist(tmp_path / "data" / "mnist", n={"train": 3, "test": 2})  # ./data/<name> (cwd is tmp_path)
    assert len(data.load("mnist")) == 3
    work = tmp_path / "proj"
    work.mkdir()
    write_mnist(tmp_path / "shared" / "datasets" / "mnist", n={"train": 5, "test": 2})
    monkeypatch.chdir(work)  # ../shared/datasets/<name> relative to the working directory
    assert len(data.load("mnist")) == 5
    dirs = [str(d) for d in data.search_dirs("mnist", root=tmp_path / "r")]
    assert dirs[:2] == [str(tmp_path / "r"), str(tmp_path / "r" / "mnist")]


def test_repo_relative_shared_folder_is_searched():
    repo = loaders.repo_root()
    assert repo is not None and (repo / "src" / "prunekit").is_dir()
    assert repo.parent / "shared" / "datasets" / "mnist" in data.search_dirs("mnist")
    assert Path("/usr/share/datasets/fashion-mnist") in data.search_dirs("fashion-mnist")


def test_missing_dataset_says_where_it_looked(tmp_path, no_system_data):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", root=tmp_path / "nothing")
    one_line_error(e, "not found", str(tmp_path / "nothing"), "download=True", "train-images-idx3-ubyte")
    with pytest.raises(PrunekitError) as e:
        data.load("cifar100")
    one_line_error(e, "not found", "cifar-100-binary")


def test_idx_bad_magic(tmp_path):
    write_mnist(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8), 2049)[:4] + b"\0" * 100))
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", root=tmp_path)
    one_line_error(e, str(bad), "bad magic number 0x00000801", "0x00000803")


def test_idx_truncated_data_and_truncated_gzip(tmp_path):
    write_mnist(tmp_path / "mnist")
    f = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", "test", root=tmp_path)
    one_line_error(e, str(f), "truncated", "7 items")
    f.write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", "test", root=tmp_path)
    one_line_error(e, str(f), "gzip")
    f.write_bytes(gzip.compress(raw[:10]))  # cut inside the header
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", "test", root=tmp_path)
    one_line_error(e, str(f), "truncated")


def test_idx_label_out_of_range_and_count_mismatch(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    lab = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    labels = np.zeros(12, np.uint8)
    labels[5] = 10
    lab.write_bytes(idx_bytes(labels, 2049))
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", root=tmp_path)
    one_line_error(e, str(lab), "label 10 at record 5", "0..9")
    lab.write_bytes(idx_bytes(np.zeros(11, np.uint8), 2049))
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", root=tmp_path)
    one_line_error(e, str(lab), "11 labels", "12 images")
    lab.write_bytes(idx_bytes(np.zeros(12, np.uint8), 2049) + b"xx")
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", root=tmp_path)
    one_line_error(e, str(lab), "unexpected bytes")


def test_real_mnist_counts_if_present():
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"
    if not (shared / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("../shared/datasets/mnist is not present")
    train = data.load("mnist", "train")  # found through the repo-relative search path
    test = data.load("mnist", "test", root=shared)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.input_shape == (1, 28, 28) and set(test.labels.unique().tolist()) == set(range(10))
    again = data.load("mnist", "train")  # from the cache
    assert torch.equal(again.labels, train.labels)


# --------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_binary_release(tmp_path):
    d, truth = write_cifar10_bin(tmp_path / "cifar10")
    (d / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    for split in ("train", "test"):
        ds = data.load("cifar10", split, root=tmp_path)
        assert np.array_equal(ds.images.numpy(), truth[split][0])
        assert np.array_equal(ds.labels.numpy(), truth[split][1])
        assert ds.input_shape == (3, 32, 32) and ds.classes[3] == "c3"
    assert data.load("cifar10", "train", root=d).augment == "crop_flip"
    assert data.load("cifar10", "test", root=d).augment is None
    assert len(data.load("cifar10", "train", root=d)) == 20


def test_cifar10_binary_corrupt(tmp_path):
    d, _ = write_cifar10_bin(tmp_path / "cifar10")
    f = d / "test_batch.bin"
    raw = f.read_bytes()
    f.write_bytes(raw[:-100])
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", "test", root=tmp_path)
    one_line_error(e, str(f), "3073-byte", "truncated")
    bad = bytearray(raw)
    bad[3073 * 2] = 10
    f.write_bytes(bytes(bad))
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", "test", root=tmp_path)
    one_line_error(e, str(f), "label 10 at record 2")
    (d / "data_batch_4.bin").unlink()
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", "train", root=tmp_path)
    one_line_error(e, "data_batch_4.bin", "missing")


def test_cifar100_binary_uses_fine_labels(tmp_path):
    d, truth = write_cifar100_bin(tmp_path / "cifar100")
    ds = data.load("cifar100", "test", root=tmp_path)
    assert np.array_equal(ds.labels.numpy(), truth["test"][1]) and np.array_equal(
        ds.images.numpy(), truth["test"][0]
    )
    assert ds.num_classes == 100 and ds.classes[0] == "apple" and ds.classes[-1] == "worm"
    assert len(set(ds.classes)) == 100 and ds.augment is None
    f = d / "train.bin"
    rec = bytearray(f.read_bytes())
    rec[3074 + 1] = 100  # fine label of record 1
    f.write_bytes(bytes(rec))
    with pytest.raises(PrunekitError) as e:
        data.load("cifar100", "train", root=tmp_path)
    one_line_error(e, str(f), "label 100 at record 1", "0..99")
    rec[3074 + 1], rec[0] = 5, 20  # coarse label of record 0
    f.write_bytes(bytes(rec))
    with pytest.raises(PrunekitError) as e:
        data.load("cifar100", "train", root=tmp_path)
    one_line_error(e, str(f), "label 20 at record 0")


def test_cifar10_jpg_archive(tmp_path):
    archive = write_jpg_archive(tmp_path / "cifar10" / "cifar10-jpg.tar.xz")
    train = data.load("cifar10", "train", root=tmp_path)
    test = data.load("cifar10", "test", root=tmp_path)
    assert train.classes == ["cat", "dog"] and len(train) == 6 and len(test) == 4
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and train.input_shape == (3, 32, 32)
    for i, cls in enumerate(["cat"] * 3 + ["dog"] * 3):
        mean_rgb = train.images[i].float().mean((1, 2))
        assert torch.allclose(mean_rgb, torch.tensor(COLOURS[cls], dtype=torch.float32), atol=4)
    # the archive itself can be given as root
    assert len(data.load("cifar10", "test", root=archive)) == 4


@pytest.mark.parametrize(
    "member, why",
    [
        (("../evil.jpg", b"x"), "escapes"),
        (("train/cat/../../../evil.jpg", b"x"), "escapes"),
        (("/abs/evil.jpg", b"x"), "absolute"),
        (("train/cat/link.jpg", b"", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (("train/cat/hard.jpg", b"", tarfile.LNKTYPE, "train/cat/0000.jpg"), "link"),
        (("train/cat/fifo.jpg", b"", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_archive_unsafe_members_rejected(tmp_path, member, why):
    archive = write_jpg_archive(tmp_path / "cifar10" / "cifar10-jpg.tar.xz", extra=[member])
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", "train", root=tmp_path)
    one_line_error(e, str(archive), why, "refusing")
    assert not (tmp_path / "evil.jpg").exists()


def test_archive_corrupt_image_and_truncated_archive(tmp_path):
    archive = write_jpg_archive(
        tmp_path / "cifar10" / "cifar10-jpg.tar.xz", extra=[("train/dog/9999.jpg", b"not a jpeg")]
    )
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", "train", root=tmp_path)
    one_line_error(e, "train/dog/9999.jpg", "cannot decode")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", "train", root=tmp_path)
    one_line_error(e, str(archive))


def test_cifar10_unpacked_image_folder(tmp_path):
    for split, k in (("train", 2), ("test", 1)):
        for cls, rgb in COLOURS.items():
            folder = tmp_path / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for i in range(k):
                (folder / f"{i}.png").write_bytes(image_bytes(flat_colour(rgb), "PNG"))
    ds = data.load("cifar10", "train", root=tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4 and ds.augment == "crop_flip"
    assert ds.images[0, :, 0, 0].tolist() == list(COLOURS["cat"])
    assert ds.mean == data.load("cifar10", "test", root=tmp_path).mean


# --------------------------------------------------------------------------------------------- folders


def test_imagefolder_with_splits(tmp_path):
    truth = write_image_folder(tmp_path / "pics")
    train = data.load("imagefolder", "train", root=tmp_path / "pics")
    test = data.load("imagefolder", "test", root=tmp_path / "pics")
    assert train.classes == ["a_cat", "b_dog"] and train.input_shape == (3, 6, 5) and len(train) == 4
    expected = sorted(truth["train"], key=lambda t: t[1])  # by class then file name (stable: 0, 1)
    for i, (arr, cls) in enumerate(expected):
        assert np.array_equal(train.images[i].permute(1, 2, 0).numpy(), arr)
        assert train.classes[int(train.labels[i])] == cls
    assert test.mean == train.mean and test.std == train.std  # normalised with train statistics
    all_px = np.stack([a for a, _ in truth["train"]]).reshape(-1, 3) / 255.0
    assert np.allclose(train.mean, all_px.mean(0), atol=1e-6)
    with pytest.raises(PrunekitError) as e:
        data.load("imagefolder", "test", root=tmp_path / "pics", augment="rotate")
    one_line_error(e, "rotate")


def test_imagefolder_without_split_mode_l_and_resize(tmp_path):
    write_image_folder(tmp_path / "flat", layout=(None,), size=(10, 12), fmt="JPEG")
    ds = data.load("imagefolder", "train", root=tmp_path / "flat", mode="L", size=8)
    assert ds.input_shape == (1, 8, 8) and ds.classes == ["a_cat", "b_dog"] and len(ds) == 4
    assert data.load("imagefolder", "test", root=tmp_path / "flat", size=(4, 6)).input_shape == (3, 4, 6)
    with pytest.raises(PrunekitError):
        data.load("imagefolder", root=tmp_path / "flat", mode="CMYK")
    with pytest.raises(PrunekitError):
        data.load("imagefolder", root=tmp_path / "flat", size=(0, 3))


def test_imagefolder_size_mismatch_names_the_file(tmp_path):
    write_image_folder(tmp_path / "pics", layout=("train",))
    odd = tmp_path / "pics" / "train" / "b_dog" / "9.png"
    odd.write_bytes(image_bytes(np.zeros((7, 7, 3), np.uint8), "PNG"))
    with pytest.raises(PrunekitError) as e:
        data.load("imagefolder", root=tmp_path / "pics")
    one_line_error(e, str(odd), "7x7", "size=")
    assert data.load("imagefolder", root=tmp_path / "pics", size=(6, 5)).input_shape == (3, 6, 5)
    (tmp_path / "pics" / "train" / "a_cat" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(PrunekitError) as e:
        data.load("imagefolder", root=tmp_path / "pics", size=(6, 5))
    one_line_error(e, "bad.png", "cannot decode")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(PrunekitError) as e:
        data.load("imagefolder")
    one_line_error(e, "root=")
    write_image_folder(tmp_path / "pics", layout=("train",))
    with pytest.raises(PrunekitError) as e:
        data.load("imagefolder", "test", root=tmp_path / "pics")
    one_line_error(e, "no test/ folder")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(PrunekitError) as e:
        data.load("imagefolder", root=tmp_path / "empty")
    one_line_error(e, "no images")


# --------------------------------------------------------------------------------------------- cache


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("*.npz"))


def test_cache_hit_skips_decoding(tmp_path, monkeypatch):
    truth = write_mnist(tmp_path / "mnist")
    first = data.load("mnist", root=tmp_path)
    assert len(cache_files(tmp_path)) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again despite a valid cache entry")

    monkeypatch.setattr(formats, "read_idx_pair", boom)
    again = data.load("mnist", root=tmp_path)
    assert torch.equal(again.images, first.images) and np.array_equal(again.labels.numpy(), truth["train"][1])


def test_cache_invalidated_when_source_changes(tmp_path):
    write_mnist(tmp_path / "mnist", gz=False)
    data.load("mnist", root=tmp_path)
    lab = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    new = np.full(12, 7, np.uint8)
    lab.write_bytes(idx_bytes(new, 2049))  # same size: only the mtime tells
    st = lab.stat()
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert data.load("mnist", root=tmp_path).labels.tolist() == [7] * 12
    assert len(cache_files(tmp_path)) == 1  # the stale entry was overwritten, not left behind


def test_corrupt_or_tampered_cache_is_rebuilt(tmp_path):
    truth = write_mnist(tmp_path / "mnist")
    data.load("mnist", root=tmp_path)
    (entry,) = cache_files(tmp_path)
    entry.write_bytes(b"PK\x03\x04 garbage")
    assert np.array_equal(data.load("mnist", root=tmp_path).labels.numpy(), truth["train"][1])
    # a well-formed entry with the right key but out-of-range labels is not trusted either
    with np.load(entry, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["labels"] = arrays["labels"] + 50
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    assert np.array_equal(data.load("mnist", root=tmp_path).labels.numpy(), truth["train"][1])


def test_archive_cache_covers_both_splits(tmp_path, monkeypatch):
    write_jpg_archive(tmp_path / "cifar10" / "cifar10-jpg.tar.xz")
    train = data.load("cifar10", "train", root=tmp_path)
    assert len(cache_files(tmp_path)) == 2

    def boom(*a, **k):
        raise AssertionError("archive decoded again")

    monkeypatch.setattr(formats, "decode_split_archive", boom)
    assert len(data.load("cifar10", "test", root=tmp_path)) == 4
    assert torch.equal(data.load("cifar10", "train", root=tmp_path).images, train.images)


def test_explicit_cache_dir_and_unwritable_cache(tmp_path):
    write_mnist(tmp_path / "mnist")
    data.load("mnist", root=tmp_path, cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("*.npz"))) == 1
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="cache"):
        assert len(data.load("mnist", root=tmp_path, cache_dir=blocker / "sub")) == 12


def test_sample_is_seeded_random_and_ordered():
    from prunekit import data as pdata

    ds = pdata.load("synthetic", "train", n=200, shape=(1, 4, 4), num_classes=4, seed=0)
    ds.labels = torch.arange(200) // 50  # sorted by class, like the CIFAR-10 archive
    a, b = ds.sample(40, seed=1), ds.sample(40, seed=1)
    assert torch.equal(a.labels, b.labels) and len(a) == 40
    assert set(a.labels.tolist()) == {0, 1, 2, 3}  # not just the first class
    assert not torch.equal(a.labels, ds.sample(40, seed=2).labels)
    assert len(ds.sample(500)) == 200


def test_explicit_root_that_does_not_exist_is_an_error_not_a_fallback(tmp_path, no_system_data):
    """./data/mnist exists (a fallback folder), but the user named another folder: that typo is an error."""
    write_mnist(tmp_path / "data" / "mnist", n={"train": 3, "test": 2})
    assert len(data.load("mnist")) == 3  # no root: the search finds ./data/mnist
    for root in (tmp_path / "typo", "~/no-such-prunekit-folder"):
        with pytest.raises(PrunekitError) as e:
            data.load("mnist", root=root)
        one_line_error(e, str(root), "does not exist")
    from prunekit import cli

    cfg = tmp_path / "m.yaml"
    cfg.write_text("model: {name: lenet5}\ndata: {name: mnist}\ntrain: {epochs: 1, device: cpu}\n")
    assert cli.main(["train", str(cfg), "--data-dir", str(tmp_path / "typo"), "--out", str(tmp_path / "r")]) == 2
    assert cli.main(["eval", "lenet5", "--data", "mnist", "--data-dir", str(tmp_path / "typo")]) == 2


def _restore_stat(path: Path, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p and rsync -t do


def test_cache_sees_a_same_size_change_with_the_old_mtime(tmp_path):
    """The labels file is replaced by one of the same size and given back its old mtime: new labels load."""
    write_mnist(tmp_path / "mnist", n={"train": 12, "test": 7}, gz=False)
    first = data.load("mnist", "train", root=tmp_path)
    lab = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    st = lab.stat()
    new = (first.labels.numpy() + 1) % 10
    lab.write_bytes(idx_bytes(new.astype(np.uint8), 2049))
    _restore_stat(lab, st)
    assert lab.stat().st_size == st.st_size and lab.stat().st_mtime_ns == st.st_mtime_ns
    assert data.load("mnist", "train", root=tmp_path).labels.tolist() == new.tolist()


def test_image_folder_cache_sees_a_same_size_change_with_the_old_mtime(tmp_path):
    write_image_folder(tmp_path / "imgs", fmt="BMP")  # BMP: a changed pixel keeps the file size
    before = data.load("imagefolder", "train", root=tmp_path / "imgs")
    f = tmp_path / "imgs" / "train" / "a_cat" / "0.bmp"
    st = f.stat()
    arr = np.asarray(Image.open(f)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    f.write_bytes(image_bytes(arr, "BMP"))
    _restore_stat(f, st)
    assert f.stat().st_size == st.st_size
    after = data.load("imagefolder", "train", root=tmp_path / "imgs")
    assert not torch.equal(before.images, after.images)
