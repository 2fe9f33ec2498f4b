"""One-image and small-batch queries against a kept reference: "has the model already seen this image?"

A query fingerprints its images in this process (one decode each, no worker pool to start) and runs the cascade
against a :class:`~vdc_torch.search.reference_index.ReferenceIndex` that keeps its indexes between queries, so
its cost is the images' own fingerprints plus the index look-ups and the verification of their few candidates,
not a pass over the reference. The answer for an image is the one :meth:`DatasetGate.check` gives the same image
(the same stages, radii and tie-breaks), without the internal-duplicate pass and without a decision.

With the reference split across ``torch.distributed`` ranks a query is collective: every rank passes the same
images, rank 0 decodes and fingerprints them and sends the fingerprints to the others, each rank looks them up in
its own part, and every rank gets the answer one process holding the whole reference gives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from vdc_torch.collective import all_gather_bytes, all_gather_json
from vdc_torch.errors import InvalidParameterError
from vdc_torch.fingerprints.compute import FingerprintTable, fingerprint_stream
from vdc_torch.fingerprints.table import Problem, table_from_bytes, table_to_bytes
from vdc_torch.search.cascade import match_tables
from vdc_torch.search.config import MatchConfig
from vdc_torch.search.reference_index import ReferenceIndex
from vdc_torch.search.shards import ReferenceShard

#: Columns of the frame :meth:`DatasetGate.query` returns, one row per query image in input order.
QUERY_COLUMNS = ("query", "name", "seen", "kind", "method", "score", "evidence", "ref_index", "ref_path",
                 "ref_label")
#: ``kind`` of an image nothing in the reference matches, and of one that could not be read (``evidence`` says why).
UNSEEN, UNREADABLE = "new", "unreadable"


def _items(images: Any) -> list[Any]:
    """The query images as a list: one image (a path, bytes, a PIL image, an array or tensor) or a sequence of them."""
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, dict)) or hasattr(images, "getpixel"):
        return [images]
    if isinstance(images, np.ndarray) or hasattr(images, "dim"):  # an array or tensor: one image, or a batch
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    raise InvalidParameterError(
        f"query() takes an image (a path, bytes, a PIL image, an array or tensor) or a list of them, "
        f"not {type(images).__name__}"
    )


def _name(item: Any, position: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<query[{position}]>"


def query_reference(index: ReferenceIndex, images: Any, config: MatchConfig, counted_kinds: frozenset[str],
                    embed: Any = None, view_size: tuple[int, int] | None = None) -> pd.DataFrame:
    """The best reference match of each image (:data:`QUERY_COLUMNS`); ``counted_kinds`` are the kinds that count
    as seen (the gate's policy); ``embed(thumbs, views)`` gives the query's and the kept reference's embeddings
    when the gate has an encoder: of the images' views at ``view_size`` (made from their decode) when one is given
    and the reference is not split, else of their thumbnails (``views`` ``None``). Collective when ``index.shard``
    is split."""
    items = _items(images)
    names = [_name(item, i) for i, item in enumerate(items)]
    shard = index.shard if index.shard is not None and index.shard.split else None
    table, problems, views = _fingerprinted(items, names, shard, view_size if embed is not None else None)
    ref = index.ref
    n_ref = len(ref) if shard is None else shard.total
    new_emb = ref_emb = None
    if embed is not None and len(table) and n_ref:
        new_emb, ref_emb = embed(table.thumbs, views)
    found = match_tables(table, ref, config, ref_index=index, new_embeddings=new_emb, ref_embeddings=ref_emb,
                         shard=shard) if len(table) and n_ref else pd.DataFrame(columns=["new_row", "ref_row"])
    described = _reference_rows(found["ref_row"].to_numpy(np.int64), ref, shard)
    by_position: dict[int, dict[str, Any]] = {}
    for row in found.itertuples(index=False):
        q = int(row.new_row)
        ref_index, ref_path, ref_label = described[int(row.ref_row)]
        by_position[int(table.sample_index[q])] = {
            "seen": row.kind in counted_kinds, "kind": row.kind, "method": row.method,
            "score": round(float(row.score), 4), "evidence": row.evidence, "ref_index": ref_index,
            "ref_path": ref_path, "ref_label": ref_label,
        }
    unreadable = {p.index: p.reason for p in problems if p.fatal}
    records = []
    for position, name in enumerate(names):
        record = {"query": position, "name": name, "seen": False, "kind": UNSEEN, "method": None, "score": None,
                  "evidence": None, "ref_index": None, "ref_path": None, "ref_label": None}
        if position in unreadable:
            record.update(kind=UNREADABLE, evidence=unreadable[position])
        else:
            record.update(by_position.get(position, {}))
        records.append(record)
    dtypes = {"query": np.int64, "seen": bool, "score": np.float64, "ref_index": "Int64"}
    return pd.DataFrame({column: pd.Series([r[column] for r in records], dtype=dtypes.get(column, object))
                         for column in QUERY_COLUMNS})


def _fingerprinted(items: list[Any], names: list[str], shard: ReferenceShard | None,
                   view_size: tuple[int, int] | None = None,
                   ) -> tuple[FingerprintTable, list[Problem], np.ndarray | None]:
    """The fingerprints of the query images (one decode each), their problems and, with ``view_size`` and no split
    ``shard``, their views for the encoder (row order; else ``None``); with a split ``shard``, rank 0's
    fingerprints, sent to every rank, after checking that every rank asks about the same images (collective)."""
    if shard is not None:
        asked = all_gather_json(names)
        if any(other != names for other in asked):
            counts = ", ".join(f"rank {rank}: {len(other)}" for rank, other in enumerate(asked))
            raise InvalidParameterError(
                "query() with the reference split across ranks is collective: every rank must pass the same images "
                f"in the same order (images per rank: {counts})"
            )
    if shard is None or shard.rank == 0:
        def stream() -> Iterator[tuple[int, str, Any]]:
            yield from ((i, name, item) for i, (name, item) in enumerate(zip(names, items)))

        made: dict[int, np.ndarray] = {}
        wanted = view_size if shard is None else None
        table, problems = fingerprint_stream(stream(), view_size=wanted,
                                             on_views=None if wanted is None else lambda i, v: made.update(zip(i, v)))
        table.paths = [names[i] for i in table.sample_index.tolist()]
    if shard is None:
        rows = table.sample_index.tolist()
        return table, problems, (np.stack([made[i] for i in rows]) if view_size is not None and rows else None)
    blob = table_to_bytes(table) if shard.rank == 0 else b""
    table = table_from_bytes(all_gather_bytes(blob)[0])
    problems = [Problem(**p) for p in all_gather_json([p.to_dict() for p in problems] if shard.rank == 0 else [])[0]]
    return table, problems, None


def _reference_rows(rows: np.ndarray, ref: FingerprintTable, shard: ReferenceShard | None,
                    ) -> dict[int, tuple[int, str, Any]]:
    """``(sample index, path, label)`` of reference ``rows``; with a split ``shard`` the rows are global, described
    by the ranks that hold them and sent to every rank (collective)."""
    if shard is None:
        return {int(r): (int(ref.sample_index[r]), ref.paths[r], ref.labels[r]) for r in rows.tolist()}
    mine, local = shard.owned(rows)
    held = [[int(g), int(ref.sample_index[r]), ref.paths[r], _plain(ref.labels[r])]
            for g, r in zip(rows[mine].tolist(), local.tolist())]
    return {g: (i, path, label) for part in all_gather_json(held) for g, i, path, label in part}


def _plain(label: Any) -> Any:
    """A label as JSON holds it (a numpy scalar as its Python value)."""
    return label.item() if isinstance(label, np.generic) else label
