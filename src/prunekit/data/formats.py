"""Parsers for untrusted data files: IDX (MNIST), CIFAR binary records, image archives and image folders.

Every check failure raises ``PrunekitError`` with one line naming the file. Nothing here unpickles, and
archives are read member by member in memory: nothing is extracted, so hostile member names cannot
write anywhere.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import os
import struct
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from prunekit.errors import PrunekitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
MAX_DECOMPRESSED = 4 << 30  # a gzip that inflates beyond this is refused (decompression bomb)
MAX_IMAGE_PIXELS = 1 << 26  # refuse absurd image sizes before decoding
IDX_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dim


def _brief(exc: BaseException) -> str:
    """An exception as one short line (tarfile and PIL messages can span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------------------- IDX


def read_maybe_gzip(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes (whatever its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head != b"\x1f\x8b":
                return fh.read()
            with gzip.GzipFile(fileobj=fh) as gz:
                data = gz.read(MAX_DECOMPRESSED + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise PrunekitError(f"{path}: corrupt or truncated gzip data ({_brief(exc)}); re-download the file") from None
    except OSError as exc:
        raise PrunekitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_DECOMPRESSED:
        raise PrunekitError(f"{path}: decompresses to more than {MAX_DECOMPRESSED >> 30} GiB; refusing it")
    return data


_CHUNK = 1 << 24


def _read_upto(stream: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes, read in bounded chunks: a header that lies about the size allocates nothing."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or plain) with the given magic number.

    The header is checked before the data are read, and the data are read in bounded chunks up to the size
    the header announces (plus one byte to detect trailing garbage): neither a lying header nor a gzip bomb
    can make this allocate more than the announced size.
    """
    kind = "image" if magic == IDX_IMAGES_MAGIC else "label"
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=fh) if gz else fh  # type: ignore[assignment]
            with stream if gz else contextlib.nullcontext(stream):
                head = _read_upto(stream, header)
                if len(head) < 4:
                    raise PrunekitError(f"{path}: truncated IDX file ({len(head)} bytes, no header); re-download it")
                (found,) = struct.unpack(">I", head[:4])
                if found != magic:
                    raise PrunekitError(
                        f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x} (IDX {kind} file); "
                        "is this the right file?"
                    )
                if len(head) < header:
                    raise PrunekitError(
                        f"{path}: truncated IDX header ({len(head)} of {header} bytes); re-download it")
                dims = struct.unpack(f">{ndim}I", head[4:header])
                if ndim == 3 and (dims[1] == 0 or dims[2] == 0 or dims[1] * dims[2] > MAX_IMAGE_PIXELS):
                    raise PrunekitError(f"{path}: implausible image size {dims[1]}x{dims[2]} in the IDX header")
                expected = 1
                for d in dims:
                    expected *= d
                if expected > MAX_DECOMPRESSED:
                    raise PrunekitError(
                        f"{path}: header announces {dims[0]} items ({expected} data bytes), more than "
                        f"{MAX_DECOMPRESSED >> 30} GiB; the file is corrupt or not an IDX {kind} file")
                raw = _read_upto(stream, expected + 1)
    except PrunekitError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise PrunekitError(f"{path}: corrupt or truncated gzip data ({_brief(exc)}); re-download the file") from None
    except OSError as exc:
        raise PrunekitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    have = len(raw)
    if have < expected:
        raise PrunekitError(
            f"{path}: truncated: header announces {dims[0]} items ({expected} data bytes) but only {have} "
            "bytes follow; re-download it"
        )
    if have > expected:
        raise PrunekitError(
            f"{path}: unexpected bytes after the {dims[0]} items the header announces"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> dict[str, np.ndarray]:
    """Images [N, 1, H, W] and labels [N] from an IDX image file and its label file, cross-checked."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise PrunekitError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images; "
            "the two files do not belong together"
        )
    check_labels(labels, num_classes, labels_path)
    return {"images": images[:, None].copy(), "labels": labels.astype(np.int64)}


def check_labels(labels: np.ndarray, num_classes: int, where: object) -> None:
    """Raise when any label is outside 0..num_classes-1, naming the first offending record."""
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise PrunekitError(
            f"{where}: label {int(labels[i])} at record {i} is out of range (expected 0..{num_classes - 1}); "
            "the file is corrupt or for another dataset"
        )


# -------------------------------------------------------------------------------------------- CIFAR bin


def read_cifar_bin(
    path: Path, label_bytes: int, label_index: int, label_limits: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Parse a CIFAR binary batch: records of ``label_bytes`` label bytes then 3072 pixel bytes (R, G, B).

    ``label_index`` picks which label byte to keep (CIFAR-100: 0 coarse, 1 fine); every label byte is checked
    against its limit in ``label_limits``.
    """
    record = label_bytes + 3 * 32 * 32
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PrunekitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) == 0 or len(raw) % record:
        raise PrunekitError(
            f"{path}: size {len(raw)} bytes is not a whole number of {record}-byte CIFAR records "
            "(truncated or not a CIFAR binary batch); re-download it"
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    for j, limit in enumerate(label_limits):
        check_labels(rec[:, j], limit, path)
    return {
        "images": rec[:, label_bytes:].reshape(-1, 3, 32, 32).copy(),
        "labels": rec[:, label_index].astype(np.int64),
    }


def read_class_names(path: Path, expected: int) -> list[str] | None:
    """Class names from a text file of one name per line, or None when absent or not ``expected`` names."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names if len(names) == expected else None


# ---------------------------------------------------------------------------------------------- images


def decode_image(data: bytes, where: str, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image to an [H, W] or [H, W, C] uint8 array, converted to ``mode`` and resized to ``size``.

    ``size`` is (height, width); None keeps the image's own size.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise PrunekitError(f"{where}: image of {w}x{h} pixels is too large")
                if size is not None and im.format == "JPEG":
                    im.draft(mode, (size[1], size[0]))
                out = im.convert(mode) if im.mode != mode else im
                if size is not None and out.size != (size[1], size[0]):
                    out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(out, dtype=np.uint8)
    except PrunekitError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise PrunekitError(f"{where}: cannot decode image ({_brief(exc)}); remove or replace the file") from None


def check_size(arr: np.ndarray, first: tuple[int, int] | None, where: str) -> tuple[int, int]:
    """The common (H, W): the first image's size; a later image of another size is an error naming it."""
    hw = (int(arr.shape[0]), int(arr.shape[1]))
    if first is not None and hw != first:
        raise PrunekitError(
            f"{where}: image is {hw[1]}x{hw[0]} but earlier images are {first[1]}x{first[0]}; "
            "pass size=(H, W) to resize all images"
        )
    return hw


def safe_member_name(archive: Path, member: tarfile.TarInfo) -> PurePosixPath | None:
    """The member's relative path when it is a safe directory or regular file; directories give None.

    Raises for absolute names, ``..`` components, links, devices and other non-regular members.
    """
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and (":" in parts[0])):
        raise PrunekitError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    if any(p == ".." for p in parts):
        raise PrunekitError(f"{archive}: member {name!r} escapes the archive ('..'); refusing the archive")
    if member.isdir():
        return None
    if not member.isreg():
        what = "a link" if (member.issym() or member.islnk()) else "not a regular file"
        raise PrunekitError(f"{archive}: member {name!r} is {what}; refusing the archive")
    clean = [p for p in parts if p not in ("", ".")]
    return PurePosixPath(*clean) if clean else None


def open_tar(path: Path) -> tarfile.TarFile:
    """Open a (compressed) tar archive for sequential reading, with a one-line error when it is not one."""
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise PrunekitError(f"{path}: not a readable tar archive ({_brief(exc)}); re-download it") from None


def iter_tar_files(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Yield (relative path, contents) of each regular file of a tar archive, after safety checks.

    Reads the archive strictly sequentially; truncated or corrupt archives raise ``PrunekitError``.
    """
    tf = open_tar(path)
    try:
        for member in tf:
            rel = safe_member_name(path, member)
            if rel is None:
                continue
            fh = tf.extractfile(member)
            if fh is None:  # pragma: no cover - isreg() members always have data
                continue
            yield rel, fh.read()
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise PrunekitError(f"{path}: corrupt or truncated archive ({_brief(exc)}); re-download it") from None
    finally:
        tf.close()


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def decode_split_archive(
    path: Path, splits: tuple[str, ...], mode: str = "RGB", size: tuple[int, int] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Decode an archive of ``<split>/<class>/<image>`` members (optionally under one top folder).

    Returns, per split found, ``images`` [N, C, H, W], ``labels`` [N] and ``classes`` (sorted union of class
    names over all splits, so labels agree between splits). Order: by class, then by file name.
    """
    found: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {}
    first: tuple[int, int] | None = None
    for rel, data in iter_tar_files(path):
        parts = rel.parts
        if len(parts) not in (3, 4) or parts[-3] not in splits or not is_image_name(parts[-1]):
            continue
        where = f"{path}:{rel}"
        arr = decode_image(data, where, mode, size)
        first = check_size(arr, first, where)
        found.setdefault(parts[-3], {}).setdefault(parts[-2], []).append((parts[-1], arr))
    if not found:
        raise PrunekitError(
            f"{path}: no images found under {'/'.join(splits)}/<class>/ in the archive; "
            "expected members like train/<class>/0001.jpg"
        )
    classes = sorted({c for per_class in found.values() for c in per_class})
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, per_class in found.items():
        images, labels = [], []
        for label, cls in enumerate(classes):
            for _, arr in sorted(per_class.get(cls, []), key=lambda t: t[0]):
                images.append(arr)
                labels.append(label)
        out[split] = {
            "images": _stack_chw(images),
            "labels": np.asarray(labels, dtype=np.int64),
            "classes": np.asarray(classes),
        }
    return out


def _stack_chw(images: list[np.ndarray]) -> np.ndarray:
    """Stack [H, W] or [H, W, C] arrays into one [N, C, H, W] uint8 array."""
    arr = np.stack(images)
    if arr.ndim == 3:
        return arr[:, None].copy()
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names of ``root``) and (file, label) pairs sorted by class then name."""
    try:
        class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise PrunekitError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
    return class_dirs, list_class_files(root, class_dirs)


def list_class_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) of every image in ``root/<class>/`` for the given class list, sorted."""
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and is_image_name(e.name))
        files.extend((folder / n, label) for n in names)
    return files


def decode_files(
    files: list[tuple[Path, int]], mode: str, size: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    """Decode image files into [N, C, H, W] uint8 images and int64 labels; sizes must agree unless resized."""
    if not files:
        raise PrunekitError("no images to decode")
    images: list[np.ndarray] = []
    first: tuple[int, int] | None = None
    for path, _ in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PrunekitError(f"{path}: cannot read ({exc.strerror or exc})") from None
        arr = decode_image(data, str(path), mode, size)
        first = check_size(arr, first, str(path))
        images.append(arr)
    return {"images": _stack_chw(images), "labels": np.asarray([lab for _, lab in files], dtype=np.int64)}
