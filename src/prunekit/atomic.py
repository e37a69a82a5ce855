"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

Only a regular file (or nothing) is ever replaced: a device node, FIFO, socket or folder at the target is
refused, so ``--out /dev/null`` can never turn the system's ``/dev/null`` into a file. Temporary files are
named ``.<target>.<pid>-<random>.tmp``; the ones a killed process left behind (its pid is gone) are swept by
:func:`sweep_stale` and before each write of the same target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
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
    errno.ENAMETOOLONG: "the name is too long for this file system; choose a shorter one",
}
# Bytes of the target's name kept in a temporary file's name: with the pid, random part and suffix it stays
# under the usual 255-byte limit for any legal target name.
_STEM_BYTES = 200
_TMP = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
_LEGACY_TMP = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp$")  # written by prunekit <= 0.1.0 (no pid)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report an errno


class WriteError(PrunekitError, OSError):
    """A file could not be written (disk full, read-only or unwritable folder).

    Both a :class:`PrunekitError` (the CLI prints one line and exits 2) and an ``OSError`` (code that treats a
    failed write as optional, such as the data cache, keeps working). It names the target, never the
    temporary file.
    """

    def __str__(self) -> str:
        hint = _HINTS.get(self.errno or 0, "check the output path")
        return (f"{self.filename}: cannot write ({self.strerror}); {hint}. "
                "Files written before are intact")


class NotAFileError(PrunekitError, OSError):
    """The target exists and is not a regular file (device, FIFO, socket, folder): it is never replaced."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}; refusing to replace it, choose another path"


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: "a character device", "a FIFO", "a folder", ..."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def check_target(path: str | os.PathLike[str]) -> None:
    """Raise :class:`NotAFileError` when ``path`` exists (through symlinks) and is not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return  # missing (the usual case) or unreadable: the write itself reports it
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(errno.EEXIST, f"exists and is {file_kind(st.st_mode)}, not a regular file", str(path))


def _stem(name: str) -> str:
    """``name`` cut to at most ``_STEM_BYTES`` bytes (on a character boundary)."""
    while len(os.fsencode(name)) > _STEM_BYTES:
        name = name[:-1]
    return name


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's live process, or a number we cannot check: keep the file
    return True


def sweep_stale(folder: str | os.PathLike[str], name: str | None = None, *, legacy: bool = False) -> list[Path]:
    """Remove temporary files in ``folder`` left by writers that no longer run (killed with -9).

    Only prunekit's own pattern ``.<target>.<pid>-<random>.tmp`` whose pid is not a live process is removed
    (and, with ``legacy``, the pid-less ``.<target>.<8 chars>.tmp`` of older versions); ``name`` limits the
    sweep to one target's temporary files. Returns what was removed; never raises.
    """
    removed: list[Path] = []
    want = None if name is None else _stem(name)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP.match(e.name)
        stale = m is not None and not _pid_alive(int(m["pid"]))
        if m is None and legacy:
            m = _LEGACY_TMP.match(e.name)
            stale = m is not None
        if not stale or m is None or (want is not None and m["stem"] != want):
            continue
        with contextlib.suppress(OSError):
            if e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def _as_write_error(exc: BaseException, path: Path) -> BaseException:
    """A :class:`WriteError` naming ``path`` (not the temporary file) for a failed write.

    OS errors of any kind, and errors of libraries that report an OS error only in their message (safetensors'
    ``... No space left on device (os error 28)``), are converted; other exceptions are returned unchanged.
    """
    if isinstance(exc, PrunekitError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and not isinstance(exc, OSError):
        m = _OS_ERROR.search(str(exc))
        code = int(m.group(1)) if m else None
    if code is None:
        return exc if not isinstance(exc, OSError) else WriteError(0, exc.strerror or str(exc), str(path))
    return WriteError(code, os.strerror(code), str(path))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once at import: os.umask() can only be read by setting it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``path``, on error it is removed.

    A reader never sees a half-written file, and a run killed mid-write leaves the old file intact. A target
    that exists and is not a regular file is refused (:class:`NotAFileError`) before anything is written. A
    failed write (disk full, permission denied, name too long) becomes a :class:`WriteError` naming ``path``.
    The new file gets the usual permissions (0o666 less the umask), not the temporary file's 0o600.
    """
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{_stem(path.name)}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _as_write_error(exc, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        check_target(path)  # a node made at the target while we wrote is still never replaced
        os.replace(tmp_path, path)
    except Exception as exc:
        err = _as_write_error(exc, path)
        if err is exc:
            raise
        raise err from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write a binary file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
