"""Fingerprint columns that stay in their manifest file and are read row by row when needed.

A million reference fingerprints hold 2.9 GB of 32×32×3 thumbnails, but matching reads the thumbnails of candidate
pairs only, and local features read the detail images of a few rows. :class:`StoredRows` is such a column: it
behaves like the array (``len``, ``shape``, ``[i]``, ``[rows]``, ``[a:b]``, ``np.asarray``) or, for byte strings,
like the list (``[i]`` gives ``bytes``), but keeps nothing in memory: each access reads the rows from the manifest's
SQLite blobs (incremental blob I/O). Selecting rows (:meth:`StoredRows.take`) gives another view, not a copy.

The manifest stays open through the SQLite connection that loaded it, so replacing the file afterwards (saving the
cache over itself) never mixes two files. Every part is checked against its digest the first time it is read.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from vdc_torch.errors import ManifestError
from vdc_torch.fingerprints.table import LazyColumn
from vdc_torch.fingerprints.table import is_stored as _is_stored

_VERIFY_CHUNK = 1 << 22
#: Byte rows read with one call at most (:meth:`StoredRows._read_byte_rows`), and the bytes it may read past
#: between two rows asked for.
SPAN_BYTES = 1 << 20
SPAN_GAP = 16 << 10


#: Prefix of the part checksums written now. CRC-32 is what zip, gzip and PNG guard their data with: it catches
#: damage (every burst of up to 32 bits, any other change but for 1 in 4 billion) at ~3 GB/s, where BLAKE2b ran at
#: ~0.5 GB/s and verifying the 3 GB thumbnail column of a 1M-image manifest took 7 s of a 62 s match. No checksum
#: without a key stops a deliberate edit, so nothing was given up. Parts saved before carry a bare BLAKE2b hex.
_CRC_PREFIX = "crc32:"


def part_digest(data: bytes | memoryview) -> str:
    """Checksum of one stored part, as saved: ``crc32:`` and 8 hex digits."""
    return f"{_CRC_PREFIX}{zlib.crc32(data):08x}"


def part_matches(chunks: Iterable[bytes | memoryview], expected: str) -> bool:
    """True when the part read as ``chunks`` has the checksum ``expected`` (CRC-32, or BLAKE2b of older saves)."""
    if expected.startswith(_CRC_PREFIX):
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        return f"{_CRC_PREFIX}{crc:08x}" == expected
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest() == expected


class ManifestHandle:
    """An open manifest: the read-only SQLite connection made when it was loaded, kept for its lazy columns.

    The connection holds the file open, so a later replacement of the path (a cache saved over itself) never mixes
    two files. Forked worker processes read through their inherited copy of it: the connection is read-only and
    ``immutable`` (no locks, no journal, only positioned reads), so parent and children do not disturb each other.
    """

    def __init__(self, name: str, connection: sqlite3.Connection) -> None:
        self.name = name
        self._connection = connection
        self._pid = os.getpid()
        self._blobs: dict[int, Any] = {}
        self._verified: set[int] = set()
        self._lock = threading.Lock()

    def _lock_for_this_process(self) -> threading.Lock:
        if self._pid != os.getpid():  # a lock held at fork time would never be released in the child
            self._lock = threading.Lock()
            self._pid = os.getpid()
        return self._lock

    def read(self, part: tuple[int, int, str], offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of a stored part ``(rowid, length, digest)``, verified on first access."""
        rowid, length, expected = part
        try:
            with self._lock_for_this_process():
                blob = self._blobs.get(rowid)
                if blob is None:
                    blob = self._connection.blobopen("parts", "data", rowid, readonly=True)
                    self._blobs[rowid] = blob
                if rowid not in self._verified:
                    if len(blob) != length:
                        raise ManifestError(f"{self.name} is corrupted: a stored part changed size after loading")
                    blob.seek(0)
                    chunks = (blob.read(min(_VERIFY_CHUNK, length - start)) for start in range(0, length, _VERIFY_CHUNK))
                    if not part_matches(chunks, expected):
                        raise ManifestError(
                            f"{self.name} is corrupted: a stored part does not match its checksum "
                            "(damaged or edited after saving)"
                        )
                    self._verified.add(rowid)
                blob.seek(offset)
                return blob.read(size)
        except sqlite3.Error as exc:
            raise ManifestError(f"{self.name} cannot be read ({exc})") from exc

    def __del__(self) -> None:
        try:
            for blob in self._blobs.values():
                blob.close()
            self._connection.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class PartStream:
    """A byte stream split over consecutive stored parts: ``read(start, size)`` may span parts."""

    def __init__(self, handle: ManifestHandle, parts: Sequence[tuple[int, int, str]]) -> None:
        self.handle = handle
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [p[1] for p in self.parts]).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, size: int) -> bytes:
        out = []
        part = int(np.searchsorted(self.starts, start, side="right")) - 1
        while size > 0:
            offset = start - int(self.starts[part])
            take = min(size, self.parts[part][1] - offset)
            out.append(self.handle.read(self.parts[part], offset, take))
            start += take
            size -= take
            part += 1
        return out[0] if len(out) == 1 else b"".join(out)


def _spans(starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    """``(a, b)`` ranges of sorted byte ranges ``starts[i]:ends[i]`` to read with one call each: a range joins the
    span before it while it starts at most :data:`SPAN_GAP` bytes after that span's end and the span stays within
    :data:`SPAN_BYTES` (a longer row is a span of its own)."""
    spans, a = [], 0
    starts_list, ends_list = starts.tolist(), ends.tolist()
    for i in range(1, len(starts_list) + 1):
        if i < len(starts_list) and starts_list[i] - ends_list[i - 1] <= SPAN_GAP \
                and ends_list[i] - starts_list[a] <= SPAN_BYTES:
            continue
        spans.append((a, i))
        a = i
    return spans


#: Tells why a stored byte string is not what the library writes (None: fine); see :class:`StoredRows`.
RowCheck = Callable[[bytes], "str | None"]


class StoredRows(LazyColumn):
    """A column of a manifest read on demand: fixed-width array rows, or byte strings (``offsets`` given).

    ``check`` (byte strings): each row read is validated with it — a stored detail image by its header — and a row
    it refuses is a :class:`ManifestError` naming the manifest, the row and ``row_names[row]`` (its sample path).
    """

    def __init__(
        self,
        stream: PartStream,
        n: int,
        row_shape: tuple[int, ...] = (),
        dtype: Any = np.uint8,
        offsets: np.ndarray | None = None,
        index: np.ndarray | None = None,
        coarse: StoredRows | None = None,
        check: tuple[str, RowCheck, Sequence[str]] | None = None,
    ) -> None:
        self.stream = stream
        #: ``(what, check, row_names)``: what a row is ("detail image"), its check, and each stored row's name.
        self.check = check
        self.rows_stored = n
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.offsets = offsets
        self.index = index
        #: Companion column derived from this one (the 8×8 coarse vectors of thumbnails), same rows.
        self.coarse = coarse
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    # -- shape ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.rows_stored if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def is_bytes(self) -> bool:
        return self.offsets is not None

    # -- selection -----------------------------------------------------------------------------------------
    def _stored_rows(self, rows: Any) -> np.ndarray:
        selected = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        if selected.dtype == bool:
            selected = np.flatnonzero(selected)
        selected = selected.astype(np.int64, copy=False)
        if selected.size and (selected.min() < -len(self) or selected.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        selected = np.where(selected < 0, selected + len(self), selected)
        return selected if self.index is None else self.index[selected]

    def take(self, rows: Any) -> StoredRows:
        """A view of ``rows`` (in that order), reading nothing."""
        stored = self._stored_rows(rows)
        coarse = self.coarse.take(rows) if self.coarse is not None else None
        return StoredRows(self.stream, self.rows_stored, self.row_shape, self.dtype, self.offsets, stored, coarse,
                          self.check)

    # -- reading -------------------------------------------------------------------------------------------
    def _read_one(self, stored: int) -> bytes:
        if self.offsets is not None:
            start, end = int(self.offsets[stored]), int(self.offsets[stored + 1])
            return self._checked(stored, self.stream.read(start, end - start))
        return self.stream.read(stored * self.row_bytes, self.row_bytes)

    def _checked(self, stored: int, data: bytes) -> bytes:
        """``data``, the byte string of stored row ``stored``, once :attr:`check` accepts it."""
        if self.check is not None:
            what, check, names = self.check
            problem = check(data)
            if problem is not None:
                raise ManifestError(f"{self.stream.handle.name} is corrupted: the stored {what} of row {stored} "
                                    f"({names[stored]!r}) is not one vdc_torch writes: {problem}")
        return data

    def _read_byte_rows(self, stored: np.ndarray) -> list[bytes]:
        """The byte strings of stored rows ``stored``, in that order. Rows lying near each other in the file are
        read with one call (spans of at most :data:`SPAN_BYTES`, skipping at most :data:`SPAN_GAP` bytes between
        two rows): a read costs tens of microseconds of locking and seeking, a CIFAR-size row a kilobyte."""
        assert self.offsets is not None
        out: list[bytes] = [b""] * len(stored)
        if not len(stored):
            return out
        order = np.argsort(stored, kind="stable")
        rows = stored[order]
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        places, row_list, start_list, end_list = order.tolist(), rows.tolist(), starts.tolist(), ends.tolist()
        for a, b in _spans(starts, ends):
            first = start_list[a]
            data = memoryview(self.stream.read(first, end_list[b - 1] - first))  # offsets only grow
            for j in range(a, b):
                out[places[j]] = self._checked(row_list[j], bytes(data[start_list[j] - first : end_list[j] - first]))
        return out

    def _read_array(self, stored: np.ndarray) -> np.ndarray:
        """Fixed-width rows ``stored``, in that order; rows near each other in the file are read with one call (see
        :meth:`_read_byte_rows`)."""
        out = np.empty((len(stored), *self.row_shape), dtype=self.dtype)
        if not len(stored):
            return out
        flat = out.reshape(len(stored), -1).view(np.uint8)
        order = np.argsort(stored, kind="stable")
        ordered = stored[order]
        for a, b in _spans(ordered * self.row_bytes, (ordered + 1) * self.row_bytes):
            first, last = int(ordered[a]), int(ordered[b - 1])
            data = np.frombuffer(self.stream.read(first * self.row_bytes, (last - first + 1) * self.row_bytes),
                                 np.uint8).reshape(-1, self.row_bytes)
            flat[order[a:b]] = data[ordered[a:b] - first]
        return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"row {i} out of range for {len(self)} rows")
            stored = (i % len(self)) if self.index is None else int(self.index[i % len(self)])
            data = self._read_one(stored)
            if self.offsets is not None:
                return data
            return np.frombuffer(data, self.dtype).reshape(self.row_shape).copy()
        stored = self._stored_rows(key)
        if self.offsets is not None:
            return self._read_byte_rows(stored)
        return self._read_array(stored)

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), 4096):
            chunk = self[start : start + 4096]
            yield from chunk

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.offsets is not None:
            raise TypeError("a stored column of byte strings is not an array")
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        kind = "byte strings" if self.offsets is not None else f"{self.dtype} rows of {self.row_shape}"
        return f"StoredRows({len(self)} {kind}, read on demand from {self.stream.handle.name})"


is_stored = _is_stored  # :func:`vdc_torch.fingerprints.compute.is_stored`, where tables need it
