"""The fingerprint records and the columnar table of a dataset's fingerprints, and moving tables without pickle.

:class:`Fingerprint` is one image's record, :class:`FingerprintTable` a dataset's, column by column (columns a
manifest keeps may be :class:`LazyColumn` views read on demand); :class:`KnownFingerprints` is what fingerprinting
may read of earlier results (a cache), never write.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vdc_torch.data.files import FileKey

log = logging.getLogger(__name__)

#: Bumped whenever a change alters fingerprint values; manifests of another version are recomputed or refused.
#: 2: tighter border trimming (BORDER_TOL 12 -> 6, BORDER_MAX_TRIM 0.3 -> 0.45); 3: 27 crop hashes (CROP_BOXES),
#: small detail images stored raw; 4: phash_whole; 5: crop hashes from float resizes (fingerprint_batch);
#: 6: pixel digests by BLAKE3 instead of BLAKE2b (``vdc_torch.data.pixels.pixel_digest``), nothing else changed.
FINGERPRINT_VERSION = 6
#: Older versions whose manifests still load and match: they differ from :data:`FINGERPRINT_VERSION` only in how
#: ``pixel_digest`` was computed, so their pixel digests never equal a new one (a copy with the same pixels but
#: other file bytes is then found by the stages after the exact ones, as a near duplicate) and everything else
#: compares as before. How many rows carry such digests is kept in the manifest's meta (:data:`LEGACY_DIGEST_ROWS`).
LEGACY_FINGERPRINT_VERSIONS = (5,)
READABLE_FINGERPRINT_VERSIONS = (*LEGACY_FINGERPRINT_VERSIONS, FINGERPRINT_VERSION)
#: Meta key of a saved reference: how many of its first rows hold pixel digests of a legacy version.
LEGACY_DIGEST_ROWS = "legacy_pixel_digest_rows"
THUMB_SIDE = 32
DETAIL_SIDE = 256
#: Crops whose pHashes are indexed, as ``(keep, top, left)`` fractions of the content: 70, 80 and 90 % of each
#: side, each at the 3×3 positions from one corner to the other. Any crop keeping 65–95 % of each side lies
#: within 5 % of one of them, close enough for its pHash (seeds 1–6 of benchmarks/accuracy.py: 96 % of the
#: cropped copies within radius 10 of one crop hash, against 49 % with the former nine 80 % crops).
CROP_BOXES: tuple[tuple[float, float, float], ...] = tuple(
    (keep, t * (1 - keep), l * (1 - keep)) for keep in (0.7, 0.8, 0.9) for t in (0.0, 0.5, 1.0) for l in (0.0, 0.5, 1.0)
)



@dataclass(frozen=True)
class Problem:
    """A sample that could not be used (``fatal``) or was used with a caveat (e.g. malformed EXIF)."""

    index: int
    path: str
    reason: str
    fatal: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "reason": self.reason, "fatal": self.fatal}


@dataclass
class Fingerprint:
    """All fingerprints of one image, from one decode."""

    width: int
    height: int
    pixel_digest: bytes
    phash: int
    phash_mirror: int
    crop_hashes: np.ndarray  # (len(CROP_BOXES),) uint64
    thumb: np.ndarray  # (THUMB_SIDE, THUMB_SIDE, 3) uint8 RGB
    detail: bytes  # encoded gray image, max side DETAIL_SIDE
    byte_digest: bytes | None = None
    exif_identity: str | None = None
    file_size: int | None = None
    mtime_ns: int | None = None
    extra_hashes: dict[str, str] = field(default_factory=dict)  # method -> ImageHash string
    warnings: list[str] = field(default_factory=list)
    phash_whole: int | None = None  # pHash of the untrimmed picture; None: nothing was trimmed (= phash)
    #: The picture as a model encoder sees it (``view_size`` RGB uint8, same content as ``thumb``), only when asked
    #: for by :func:`~vdc_torch.fingerprints.per_image.fingerprint_batch`; never stored in a table.
    view: np.ndarray | None = None


# -- a whole dataset ---------------------------------------------------------------------------------------


@dataclass
class FingerprintTable:
    """Fingerprints of a dataset, column by column (row ``i`` is the ``i``-th usable sample)."""

    sample_index: np.ndarray  # (n,) int64: position of the row's sample in its dataset
    paths: list[str]
    labels: list[str | None]
    width: np.ndarray  # (n,) int32
    height: np.ndarray  # (n,) int32
    byte_digest: list[bytes | None]
    pixel_digest: list[bytes]
    exif_identity: list[str | None]
    phash: np.ndarray  # (n,) uint64
    phash_mirror: np.ndarray  # (n,) uint64
    phash_whole: np.ndarray  # (n,) uint64: pHash of the untrimmed picture (= phash when nothing was trimmed)
    crop_hashes: np.ndarray  # (n, k) uint64
    thumbs: np.ndarray  # (n, 32, 32, 3) uint8 (a StoredRows read on demand when loaded from a manifest)
    details: list[bytes]  # (a StoredRows of byte strings when loaded from a manifest)
    file_size: list[int | None]
    mtime_ns: list[int | None]
    extra_hashes: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls) -> FingerprintTable:
        return cls.from_rows([], [], [], [])

    @classmethod
    def from_rows(
        cls,
        indices: Sequence[int],
        paths: Sequence[str],
        labels: Sequence[str | None],
        fps: Sequence[Fingerprint],
    ) -> FingerprintTable:
        """Build the columns from per-sample fingerprints."""
        k = len(CROP_BOXES)
        return cls(
            sample_index=np.asarray(indices, dtype=np.int64),
            paths=list(paths),
            labels=list(labels),
            width=np.asarray([f.width for f in fps], dtype=np.int32),
            height=np.asarray([f.height for f in fps], dtype=np.int32),
            byte_digest=[f.byte_digest for f in fps],
            pixel_digest=[f.pixel_digest for f in fps],
            exif_identity=[f.exif_identity for f in fps],
            phash=np.asarray([f.phash for f in fps], dtype=np.uint64),
            phash_mirror=np.asarray([f.phash_mirror for f in fps], dtype=np.uint64),
            phash_whole=np.asarray([f.phash if f.phash_whole is None else f.phash_whole for f in fps], dtype=np.uint64),
            crop_hashes=np.stack([f.crop_hashes for f in fps]) if fps else np.zeros((0, k), np.uint64),
            thumbs=np.stack([f.thumb for f in fps]) if fps else np.zeros((0, THUMB_SIDE, THUMB_SIDE, 3), np.uint8),
            details=[f.detail for f in fps],
            file_size=[f.file_size for f in fps],
            mtime_ns=[f.mtime_ns for f in fps],
            extra_hashes=[f.extra_hashes for f in fps],
        )

    def fingerprint(self, row: int) -> Fingerprint:
        """Row ``row`` as a :class:`Fingerprint` record."""
        return Fingerprint(
            width=int(self.width[row]), height=int(self.height[row]), pixel_digest=self.pixel_digest[row],
            phash=int(self.phash[row]), phash_mirror=int(self.phash_mirror[row]),
            phash_whole=None if self.phash_whole[row] == self.phash[row] else int(self.phash_whole[row]),
            crop_hashes=self.crop_hashes[row], thumb=self.thumbs[row], detail=self.details[row],
            byte_digest=self.byte_digest[row], exif_identity=self.exif_identity[row],
            file_size=self.file_size[row], mtime_ns=self.mtime_ns[row], extra_hashes=self.extra_hashes[row],
        )

    def rows(self, rows: Sequence[int]) -> FingerprintTable:
        """A new table holding only ``rows`` (in that order); columns kept in a manifest stay there (views)."""
        r = [int(i) for i in rows]
        return FingerprintTable(
            sample_index=self.sample_index[r], paths=_pick(self.paths, r), labels=_pick(self.labels, r),
            width=self.width[r], height=self.height[r], byte_digest=_pick(self.byte_digest, r),
            pixel_digest=_pick(self.pixel_digest, r), exif_identity=_pick(self.exif_identity, r),
            phash=self.phash[r], phash_mirror=self.phash_mirror[r], phash_whole=self.phash_whole[r],
            crop_hashes=self.crop_hashes[r],
            thumbs=_take(self.thumbs, r), details=_take(self.details, r), file_size=_pick(self.file_size, r),
            mtime_ns=_pick(self.mtime_ns, r), extra_hashes=_pick(self.extra_hashes, r),
        )

    @staticmethod
    def concat(tables: Sequence[FingerprintTable]) -> FingerprintTable:
        """Rows of all ``tables`` one after another (a single table's columns are kept as they are)."""
        tables = [t for t in tables if len(t)] or [FingerprintTable.empty()]
        first = tables[0]
        if len(tables) == 1:
            return FingerprintTable(**{name: getattr(first, name) for name in first.__dataclass_fields__})
        kwargs: dict[str, Any] = {}
        for name in first.__dataclass_fields__:
            values = [getattr(t, name) for t in tables]
            if any(isinstance(v, np.ndarray) or (is_stored(v) and not v.is_bytes) for v in values):
                kwargs[name] = np.concatenate([np.asarray(v) for v in values])
            else:
                kwargs[name] = list(itertools.chain.from_iterable(values))  # (sum() of lists is quadratic)
        return FingerprintTable(**kwargs)


def _pick(values: Sequence[Any], rows: list[int]) -> list[Any]:
    """``[values[i] for i in rows]``, a few times faster (itemgetter runs the loop in C)."""
    if len(rows) < 2:
        return [values[i] for i in rows]
    return list(operator.itemgetter(*rows)(values))


def values_at(column: Sequence[Any], rows: Sequence[int] | np.ndarray) -> list[Any]:
    """``[column[i] for i in rows]`` of a list or of a stored column, which is read in one pass (rows that lie
    near each other in the file with one call) instead of one read per row."""
    if is_stored(column):
        return list(column[np.asarray(rows, dtype=np.int64)])  # type: ignore[call-overload]
    return _pick(column, [int(r) for r in rows])


def _take(column: Any, rows: list[int]) -> Any:
    """``rows`` of an array, a list or a stored column (a view for the latter)."""
    if is_stored(column):
        return column.take(np.asarray(rows, dtype=np.int64))
    if isinstance(column, np.ndarray):
        return column[rows]
    return _pick(column, rows)


class LazyColumn:
    """Base of table columns read on demand (the store's manifest columns): ``take(rows)`` gives a view of some
    rows; ``is_bytes`` tells byte strings from fixed-width array rows. Tables treat them like their lists and
    arrays without knowing where the rows live."""

    is_bytes: bool = False

    def take(self, rows: np.ndarray) -> LazyColumn:  # noqa: D102 - see the class docstring
        raise NotImplementedError


def is_stored(value: Any) -> bool:
    """True for a column read on demand (:class:`LazyColumn`), such as a manifest's stored rows."""
    return isinstance(value, LazyColumn)


class KnownFingerprints(Protocol):
    """Fingerprints computed before, read (never written) by :func:`compute_fingerprints`: a fingerprint cache."""

    @property
    def table(self) -> FingerprintTable:
        """The known rows."""
        ...

    def lookup_row(self, key: FileKey | None) -> int | None:
        """The row of an unchanged file (same path, size and mtime), or ``None``."""
        ...

    def known_content(self) -> tuple[frozenset[int], frozenset[bytes]]:
        """File sizes and byte digests of the known rows (a renamed or touched file is read, not decoded)."""
        ...

    def lookup_digest(self, byte_digest: bytes | None) -> int | None:
        """The row of a file with exactly these bytes, or ``None``."""
        ...


# -- moving tables between processes (no pickle) -------------------------------------------------------------


def table_to_bytes(table: FingerprintTable) -> bytes:
    """Serialise a table to ``.npz`` bytes without pickle (variable-length columns as blobs + offsets)."""
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {}
    for name in table.__dataclass_fields__:
        value = getattr(table, name)
        if is_stored(value):
            value = list(value) if value.is_bytes else np.asarray(value)
        if isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            items = [json.dumps(v, sort_keys=True).encode() if isinstance(v, dict) else v for v in value]
            present = np.array([v is not None for v in items], dtype=bool)
            blobs = [v if isinstance(v, bytes) else (b"" if v is None else str(v).encode()) for v in items]
            kinds = {type(v).__name__ for v in value if v is not None}
            arrays[f"{name}.blob"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            arrays[f"{name}.offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
            arrays[f"{name}.present"] = present
            arrays[f"{name}.kind"] = np.array(sorted(kinds)[0] if kinds else "NoneType")
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def table_from_bytes(data: bytes) -> FingerprintTable:
    """Inverse of :func:`table_to_bytes` (``allow_pickle=False``)."""
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    kwargs: dict[str, Any] = {}
    for name in FingerprintTable.__dataclass_fields__:
        if name in arrays:
            kwargs[name] = arrays[name]
            continue
        blob = arrays[f"{name}.blob"].tobytes()
        offsets = arrays[f"{name}.offsets"]
        present = arrays[f"{name}.present"]
        kind = str(arrays[f"{name}.kind"])
        convert = {"bytes": bytes, "str": lambda b: b.decode(), "int": lambda b: int(b.decode()),
                   "dict": lambda b: json.loads(b.decode())}.get(kind, lambda b: b.decode())
        kwargs[name] = [
            convert(blob[offsets[i] : offsets[i + 1]]) if present[i] else None for i in range(len(present))
        ]
    return FingerprintTable(**kwargs)
