"""An incremental fingerprint cache: unchanged files are never decoded twice.

Entries are keyed by file identity — absolute path, size and modification time (ns) — falling back to the content
digest (BLAKE2b of the file bytes, the fingerprint's ``byte_digest``): a file whose identity misses but whose size
matches a cached entry is read (not decoded) and hashed, and when its bytes are known, the cached fingerprint is
reused and re-keyed under the new path, size and mtime. So a renamed, moved, copied or touched-but-unchanged file is
never decoded again; a file whose bytes changed is. Match results are kept too, keyed by a digest of everything the
cascade reads and its settings, in a small file of their own next to the cache (``<cache>.matches``), so a check
that only adds a result does not rewrite the fingerprints. Both are manifest files (same SQLite format, same atomic
save), so they are as crash-safe and pickle-free as a manifest.

**Damage.** One rule for every cache file and results file that cannot be used — not a manifest, corrupted, forged
(a schema or stored detail image :mod:`~vdc_torch.decision.store.manifest` refuses), of another kind, or with meta of
the wrong type (``results`` not a JSON object of results): it is *ignored* with a logged warning naming the file and
what is wrong, as a stale cache, and it is never written or deleted (it may be the user's). No ``TypeError`` or
``ValueError`` from its content leaves this module.

>>> gate = DatasetGate(reference="data/train", cache="~/.cache/vdc/fingerprints.vdc")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vdc_torch.data.files import FileKey, file_key
from vdc_torch.decision.store.manifest import load_manifest, remove_manifest, save_manifest
from vdc_torch.errors import ManifestError
from vdc_torch.fingerprints.compute import Fingerprint, FingerprintTable, Problem, compute_fingerprints
from vdc_torch.fingerprints.table import FINGERPRINT_VERSION

log = logging.getLogger(__name__)

#: How many match results (one per reference/new/config combination) the cache keeps.
MAX_RESULTS = 8
#: The ``kind`` a cache file records in its meta (a checkpoint without it is not ours to write or delete).
CACHE_KIND = "fingerprint-cache"
#: The ``kind`` of the file next to a cache that holds its match results.
RESULTS_KIND = "match-results"

#: While fingerprinting, the cache file is saved (a checkpoint) after this many newly fingerprinted samples ...
CHECKPOINT_SAMPLES = 2000
#: ... or after this many seconds, whichever comes first ...
CHECKPOINT_SECONDS = 30.0
#: ... but never sooner than this many times the last save took after it (each save rewrites the whole file, so a
#: large cache is checkpointed less often and saving stays below ~1/10 of the run).
CHECKPOINT_MIN_GAP_FACTOR = 10.0
#: Environment variables overriding :data:`CHECKPOINT_SAMPLES` and :data:`CHECKPOINT_SECONDS` (tests force tiny
#: checkpoints with them).
CHECKPOINT_SAMPLES_ENV = "VDC_CHECKPOINT_SAMPLES"
CHECKPOINT_SECONDS_ENV = "VDC_CHECKPOINT_SECONDS"


def checkpoint_path(output: str | os.PathLike[str]) -> Path:
    """Where ``vdc index`` keeps the fingerprints of an unfinished run writing ``output``: ``<output>.partial``."""
    target = Path(os.path.expanduser(str(output)))
    return target.with_name(target.name + ".partial")


class FingerprintCache:
    """Fingerprints of files seen before, loaded from and saved to one cache file.

    ``strict``: only a file written as a fingerprint cache is used; any other manifest is ignored (and never
    written or deleted), as an unreadable file always is.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = False) -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self._table = FingerprintTable.empty()
        self._results: dict[str, Any] = {}
        self.writable = True
        if self.path.exists() or self.path.is_symlink():
            try:
                table, meta = load_manifest(self.path)
                if strict and meta.get("kind") != CACHE_KIND:
                    raise ManifestError(f"{str(self.path)!r} is a manifest, not a fingerprint cache")
                if meta.get("fingerprint_version") != FINGERPRINT_VERSION:  # a legacy version: computed afresh
                    if meta.get("kind") != CACHE_KIND:
                        raise ManifestError(f"{str(self.path)!r} holds fingerprints of version "
                                            f"{meta.get('fingerprint_version')!r}, not {FINGERPRINT_VERSION}")
                    log.info("fingerprint cache %s is of fingerprint version %s: its samples are fingerprinted "
                             "again and it is rewritten", self.path, meta.get("fingerprint_version"))
                    table, meta = FingerprintTable.empty(), {}
                self._table, self._results = table, _results_in(meta, self.path)  # (older caches kept them here)
            except ManifestError as exc:
                self.writable = False  # never overwrite a file we cannot read: it may be the user's
                log.warning("ignoring the fingerprint cache %s (it will not be written either; delete it to use "
                            "this path): %s", self.path, exc)
        self._dirty = False
        self._results_dirty = bool(self._results)  # moved into their own file on the next save
        #: Where the match results are kept: ``<cache>.matches``.
        self.results_path = self.path.with_name(self.path.name + ".matches")
        self._results_writable = self.writable
        if self.writable and (self.results_path.exists() or self.results_path.is_symlink()):
            try:
                _, meta = load_manifest(self.results_path)
                if meta.get("kind") != RESULTS_KIND:
                    raise ManifestError(f"{str(self.results_path)!r} is a manifest, not match results")
                self._results, self._results_dirty = _results_in(meta, self.results_path), False
            except ManifestError as exc:
                self._results_writable = False
                log.warning("ignoring the match results %s (not written either): %s", self.results_path, exc)
        self._by_key: dict[FileKey, int] = {}
        self._by_digest: dict[bytes, int] = {}
        self._sizes: set[int] = set()
        self._index(0)
        self._pending: dict[str, Fingerprint] = {}  # by absolute path: adding a file twice keeps the newest
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

    def count_known(self, paths: Iterable[str]) -> int:
        """How many of ``paths`` the cache holds unchanged (same path, size and mtime); not counted as hits."""
        return sum(1 for path in paths if (key := file_key(path)) is not None and key in self._by_key)

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
            self._pending[os.path.abspath(path)] = fingerprint

    def learn(self, table: FingerprintTable) -> int:
        """Add every row of ``table`` (paths: the files' paths) the cache does not hold unchanged; returns how many."""
        added = 0
        for row, path in enumerate(table.paths):
            size, mtime = table.file_size[row], table.mtime_ns[row]
            if size is None or mtime is None or (os.path.abspath(path), int(size), int(mtime)) in self._by_key:
                continue
            self.add(path, table.fingerprint(row))
            added += 1
        return added

    def result(self, key: str) -> Any:
        """A stored computation result (JSON value) for ``key``, or ``None``."""
        return self._results.get(key)

    def store_result(self, key: str, value: Any, keep: int = MAX_RESULTS) -> None:
        """Remember a JSON-able result under ``key`` (the newest ``keep`` results are kept); call :meth:`save`."""
        self._results.pop(key, None)
        self._results[key] = value
        while len(self._results) > keep:
            self._results.pop(next(iter(self._results)))
        self._results_dirty = True

    def save(self) -> None:
        """Merge new entries into the cache file atomically (entries for the same path are replaced); new match
        results go to :attr:`results_path` alone."""
        if not self.writable:
            return
        if self._pending:
            pending, self._pending = self._pending, {}
            keep = [i for i, p in enumerate(self._table.paths) if p not in pending]
            added = FingerprintTable.from_rows(np.arange(len(pending)), list(pending), [None] * len(pending),
                                               list(pending.values()))
            self._table = FingerprintTable.concat([self._table.rows(keep), added])
            self._table.sample_index = np.arange(len(self._table), dtype=np.int64)
            self._by_key, self._by_digest, self._sizes = {}, {}, set()
            self._index(0)
            self._dirty = True  # until written: a save interrupted here is done again by the next one
        if self._dirty:
            save_manifest(self.path, self._table, {"kind": CACHE_KIND})
            self._dirty = False
        if self._results_dirty and self._results_writable:
            save_manifest(self.results_path, FingerprintTable.empty(), {"kind": RESULTS_KIND, "results": self._results})
            self._results_dirty = False

    def discard(self) -> None:
        """Delete the cache file, once its work is done (``vdc index``'s checkpoint after the manifest is saved).

        A file this cache could not read, or did not write, is never deleted.
        """
        for path, ours in ((self.path, self.writable), (self.results_path, self._results_writable)):
            if ours and not path.is_symlink():
                try:
                    remove_manifest(path)
                except (ManifestError, OSError) as exc:
                    log.warning("left %s in place: %s", path, exc)
        self._table, self._pending, self._dirty = FingerprintTable.empty(), {}, False
        self._results, self._results_dirty = {}, False
        self._by_key, self._by_digest, self._sizes = {}, {}, set()


def _results_in(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The match results a cache file's meta holds: a JSON object by key (absent: none); else ManifestError."""
    results = meta.get("results", {})
    if not isinstance(results, dict) or not all(isinstance(k, str) for k in results):
        raise ManifestError(f"{str(path)!r} is corrupted: its meta 'results' is a {type(results).__name__}, "
                            "not a JSON object of match results")
    return dict(results)


def _env_number(name: str, default: float) -> float:
    """A positive number from the environment variable ``name``, else ``default`` (a bad value is warned about)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
        if value > 0:
            return value
    except ValueError:
        pass
    log.warning("ignoring %s=%r: not a positive number (using %g)", name, text, default)
    return default


class CacheCheckpoint:
    """An ``on_chunk`` hook for :func:`vdc_torch.fingerprint.compute_fingerprints` that checkpoints a cache.

    Each chunk of new fingerprints is added to ``cache``; the cache file is saved (atomically) once
    ``every_samples`` new samples arrived or ``every_seconds`` passed since the last save, whichever comes first
    (defaults: :data:`CHECKPOINT_SAMPLES`, :data:`CHECKPOINT_SECONDS`, or their environment variables), but never
    sooner than :data:`CHECKPOINT_MIN_GAP_FACTOR` times the last save's duration after it. A run killed at any
    moment thus loses at most the samples since the last checkpoint.
    """

    def __init__(self, cache: FingerprintCache, *, every_samples: int | None = None,
                 every_seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.every_samples = max(1, int(every_samples if every_samples is not None
                                        else _env_number(CHECKPOINT_SAMPLES_ENV, CHECKPOINT_SAMPLES)))
        self.every_seconds = float(every_seconds if every_seconds is not None
                                   else _env_number(CHECKPOINT_SECONDS_ENV, CHECKPOINT_SECONDS))
        self._clock = clock
        self._last = clock()
        self._min_gap = 0.0
        self._unsaved = 0
        #: Checkpoints written so far.
        self.checkpoints = 0

    def __call__(self, chunk: FingerprintTable) -> None:
        """Take a chunk of new fingerprints (paths: the files' paths); save when a checkpoint is due."""
        for row, path in enumerate(chunk.paths):
            self.cache.add(path, chunk.fingerprint(row))
        self._unsaved += len(chunk)
        since = self._clock() - self._last
        if (self._unsaved >= self.every_samples or since >= self.every_seconds) and since >= self._min_gap:
            self.flush()

    def flush(self) -> None:
        """Save what arrived since the last checkpoint now (nothing to save: no write)."""
        if not self._unsaved or not self.cache.writable:
            return
        started = self._clock()
        self.cache.save()
        self._last = self._clock()
        self._min_gap = CHECKPOINT_MIN_GAP_FACTOR * (self._last - started)
        self._unsaved = 0
        self.checkpoints += 1
        log.debug("checkpoint %d: %d fingerprints in %s", self.checkpoints, len(self.cache), self.cache.path)


def fingerprint_with_cache(
    dataset: Any,
    *,
    cache: FingerprintCache | None = None,
    on_chunk: Callable[[FingerprintTable], None] | None = None,
    **options: Any,
) -> tuple[FingerprintTable, list[Problem]]:
    """:func:`~vdc_torch.fingerprints.compute.compute_fingerprints` through a cache: unchanged files come from it
    (not decoded), and it learns and saves the new fingerprints. ``options`` go to ``compute_fingerprints``."""
    table, problems = compute_fingerprints(dataset, known=cache, on_chunk=on_chunk, **options)
    if cache is not None and dataset.is_file_backed:
        cache.learn(table)
        cache.save()
    return table, problems

