"""Named datasets: where their files are looked for, how they are decoded, and ``load()`` / ``names()``.

Search order for file-based datasets (first folder that has the files wins): ``root`` and ``root/<name>`` (an
explicit ``root`` that does not exist is an error, never a fallback to the folders after it),
``$PRUNEKIT_DATA/<name>``, ``./data/<name>``, ``../shared/datasets/<name>`` relative to the working directory
and to the prunekit checkout, then system folders (Debian's ``/usr/share/datasets/fashion-mnist``).
``download=True`` fetches the official release into ``root/<name>`` (else ``$PRUNEKIT_DATA/<name>``, else
``./data/<name>``) when nothing is found.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data import cache, formats
from prunekit.data.dataset import Dataset
from prunekit.data.pipeline import RECIPES
from prunekit.data.releases import RELEASES, download_release
from prunekit.errors import PrunekitError

SPLITS = ("train", "test")

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()

# Per-channel mean/std on the 0..1 scale of each training set (the usual published values).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# Folders outside the search roots where a distribution package installs a dataset.
SYSTEM_DIRS: dict[str, list[Path]] = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}

IDX_NAMES = {"train": "train", "test": "t10k"}
CIFAR10_WANTED = "cifar-10-batches-bin/, an image folder train/<class>/ or cifar10-jpg.tar.xz"
CIFAR100_WANTED = "cifar-100-binary/train.bin and test.bin"


# ------------------------------------------------------------------------------------------- search


def repo_root() -> Path | None:
    """The prunekit checkout this module lives in (editable install), or None for an installed package."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "prunekit").is_dir():
            return parent
    return None


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders looked in for dataset ``name``, in order, without duplicates (only ``root`` when given)."""
    dirs: list[Path] = []
    if root is not None:  # the user said where the data is: look nowhere else
        r = Path(root).expanduser()
        return [r, r / name]
    env = os.environ.get("PRUNEKIT_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    cwd = Path.cwd()
    dirs += [cwd / "data" / name, cwd.parent / "shared" / "datasets" / name]
    repo = repo_root()
    if repo is not None:
        dirs.append(repo.parent / "shared" / "datasets" / name)
    dirs += SYSTEM_DIRS.get(name, [])
    out, seen = [], set()
    for d in dirs:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def download_dir(name: str, root: str | os.PathLike | None) -> Path:
    """Where ``download=True`` puts ``name``: ``root/<name>``, else ``$PRUNEKIT_DATA/<name>``, else ./data."""
    if root is not None:
        return Path(root).expanduser() / name
    env = os.environ.get("PRUNEKIT_DATA")
    return (Path(env).expanduser() if env else Path.cwd() / "data") / name


def _not_found(name: str, split: str, dirs: list[Path], wanted: str) -> PrunekitError:
    how = "pass download=True (CLI: --set data.download=true) to fetch it, or " if name in RELEASES else ""
    looked = ", ".join(str(d) for d in dirs)
    return PrunekitError(
        f"dataset {name!r} ({split}) not found: looked for {wanted} in {looked}; {how}put the files in "
        f"one of those folders (or pass root= / set PRUNEKIT_DATA)"
    )


def _locate(name: str, split: str, root: str | os.PathLike | None, download: bool, mirror: str | None,
            probe: Callable[[Path], Any], wanted: str) -> Any:
    """The first search folder where ``probe`` finds the files; else download the release (when asked) and
    probe its folder; else one clear error naming every folder looked in."""
    dirs = search_dirs(name, root)
    if root is not None and not os.path.exists(Path(root).expanduser()):
        if not download:
            raise PrunekitError(f"data folder {str(root)!r} (data.root / --data-dir) does not exist; fix the path, "
                                "or leave it unset to search the default folders")
        dirs = []  # an explicit folder to download into: never a fallback to ./data or ../shared
    found = next((f for d in dirs if (f := probe(d)) is not None), None)
    if found is None and download:
        dest = download_dir(name, root)
        download_release(name, dest, mirror)
        found = probe(dest)
    if found is None:
        raise _not_found(name, split, dirs, wanted)
    return found


def _first(folder: Path, candidates: list[str]) -> Path | None:
    for c in candidates:
        if (folder / c).is_file():
            return folder / c
    return None


def _valid(num_classes: int, extra: tuple[str, ...] = ()) -> Callable[[dict[str, np.ndarray]], bool]:
    """A check of arrays read back from the cache (it is a file too: never trusted blindly)."""

    def limit(a: dict[str, np.ndarray]) -> int:
        return min(num_classes, len(a["classes"])) if "classes" in a else num_classes

    def check(a: dict[str, np.ndarray]) -> bool:
        try:
            im, lab = a["images"], a["labels"]
            return (
                im.dtype == np.uint8
                and im.ndim == 4
                and lab.dtype == np.int64
                and lab.ndim == 1
                and im.shape[0] == lab.shape[0]
                and all(k in a for k in extra)
                and all(a[k].shape == (im.shape[1],) and a[k].dtype.kind == "f" and bool(np.isfinite(a[k]).all())
                        for k in ("mean", "std") if k in a)
                and ("classes" not in a or (a["classes"].ndim == 1 and a["classes"].dtype.kind in "US"))
                and (lab.size == 0 or (lab.min() >= 0 and lab.max() < limit(a)))
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return False

    return check


def _dataset(
    name: str,
    split: str,
    arrays: dict[str, np.ndarray],
    classes: list[str],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    augment: str | None,
) -> Dataset:
    if augment is not None and augment not in RECIPES:
        raise PrunekitError(f"augment={augment!r}: valid recipes are {', '.join(RECIPES)}, or None")
    return Dataset(
        name=name,
        images=torch.from_numpy(np.ascontiguousarray(arrays["images"])),
        labels=torch.from_numpy(np.ascontiguousarray(arrays["labels"]).astype(np.int64, copy=False)),
        classes=list(classes),
        mean=stats[0],
        std=stats[1],
        augment=augment if split == "train" else None,
    )


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale of uint8 images [N, C, H, W] (chunked, float64)."""
    c = images.shape[1]
    s = np.zeros(c)
    s2 = np.zeros(c)
    count = 0
    for i in range(0, images.shape[0], 4096):
        chunk = images[i : i + 4096].astype(np.float64) / 255.0
        s += chunk.sum(axis=(0, 2, 3))
        s2 += (chunk * chunk).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    if count == 0:
        return (0.5,) * c, (0.25,) * c
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(v, 1e-3)) for v in std)


Reader = Callable[[str, Any, str, "str | os.PathLike | None"], Dataset]


def _release_loader(name: str, probe: Callable[[Path, str], Any], wanted: Callable[[str], str], read: Reader
                    ) -> Callable[..., Dataset]:
    """The loader of a dataset with an official release: the first search folder where ``probe(folder,
    split)`` finds its files (else the release downloaded, when asked; else one error naming ``wanted(split)``
    and every folder looked in), then ``read(name, found, split, cache_dir)``."""

    def load(
        split: str,
        root: str | os.PathLike | None,
        download: bool,
        cache_dir: str | os.PathLike | None,
        mirror: str | None = None,
    ) -> Dataset:
        found = _locate(name, split, root, download, mirror, lambda d: probe(d, split), wanted(split))
        return read(name, found, split, cache_dir)

    return load


def _cached_release(key: str, files: list[Path], read: Callable[[], dict[str, np.ndarray]],
                    cache_dir: str | os.PathLike | None, num_classes: int) -> dict[str, np.ndarray]:
    """The arrays ``read`` decodes from release ``files``, through the cache (checked when read back)."""
    return cache.cached_arrays(key, files, {}, read, cache_dir, validate=_valid(num_classes))


# ------------------------------------------------------------------------------------------- digits


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images [1797, 8, 8] in 0..16, labels).

    Reads the CSV that ships inside scikit-learn directly (importing ``sklearn.datasets`` costs seconds);
    falls back to ``load_digits()`` if the file is not where expected or not as expected.
    """
    spec = importlib.util.find_spec("sklearn")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / "datasets" / "data" / "digits.csv.gz"
        try:
            raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
        except (OSError, ValueError):
            continue
        if raw.shape == (1797, 65) and raw.min() >= 0 and raw[:, :64].max() <= 16 and raw[:, 64].max() <= 9:
            return raw[:, :64].reshape(-1, 8, 8), raw[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _load_digits(split: str, **_: object) -> Dataset:
    """scikit-learn's 8x8 digits (bundled, no files needed); the last 20% of each class is the test split."""
    raw, labels = _digits_raw()
    images = np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test[idx[len(idx) - round(0.2 * len(idx)) :]] = True
    stats = channel_stats(images[~test])
    keep = test if split == "test" else ~test
    return _dataset(
        "digits", split, {"images": images[keep], "labels": labels[keep]}, MNIST_CLASSES, stats, None
    )


# ------------------------------------------------------------------------------------------- MNIST-like


def _idx_names(prefix: str, kind: str, idx: str) -> list[str]:
    """The names one IDX file goes by (gzipped or not; ``-`` or ``.`` before the ``idxN`` part)."""
    return [f"{prefix}-{kind}-{idx}-ubyte.gz", f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte",
            f"{prefix}-{kind}.{idx}-ubyte.gz"]


def _idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    p = IDX_NAMES[split]
    images = _first(folder, _idx_names(p, "images", "idx3"))
    labels = _first(folder, _idx_names(p, "labels", "idx1"))
    return (images, labels) if images is not None and labels is not None else None


def _idx_wanted(split: str) -> str:
    p = IDX_NAMES[split]
    return f"{p}-images-idx3-ubyte[.gz] and {p}-labels-idx1-ubyte[.gz]"


def _read_idx(classes: list[str], name: str, found: tuple[Path, Path], split: str,
              cache_dir: str | os.PathLike | None) -> Dataset:
    images, labels = found
    arrays = _cached_release(f"{name}-{split}", [images, labels],
                             lambda: formats.read_idx_pair(images, labels, len(classes)), cache_dir, len(classes))
    return _dataset(name, split, arrays, classes, STATS[name], None)


# ------------------------------------------------------------------------------------------- CIFAR


def _cifar10_source(folder: Path) -> tuple[str, Path] | None:
    """The best CIFAR-10 source in a folder: binary release, then image folder, then JPEG archive."""
    if folder.is_file() and folder.name.endswith((".tar", ".tar.xz", ".tar.gz", ".tgz")):
        return "archive", folder
    for d in (folder / "cifar-10-batches-bin", folder):
        if (d / "data_batch_1.bin").is_file() or (d / "test_batch.bin").is_file():
            return "bin", d
    for d in (folder, folder / "cifar10-jpg"):
        if (d / "train").is_dir() or (d / "test").is_dir():
            return "folder", d
    for n in ("cifar10-jpg.tar.xz", "cifar10-jpg.tar.gz", "cifar10-jpg.tar"):
        if (folder / n).is_file():
            return "archive", folder / n
    return None


def _read_cifar10(name: str, found: tuple[str, Path], split: str, cache_dir: str | os.PathLike | None) -> Dataset:
    kind, path = found
    if kind == "bin":
        files = [path / f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else [path / "test_batch.bin"]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise PrunekitError(f"{missing[0]}: missing from the CIFAR-10 binary release; re-download it")
        def read() -> dict[str, np.ndarray]:
            return _concat([formats.read_cifar_bin(f, 1, 0, (10,)) for f in files])

        arrays = _cached_release(f"cifar10-bin-{split}", files, read, cache_dir, 10)
        classes = formats.read_class_names(path / "batches.meta.txt", 10) or CIFAR10_CLASSES
        return _dataset(name, split, arrays, classes, STATS[name], "crop_flip")
    if kind == "folder":
        arrays = _folder_arrays(path, split, "RGB", None, cache_dir)
    else:
        arrays = _archive_arrays(path, split, cache_dir)
    return _dataset(name, split, arrays, [str(c) for c in arrays["classes"]], STATS[name], "crop_flip")


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _archive_arrays(path: Path, split: str, cache_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """Decoded images of one split of a ``<split>/<class>/*.jpg`` archive; one pass caches every split."""
    entries = {s: cache.entry(f"archive-{s}", [path], {"mode": "RGB"}, cache_dir) for s in SPLITS}
    arrays = cache.lookup(*entries[split])
    if arrays is not None and _valid(1 << 30, ("classes",))(arrays):
        return arrays
    decoded = formats.decode_split_archive(path, SPLITS)
    for s, a in decoded.items():
        cache.store(*entries[s], a)
    if split not in decoded:
        raise PrunekitError(
            f"{path}: the archive has no {split}/<class>/ images (found: {', '.join(decoded)})"
        )
    return decoded[split]


def _cifar100_source(folder: Path) -> Path | None:
    for d in (folder / "cifar-100-binary", folder):
        if (d / "train.bin").is_file() or (d / "test.bin").is_file():
            return d
    return None


def _read_cifar100(name: str, path: Path, split: str, cache_dir: str | os.PathLike | None) -> Dataset:
    file = path / f"{split}.bin"
    if not file.is_file():
        raise PrunekitError(f"{file}: missing from the CIFAR-100 binary release; re-download it")
    arrays = _cached_release(f"cifar100-bin-{split}", [file], lambda: formats.read_cifar_bin(file, 2, 1, (20, 100)),
                             cache_dir, 100)
    classes = formats.read_class_names(path / "fine_label_names.txt", 100) or CIFAR100_CLASSES
    return _dataset(name, split, arrays, classes, STATS[name], "crop_flip")


# ------------------------------------------------------------------------------------------- folders


def _split_layout(root: Path) -> list[str]:
    """Split folders present under ``root`` (empty: ``root`` holds class folders directly)."""
    return [s for s in SPLITS if (root / s).is_dir()]


def _folder_arrays(
    root: Path, split: str, mode: str, size: tuple[int, int] | None, cache_dir: str | os.PathLike | None
) -> dict[str, np.ndarray]:
    """Decoded images (+ labels, classes, mean, std) of one split of an image-folder tree, cached."""
    if not root.is_dir():
        raise PrunekitError(f"{root}: image folder not found; pass root=<folder with class sub-folders>")
    splits = _split_layout(root)
    if splits:
        if split not in splits:
            raise PrunekitError(
                f"{root}: no {split}/ folder (found {', '.join(splits)}/); add it or pick a split"
            )
        classes = sorted({c for s in splits for c in formats.scan_image_folder(root / s)[0]})
        folder = root / split
    else:
        classes = formats.scan_image_folder(root)[0]
        folder = root
    files = formats.list_class_files(folder, classes)
    if not files:
        raise PrunekitError(f"{folder}: no images (.png, .jpg, .jpeg, .bmp) in <class>/ sub-folders")
    fingerprint = [[str(p.relative_to(folder)), lab, *_stat(p)] for p, lab in files] + [classes]

    def build() -> dict[str, np.ndarray]:
        arrays = formats.decode_files(files, mode, size)
        mean, std = channel_stats(arrays["images"])
        return {**arrays, "classes": np.asarray(classes), "mean": np.asarray(mean), "std": np.asarray(std)}

    return cache.cached_arrays(
        f"folder-{split}",
        [folder],
        {"mode": mode, "size": size},
        build,
        cache_dir,
        fingerprint=fingerprint,
        validate=_valid(len(classes), ("classes", "mean", "std")),
    )


def _stat(p: Path) -> tuple[int, str]:
    """Size and content digest of one image (the cache key: a same-size edit that kept the mtime counts)."""
    return p.stat().st_size, cache.file_digest(p)


def _parse_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in size)
    ):
        return int(size[0]), int(size[1])
    raise PrunekitError(f"size={size!r}: expected an int or (height, width) of positive ints")


def _load_imagefolder(
    split: str,
    root: str | os.PathLike | None,
    download: bool,
    cache_dir: str | os.PathLike | None,
    size: object = None,
    mode: str = "RGB",
    augment: str | None = None,
) -> Dataset:
    """Any ``root/<split>/<class>/*.png|jpg|jpeg|bmp`` tree (or ``root/<class>/...``, used for every split).

    Normalisation statistics come from the train split when there is one, so every split is normalised alike.
    """
    del download
    if root is None:
        raise PrunekitError(
            "dataset 'imagefolder' needs root=<folder> (CLI: --data-dir) holding class folders"
        )
    if mode not in ("RGB", "L"):
        raise PrunekitError(f"mode={mode!r}: expected 'RGB' or 'L'")
    hw = _parse_size(size)
    r = Path(root).expanduser()
    arrays = _folder_arrays(r, split, mode, hw, cache_dir)
    stats_from = arrays
    if split != "train" and "train" in _split_layout(r):
        stats_from = _folder_arrays(r, "train", mode, hw, cache_dir)
    stats = (tuple(stats_from["mean"].tolist()), tuple(stats_from["std"].tolist()))
    return _dataset("imagefolder", split, arrays, [str(c) for c in arrays["classes"]], stats, augment)


# ------------------------------------------------------------------------------------------- synthetic


def _load_synthetic(
    split: str,
    n: int = 256,
    shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
    augment: str | None = None,
    **_: object,
) -> Dataset:
    """Learnable random data: each class has its own mean image; samples add Gaussian noise to it.

    Class means depend on ``seed`` only, samples on (seed, split), so train and test share the classes.
    """
    if not (isinstance(n, int) and n >= 0 and isinstance(num_classes, int) and num_classes >= 1):
        raise PrunekitError(f"synthetic: n={n!r} and num_classes={num_classes!r} must be ints >= 0 and >= 1")
    dims = tuple(int(v) for v in shape)  # a YAML list, checked here
    if len(dims) != 3 or min(dims) < 1:
        raise PrunekitError(f"synthetic: shape={dims!r} must be (C, H, W) of positive ints")
    shape = (dims[0], dims[1], dims[2])
    protos = np.random.default_rng([seed, 0]).uniform(48, 208, size=(num_classes, *shape))
    rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = np.clip(np.rint(protos[labels] + rng.normal(0, 40, size=(n, *shape))), 0, 255).astype(np.uint8)
    c = shape[0]
    return _dataset(
        "synthetic",
        split,
        {"images": images, "labels": labels},
        [f"class{i}" for i in range(num_classes)],
        ((0.5,) * c, (0.25,) * c),
        augment,
    )


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., Dataset]
    kwargs: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(
        lambda split, root, download, cache_dir: _load_digits(split),
        (),
        "scikit-learn 8x8 digits, bundled (1,797 images, 1x8x8, 10 classes)",
    ),
    "mnist": _Entry(
        _release_loader("mnist", _idx_files, _idx_wanted, partial(_read_idx, MNIST_CLASSES)),
        ("mirror",),
        "MNIST IDX files (60,000 + 10,000, 1x28x28, 10 classes)",
    ),
    "fashion-mnist": _Entry(
        _release_loader("fashion-mnist", _idx_files, _idx_wanted, partial(_read_idx, FASHION_CLASSES)),
        ("mirror",),
        "Fashion-MNIST IDX files (60,000 + 10,000, 1x28x28, 10 classes)",
    ),
    "cifar10": _Entry(
        _release_loader("cifar10", lambda d, _: _cifar10_source(d), lambda _: CIFAR10_WANTED, _read_cifar10),
        ("mirror",),
        "CIFAR-10: binary release, image folder or JPEG archive (50,000 + 10,000, 3x32x32)",
    ),
    "cifar100": _Entry(
        _release_loader("cifar100", lambda d, _: _cifar100_source(d), lambda _: CIFAR100_WANTED, _read_cifar100),
        ("mirror",), "CIFAR-100 binary release, fine labels (3x32x32, 100 classes)"
    ),
    "imagefolder": _Entry(
        _load_imagefolder, ("size", "mode", "augment"), "any root/<split>/<class>/*.png|jpg tree"
    ),
    "synthetic": _Entry(
        lambda split, root, download, cache_dir, **kw: _load_synthetic(split, **kw),
        ("n", "shape", "num_classes", "seed", "augment"),
        "generated learnable random data, for tests",
    ),
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}


def names() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """One-line description of each named dataset (for ``--help`` and docs)."""
    return {n: _REGISTRY[n].summary for n in names()}


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: object,
) -> Dataset:
    """Load split ``split`` ("train" or "test") of dataset ``name`` into memory as a :class:`Dataset`.

    ``root`` is a data folder searched first (its ``<name>`` sub-folder too); ``download=True`` fetches the
    official release when the files are not found (mnist, fashion-mnist, cifar10, cifar100; ``mirror=``
    replaces the official URLs). Decoded arrays are cached in ``cache_dir`` (else ``$PRUNEKIT_CACHE``, else
    ``~/.cache/prunekit``). Extra keyword arguments are dataset-specific (see :func:`describe`).
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise PrunekitError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    if split not in SPLITS:
        raise PrunekitError(f"unknown split {split!r} for dataset {key!r}; valid splits: {', '.join(SPLITS)}")
    entry = _REGISTRY[key]
    unknown = sorted(set(kwargs) - set(entry.kwargs))
    if unknown:
        valid = ", ".join(entry.kwargs) or "none"
        raise PrunekitError(f"dataset {key!r} does not take {', '.join(unknown)}; valid options: {valid}")
    return entry.loader(split=split, root=root, download=download, cache_dir=cache_dir, **kwargs)
