"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunekit.errors import PrunekitError

_HINTS = {
    errno.ENOSPC: "free some disk space or choose another output folder",
    errno.EDQUOT: "free some disk quota or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "the folder is not writable; fix its permissions or choose another output folder",
    errno.EPERM: "the folder is not writable; fix its permissions or choose another output folder",
    errno.EFBIG: "the file is larger than the file system allows; choose another output folder",
}


class WriteError(PrunekitError, OSError):
    """A file could not be written (disk full, read-only or unwritable folder).

    Both a :class:`PrunekitError` (the CLI prints one line and exits 2) and an ``OSError`` (code that treats a
    failed write as optional, such as the data cache, keeps working).
    """

    def __str__(self) -> str:
        hint = _HINTS.get(self.errno or 0, "check the output folder")
        return (f"{self.filename}: cannot write ({self.strerror}); {hint}. "
                "Files written before are intact")


def _as_write_error(exc: OSError, path: Path) -> OSError:
    """A :class:`WriteError` naming ``path`` for a failed write; other OS errors unchanged."""
    if isinstance(exc, WriteError) or exc.errno not in _HINTS:
        return exc
    return WriteError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once at import: os.umask() can only be read by setting it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``path``, on error it is removed.

    A reader never sees a half-written file, and a run killed mid-write leaves the old file intact. An
    ``OSError`` while writing (disk full, permission denied) becomes a :class:`WriteError` naming ``path``.
    The new file gets the usual permissions (0o666 less the umask), not the temporary file's 0o600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _as_write_error(exc, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        raise _as_write_error(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write a binary file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
