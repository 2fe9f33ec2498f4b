"""The manifest file format shared by its writer (:mod:`~vdc_torch.decision.store.manifest`) and its reader
(:mod:`~vdc_torch.decision.store.reading`): the format name and versions, the version-2 SQLite schema, the columns a
file of ``n`` rows holds and the checksum over its content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from vdc_torch.decision.store.v1 import _SCHEMA
from vdc_torch.decision.store.v1 import bytes_for_json as _bytes_for_json
from vdc_torch.fingerprints.table import CROP_BOXES, THUMB_SIDE

MANIFEST_FORMAT = "vdc_torch-manifest"
#: The format written: version 2 stores each column as a few large blobs (``parts``), and thumbnails, their 8×8
#: coarse vectors and detail images are read on demand. Version 1 files (one SQLite row per sample, with or
#: without a ``checksum`` table) still load, fully into memory.
MANIFEST_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: Bytes per stored part of a column (SQLite caps a blob at 1 GB).
PART_BYTES = 32 << 20
#: Columns read on demand (:class:`vdc_torch.stored.StoredRows`) instead of at load time.
_LAZY_COLUMNS = frozenset({"thumbs", "coarse", "details.data"})
_ROWS_PER_CHUNK = 16384

_SQLITE_MAGIC = b"SQLite format 3\x00"
_RESERVED_META = ("format", "format_version", "fingerprint_version", "saved_at", "samples")
_DIGEST_SIZE = 16
_C_INT_MAX = 2**31 - 1

_SCHEMA_V2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE columns (name TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL);
CREATE TABLE parts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    part INTEGER NOT NULL,
    data BLOB NOT NULL,
    digest TEXT NOT NULL,
    UNIQUE (name, part)
);
CREATE TABLE checksum (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: The CREATE script of each readable format version: a file's schema must be exactly one of them.
_SCHEMAS = {1: _SCHEMA, 2: _SCHEMA_V2}


def _content_digest_v2(meta_rows: Sequence[tuple[Any, Any]], described: list[list[Any]]) -> str:
    """BLAKE2b over the meta rows and every column's dtype, shape and part digests (each part has its own)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([list(r) for r in meta_rows], default=_bytes_for_json).encode())
    h.update(json.dumps(sorted(described)).encode())
    return h.hexdigest()


def _expected_columns(n: int) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """Every column of a version-2 manifest of ``n`` rows: dtype and shape (``None``: any 1-d length)."""
    k = len(CROP_BOXES)
    out: dict[str, tuple[str, tuple[int, ...] | None]] = {
        "sample_index": ("<i8", (n,)), "width": ("<i4", (n,)), "height": ("<i4", (n,)),
        "byte_digest": ("|u1", (n, _DIGEST_SIZE)), "byte_digest.present": ("|b1", (n,)),
        "pixel_digest": ("|u1", (n, _DIGEST_SIZE)), "phash": ("<u8", (n,)), "phash_mirror": ("<u8", (n,)),
        "phash_whole": ("<u8", (n,)), "crop_hashes": ("<u8", (n, k)), "thumbs": ("|u1", (n, THUMB_SIDE, THUMB_SIDE, 3)), "coarse": ("<f4", (n, 64)),
        "details.data": ("|u1", None), "details.offsets": ("<i8", (n + 1,)), "extra_hashes": ("|u1", None),
    }
    for column, optional in (("paths", False), ("labels", True), ("exif_identity", True)):
        out[f"{column}.data"] = ("|u1", None)
        out[f"{column}.offsets"] = ("<i8", (n + 1,))
        if optional:
            out[f"{column}.present"] = ("|b1", (n,))
    for column in ("file_size", "mtime_ns"):
        out[column] = ("<i8", (n,))
        out[f"{column}.present"] = ("|b1", (n,))
    return out
