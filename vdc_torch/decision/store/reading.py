"""Reading one manifest file as untrusted input: opened read-only and immutable, only the expected tables read,
every value type- and size-checked, the content checksum compared, and every failure one :class:`ManifestError`
naming the file (see :mod:`~vdc_torch.decision.store.manifest`, which loads single files and sharded manifests
through :func:`_load_once`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat as stat_module
from pathlib import Path
from typing import Any

import numpy as np

from vdc_torch.decision.store.files import _is_safe_stored_path
from vdc_torch.decision.store.format import (
    _C_INT_MAX,
    _READABLE_VERSIONS,
    _SCHEMAS,
    _SQLITE_MAGIC,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    _content_digest_v2,
    _expected_columns,
)
from vdc_torch.decision.store.schema import verify_schema
from vdc_torch.decision.store.stored import ManifestHandle, PartStream, StoredRows, part_matches
from vdc_torch.decision.store.v1 import _COLUMNS, _content_digest, _detail_check, _table_from_columns
from vdc_torch.errors import ManifestError
from vdc_torch.fingerprints.table import (
    FINGERPRINT_VERSION,
    LEGACY_DIGEST_ROWS,
    LEGACY_FINGERPRINT_VERSIONS,
    READABLE_FINGERPRINT_VERSIONS,
    THUMB_SIDE,
    FingerprintTable,
)

log = logging.getLogger(__name__)


class _Replaced(Exception):
    """Internal: the manifest file was replaced (atomically) while it was being loaded."""


def _load_once(source: Path, name: str) -> tuple[FingerprintTable, dict[str, Any], str | None]:
    """The table, the meta and the content checksum stored in the file (None in old version-1 files)."""
    _check_file(source, name)
    try:  # opened before the connection: if both still name the path's file afterwards, the load saw one file
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ManifestError(f"manifest {name} cannot be read ({exc.strerror or exc})") from exc
    try:
        try:
            connection = _connect_readonly(source)
        except sqlite3.Error as exc:
            raise ManifestError(f"{name} cannot be opened as a manifest ({exc})") from exc
        handle = ManifestHandle(name, connection)  # closes the connection when the last lazy column goes
        table, meta = _load_from(connection, handle, source, name)
        try:
            checksum = _stored_checksum(connection, name)
        except sqlite3.Error as exc:
            raise ManifestError(f"{name} cannot be read ({exc})") from exc
        if not _same_file(fd, source):
            raise _Replaced
        return table, meta, checksum
    finally:
        os.close(fd)


def _load_from(connection: sqlite3.Connection, handle: ManifestHandle, source: Path,
               name: str) -> tuple[FingerprintTable, dict[str, Any]]:
    try:
        meta_rows, meta = _read_meta(connection, name)
        if meta["format_version"] == 2:
            table = _read_v2(connection, name, meta_rows, meta, handle)
            records: list[tuple[Any, ...]] = []
        else:
            records, stored_digest = _read_v1_rows(connection, name)
    except ManifestError:
        raise
    except Exception as exc:  # untrusted bytes: whatever SQLite or JSON raise, the answer is one clear error
        raise ManifestError(f"{name} is corrupted or not a vdc_torch manifest ({type(exc).__name__}: {exc})") from exc
    if meta["format_version"] == 1:
        try:
            columns = [list(c) for c in zip(*records)] if records else [[] for _ in _COLUMNS]
            if stored_digest is not None and _content_digest(meta_rows, columns) != stored_digest:
                raise ManifestError(
                    f"{name} is corrupted: its content does not match its checksum (damaged or edited after saving)"
                )
            table = _table_from_columns(columns, name)
        except ManifestError:
            raise
        except Exception as exc:
            raise ManifestError(
                f"{name} is corrupted: a sample row is malformed ({type(exc).__name__}: {exc})"
            ) from exc
    if len(table) != meta.get("samples"):
        raise ManifestError(f"{name} is corrupted: {len(table)} sample rows, its header says {meta.get('samples')!r}")
    return table, meta


def _same_file(fd: int, source: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(source)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_file(source: Path, name: str) -> None:
    """Refuse what is not a complete SQLite file before SQLite sees it."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise ManifestError(f"manifest {name} does not exist") from None
    except OSError as exc:
        raise ManifestError(f"manifest {name} cannot be read ({exc.strerror or exc})") from exc
    if stat_module.S_ISDIR(st.st_mode):
        raise ManifestError(f"manifest {name} is a directory, not a manifest file")
    if not stat_module.S_ISREG(st.st_mode):
        raise ManifestError(f"manifest {name} is not a regular file")
    if st.st_size == 0:
        raise ManifestError(f"{name} is empty (0 bytes), not a vdc_torch manifest")
    try:
        with open(source, "rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise ManifestError(f"manifest {name} cannot be read ({exc.strerror or exc})") from exc
    if not header.startswith(_SQLITE_MAGIC):
        raise ManifestError(f"{name} is not a vdc_torch manifest (not an SQLite file; it starts with {header[:8]!r})")
    if len(header) < 100:
        raise ManifestError(f"{name} is corrupted: truncated inside its {len(header)}-byte SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96] and pages > 0
    if page_size < 512 or page_size & (page_size - 1) or (header_valid and pages * page_size != st.st_size):
        raise ManifestError(
            f"{name} is corrupted: its SQLite header declares {pages} pages of {page_size} bytes, "
            f"the file has {st.st_size} bytes (truncated or damaged)"
        )


def _connect_readonly(source: Path) -> sqlite3.Connection:
    """Read-only and immutable: SQLite writes nothing beside the file (no journal, no -shm, no locks)."""
    uri = Path(os.path.abspath(source)).as_uri() + "?mode=ro&immutable=1"  # percent-encodes ?, #, % and non-UTF-8
    # read from the matching threads too: every read goes through ManifestHandle's lock, one at a time
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
    with contextlib.suppress(OSError, AttributeError):  # setlimit: Python >= 3.11
        # no stored value is longer than the file (SQLite does not compress): a longer one (a looped overflow
        # chain) is refused by SQLite ("string or blob too big") instead of being allocated; the limit is a C int
        # (a manifest of a 1M reference is ~3 GB) and SQLite clamps it to its own maximum anyway
        connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, min(max(os.stat(source).st_size, 1 << 20), _C_INT_MAX))
    connection.execute("PRAGMA cell_size_check=ON")
    connection.execute("PRAGMA trusted_schema=OFF")
    return connection


def _tables(connection: sqlite3.Connection) -> dict[str, str]:
    """``{name: "table" | "view"}`` of an SQLite database (indexes and triggers left out)."""
    found = connection.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')").fetchall()
    return {str(name): str(kind) for name, kind in found}


def _read_meta(connection: sqlite3.Connection, name: str) -> tuple[list[tuple[Any, Any]], dict[str, Any]]:
    """The meta rows and values, after checking the tables, the format and both versions."""
    schema_version = verify_schema(connection, name, _SCHEMAS)  # before any value: see store/schema.py
    meta_rows = connection.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    meta: dict[str, Any] = {}
    for key, value in meta_rows:
        if not isinstance(key, str) or not isinstance(value, str):
            raise ManifestError(f"{name} is corrupted: a meta entry is not text")
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{name} is corrupted: meta entry {key!r} is not valid JSON ({exc})") from exc
    if meta.get("format") != MANIFEST_FORMAT:
        found = meta.get("format")
        raise ManifestError(f"{name} is an SQLite database but not a vdc_torch manifest (format {found!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION
        hint = "upgrade vdc_torch to read it" if newer else "rebuild it with `vdc index` or `DatasetGate.save`"
        readable = " and ".join(str(v) for v in _READABLE_VERSIONS)
        raise ManifestError(f"{name} has manifest format version {version!r}; this vdc_torch reads versions "
                            f"{readable} ({hint})")
    fingerprint_version = meta.get("fingerprint_version")
    if isinstance(fingerprint_version, bool) or fingerprint_version not in READABLE_FINGERPRINT_VERSIONS:
        raise ManifestError(
            f"{name} holds fingerprints of version {fingerprint_version!r}, this vdc_torch computes version "
            f"{FINGERPRINT_VERSION} and reads {', '.join(map(str, READABLE_FINGERPRINT_VERSIONS))}: rebuild the "
            "manifest (`vdc index`)"
        )
    if fingerprint_version in LEGACY_FINGERPRINT_VERSIONS and isinstance(meta.get("samples"), int):
        meta[LEGACY_DIGEST_ROWS] = meta["samples"]  # every row of it: see LEGACY_FINGERPRINT_VERSIONS
    if version != schema_version:
        raise ManifestError(f"{name} is corrupted: its meta gives format version {version}, its tables are those "
                            f"of version {schema_version}")
    return meta_rows, meta


def _stored_checksum(connection: sqlite3.Connection, name: str) -> str | None:
    if _tables(connection).get("checksum") != "table":
        log.debug("%s has no checksum table (written by an older vdc_torch); content not verified", name)
        return None
    found = connection.execute("SELECT value FROM checksum WHERE name = 'content'").fetchone()
    if found is None or not isinstance(found[0], str):
        raise ManifestError(f"{name} is corrupted: its checksum is missing")
    return found[0]


def _read_v1_rows(connection: sqlite3.Connection, name: str) -> tuple[list[tuple[Any, ...]], str | None]:
    """Version 1: one row per sample."""
    declared = [row[1] for row in connection.execute("PRAGMA table_info(samples)").fetchall()]
    if tuple(declared) != _COLUMNS:
        raise ManifestError(f"{name} is corrupted: its samples table has columns {declared}, expected {list(_COLUMNS)}")
    records = connection.execute(f"SELECT {', '.join(_COLUMNS)} FROM samples ORDER BY row").fetchall()
    return records, _stored_checksum(connection, name)


def _read_v2(
    connection: sqlite3.Connection, name: str, meta_rows: list[tuple[Any, Any]], meta: dict[str, Any],
    handle: ManifestHandle,
) -> FingerprintTable:
    """Version 2: columns as parts; small columns read and verified now, large ones wrapped as StoredRows."""
    n = meta.get("samples")
    if type(n) is not int or n < 0:
        raise ManifestError(f"{name} is corrupted: its header gives {n!r} samples")
    expected = _expected_columns(n)
    declared = {}
    for column, dtype, shape in connection.execute("SELECT name, dtype, shape FROM columns").fetchall():
        declared[column] = (dtype, json.loads(shape) if isinstance(shape, str) else None)
    if set(declared) != set(expected):
        raise ManifestError(f"{name} is corrupted: it has columns {sorted(map(str, declared))}, "
                            f"expected {sorted(expected)}")
    parts: dict[str, list[tuple[int, int, str]]] = {c: [] for c in expected}
    described: dict[str, list[list[Any]]] = {c: [] for c in expected}
    for rowid, column, part, length, digest in connection.execute(
        "SELECT id, name, part, length(data), digest FROM parts ORDER BY name, part"
    ).fetchall():
        if column not in parts or part != len(parts[column]) or not isinstance(digest, str):
            raise ManifestError(f"{name} is corrupted: unexpected stored part {column!r} #{part!r}")
        if type(length) is not int:
            raise ManifestError(f"{name} is corrupted: stored part {column!r} #{part} is not a blob")
        parts[column].append((int(rowid), length, digest))
        described[column].append([part, length, digest])
    stored = _stored_checksum(connection, name)
    if stored is not None:
        listing = [[c, declared[c][0], declared[c][1], described[c]] for c in expected]
        if _content_digest_v2(meta_rows, listing) != stored:
            raise ManifestError(
                f"{name} is corrupted: its content does not match its checksum (damaged or edited after saving)"
            )
    shapes: dict[str, tuple[int, ...]] = {}
    for column, (dtype, shape) in expected.items():
        got_dtype, got_shape = declared[column]
        if got_dtype != dtype or not isinstance(got_shape, list) or not all(type(x) is int for x in got_shape):
            raise ManifestError(f"{name} is corrupted: column {column!r} is declared {got_dtype} {got_shape}")
        if (shape is not None and tuple(got_shape) != shape) or (shape is None and len(got_shape) != 1):
            raise ManifestError(f"{name} is corrupted: column {column!r} has shape {got_shape}, expected {shape}")
        size = int(np.prod(got_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if sum(p[1] for p in parts[column]) != size:
            raise ManifestError(f"{name} is corrupted: column {column!r} holds "
                                f"{sum(p[1] for p in parts[column])} bytes, its shape needs {size}")
        shapes[column] = tuple(got_shape)

    def read(column: str) -> np.ndarray:
        chunks = []
        for rowid, _, digest in parts[column]:
            (data,) = connection.execute("SELECT data FROM parts WHERE id = ?", (rowid,)).fetchone()
            if not isinstance(data, bytes) or not part_matches([data], digest):
                raise ManifestError(
                    f"{name} is corrupted: column {column!r} does not match its checksum (damaged or edited)"
                )
            chunks.append(data)
        dtype = np.dtype(expected[column][0])
        return np.frombuffer(b"".join(chunks), dtype).reshape(shapes[column]).astype(dtype.newbyteorder("="))

    try:
        return _table_from_v2(read, parts, shapes, n, name, handle)
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(f"{name} is corrupted: a column is malformed ({type(exc).__name__}: {exc})") from exc


def _texts(read: Any, column: str, n: int, optional: bool) -> list[str | None]:
    data = read(f"{column}.data").tobytes()
    offsets = _checked_offsets(read(f"{column}.offsets"), len(data), column)
    present = read(f"{column}.present") if optional else np.ones(n, bool)
    bounds = offsets.tolist()
    return [data[bounds[i] : bounds[i + 1]].decode("utf-8", "surrogateescape") if present[i] else None
            for i in range(n)]


def _checked_offsets(offsets: np.ndarray, total: int, column: str) -> np.ndarray:
    if offsets[0] != 0 or offsets[-1] != total or (len(offsets) > 1 and np.any(np.diff(offsets) < 0)):
        raise ValueError(f"the offsets of {column} are not increasing from 0 to {total}")
    return offsets


def _table_from_v2(read: Any, parts: dict[str, list[tuple[int, int, str]]], shapes: dict[str, tuple[int, ...]],
                   n: int, name: str, handle: ManifestHandle) -> FingerprintTable:
    if n == 0:
        return FingerprintTable.empty()
    width, height = read("width"), read("height")
    if width.min() <= 0 or height.min() <= 0:
        raise ValueError("an image size is not positive")
    paths = _texts(read, "paths", n, optional=False)
    for path in paths:
        if not _is_safe_stored_path(path):
            raise ManifestError(f"{name} is refused: sample path {path!r} leaves its dataset root")
    byte_present, byte_rows = read("byte_digest.present"), read("byte_digest")
    pixel_rows = read("pixel_digest")
    extra = json.loads(read("extra_hashes").tobytes().decode("utf-8"))
    if not isinstance(extra, list) or len(extra) != n or not all(
        isinstance(x, dict) and all(isinstance(a, str) and isinstance(b, str) for a, b in x.items()) for x in extra
    ):
        raise ValueError("extra hashes are not a list of JSON objects of strings")

    def optional_ints(column: str) -> list[int | None]:
        values, present = read(column).tolist(), read(f"{column}.present")
        return [v if p else None for v, p in zip(values, present)]

    detail_offsets = _checked_offsets(read("details.offsets"), shapes["details.data"][0], "details")
    if np.any(np.diff(detail_offsets) == 0):
        raise ValueError("a detail image is missing")
    coarse = StoredRows(PartStream(handle, parts["coarse"]), n, (64,), "<f4")
    return FingerprintTable(
        sample_index=read("sample_index"),
        paths=paths,
        labels=_texts(read, "labels", n, optional=True),
        width=width,
        height=height,
        byte_digest=[row.tobytes() if p else None for row, p in zip(byte_rows, byte_present)],
        pixel_digest=[row.tobytes() for row in pixel_rows],
        exif_identity=_texts(read, "exif_identity", n, optional=True),
        phash=read("phash"),
        phash_mirror=read("phash_mirror"),
        phash_whole=read("phash_whole"),
        crop_hashes=read("crop_hashes"),
        thumbs=StoredRows(PartStream(handle, parts["thumbs"]), n, (THUMB_SIDE, THUMB_SIDE, 3), np.uint8,
                          coarse=coarse),  # type: ignore[arg-type]
        details=StoredRows(PartStream(handle, parts["details.data"]), n, offsets=detail_offsets,  # type: ignore
                           check=("detail image", _detail_check(), paths)),  # each checked on first read
        file_size=optional_ints("file_size"),
        mtime_ns=optional_ints("mtime_ns"),
        extra_hashes=extra,
    )
