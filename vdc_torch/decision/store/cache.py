"""An incremental fingerprint cache: unchanged files are never decoded twice.

Entries are keyed by file identity — absolute path, size and modification time (ns) — falling back to the content
digest (BLAKE2b of the file bytes, the fingerprint's ``byte_digest``): a file whose identity misses but whose size
matches a cached entry is read (not decoded) and hashed, and when its bytes are known, the cached fingerprint is
reused and re-keyed under the new path, size and mtime. So a renamed, moved, copied or touched-but-unchanged file is
never decoded again; a file whose bytes changed is. Match results are kept too, keyed by a digest of the fingerprints
and settings. The cache is a manifest file (same SQLite format, same atomic save), so it is as crash-safe and
pickle-free as a manifest.

>>> gate = DatasetGate(reference="data/train", cache="~/.cache/vdc/fingerprints.vdc")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vdc_torch.errors import ManifestError
from vdc_torch.fingerprints.compute import Fingerprint, FingerprintTable
from vdc_torch.decision.store.manifest import load_manifest, save_manifest

log = logging.getLogger(__name__)

FileKey = tuple[str, int, int]
#: How many match results (one per reference/new/config combination) the cache keeps.
MAX_RESULTS = 8


def file_key(path: str) -> FileKey | None:
    """(absolute path, size, mtime_ns) of a file, or ``None`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


class FingerprintCache:
    """Fingerprints of files seen before, loaded from and saved to one cache file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self._table = FingerprintTable.empty()
        self._results: dict[str, Any] = {}
        self.writable = True
        if self.path.exists():
            try:
                self._table, meta = load_manifest(self.path)
                self._results = dict(meta.get("results", {}))
            except ManifestError as exc:
                self.writable = False  # never overwrite a file we cannot read: it may be the user's
                log.warning("ignoring the fingerprint cache %s (it will not be written either): %s", self.path, exc)
        self._dirty = False
        self._by_key: dict[FileKey, int] = {}
        self._by_digest: dict[bytes, int] = {}
        self._sizes: set[int] = set()
        self._index(0)
        self._pending: list[tuple[str, Fingerprint]] = []
        #: Files found by path, size and mtime.
        self.hits = 0
        #: Files found by the digest of their bytes (renamed, moved, copied or touched; read but not decoded).
        self.digest_hits = 0

    def _index(self, start: int) -> None:
        t = self._table
        for row in range(start, len(t)):
            if t.file_size[row] is not None and t.mtime_ns[row] is not None:
                self._by_key[(t.paths[row], int(t.file_size[row]), int(t.mtime_ns[row]))] = row
            if t.byte_digest[row] is not None and t.file_size[row] is not None:
                self._by_digest[t.byte_digest[row]] = row
                self._sizes.add(int(t.file_size[row]))

    def __len__(self) -> int:
        return len(self._table) + len(self._pending)

    @property
    def table(self) -> FingerprintTable:
        """The cached fingerprints (rows addressed by :meth:`lookup_row`)."""
        return self._table

    def lookup_row(self, key: FileKey | None) -> int | None:
        """The cache row of an unchanged file, or ``None``."""
        row = self._by_key.get(key) if key is not None else None
        if row is not None:
            self.hits += 1
        return row

    def known_content(self) -> tuple[frozenset[int], frozenset[bytes]]:
        """File sizes and byte digests of the cached entries (for the content-digest fallback)."""
        return frozenset(self._sizes), frozenset(self._by_digest)

    def lookup_digest(self, byte_digest: bytes | None) -> int | None:
        """The cache row of a file with exactly these bytes (renamed, moved or touched), or ``None``."""
        row = self._by_digest.get(byte_digest) if byte_digest is not None else None
        if row is not None:
            self.digest_hits += 1
        return row

    def add(self, path: str, fingerprint: Fingerprint) -> None:
        """Remember the fingerprint of a file just computed (written on :meth:`save`)."""
        if fingerprint.byte_digest is not None and fingerprint.file_size is not None:
            self._pending.append((os.path.abspath(path), fingerprint))

    def result(self, key: str) -> Any:
        """A stored computation result (JSON value) for ``key``, or ``None``."""
        return self._results.get(key)

    def store_result(self, key: str, value: Any, keep: int = MAX_RESULTS) -> None:
        """Remember a JSON-able result under ``key`` (the newest ``keep`` results are kept); call :meth:`save`."""
        self._results.pop(key, None)
        self._results[key] = value
        while len(self._results) > keep:
            self._results.pop(next(iter(self._results)))
        self._dirty = True

    def save(self) -> None:
        """Merge new entries into the cache file atomically (entries for the same path are replaced)."""
        if not self.writable:
            return
        if not self._pending:
            if self._dirty:
                save_manifest(self.path, self._table, {"kind": "fingerprint-cache", "results": self._results})
                self._dirty = False
            return
        new_paths = {p for p, _ in self._pending}
        keep = [i for i, p in enumerate(self._table.paths) if p not in new_paths]
        added = FingerprintTable.from_rows(
            np.arange(len(self._pending)), [p for p, _ in self._pending], [None] * len(self._pending),
            [f for _, f in self._pending],
        )
        self._table = FingerprintTable.concat([self._table.rows(keep), added])
        self._table.sample_index = np.arange(len(self._table), dtype=np.int64)
        self._pending = []
        self._by_key, self._by_digest, self._sizes = {}, {}, set()
        self._index(0)
        save_manifest(self.path, self._table, {"kind": "fingerprint-cache", "results": self._results})
        self._dirty = False
