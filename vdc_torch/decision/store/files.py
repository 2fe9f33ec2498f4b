"""Files of the store: exclusive and shared locks, atomic replacement, and which stored paths may be read.

A manifest (or cache) is replaced only by an atomic rename under an exclusive lock, and only when the file there is
one of ours (a manifest, empty, or damaged); readers hold a shared lock. Stored paths are only ever resolved inside a
root the user gave (:func:`resolve_sample_path`).
"""

from __future__ import annotations

import contextlib
import logging
import os
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


@contextlib.contextmanager
def _locked(target: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<target>.lock``; wait at most ``timeout`` seconds for it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = lock_path(target)
    try:
        handle = open(lock, "a+b")  # noqa: SIM115 - closed by the `with handle` right below
    except OSError as exc:
        raise ManifestError(f"cannot save manifest {str(target)!r}: cannot open its lock file {str(lock)!r} "
                            f"({exc.strerror or exc})") from exc
    with handle:
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


def _remove_stale_temp_files(target: Path) -> None:
    """Temp files of saves that were killed; safe to delete because the caller holds the lock."""
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith((".tmp", ".tmp-journal")):
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
    try:
        handle = open(lock_path(target), "rb")  # noqa: SIM115 - closed by the `with handle` right below
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
