"""File identity: what says a file is unchanged since it was last read, without reading it."""

from __future__ import annotations

import os

#: (absolute path, size in bytes, modification time in ns).
FileKey = tuple[str, int, int]


def file_key(path: str) -> FileKey | None:
    """(absolute path, size, mtime_ns) of a file, or ``None`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), st.st_size, st.st_mtime_ns
