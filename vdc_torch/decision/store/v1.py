"""Version 1 of the manifest format (read only): one SQLite row per sample, loaded fully into memory.

Written by vdc_torch before version 2 (``parts``), with or without a ``checksum`` table; still read by
:func:`vdc_torch.decision.store.manifest.load_manifest`. Every stored value is type- and size-checked here, the
detail images by their headers too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from vdc_torch.decision.store.files import _is_safe_stored_path
from vdc_torch.errors import ManifestError
from vdc_torch.fingerprints.table import CROP_BOXES, THUMB_SIDE, FingerprintTable

_DIGEST_SIZE = 16

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
CREATE TABLE checksum (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "row", "sample_index", "path", "label", "width", "height", "byte_digest", "pixel_digest", "exif_identity",
    "phash", "phash_mirror", "crop_hashes", "thumb", "detail", "file_size", "mtime_ns", "extra_hashes",
)
_BLOB_COLUMNS = frozenset({6, 7, 11, 12, 13})  # byte_digest, pixel_digest, crop_hashes, thumb, detail


def _loaded_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected text, found {type(value).__name__}")


def _content_digest(meta_rows: Sequence[tuple[Any, Any]], columns: Sequence[Sequence[Any]]) -> str:
    """BLAKE2b over the meta rows and every stored column, in a canonical encoding (hex)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([list(r) for r in meta_rows], default=bytes_for_json).encode())
    for i, column in enumerate(columns):
        h.update(f"|{i}|".encode())
        if i in _BLOB_COLUMNS:
            h.update(json.dumps([None if v is None else len(v) for v in column]).encode())
            h.update(b"".join(v for v in column if v is not None))
        else:
            h.update(json.dumps(list(column), default=bytes_for_json).encode())
    return h.hexdigest()


def _detail_check() -> Any:
    """:func:`~vdc_torch.fingerprints.per_image.detail_problem`, imported when a manifest is read (it needs cv2)."""
    from vdc_torch.fingerprints.per_image import detail_problem

    return detail_problem


def _table_from_columns(cols: list[list[Any]], name: str) -> FingerprintTable:
    """Type- and size-check every stored value and build the table (ValueError/TypeError on anything odd)."""
    n = len(cols[0])
    k = len(CROP_BOXES)
    if n == 0:
        return FingerprintTable.empty()
    if cols[0] != list(range(n)):
        raise ValueError("row numbers are not 0..n-1")
    for index in (1, 4, 5, 9, 10):
        if not all(type(v) is int for v in cols[index]):
            raise ValueError(f"column {_COLUMNS[index]} holds a non-integer")
    for index in (14, 15):
        if not all(v is None or type(v) is int for v in cols[index]):
            raise ValueError(f"column {_COLUMNS[index]} holds a non-integer")
    if min(cols[4]) <= 0 or min(cols[5]) <= 0:
        raise ValueError("an image size is not positive")
    if not all(type(d) is bytes and len(d) == _DIGEST_SIZE for d in cols[7]):
        raise ValueError("a pixel digest is not 16 bytes")
    if not all(d is None or (type(d) is bytes and len(d) == _DIGEST_SIZE) for d in cols[6]):
        raise ValueError("a byte digest is not 16 bytes")
    if not all(type(b) is bytes and len(b) == 8 * k for b in cols[11]):
        raise ValueError("a crop-hash blob has the wrong size")
    if not all(type(b) is bytes and len(b) == THUMB_SIDE * THUMB_SIDE * 3 for b in cols[12]):
        raise ValueError("a thumbnail blob has the wrong size")
    if not all(type(b) is bytes and b for b in cols[13]):
        raise ValueError("a detail image is missing")
    paths = [_loaded_text(p) for p in cols[2]]
    for path in paths:
        if not _is_safe_stored_path(path):
            raise ManifestError(f"{name} is refused: sample path {path!r} leaves its dataset root")
    detail_problem = _detail_check()
    for row, detail in enumerate(cols[13]):
        if (problem := detail_problem(detail)) is not None:
            raise ManifestError(f"{name} is corrupted: the stored detail image of row {row} ({paths[row]!r}) is not "
                                f"one vdc_torch writes: {problem}")
    extra = [json.loads(v) if isinstance(v, str) else None for v in cols[16]]
    if not all(isinstance(x, dict) and all(isinstance(a, str) and isinstance(b, str) for a, b in x.items())
               for x in extra):
        raise ValueError("extra hashes are not a JSON object of strings")
    return FingerprintTable(
        sample_index=np.asarray(cols[1], dtype=np.int64),
        paths=paths,
        labels=[None if v is None else _loaded_text(v) for v in cols[3]],
        width=np.asarray(cols[4], dtype=np.int32),
        height=np.asarray(cols[5], dtype=np.int32),
        byte_digest=list(cols[6]),
        pixel_digest=list(cols[7]),
        exif_identity=[None if v is None else _loaded_text(v) for v in cols[8]],
        phash=np.asarray(cols[9], dtype=np.int64).view(np.uint64),
        phash_mirror=np.asarray(cols[10], dtype=np.int64).view(np.uint64),
        phash_whole=np.asarray(cols[9], dtype=np.int64).view(np.uint64),  # version 1 kept no untrimmed hash
        crop_hashes=np.frombuffer(b"".join(cols[11]), dtype="<u8").astype(np.uint64).reshape(n, k),
        thumbs=np.frombuffer(b"".join(cols[12]), dtype=np.uint8).reshape(n, THUMB_SIDE, THUMB_SIDE, 3).copy(),
        details=list(cols[13]),
        file_size=list(cols[14]),
        mtime_ns=list(cols[15]),
        extra_hashes=extra,
    )


def bytes_for_json(value: Any) -> str:
    """JSON stand-in of a bytes value inside a checksummed text column."""
    if isinstance(value, bytes):
        return "\x00bytes:" + value.hex()
    raise TypeError(f"{type(value).__name__} value in a text column")
