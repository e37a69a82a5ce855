"""Decoded-array cache: ``.npz`` files (no pickle) keyed by the source files' path, size and content.

Decoding 60,000 JPEGs takes seconds; reading the cached arrays back takes a fraction of one. The cache file
name depends on the source paths and decoding parameters; the stored key also covers each file's size and a
SHA-256 digest of its bytes (hashing runs at disk speed, far faster than decoding), so a changed source is
re-decoded and its entry overwritten, even when it kept the old size and modification time (``cp -p``,
``rsync -t``). A cache file that cannot be
read or does not pass the checks is ignored and rebuilt; a cache folder that cannot be written only costs
speed, never the load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.atomic import atomic_path

CACHE_VERSION = 2  # 2: keyed on content, not mtime
_CHUNK = 1 << 20
_KEY = "__cache_key__"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$PRUNEKIT_CACHE``, else ``~/.cache/prunekit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PRUNEKIT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "prunekit"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (the fastest stdlib hash on CPUs with SHA extensions)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def source_fingerprint(paths: Iterable[Path]) -> list[list]:
    """Identity of each source file: absolute path, size and content digest."""
    out = []
    for p in paths:
        out.append([str(Path(p).resolve()), os.stat(p).st_size, file_digest(p)])
    return out


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def entry(
    kind: str,
    sources: list[Path],
    params: dict,
    cache_dir: str | os.PathLike | None = None,
    fingerprint: list | None = None,
) -> tuple[Path, str]:
    """(cache file, key) for arrays decoded from ``sources`` with ``params``.

    The file name depends on the kind, params and source paths; the key also covers the sources' sizes and
    contents (or ``fingerprint`` when given, e.g. for folders of many images).
    """
    ident = {
        "v": CACHE_VERSION,
        "kind": kind,
        "params": params,
        "paths": [str(Path(p).resolve()) for p in sources],
    }
    fp = fingerprint if fingerprint is not None else source_fingerprint(sources)
    key = _digest({"ident": ident, "fp": fp})
    return cache_root(cache_dir) / f"{kind}-{_digest(ident)[:24]}.npz", key


def _sizes_are_honest(path: Path) -> bool:
    """Whether every array in the ``.npz`` holds as many bytes as its header announces.

    ``np.load`` allocates the announced size before reading, so a damaged or forged entry could otherwise
    make a cache lookup allocate far more memory than the file holds.
    """
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    return False
                if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
                    return False
    return True


def lookup(path: Path, key: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray] | None:
    """Arrays (all, or only ``names``) of the entry with this key; None if missing, stale or unreadable.

    The cache is a file like any other: an entry that is damaged, forged or lies about its sizes is ignored
    (and rebuilt by the caller), never trusted and never unpickled.
    """
    if not path.is_file():
        return None
    try:
        if not _sizes_are_honest(path):
            return None
        with np.load(path, allow_pickle=False) as npz:
            if _KEY not in npz.files or str(npz[_KEY]) != key:
                return None
            wanted = [n for n in npz.files if n != _KEY] if names is None else list(names)
            return {name: npz[name] for name in wanted}
    except Exception:  # zipfile, zlib, numpy and OS errors alike: an unreadable entry is a cache miss
        return None


def store(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache entry atomically; failure to write only warns (the cache is an optimisation)."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            # Any: numpy's stub would match the ** entries against savez's ``allow_pickle: bool``
            entries: dict[str, Any] = {**arrays, _KEY: np.array(key)}
            np.savez(fh, **entries)
    except OSError as exc:
        warnings.warn(f"prunekit: could not write the data cache {path}: {exc}", stacklevel=3)


def cached_arrays(
    kind: str,
    sources: list[Path],
    params: dict,
    build: Callable[[], dict[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
    *,
    fingerprint: list | None = None,
    validate: Callable[[dict[str, np.ndarray]], bool] | None = None,
) -> dict[str, np.ndarray]:
    """Return ``build()``'s arrays, from the cache when the sources are unchanged.

    ``validate`` is run on arrays read back from the cache; a False result means the entry is rebuilt.
    """
    path, key = entry(kind, sources, params, cache_dir, fingerprint)
    arrays = lookup(path, key)
    if arrays is not None and (validate is None or validate(arrays)):
        return arrays
    arrays = build()
    store(path, key, arrays)
    return arrays
