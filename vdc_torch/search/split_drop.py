"""A drop matched against a reference split across ``torch.distributed`` ranks, with the drop split as well.

Each rank fingerprints its share of the new samples and keeps only those rows (:class:`SplitDrop`). The cascade
still needs every new sample on every rank (each rank holds a different part of the reference), but not all at
once: :func:`match_split_drop` gathers the drop :data:`DROP_CHUNK_ROWS` rows at a time, matches each chunk
against this rank's part of the reference (and, for the duplicates inside the drop, against this rank's own
rows), and lets the chunk go. A sample's answer depends only on that sample and the reference (the cascade's
radii, indexes and tie-breaks are per query and over the whole reference), so the frames are those one process
gives for the whole drop, while a rank holds its share of the drop, one chunk and the cascade's working memory
instead of the whole drop beside that working memory. The decision then needs the whole drop on every rank: a rank
packs its share into the byte pieces it sends (:meth:`SplitDrop.packed`) and lets the rows go before the drop is
gathered (:meth:`PackedDrop.whole`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vdc_torch.collective import all_gather_arrays, all_gather_bytes, all_gather_json, all_sum, rank_and_world
from vdc_torch.errors import InvalidParameterError
from vdc_torch.fingerprints.compute import FingerprintTable
from vdc_torch.fingerprints.table import table_from_bytes, table_to_bytes
from vdc_torch.search.cascade import match_tables
from vdc_torch.search.config import MATCH_COLUMNS, MatchConfig
from vdc_torch.search.reference_index import ReferenceIndex
from vdc_torch.search.shards import ReferenceShard, _large_enough_to_align
from vdc_torch.search.verify import FeatureCaches

#: New samples gathered and matched at once (a CIFAR-size row is ~3.8 KB: ~60 MB a chunk on every rank).
DROP_CHUNK_ROWS = 16_384
#: New samples moved between ranks by one collective (its buffers hold ~5 copies of their bytes: ~20 MB).
GATHER_ROWS = 1024


@dataclass(frozen=True)
class SplitDrop:
    """This rank's rows of a drop split across ranks: ``own`` row ``i`` is row ``positions[i]`` of the whole drop
    (rows in ``sample_index`` order), which has ``total`` rows."""

    own: FingerprintTable
    positions: np.ndarray
    total: int

    @classmethod
    def from_own(cls, own: FingerprintTable) -> SplitDrop:
        """The rows this rank fingerprinted, placed among every rank's by ``sample_index`` (collective)."""
        (every,) = all_gather_arrays(np.asarray(own.sample_index, np.int64))
        positions = np.searchsorted(np.sort(every), np.asarray(own.sample_index, np.int64))
        return cls(own, positions.astype(np.int64), len(every))

    @classmethod
    def of_whole(cls, table: FingerprintTable) -> SplitDrop:
        """A drop every rank holds whole (a stream), shared out: rank ``r`` keeps rows ``r, r + W, ...``.

        Collective. Every rank must hold the same rows (a stream that gives each rank its own share, as
        WebDataset's ``split_by_node`` does, cannot be matched this way): otherwise an error on every rank."""
        rank, world = rank_and_world()
        held = hashlib.blake2b(np.asarray(table.sample_index, np.int64).tobytes(), digest_size=16)
        for digest in table.pixel_digest:
            held.update(digest or b"")
        seen = all_gather_json([len(table), held.hexdigest()])
        if any(other != seen[0] for other in seen):
            counts = ", ".join(f"rank {r}: {n}" for r, (n, _) in enumerate(seen))
            raise InvalidParameterError(
                "with the reference split across ranks, a stream must give every rank the same samples (it gave "
                f"{counts} samples, or other ones): pass every rank the whole stream, or a map-style dataset")
        rows = np.arange(rank, len(table), world, dtype=np.int64)
        return cls(table.rows(rows), rows, len(table))

    def rows(self, start: int, stop: int) -> FingerprintTable:
        """Rows ``start:stop`` of the whole drop, on every rank (collective). They travel :data:`GATHER_ROWS` at a
        time into columns made once, so what a gather holds besides them (its bytes, as sent and received, and the
        parts they unpack to) stays that of a few thousand rows however many are gathered."""
        pieces = (self._piece(first, min(stop, first + GATHER_ROWS)) for first in range(start, stop, GATHER_ROWS))
        return _gathered(pieces, stop - start)

    def packed(self) -> PackedDrop:
        """This rank's rows as the pieces a gather of the whole drop sends: the table can go before it is gathered
        (:meth:`PackedDrop.whole`), so a rank never holds its own rows twice, as rows and in the whole drop."""
        return PackedDrop([self._piece(first, first + GATHER_ROWS) for first in range(0, self.total, GATHER_ROWS)],
                          self.total)

    def _piece(self, start: int, stop: int) -> bytes:
        mine = np.flatnonzero((self.positions >= start) & (self.positions < stop))
        return table_to_bytes(self.own.rows(mine))


@dataclass
class PackedDrop:
    """This rank's rows of a drop split across ranks, as byte pieces of :data:`GATHER_ROWS` rows of the whole."""

    pieces: list[bytes]
    total: int

    def whole(self) -> FingerprintTable:
        """The whole drop on every rank (collective); each piece is let go once sent."""
        def sent() -> Iterator[bytes]:
            while self.pieces:
                yield self.pieces.pop(0)

        return _gathered(sent(), self.total)


def _gathered(pieces: Iterator[bytes], rows: int) -> FingerprintTable:
    """``rows`` consecutive rows of a drop from every rank's byte pieces of them, gathered one piece at a time into
    columns made once (collective: every rank sends as many pieces)."""
    columns: dict[str, Any] = {}
    done = 0
    for blob in pieces:
        parts = [table_from_bytes(b) for b in all_gather_bytes(blob)]
        del blob
        merged = FingerprintTable.concat(parts)
        piece = merged.rows(np.argsort(merged.sample_index, kind="stable"))
        del parts, merged
        for name in piece.__dataclass_fields__:
            value = getattr(piece, name)
            if isinstance(value, np.ndarray):
                if name not in columns:
                    columns[name] = np.empty((rows, *value.shape[1:]), value.dtype)
                columns[name][done : done + len(piece)] = value
            else:
                columns.setdefault(name, []).extend(value)
        done += len(piece)
    return FingerprintTable(**columns) if columns else FingerprintTable.empty()


#: Maps thumbnails to unit embeddings (the gate's encoder), for the encoder stage.
Embed = Callable[[np.ndarray], np.ndarray]


def match_split_drop(drop: SplitDrop, ref: FingerprintTable, shard: ReferenceShard, config: MatchConfig,
                     *, internal: bool = True, embed: Embed | None = None, ref_embeddings: np.ndarray | None = None,
                     progress: str | None = None, chunk_rows: int | None = None,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cross matches of the drop against the reference (``ref`` is this rank's part, ``shard`` where it lies) and,
    with ``internal``, the duplicates inside the drop: the frames one process gives for the whole drop and the
    whole reference (new rows and reference rows of the whole drop and reference). ``chunk_rows`` new rows are
    gathered at a time (default :data:`DROP_CHUNK_ROWS`). ``embed`` turns on the encoder stage (``ref_embeddings``:
    the reference part's embeddings when already computed). Collective."""
    chunk_rows = chunk_rows or DROP_CHUNK_ROWS
    large_total = all_sum(int(_large_enough_to_align(drop.own).sum()))
    # the indexes several stages share (exact keys, pHashes) are built once for every chunk; the others per chunk
    ref_index = ReferenceIndex(ref, shard=shard)
    own_index = ReferenceIndex(drop.own, shard=ReferenceShard(drop.positions, drop.total, large_total, shard.rank,
                                                              shard.world)) if internal else None
    ref_emb = None if embed is None else ref_embeddings if ref_embeddings is not None else embed(ref.thumbs)
    own_emb = embed(drop.own.thumbs) if embed is not None and internal else None
    cross: list[pd.DataFrame] = []
    inside: list[pd.DataFrame] = []
    for start in range(0, drop.total, chunk_rows):
        chunk = drop.rows(start, min(drop.total, start + chunk_rows))
        new_emb = embed(chunk.thumbs) if embed is not None else None
        caches = FeatureCaches()  # the chunk's images verified against the reference are described once for both
        found = match_tables(chunk, ref, config, new_embeddings=new_emb, ref_embeddings=ref_emb,
                             feature_caches=caches, progress=progress, ref_index=ref_index, shard=shard)
        cross.append(_shifted(found, start, 0))
        if internal:  # against this rank's own rows, numbered from the chunk's first row (earlier ones negative;
            # the index keeps the drop's own numbering, which picks the inverted file's training rows)
            own_shard = ReferenceShard(drop.positions - start, drop.total, large_total, shard.rank, shard.world)
            found = match_tables(chunk, drop.own, config, same_table=True, new_embeddings=new_emb,
                                 ref_embeddings=own_emb, feature_caches=caches, ref_index=own_index,
                                 progress=progress and "internal duplicates", shard=own_shard)
            inside.append(_shifted(found, start, start))
        del chunk, caches, new_emb
    return _joined(cross), _joined(inside)


def _shifted(frame: pd.DataFrame, new_offset: int, ref_offset: int) -> pd.DataFrame:
    if not len(frame):
        return frame
    frame = frame.copy()
    frame["new_row"] = frame["new_row"].to_numpy(np.int64) + new_offset
    frame["ref_row"] = frame["ref_row"].to_numpy(np.int64) + ref_offset
    return frame


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MATCH_COLUMNS)
