"""Files of the store: exclusive and shared locks, atomic replacement, and which stored paths may be read.

A manifest (or cache) is replaced only by an atomic rename under an exclusive lock, and only when the file there is
one of ours (a manifest, empty, or damaged); readers hold a shared lock. Stored paths are only ever resolved inside a
root the user gave (:func:`resolve_sample_path`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat as stat_module
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from vdc_torch.errors import ManifestError

try:  # POSIX; elsewhere saves are not locked against each other (the rename still keeps them atomic)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Seconds a save waits for another process's save of the same manifest before giving up.
DEFAULT_LOCK_TIMEOUT = 60.0


def _file_mode(target: Path) -> int:
    """Permission bits for the new file: the old manifest's, else 0666 minus the umask (read without changing it)."""
    with contextlib.suppress(OSError):
        return stat_module.S_IMODE(os.stat(target).st_mode)
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    return 0o644


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar lock file of a manifest: ``<manifest>.lock`` (left in place; it holds no data)."""
    target = Path(path)
    return target.with_name(target.name + ".lock")


#: Flags that open a lock file without following a symbolic link, or blocking on a FIFO planted in its place.
_LOCK_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def _open_lock(lock: Path, flags: int) -> int:
    """A descriptor of the regular file ``lock`` (never through a symlink); OSError otherwise."""
    fd = os.open(lock, flags | _LOCK_FLAGS, 0o666)
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "it is not a regular file", str(lock))
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(target: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<target>.lock``; wait at most ``timeout`` seconds for it.

    The lock file is opened with ``O_NOFOLLOW | O_CREAT``: a symbolic link in its place (dangling or not) is a
    :class:`ManifestError` naming it, and nothing is ever created outside the manifest's folder.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = lock_path(target)
    try:
        fd = _open_lock(lock, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        reason = "it is a symbolic link (refused: a lock is never followed)" if os.path.islink(lock) else (
            exc.strerror or str(exc))
        raise ManifestError(f"cannot save manifest {str(target)!r}: cannot open its lock file {str(lock)!r} "
                            f"({reason})") from exc
    with os.fdopen(fd, "r+b") as handle:
        if not _flock_within(handle.fileno(), fcntl.LOCK_EX, timeout, interval=0.02):
            raise ManifestError(
                f"cannot save manifest {str(target)!r}: another process has been saving it for more than "
                f"{timeout:g} s (lock file {str(lock)!r}); try again or raise lock_timeout"
            )
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _flock_within(fd: int, operation: int, timeout: float, interval: float) -> bool:
    """Take the ``flock`` ``operation`` (shared or exclusive) on ``fd``, trying every ``interval`` seconds for at
    most ``timeout`` seconds (at least once); False if it never came."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)


#: Names ``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")`` makes: 8 characters of its alphabet.
_TEMP_NAME = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
#: What every index of a sharded manifest starts with (:mod:`vdc_torch.decision.store.sharded`).
INDEX_MAGIC = b'{"format": "vdc_torch-sharded-manifest"'


def _is_our_temp_file(path: str, journal: bool) -> bool:
    """A regular file (not a link) that is empty or starts like what a save writes (SQLite, its journal, or the
    index of a sharded manifest)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, len(INDEX_MAGIC))
    except OSError:
        return False
    finally:
        os.close(fd)
    if journal:
        return not head or head.startswith(_JOURNAL_MAGIC)
    return not head or head.startswith(_SQLITE_MAGIC) or head == INDEX_MAGIC


def _remove_stale_temp_files(target: Path) -> None:
    """Temp files of saves that were killed; safe to delete because the caller holds the lock.

    Only files this library made are removed: named exactly as ``mkstemp`` names a save's temp file
    (``.<name>.<8 random characters>.tmp``, or that name plus ``-journal``), regular files (not symbolic links),
    and empty or holding what a save writes (SQLite's header, its journal's, or a sharded manifest's index). A
    user's ``.<name>.notes.tmp`` stays.
    """
    pattern = re.compile(_TEMP_NAME.format(name=re.escape(target.name)) + "(-journal)?")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not _is_our_temp_file(entry.path, journal=match.group(1) is not None):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            log.debug("removed %s, left by an interrupted save", entry.path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _shared_lock(target: Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold a shared ``flock`` on ``<target>.lock`` if it exists and can be opened (savers take it exclusively).

    Never creates the lock file and needs no write permission; without it (or after ``timeout`` seconds) the body
    runs unlocked, as before.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:  # never through a symlink, never blocking on a FIFO put there
        handle = os.fdopen(_open_lock(lock_path(target), os.O_RDONLY), "rb")
    except OSError:
        yield
        return
    with handle:
        locked = _flock_within(handle.fileno(), fcntl.LOCK_SH, timeout, interval=0.005)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- using stored paths ----------------------------------------------------------------------------------------


def _is_safe_stored_path(path: str) -> bool:
    """A stored path is an in-memory name, an absolute path, or a relative path without ``..`` or NUL."""
    if not path or "\x00" in path:
        return False
    if path.startswith("<") or os.path.isabs(path) or PureWindowsPath(path).is_absolute():
        return True
    return ".." not in PurePosixPath(path.replace("\\", "/")).parts


def resolve_sample_path(root: str | os.PathLike[str] | None, stored: str) -> Path | None:
    """The file a stored manifest path names under ``root``, or ``None`` when it must not be read.

    Only relative paths that stay lexically inside ``root`` resolve: absolute paths, ``..`` components,
    drive letters, NUL bytes and in-memory names (``<CIFAR10[3]>``) give ``None``. Symbolic links inside
    ``root`` are followed as the user laid them out.

    >>> resolve_sample_path("/data/train", "cat/001.jpg")
    PosixPath('/data/train/cat/001.jpg')
    >>> resolve_sample_path("/data/train", "../../etc/passwd") is None
    True
    """
    if not root or not stored or "\x00" in stored or stored.startswith("<"):
        return None
    posix = PurePosixPath(stored.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(stored).drive or os.path.isabs(stored):
        return None
    if any(part in ("..", "") for part in posix.parts) or not posix.parts:
        return None
    return Path(root).joinpath(*posix.parts)
