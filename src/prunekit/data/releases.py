"""Download official dataset release files and check them against their published checksums.

Each file streams into a temporary file beside its destination while it is hashed; only a file whose
checksum matches is renamed into place, so a corrupted or truncated download never leaves a file behind.
A ``mirror=`` base URL (or ``$PRUNEKIT_MIRROR``) replaces the official locations; the checksums still apply.
Standard library only (urllib).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prunekit.atomic import atomic_path, write_bytes
from prunekit.data.formats import iter_tar_files
from prunekit.errors import PrunekitError

MAX_DOWNLOAD = 2 << 30  # bytes; every official file is far smaller
CHUNK = 1 << 20


@dataclass(frozen=True)
class Release:
    """Where a dataset's official files live and their published checksums."""

    bases: tuple[str, ...]  # official base URLs, tried in order
    files: dict[str, tuple[str, str]]  # file name -> (hash algorithm, published hex digest)
    homepage: str
    extract: str | None = None  # for tar.gz releases: the folder inside the archive to extract


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


def idx_release(bases: tuple[str, ...], md5s: tuple[str, str, str, str], homepage: str) -> Release:
    """A release in MNIST's layout: the four gzipped IDX files of ``IDX_FILES``, with their MD5s in that order."""
    return Release(bases=bases, files={f: ("md5", h) for f, h in zip(IDX_FILES, md5s, strict=True)},
                   homepage=homepage)


# Checksums are the ones published by the dataset authors (CIFAR pages list MD5s; the MNIST and
# Fashion-MNIST MD5s are the ones torchvision and the Fashion-MNIST README publish).
RELEASES: dict[str, Release] = {
    "mnist": idx_release(
        ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432", "9fb629c4189551a2d022fa330f9573f3",
         "ec29112dd5afa0611ce80d1b7f02629c"),
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": idx_release(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe", "bef4ecab320f06d8554ea6380940ec79",
         "bb300cfdad3c16e7a12a480ee83cd310"),
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": Release(
        bases=("https://www.cs.toronto.edu/~kriz/",),
        files={"cifar-10-binary.tar.gz": ("md5", "c32a1d4ab5d03f1284b67883e8d87530")},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        extract="cifar-10-batches-bin",
    ),
    "cifar100": Release(
        bases=("https://www.cs.toronto.edu/~kriz/",),
        files={"cifar-100-binary.tar.gz": ("md5", "03b5dce01913d631647c71ecec9e9cb8")},
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        extract="cifar-100-binary",
    ),
}


def mirror_base(mirror: str | None) -> str | None:
    """The mirror base URL to use instead of the official ones (argument, then ``$PRUNEKIT_MIRROR``)."""
    base = mirror if mirror is not None else os.environ.get("PRUNEKIT_MIRROR") or None
    if base is None:
        return None
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https", "file"):
        raise PrunekitError(f"mirror {base!r}: only http://, https:// and file:// URLs are supported")
    return base if base.endswith("/") else base + "/"


def fetch(url: str, dest: Path, algorithm: str, digest: str) -> None:
    """Stream ``url`` into ``dest`` atomically, keeping it only when its checksum equals ``digest``."""
    h = hashlib.new(algorithm)
    total = 0
    print(f"prunekit: downloading {url}", file=sys.stderr)
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > MAX_DOWNLOAD:
                        raise PrunekitError(f"{url}: larger than {MAX_DOWNLOAD >> 30} GiB; refusing it")
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise PrunekitError(f"{url}: download failed ({reason})") from None
        got = h.hexdigest()
        if got != digest.lower():
            raise PrunekitError(
                f"{url}: checksum mismatch ({algorithm} {got}, expected {digest}); the download was "
                "discarded - retry, or check the mirror"
            )


def download_release(name: str, dest: Path, mirror: str | None = None) -> None:
    """Fetch every file of dataset ``name``'s release into ``dest`` (extracting archives), verified."""
    release = RELEASES[name]
    base = mirror_base(mirror)
    bases = (base,) if base else release.bases
    dest.mkdir(parents=True, exist_ok=True)
    for filename, (algorithm, digest) in release.files.items():
        target = dest / filename
        if release.extract is None and target.is_file():
            continue
        errors = []
        for b in bases:
            try:
                fetch(urllib.parse.urljoin(b, filename), target, algorithm, digest)
                break
            except PrunekitError as exc:
                errors.append(str(exc))
        else:
            more = f" (and {len(errors) - 1} more failed locations)" if len(errors) > 1 else ""
            raise PrunekitError(f"{errors[0]}{more}; see {release.homepage}")
        if release.extract is not None:
            try:
                extract_folder(target, release.extract, dest)
            finally:
                target.unlink()


def extract_folder(archive: Path, folder: str, dest: Path) -> None:
    """Write the regular files directly inside ``folder/`` of a verified tar archive to ``dest/folder/``.

    The whole archive is checked first (no absolute paths, ``..``, links or special files anywhere), then
    the files are written one by one, atomically, under names taken only from their last path component.
    """
    wanted = {}
    for rel, data in iter_tar_files(archive):
        if len(rel.parts) == 2 and rel.parts[0] == folder and not rel.name.startswith("."):
            wanted[rel.name] = data
    if not wanted:
        raise PrunekitError(f"{archive}: no files under {folder}/ in the archive; is this the right release?")
    for name, data in wanted.items():
        write_bytes(dest / folder / name, data)
