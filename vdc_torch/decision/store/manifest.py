"""The persisted reference: one SQLite file holding the fingerprints, labels, paths and a format version.

No pickle anywhere: every column is a plain SQLite value (text, integer or bytes), and the meta values are JSON.

**Crash safety.** :func:`save_manifest` takes an exclusive lock on the sidecar ``<manifest>.lock`` (``flock``; a
second saver waits up to ``lock_timeout`` seconds, then gets a clear :class:`ManifestError`), writes a complete new
file beside the target (``.<name>.<random>.tmp``, hidden), fsyncs it, renames it over the old one and fsyncs the
folder. A process killed at any moment therefore leaves either the previous manifest or the new one, never a mix;
temp files left by killed savers are never read as manifests and are removed by the next save. Loading needs no
lock: the rename is atomic, so a reader sees one whole file. ``save_manifest`` refuses to overwrite a file that is
not a manifest (a photo, another application's database).

**Untrusted input.** Manifests travel between machines and people, so :func:`load_manifest` treats the file as
untrusted: it is opened read-only and immutable (SQLite creates no journal or lock files beside it), only the two
expected tables are read, every value is type- and size-checked, a checksum over all content (written in the
``checksum`` table) must match, and every failure — not SQLite, wrong application, unknown version, truncated,
bit-flipped — is one :class:`ManifestError` naming the file and the reason. No SQLite, numpy or JSON exception
leaves this module (the reading itself is :mod:`~vdc_torch.decision.store.reading`).

**Paths.** A stored path is the sample's path relative to its dataset root (``cls/img.jpg``), or, for a sample
that had no root, its absolute path or an in-memory name such as ``<CIFAR10[3]>``. Paths are identifiers for
reports and caches: loading never opens them. Code that wants to read a reference file must go through
:func:`resolve_sample_path`, which only returns paths lexically inside the root it is given (no absolute paths, no
``..``). A manifest whose relative paths climb out of their root (``../../etc/passwd``) is refused on load.
File names that are not valid UTF-8 are stored losslessly (as their raw bytes) and come back as the same ``str``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat as stat_module
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vdc_torch.collective import all_gather_json, rank_and_world
from vdc_torch.decision.store import sharded as _sharded
from vdc_torch.decision.store.concat import concat_tables
from vdc_torch.decision.store.format import (
    _DIGEST_SIZE,
    _RESERVED_META,
    _ROWS_PER_CHUNK,
    _SCHEMA_V2,
    _SCHEMAS,
    _SQLITE_MAGIC,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    PART_BYTES,
    _content_digest_v2,
)
from vdc_torch.decision.store.reading import _check_file, _connect_readonly, _load_once, _Replaced
from vdc_torch.decision.store.schema import verify_schema
from vdc_torch.decision.store.sharded import (
    INDEX_FORMAT,
    INDEX_VERSION,
    ShardIndex,
    ShardMissing,
    ShardRecord,
    check_shard_folder,
    is_index_file,
    looks_like_index,
    read_index,
    remove_unnamed_shards,
    shard_folder,
    shard_path,
)
from vdc_torch.decision.store.stored import part_digest
from vdc_torch.errors import ManifestError
from vdc_torch.fingerprints.table import (
    CROP_BOXES,
    FINGERPRINT_VERSION,
    LEGACY_DIGEST_ROWS,
    LEGACY_FINGERPRINT_VERSIONS,
    THUMB_SIDE,
    FingerprintTable,
)

try:  # POSIX; elsewhere saves are not locked against each other (the rename still keeps them atomic)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from vdc_torch.decision.store.files import (  # noqa: F401 - re-exported where they were before the split
    DEFAULT_LOCK_TIMEOUT,
    INDEX_MAGIC,
    _file_mode,
    _flock_within,
    _fsync_dir,
    _is_safe_stored_path,
    _locked,
    _remove_stale_temp_files,
    _shared_lock,
    lock_path,
    resolve_sample_path,
)

log = logging.getLogger(__name__)


# -- saving ----------------------------------------------------------------------------------------------------


def save_manifest(
    path: str | os.PathLike[str],
    table: FingerprintTable,
    meta: dict[str, Any],
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Path:
    """Atomically write ``table`` and ``meta`` (JSON-able values) to ``path``; returns the path.

    >>> save_manifest("ckpt/reference.vdc", gate.reference_table, {"reference_root": "data/train"})  # doctest: +SKIP
    """
    target = Path(path)
    if target.is_symlink():  # save through a link (e.g. latest.vdc -> v3.vdc) instead of replacing the link
        target = Path(os.path.realpath(target))
    name = str(target)
    _check_shapes(table, name)
    try:
        meta_rows = _meta_rows(meta, len(table))
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"cannot save manifest {name!r}: meta is not JSON-serialisable ({exc})") from exc
    with _os_errors_named("save manifest", name):
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_replaceable(target)  # a refused file gets no lock file beside it (checked again under the lock)
        with _locked(target, lock_timeout):
            _check_replaceable(target)
            _remove_stale_temp_files(target)
            was_sharded = is_index_file(target)
            _write_file(target, meta_rows, table, name, _file_mode(target))
            if was_sharded:  # its shards are named by no index any more
                remove_unnamed_shards(shard_folder(target), set())
    return target


def _write_file(target: Path, meta_rows: list[tuple[str, str]], table: FingerprintTable, name: str,
                mode: int) -> str:
    """Write a complete manifest beside ``target``, fsync it, rename it over ``target`` and fsync the folder.

    The caller holds the lock. Returns the content checksum written into the file.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        checksum = _write_database(tmp_name, meta_rows, table, name)
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)  # mkstemp makes 0600; a manifest is a normal shared file
        os.replace(tmp_name, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, sqlite3.Error):
            raise ManifestError(f"cannot save manifest {name!r}: {exc}") from exc
        raise
    return checksum


@contextlib.contextmanager
def _os_errors_named(action: str, name: str) -> Iterator[None]:
    """Turn an OSError (no permission, a parent that is a file, disk full) into a ManifestError naming the path."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename!s})" if exc.filename and str(exc.filename) != name else ""
        raise ManifestError(f"cannot {action} {name!r}: {exc.strerror or exc}{where}") from exc


def remove_manifest(path: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> bool:
    """Delete a file written by :func:`save_manifest`, with the temp files of killed saves and its lock file.

    Used for files that are vdc_torch's own (a finished run's checkpoint). Anything that is not a manifest is left
    alone (:class:`ManifestError`). Returns whether a file was deleted.
    """
    target = Path(path)
    lock = lock_path(target)
    if not target.exists() and not lock.exists() and not lock.is_symlink():
        return False
    with _os_errors_named("remove manifest", str(target)):
        _check_replaceable(target)  # a refused file gets no lock file beside it (checked again under the lock)
        with _locked(target, lock_timeout):
            _check_replaceable(target)  # the same files a save may replace: manifests, empty or damaged ones
            _remove_stale_temp_files(target)
            if is_index_file(target):
                remove_unnamed_shards(shard_folder(target), set())
            removed = target.exists()
            target.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)  # while held: a saver that was waiting on it writes a whole file anyway
    _fsync_dir(target.parent)
    return removed


@dataclass(frozen=True)
class ShardedSave:
    """What :func:`save_sharded_manifest` did."""

    origin: ManifestOrigin
    appended: bool  # True: only the rows after ``first_row`` were written (one new shard, or none)
    first_row: int  # the first row of ``table`` written now (0 for a fresh index)
    shift: int  # added to the written rows' sample_index so they follow every stored one (another job appended)
    shards: int  # shards the index names now
    bytes_written: int  # of the new shard and the index


def save_sharded_manifest(
    path: str | os.PathLike[str],
    table: FingerprintTable,
    meta: dict[str, Any],
    *,
    append_after: tuple[str, int] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> ShardedSave:
    """Write ``table`` as a sharded manifest at ``path`` (see :mod:`vdc_torch.decision.store.sharded`).

    ``append_after=(lineage, rows)``: the first ``rows`` rows of ``table`` are stored already in the index of that
    lineage. When the index at ``path`` is of that lineage (re-read under the lock, so another job's appends since
    are kept), only the later rows are written, as one new shard, and the index is replaced by one naming it too;
    their ``sample_index`` is shifted past every stored one if another job appended meanwhile (``shift``).
    Otherwise (no such index there: a fresh path, a single-file manifest, another lineage, a damaged index) a
    fresh index is written, naming one shard of every row. The shard is written and fsynced before the index is
    replaced (atomically, under the lock on ``<path>.lock``), so a process killed at any point leaves the previous
    version loadable. Shards no index names any more (and temp files of killed saves) are removed — only files
    named as this library names them and holding what it writes.
    """
    target, meta = _target_and_meta(path, meta)
    name = str(target)
    _check_shapes(table, name)
    with _os_errors_named("save manifest", name):
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_replaceable(target)  # a refused file gets no lock file beside it (checked again under the lock)
        with _locked(target, lock_timeout):
            _check_replaceable(target)
            _remove_stale_temp_files(target)
            folder = shard_folder(target)
            check_shard_folder(folder, repr(name))
            current = None
            if is_index_file(target):
                try:
                    current, _ = read_index(target, repr(name))
                except ManifestError as exc:
                    log.warning("%s; writing a fresh index over it", exc)  # a damaged index: rewriting repairs it
            written = 0
            if (append_after is not None and current is not None and current.lineage == append_after[0]
                    and 0 <= append_after[1] <= len(table)):
                first_row, shift = append_after[1], 0
                records = list(current.shards)
                if first_row < len(table):
                    added = table.rows(range(first_row, len(table)))
                    shift = max(0, current.last_sample_index + 1 - int(added.sample_index.min()))
                    if shift:
                        added.sample_index = added.sample_index + shift
                    records.append(_write_shard(folder, added, target))
                    written += records[-1].bytes
                meta = {**meta, **_with_legacy_rows(current, only_key=True)}
                index = ShardIndex(FINGERPRINT_VERSION, current.lineage, meta, records)
                if len(records) > len(current.shards) or current.meta != meta:
                    _sharded.write_index(target, index)
                    written += target.stat().st_size
                appended = True
            else:
                first_row, shift, appended = 0, 0, False
                records = [_write_shard(folder, table, target)] if len(table) else []
                written += sum(r.bytes for r in records)
                index = ShardIndex(FINGERPRINT_VERSION, _sharded.new_lineage(), meta, records)
                _sharded.write_index(target, index)
                written += target.stat().st_size
            remove_unnamed_shards(folder, {r.file for r in index.shards})
    origin = ManifestOrigin(str(target), True, index.lineage, len(table))
    return ShardedSave(origin, appended, first_row, shift, len(index.shards), written)


def save_manifest_of_ranks(
    path: str | os.PathLike[str],
    table: FingerprintTable,
    meta: dict[str, Any],
    *,
    append_after: tuple[str, int] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> ShardedSave:
    """Write a reference split across ``torch.distributed`` ranks as a sharded manifest at ``path``: one shard per
    rank (this rank's ``table``), named by one index in rank order (collective; every rank calls it).

    ``append_after=(lineage, rows)`` (the same lineage on every rank, ``rows`` this rank's): the first ``rows`` rows
    of each rank's ``table`` are stored already in the index of that lineage. When the index at ``path`` is of that
    lineage (read under the lock, so another job's appends since are kept), each rank writes only its later rows,
    as one new shard, and the index names them after the shards it named (rank order); their ``sample_index`` is
    shifted past every stored one if another job appended meanwhile (``shift``, the same on every rank). Otherwise
    a fresh index is written naming one shard of each rank's whole ``table``.

    Rank 0 holds the manifest's lock throughout, so no other saver sees the half-written set; each rank writes and
    fsyncs its own shard; rank 0 then replaces the index atomically and removes the shards no index names. A rank
    that fails (or dies before its shard is named) leaves the previous version in place: the index is written
    only after every shard is complete, and an error on any rank is raised on every rank as a ManifestError.
    The index names shards in rank order, so a single process loads the rows rank 0's first.
    """
    rank, world = rank_and_world()
    target, meta = _target_and_meta(path, meta)  # the same on every rank: a bad meta fails on all of them
    name = str(target)
    folder = shard_folder(target)

    def agree(error: str | None) -> None:  # every rank learns every rank's error (no rank waits for ever)
        errors = [e for e in all_gather_json(error) if e]
        if errors:
            raise ManifestError(f"cannot save manifest {name!r} from {world} ranks: {errors[0]}")

    with contextlib.ExitStack() as stack:
        error, current = None, None
        if rank == 0:
            try:
                with _os_errors_named("save manifest", name):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _check_replaceable(target)  # a refused file gets no lock file (checked again under the lock)
                    stack.enter_context(_locked(target, lock_timeout))
                    _check_replaceable(target)
                    _remove_stale_temp_files(target)
                    check_shard_folder(folder, repr(name))
                    if not folder.is_dir():
                        folder.mkdir()
                        _fsync_dir(folder.parent)
                    if append_after is not None and is_index_file(target):
                        try:
                            current, _ = read_index(target, repr(name))
                        except ManifestError as exc:
                            log.warning("%s; writing a fresh index over it", exc)  # rewriting repairs it
            except ManifestError as exc:
                error = str(exc)
        agree(error)
        # whether every rank can append to the index rank 0 read, and past which sample index the added rows go
        first_row = append_after[1] if append_after is not None and 0 <= append_after[1] <= len(table) else -1
        added_from = int(table.sample_index[first_row:].min()) if 0 <= first_row < len(table) else None
        asked = all_gather_json([append_after[0] if append_after is not None else None, first_row, added_from])
        appending, shift = False, 0
        if current is not None and all(lineage == current.lineage and rows >= 0 for lineage, rows, _ in asked):
            lowest = min((a for _, _, a in asked if a is not None), default=current.last_sample_index + 1)
            appending, shift = True, max(0, current.last_sample_index + 1 - lowest)
        appending, shift = all_gather_json([appending, shift])[0]  # rank 0's answer: only it read the index
        record, error = None, None
        first_row = first_row if appending else 0
        try:
            _check_shapes(table, name)
            with _os_errors_named("save manifest", name):
                part = table.rows(range(first_row, len(table))) if appending else table
                if shift:
                    part.sample_index = part.sample_index + shift
                record = _write_shard(folder, part, target) if len(part) or not appending else None
        except ManifestError as exc:
            error = f"rank {rank}: {exc}"
        records = all_gather_json(None if record is None else record.to_json())
        agree(error)
        error, stored = None, None
        if rank == 0:
            try:
                with _os_errors_named("save manifest", name):
                    named = [ShardRecord(**r) for r in records if r is not None and r["samples"]]
                    if appending and current is not None:
                        index = ShardIndex(FINGERPRINT_VERSION, current.lineage,
                                           {**meta, **_with_legacy_rows(current, only_key=True)},
                                           [*current.shards, *named])
                    else:
                        index = ShardIndex(FINGERPRINT_VERSION, _sharded.new_lineage(), meta, named)
                    rewrite = not appending or named or current is None or current.meta != index.meta
                    if rewrite:
                        _sharded.write_index(target, index)
                    remove_unnamed_shards(folder, {r.file for r in index.shards})
                    stored = [index.lineage, len(index.shards), target.stat().st_size if rewrite else 0]
            except ManifestError as exc:
                error = str(exc)
        agree(error)
        lineage, shards, index_bytes = all_gather_json(stored)[0]
    if shift:  # stored past another job's rows: so are they here
        table.sample_index[first_row:] += shift
    written = (record.bytes if record is not None else 0) + (index_bytes if rank == 0 else 0)
    origin = ManifestOrigin(str(target), True, lineage, len(table))
    return ShardedSave(origin, bool(appending), first_row, int(shift), int(shards), written)


def _target_and_meta(path: str | os.PathLike[str], meta: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The file a sharded save writes (through a symbolic link, not over it) and ``meta`` as the index stores it:
    reserved keys dropped, round-tripped through JSON (a value JSON cannot hold is a ManifestError naming it)."""
    target = Path(path)
    if target.is_symlink():  # save through a link (e.g. latest.vdc -> v3.vdc) instead of replacing the link
        target = Path(os.path.realpath(target))
    cleaned = {str(k): v for k, v in meta.items() if k not in _RESERVED_META}
    try:
        cleaned = json.loads(json.dumps(cleaned, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"cannot save manifest {str(target)!r}: meta is not JSON-serialisable ({exc})") from exc
    return target, cleaned


def _with_legacy_rows(index: ShardIndex, only_key: bool = False) -> dict[str, Any]:
    """``index.meta`` with :data:`LEGACY_DIGEST_ROWS` set to every row when the index is of a legacy fingerprint
    version (kept from its meta otherwise), for an index rewritten at today's version; ``only_key``: just that key."""
    meta = dict(index.meta)
    if index.fingerprint_version in LEGACY_FINGERPRINT_VERSIONS:
        meta[LEGACY_DIGEST_ROWS] = max(int(meta.get(LEGACY_DIGEST_ROWS, 0) or 0), index.samples)
    if only_key:
        return {LEGACY_DIGEST_ROWS: meta[LEGACY_DIGEST_ROWS]} if LEGACY_DIGEST_ROWS in meta else {}
    return meta


def _write_shard(folder: Path, table: FingerprintTable, index_path: Path) -> ShardRecord:
    """A new shard file of ``table`` in ``folder`` (named so no name repeats), fsynced; its index record."""
    if not folder.is_dir():
        folder.mkdir()
        _fsync_dir(folder.parent)
    file = _sharded.new_shard_name()
    target = folder / file
    meta_rows = _meta_rows({"shard_of": index_path.name}, len(table))
    checksum = _write_file(target, meta_rows, table, str(target), _file_mode(index_path))
    rows = table.sample_index
    first, last = (int(rows.min()), int(rows.max())) if len(table) else (0, -1)
    return ShardRecord(file, len(table), first, last, os.stat(target).st_size, checksum)


def compact_manifest(path: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Path:
    """Merge the shards of the sharded manifest at ``path`` into one, atomically; returns the path.

    Under the manifest's lock: every shard is read (and checked against the index), one new shard of all rows is
    written and fsynced, the index is replaced by one naming only it (same lineage and meta, so gates that loaded
    the manifest still append to it), then shards no index names are removed, with the temp files and shards that
    killed saves left behind (only files named and made as this library makes them). A single-file manifest is
    already compact: it is left as it is.

    >>> compact_manifest("ckpt/reference.vdc")  # doctest: +SKIP
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    name = str(target)
    with _os_errors_named("compact manifest", name):
        with _locked(target, lock_timeout):
            if not is_index_file(target):
                _check_file(target, repr(name))  # missing, not a manifest: a clear error; a single file: done
                return target
            _remove_stale_temp_files(target)
            index, _ = read_index(target, repr(name))
            folder = shard_folder(target)
            check_shard_folder(folder, repr(name))
            if len(index.shards) > 1:
                table, _, _ = _load_sharded_once(target, repr(name))  # under the lock: no save runs meanwhile
                index = ShardIndex(FINGERPRINT_VERSION, index.lineage, _with_legacy_rows(index),
                                   [_write_shard(folder, table, target)])
                del table  # the old shards' files are closed once nothing reads them
                _sharded.write_index(target, index)
            remove_unnamed_shards(folder, {r.file for r in index.shards})
    return target


def manifest_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """How a manifest is stored: ``kind`` (``single-file`` or ``sharded``), ``shards`` and ``bytes`` on disk."""
    source = Path(path)
    name = repr(str(source))
    if not _is_index(source):
        _check_file(source, name)
        return {"kind": "single-file", "shards": 1, "bytes": os.path.getsize(source)}
    index, data = read_index(source, name)
    return {"kind": "sharded", "shards": len(index.shards),
            "bytes": len(data) + sum(r.bytes for r in index.shards)}


def _write_database(tmp_name: str, meta_rows: list[tuple[str, str]], table: FingerprintTable, name: str) -> str:
    connection = sqlite3.connect(tmp_name)
    try:
        # The temp file is fsynced and renamed as a whole, so SQLite's journal would only add a stray file.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.executescript(_SCHEMA_V2)
        connection.executemany("INSERT INTO meta VALUES (?, ?)", meta_rows)
        described = []
        for column, dtype, shape, chunks in _encoded_columns(table, name):
            parts = []
            pending = bytearray()

            def flush(data: bytes, column: str = column, parts: list[Any] = parts) -> None:
                digest = part_digest(data)
                connection.execute("INSERT INTO parts (name, part, data, digest) VALUES (?, ?, ?, ?)",
                                   (column, len(parts), data, digest))
                parts.append([len(parts), len(data), digest])

            for chunk in chunks:
                pending += chunk
                while len(pending) >= PART_BYTES:
                    flush(bytes(pending[:PART_BYTES]))
                    del pending[:PART_BYTES]
            if pending:
                flush(bytes(pending))
            connection.execute("INSERT INTO columns VALUES (?, ?, ?)", (column, dtype, json.dumps(list(shape()))))
            described.append([column, dtype, list(shape()), parts])
        checksum = _content_digest_v2(meta_rows, described)
        connection.execute("INSERT INTO checksum VALUES ('content', ?)", (checksum,))
        connection.commit()
    finally:
        connection.close()
    return checksum




def _check_shapes(table: FingerprintTable, name: str) -> None:
    n = len(table)
    thumbs_shape = tuple(table.thumbs.shape)
    crops_shape = tuple(np.shape(table.crop_hashes))
    if thumbs_shape != (n, THUMB_SIDE, THUMB_SIDE, 3) or crops_shape != (n, len(CROP_BOXES)):
        raise ManifestError(
            f"cannot save manifest {name!r}: the table's thumbs {thumbs_shape} or crop hashes {crops_shape} do not "
            f"match its {n} rows"
        )


def _text_bytes(value: str, name: str) -> bytes:
    """A string as UTF-8; a file name that is not valid UTF-8 (surrogate-escaped) as its raw bytes."""
    try:
        return str(value).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ManifestError(f"cannot save manifest {name!r}: {value!r} cannot be stored as text ({exc})") from exc


ColumnSpec = tuple[str, str, Any, Any]


def _encoded_columns(table: FingerprintTable, name: str) -> Iterator[ColumnSpec]:
    """``(column, dtype, shape(), chunks)`` of every stored column; large columns are produced chunk by chunk."""
    from vdc_torch.search.cascade import table_coarse_vectors

    n = len(table)
    k = len(CROP_BOXES)

    def array(column: str, values: Any, dtype: str) -> ColumnSpec:
        data = np.ascontiguousarray(np.asarray(values).astype(dtype, copy=False))
        return column, dtype, lambda: data.shape, [data.tobytes()]

    def texts(column: str, values: Sequence[Any], optional: bool) -> Iterator[ColumnSpec]:
        encoded = [b"" if v is None else _text_bytes(v, name) for v in values]
        yield array(f"{column}.data", np.frombuffer(b"".join(encoded), np.uint8), "|u1")
        yield array(f"{column}.offsets", np.cumsum([0] + [len(b) for b in encoded]), "<i8")
        if optional:
            yield array(f"{column}.present", [v is not None for v in values], "|b1")

    def optional_ints(column: str, values: Sequence[Any]) -> Iterator[ColumnSpec]:
        yield array(column, [0 if v is None else int(v) for v in values], "<i8")
        yield array(f"{column}.present", [v is not None for v in values], "|b1")

    def rows_of(values: Any, dtype: str, row_shape: tuple[int, ...]) -> Iterator[bytes]:
        for start in range(0, n, _ROWS_PER_CHUNK):
            chunk = np.asarray(values[start : start + _ROWS_PER_CHUNK])
            yield np.ascontiguousarray(chunk.astype(dtype, copy=False)).reshape(-1, *row_shape).tobytes()

    def coarse_chunks() -> Iterator[bytes]:
        for start in range(0, n, _ROWS_PER_CHUNK):
            rows = np.arange(start, min(n, start + _ROWS_PER_CHUNK))
            yield table_coarse_vectors(table.thumbs, rows).astype("<f4").tobytes()

    detail_lengths: list[int] = []

    def detail_chunks() -> Iterator[bytes]:
        for start in range(0, n, _ROWS_PER_CHUNK):
            chunk = [bytes(d) for d in table.details[start : start + _ROWS_PER_CHUNK]]
            detail_lengths.extend(len(d) for d in chunk)
            yield b"".join(chunk)

    paths = [p if _is_safe_stored_path(p) else os.path.abspath(p) for p in table.paths]
    yield array("sample_index", table.sample_index, "<i8")
    yield from texts("paths", paths, optional=False)
    yield from texts("labels", table.labels, optional=True)
    yield array("width", table.width, "<i4")
    yield array("height", table.height, "<i4")
    yield array("byte_digest", np.frombuffer(
        b"".join(bytes(d) if d is not None else bytes(_DIGEST_SIZE) for d in table.byte_digest), np.uint8
    ).reshape(n, _DIGEST_SIZE), "|u1")
    yield array("byte_digest.present", [d is not None for d in table.byte_digest], "|b1")
    yield array("pixel_digest", np.frombuffer(b"".join(bytes(d) for d in table.pixel_digest), np.uint8)
                .reshape(n, _DIGEST_SIZE), "|u1")
    yield from texts("exif_identity", table.exif_identity, optional=True)
    yield array("phash", table.phash, "<u8")
    yield array("phash_mirror", table.phash_mirror, "<u8")
    yield array("phash_whole", table.phash_whole, "<u8")
    yield array("crop_hashes", np.asarray(table.crop_hashes).reshape(n, k), "<u8")
    yield "thumbs", "|u1", lambda: (n, THUMB_SIDE, THUMB_SIDE, 3), rows_of(table.thumbs, "|u1",
                                                                           (THUMB_SIDE, THUMB_SIDE, 3))
    yield "coarse", "<f4", lambda: (n, 64), coarse_chunks()
    yield "details.data", "|u1", lambda: (sum(detail_lengths),), detail_chunks()
    yield "details.offsets", "<i8", lambda: (n + 1,), (
        np.cumsum([0] + detail_lengths).astype("<i8").tobytes() for _ in range(1)
    )
    yield from optional_ints("file_size", table.file_size)
    yield from optional_ints("mtime_ns", table.mtime_ns)
    extra = json.dumps(table.extra_hashes, sort_keys=True).encode()
    yield array("extra_hashes", np.frombuffer(extra, np.uint8), "|u1")




def _meta_rows(meta: dict[str, Any], samples: int) -> list[tuple[str, str]]:
    full_meta = {
        **{str(k): v for k, v in meta.items()},
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "fingerprint_version": FINGERPRINT_VERSION,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "samples": samples,
    }
    return [(k, json.dumps(v, sort_keys=True)) for k, v in sorted(full_meta.items())]


def _check_replaceable(target: Path) -> None:
    """Refuse to overwrite anything but a manifest (or an empty or damaged one)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ManifestError(f"cannot save manifest {str(target)!r}: {exc.strerror or exc}") from exc
    if stat_module.S_ISDIR(st.st_mode):
        raise ManifestError(f"cannot save manifest {str(target)!r}: it is a directory")
    if not stat_module.S_ISREG(st.st_mode):
        raise ManifestError(f"cannot save manifest {str(target)!r}: it exists and is not a regular file")
    if st.st_size == 0:
        return
    with open(target, "rb") as handle:
        header = handle.read(len(INDEX_MAGIC))
    refuse = ManifestError(
        f"refusing to overwrite {str(target)!r}: it exists and is not a vdc_torch manifest "
        "(delete it first or choose another path)"
    )
    if header == INDEX_MAGIC:
        return  # the index of a sharded manifest (healthy or damaged): ours
    if header[: len(_SQLITE_MAGIC)] != _SQLITE_MAGIC:
        raise refuse
    try:
        with contextlib.closing(_connect_readonly(target)) as connection:
            verify_schema(connection, repr(str(target)), _SCHEMAS)  # before reading meta: no SQL of the file runs
            row = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.Error:
        return  # a damaged SQLite file: most likely an earlier manifest, replacing it is the repair
    except ManifestError as exc:
        if isinstance(exc.__cause__, sqlite3.Error):
            return  # its schema is unreadable: damaged, as above
        raise refuse from exc  # a healthy database of something else, or a manifest with a forged schema
    if row is None or row[0] != json.dumps(MANIFEST_FORMAT):
        raise refuse  # a healthy database of something else


# -- loading ---------------------------------------------------------------------------------------------------


def load_manifest(path: str | os.PathLike[str]) -> tuple[FingerprintTable, dict[str, Any]]:
    """Read a manifest written by :func:`save_manifest` or :func:`save_sharded_manifest` (the kind is told by the
    file's first bytes); any other file gives one clear :class:`ManifestError`.

    >>> table, meta = load_manifest("ckpt/reference.vdc")  # doctest: +SKIP
    """
    table, meta, _ = load_manifest_origin(path)
    return table, meta


@dataclass(frozen=True)
class ManifestOrigin:
    """Where a loaded or saved reference lives: what a later save needs to append instead of rewriting."""

    path: str  # the file's real path (symbolic links resolved)
    sharded: bool
    lineage: str | None  # of a sharded manifest's index (see store/sharded.py)
    rows: int  # rows of the table that are stored there
    #: For a part loaded by one of several ranks (``part=``): the global row of its first row and the rows of the
    #: whole manifest (``None``: the table is the whole manifest).
    first_row: int = 0
    total_rows: int | None = None


def load_manifest_origin(path: str | os.PathLike[str], part: tuple[int, int] | None = None,
                         ) -> tuple[FingerprintTable, dict[str, Any], ManifestOrigin]:
    """:func:`load_manifest`, and the :class:`ManifestOrigin` of what was read.

    ``part=(rank, world)`` loads only rank ``rank``'s share of a sharded manifest's shards (whole shards, in index
    order, about ``1/world`` of the rows each; see :func:`shards_of_rank`); the origin then says where the part
    lies. A single-file manifest is loaded whole whatever ``part`` says (``origin.total_rows`` is ``None``).
    """
    source = Path(path)
    name = repr(str(source))
    for attempt in range(4):
        # saved over again and again (savers in a loop): the last try holds the savers' lock, holding the next back
        with _shared_lock(source) if attempt == 3 else contextlib.nullcontext():
            try:
                if _is_index(source):
                    return _load_sharded_once(source, name, part)
                table, meta, _ = _load_once(source, name)
                return table, meta, ManifestOrigin(os.path.realpath(source), False, None, len(table))
            except _Replaced:
                continue  # another process saved over it meanwhile: read the new file
    raise ManifestError(f"manifest {name} keeps being replaced while it is read; try again")




def _is_index(source: Path) -> bool:
    """Whether ``source`` is meant as a sharded manifest's index (JSON), not an SQLite file; errors are left to
    the loader, which names them."""
    try:
        if not stat_module.S_ISREG(os.stat(source).st_mode):
            return False
        with open(source, "rb") as handle:
            return looks_like_index(handle.read(64))
    except OSError:
        return False


def shards_of_rank(samples: list[int], rank: int, world: int) -> range:
    """The shards (positions in the index) rank ``rank`` of ``world`` loads: consecutive ones, each shard going to
    the rank whose share of the rows (``total / world`` each) holds the shard's first row."""
    starts = np.cumsum([0, *samples])[:-1]
    total = int(sum(samples))
    owner = [min(world - 1, int(start * world // total)) if total else i * world // max(1, len(samples))
             for i, start in enumerate(starts.tolist())]
    mine = [i for i, o in enumerate(owner) if o == rank]
    return range(mine[0], mine[-1] + 1) if mine else range(0)


def _load_sharded_once(source: Path, name: str, part: tuple[int, int] | None = None,
                       ) -> tuple[FingerprintTable, dict[str, Any], ManifestOrigin]:
    """Every shard the index at ``source`` names (or rank ``part[0]``'s of them), checked against its record, as
    one (lazy) table."""
    index, data = read_index(source, name)
    real = Path(os.path.realpath(source))
    folder = shard_folder(real)
    check_shard_folder(folder, name)
    tables = []
    records = index.shards
    first_row = 0
    if part is not None:
        chosen = shards_of_rank([r.samples for r in records], *part)
        first_row = sum(r.samples for r in records[: chosen.start])
        records = [records[i] for i in chosen]
    for record in records:
        try:
            path = shard_path(folder, record, name)
            table, meta, checksum = _load_once(path, repr(str(path)))
        except ShardMissing:
            path = None
        except ManifestError:
            if os.path.lexists(folder / record.file):
                raise
            path = None
        if path is None:  # removed by a compaction after the index was read? then the index is a new one
            try:
                _, now = read_index(source, name)
            except ManifestError:
                raise _Replaced from None
            if now != data:
                raise _Replaced from None
            raise ManifestError(f"{name} is incomplete: its shard {str(folder / record.file)!r} is missing")
        shard = repr(str(path))
        if checksum != record.checksum:
            raise ManifestError(f"{name}: shard {shard} is not the one its index names (its checksum "
                                f"{checksum!r} is not {record.checksum!r}): swapped, replaced or damaged")
        if meta.get("format_version") != MANIFEST_VERSION or len(table) != record.samples:
            raise ManifestError(f"{name}: shard {shard} holds {len(table)} samples (format version "
                                f"{meta.get('format_version')!r}), its index says {record.samples}")
        if len(table) and (int(table.sample_index.min()), int(table.sample_index.max())) != (record.first,
                                                                                              record.last):
            raise ManifestError(f"{name}: shard {shard} holds sample indices {int(table.sample_index.min())}.."
                                f"{int(table.sample_index.max())}, its index says {record.first}..{record.last}")
        tables.append(table)
    table = concat_tables(tables) if tables else FingerprintTable.empty()
    meta = {**_with_legacy_rows(index), "format": INDEX_FORMAT, "format_version": INDEX_VERSION,
            "fingerprint_version": index.fingerprint_version, "saved_at": index.saved_at, "samples": index.samples}
    if part is None:
        return table, meta, ManifestOrigin(str(real), True, index.lineage, len(table))
    return table, meta, ManifestOrigin(str(real), True, index.lineage, len(table), first_row, index.samples)
