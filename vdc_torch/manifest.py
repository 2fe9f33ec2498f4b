"""The persisted reference: one SQLite file holding the fingerprints, labels, paths and a format version.

No pickle anywhere: every column is a plain SQLite value (text, integer or bytes). Saving writes a complete new
file beside the target, fsyncs it and renames it over the old one, so a process killed mid-save leaves the
previous manifest intact. Loading never needs the reference images.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ManifestError
from .fingerprint import CROP_OFFSETS, FINGERPRINT_VERSION, THUMB_SIDE, FingerprintTable

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "vdc_torch-manifest"
MANIFEST_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    row INTEGER PRIMARY KEY,
    sample_index INTEGER NOT NULL,
    path TEXT NOT NULL,
    label TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    byte_digest BLOB,
    pixel_digest BLOB NOT NULL,
    exif_identity TEXT,
    phash INTEGER NOT NULL,
    phash_mirror INTEGER NOT NULL,
    crop_hashes BLOB NOT NULL,
    thumb BLOB NOT NULL,
    detail BLOB NOT NULL,
    file_size INTEGER,
    mtime_ns INTEGER,
    extra_hashes TEXT NOT NULL
);
"""


def _signed(codes: np.ndarray) -> list[int]:
    return codes.astype(np.uint64).view(np.int64).tolist()


def save_manifest(path: str | os.PathLike[str], table: FingerprintTable, meta: dict[str, Any]) -> Path:
    """Atomically write ``table`` and ``meta`` (JSON-able values) to ``path``; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        connection = sqlite3.connect(tmp_name)
        try:
            connection.executescript(_SCHEMA)
            full_meta = {
                **meta,
                "format": MANIFEST_FORMAT,
                "format_version": MANIFEST_VERSION,
                "fingerprint_version": FINGERPRINT_VERSION,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "samples": len(table),
            }
            connection.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in sorted(full_meta.items())]
            )
            phash, mirror = _signed(table.phash), _signed(table.phash_mirror)
            rows = (
                (
                    i, int(table.sample_index[i]), table.paths[i], table.labels[i], int(table.width[i]),
                    int(table.height[i]), table.byte_digest[i], table.pixel_digest[i], table.exif_identity[i],
                    phash[i], mirror[i], table.crop_hashes[i].astype("<u8").tobytes(),
                    table.thumbs[i].tobytes(), table.details[i], table.file_size[i], table.mtime_ns[i],
                    json.dumps(table.extra_hashes[i], sort_keys=True),
                )
                for i in range(len(table))
            )
            connection.executemany(f"INSERT INTO samples VALUES ({', '.join('?' * 17)})", rows)
            connection.commit()
        finally:
            connection.close()
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        _fsync_dir(target.parent)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def load_manifest(path: str | os.PathLike[str]) -> tuple[FingerprintTable, dict[str, Any]]:
    """Read a manifest written by :func:`save_manifest`; any other file gives one clear :class:`ManifestError`."""
    source = Path(path)
    if not source.is_file():
        raise ManifestError(f"manifest {str(source)!r} does not exist or is not a file")
    with open(source, "rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        raise ManifestError(f"{str(source)!r} is not a vdc_torch manifest (not an SQLite file)")
    try:
        connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ManifestError(f"{str(source)!r} cannot be opened as a manifest: {exc}") from exc
    try:
        try:
            meta = {k: json.loads(v) for k, v in connection.execute("SELECT key, value FROM meta")}
        except (sqlite3.Error, json.JSONDecodeError) as exc:
            raise ManifestError(f"{str(source)!r} is not a vdc_torch manifest or is corrupted ({exc})") from exc
        if meta.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{str(source)!r} is an SQLite file but not a vdc_torch manifest")
        version = meta.get("format_version")
        if version != MANIFEST_VERSION:
            raise ManifestError(
                f"{str(source)!r} has manifest format version {version!r}; this vdc_torch reads version "
                f"{MANIFEST_VERSION} (rebuild it with `vdc index` or upgrade vdc_torch)"
            )
        if meta.get("fingerprint_version") != FINGERPRINT_VERSION:
            raise ManifestError(
                f"{str(source)!r} holds fingerprints of version {meta.get('fingerprint_version')!r}, "
                f"this vdc_torch computes version {FINGERPRINT_VERSION}: rebuild the manifest"
            )
        try:
            records = connection.execute("SELECT * FROM samples ORDER BY row").fetchall()
        except sqlite3.Error as exc:
            raise ManifestError(f"{str(source)!r} is corrupted ({exc})") from exc
    finally:
        connection.close()
    try:
        table = _table_from_records(records)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{str(source)!r} is corrupted: a sample row is malformed ({exc})") from exc
    if len(table) != meta.get("samples"):
        raise ManifestError(f"{str(source)!r} is corrupted: {len(table)} rows, header says {meta.get('samples')}")
    return table, meta


def _table_from_records(records: list[tuple[Any, ...]]) -> FingerprintTable:
    k = len(CROP_OFFSETS)
    n = len(records)
    if n == 0:
        return FingerprintTable.empty()
    cols = list(zip(*records))
    crops = np.frombuffer(b"".join(cols[11]), dtype="<u8").astype(np.uint64)
    thumbs = np.frombuffer(b"".join(cols[12]), dtype=np.uint8)
    if crops.size != n * k or thumbs.size != n * THUMB_SIDE * THUMB_SIDE * 3:
        raise ValueError("fingerprint blobs have the wrong size")
    for digest in cols[7]:
        if not isinstance(digest, bytes):
            raise ValueError("pixel digest is not bytes")
    return FingerprintTable(
        sample_index=np.asarray(cols[1], dtype=np.int64),
        paths=[str(p) for p in cols[2]],
        labels=[None if v is None else str(v) for v in cols[3]],
        width=np.asarray(cols[4], dtype=np.int32),
        height=np.asarray(cols[5], dtype=np.int32),
        byte_digest=list(cols[6]),
        pixel_digest=list(cols[7]),
        exif_identity=list(cols[8]),
        phash=np.asarray(cols[9], dtype=np.int64).view(np.uint64),
        phash_mirror=np.asarray(cols[10], dtype=np.int64).view(np.uint64),
        crop_hashes=crops.reshape(n, k),
        thumbs=thumbs.reshape(n, THUMB_SIDE, THUMB_SIDE, 3).copy(),
        details=[bytes(d) for d in cols[13]],
        file_size=list(cols[14]),
        mtime_ns=list(cols[15]),
        extra_hashes=[json.loads(v) for v in cols[16]],
    )


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
