"""Tables end to end without reading what stays in a manifest: the shards of a sharded manifest, or a loaded
reference plus the rows :meth:`DatasetGate.update` adds.

:meth:`FingerprintTable.concat` turns every column into one list or array, which for columns read on demand
(:class:`~vdc_torch.decision.store.stored.StoredRows`: thumbnails, their coarse vectors, detail images) means
reading them whole — 2.9 GB of thumbnails for a 1M-image reference. :func:`concat_tables` keeps such columns lazy:
a :class:`ChainedRows` reads each requested row from the part (a shard's stored column, or rows in memory) that
holds it. Small columns (hashes, sizes, paths) are joined as :meth:`FingerprintTable.concat` joins them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from vdc_torch.fingerprints.table import FingerprintTable, LazyColumn, is_stored


class ChainedRows(LazyColumn):
    """Segments (lazy columns, arrays or lists of byte strings) read as one column, optionally through ``index``.

    Behaves like :class:`~vdc_torch.decision.store.stored.StoredRows`: ``len``, ``shape``, ``[i]``, ``[rows]``,
    ``[a:b]``, ``np.asarray`` (array rows) or ``[i] -> bytes`` (byte strings), :meth:`take` gives a view.
    ``coarse`` is the companion column of thumbnail segments (their 8×8 coarse vectors), chained the same way.
    """

    def __init__(self, segments: Sequence[Any], is_bytes: bool, row_shape: tuple[int, ...], dtype: Any,
                 index: np.ndarray | None = None, coarse: ChainedRows | None = None) -> None:
        flat: list[Any] = []
        for segment in segments:  # a chain of chains is one chain (views keep their own index)
            if isinstance(segment, ChainedRows) and segment.index is None:
                flat.extend(segment.segments)
            elif len(segment):
                flat.append(segment)
        self.segments = flat
        self.starts = np.cumsum([0] + [len(s) for s in flat]).astype(np.int64)
        self.rows_stored = int(self.starts[-1])
        self._is_bytes = bool(is_bytes)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.index = index
        self.coarse = coarse

    @property
    def is_bytes(self) -> bool:  # type: ignore[override]
        return self._is_bytes

    def __len__(self) -> int:
        return self.rows_stored if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def _stored_rows(self, rows: Any) -> np.ndarray:
        selected = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        if selected.dtype == bool:
            selected = np.flatnonzero(selected)
        selected = selected.astype(np.int64, copy=False).reshape(-1)
        if selected.size and (selected.min() < -len(self) or selected.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        selected = np.where(selected < 0, selected + len(self), selected)
        return selected if self.index is None else self.index[selected]

    def take(self, rows: Any) -> ChainedRows:
        """A view of ``rows`` (in that order), reading nothing."""
        coarse = self.coarse.take(rows) if self.coarse is not None else None
        return ChainedRows(self.segments, self._is_bytes, self.row_shape, self.dtype, self._stored_rows(rows),
                           coarse)

    def _read(self, stored: np.ndarray) -> Any:
        """Stored rows ``stored`` (in that order): an array, or a list of byte strings."""
        which = np.searchsorted(self.starts, stored, side="right") - 1
        if self._is_bytes:
            out: list[Any] = [None] * len(stored)
        else:
            out = np.empty((len(stored), *self.row_shape), dtype=self.dtype)  # type: ignore[assignment]
        for segment_number in np.unique(which).tolist():
            positions = np.flatnonzero(which == segment_number)
            local = stored[positions] - self.starts[segment_number]
            segment = self.segments[segment_number]
            if self._is_bytes:
                if isinstance(segment, list):
                    values = [segment[i] for i in local.tolist()]
                else:
                    values = segment[local]
                for position, value in zip(positions.tolist(), values):
                    out[position] = bytes(value)
            else:
                out[positions] = np.asarray(segment[local], dtype=self.dtype).reshape(len(local), *self.row_shape)
        return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"row {i} out of range for {len(self)} rows")
            stored = i % len(self) if self.index is None else int(self.index[i % len(self)])
            segment_number = int(np.searchsorted(self.starts, stored, side="right")) - 1
            value = self.segments[segment_number][stored - int(self.starts[segment_number])]
            return bytes(value) if self._is_bytes else np.array(value, dtype=self.dtype).reshape(self.row_shape)
        return self._read(self._stored_rows(key))

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), 4096):
            yield from self[start : start + 4096]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._is_bytes:
            raise TypeError("a chained column of byte strings is not an array")
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        kind = "byte strings" if self._is_bytes else f"{self.dtype} rows of {self.row_shape}"
        return f"ChainedRows({len(self)} {kind} over {len(self.segments)} segments, read on demand)"


def _coarse_of(segment: Any) -> Any:
    """The coarse vectors of a thumbnail segment: a stored column's companion, or computed for rows in memory."""
    stored = getattr(segment, "coarse", None)
    if stored is not None or is_stored(segment):
        return stored
    from vdc_torch.search.thumbs import coarse_vectors

    return coarse_vectors(np.asarray(segment)).astype(np.float32, copy=False)


def _chain(values: list[Any], name: str) -> ChainedRows:
    is_bytes = any(is_stored(v) and v.is_bytes for v in values) or not any(
        isinstance(v, np.ndarray) or is_stored(v) for v in values)
    first = next(v for v in values if is_stored(v))
    row_shape = () if is_bytes else tuple(first.shape[1:])
    dtype = np.uint8 if is_bytes else first.dtype
    coarse = None
    if name == "thumbs" and not is_bytes:
        parts = [_coarse_of(v) for v in values]
        if all(p is not None for p in parts):
            coarse = ChainedRows(parts, False, (int(parts[0].shape[1]),), np.float32)
    return ChainedRows(values, is_bytes, row_shape, dtype, coarse=coarse)


def concat_tables(tables: Sequence[FingerprintTable]) -> FingerprintTable:
    """Rows of all ``tables`` one after another, columns read on demand staying so (:class:`ChainedRows`).

    Without such columns this is :meth:`FingerprintTable.concat`.
    """
    tables = [t for t in tables if len(t)] or [FingerprintTable.empty()]
    fields = list(tables[0].__dataclass_fields__)
    if len(tables) == 1 or not any(is_stored(getattr(t, f)) for t in tables for f in fields):
        return FingerprintTable.concat(tables)
    kwargs: dict[str, Any] = {}
    for name in fields:
        values = [getattr(t, name) for t in tables]
        if any(is_stored(v) for v in values):
            kwargs[name] = _chain(values, name)
        elif any(isinstance(v, np.ndarray) for v in values):
            kwargs[name] = np.concatenate([np.asarray(v) for v in values])
        else:
            kwargs[name] = list(itertools.chain.from_iterable(values))
    return FingerprintTable(**kwargs)

