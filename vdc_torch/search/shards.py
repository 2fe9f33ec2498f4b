"""A reference split across ``torch.distributed`` ranks: which global rows this rank holds, and the reductions
that make the cascade's answer the one a single process gives.

Each rank runs the cascade for *all* new samples against its own rows only. The answer stays that of one process
because every choice the cascade makes is either per pair (verifying a pair needs only its two images) or a
reduction with a total order over *global* row ids, done across ranks:

* a stage's matches are gathered and reduced to the best per new sample (kind, score, lowest global row), and the
  samples they settle are settled on every rank (later stages skip them everywhere);
* the candidates of a verification stage are put in one global order (query, distance, source, global row,
  mirror, crop box), deduplicated and capped per query as one process does, and each rank verifies its own in that
  order; the first verified candidate in the global order wins;
* the nearest-thumbnail candidates are the global top ``k`` (similarity, then lowest row) of the ranks' own top
  ``k``; the inverted file is trained on the same global sample on every rank (gathered), so each query probes
  the same lists;
* chance-limited radii and the exact/inverted-file choice use the size of the *whole* reference.

Every collective is called by every rank in the same order (the stage guards use global counts), so a rank
holding no row still takes part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vdc_torch.collective import all_gather_arrays, all_gather_json, all_sum, rank_and_world
from vdc_torch.fingerprints.align import MIN_SIDE as ALIGN_MIN_SIDE
from vdc_torch.fingerprints.compute import FingerprintTable


@dataclass(frozen=True)
class ReferenceShard:
    """This rank's part of a reference: ``rows[i]`` is the global row of local row ``i`` (ascending)."""

    rows: np.ndarray
    #: Rows of the whole reference, and of those large enough for dense alignment.
    total: int
    large_total: int
    rank: int = 0
    world: int = 1

    @classmethod
    def whole(cls, n_rows: int, n_large: int) -> ReferenceShard:
        """The whole reference on one process."""
        return cls(np.arange(n_rows, dtype=np.int64), n_rows, n_large)

    @classmethod
    def across_ranks(cls, rows: np.ndarray, table: FingerprintTable) -> ReferenceShard:
        """This rank's part ``table`` of a reference split across the ranks of the default group, its rows
        being global rows ``rows``; collective."""
        rank, world = rank_and_world()
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(table):
            raise ValueError(f"a reference shard of {len(table)} rows was given {len(rows)} global rows")
        if len(rows) > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("a reference shard's global rows must be ascending")
        return cls(rows, all_sum(len(rows)), all_sum(int(_large_enough_to_align(table).sum())), rank, world)

    @staticmethod
    def current_rank() -> int:
        return rank_and_world()[0]

    @property
    def split(self) -> bool:
        return self.world > 1

    def to_global(self, local: np.ndarray) -> np.ndarray:
        return self.rows[np.asarray(local, dtype=np.int64)]

    def gather_frame(self, frame: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
        """Every rank's match frame (its ``ref_row`` local) with global ``ref_row``, in rank order."""
        frame = frame if len(frame) else pd.DataFrame(columns=list(columns))
        q = frame["new_row"].to_numpy(np.int64) if len(frame) else np.zeros(0, np.int64)
        r = self.to_global(frame["ref_row"].to_numpy(np.int64)) if len(frame) else np.zeros(0, np.int64)
        score = frame["score"].to_numpy(np.float64) if len(frame) else np.zeros(0)
        q, r, score = all_gather_arrays(q, r, score)
        texts = all_gather_json([[str(v) for v in frame[c].tolist()] for c in ("kind", "method", "evidence")])
        kinds, methods, evidence = ([v for part in texts for v in part[i]] for i in range(3))
        return pd.DataFrame({"new_row": q, "ref_row": r, "kind": kinds, "method": methods, "score": score,
                             "evidence": np.asarray(evidence, dtype=object)}, columns=list(columns))

    def owned(self, global_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``global_rows`` this rank holds, and their local rows."""
        global_rows = np.asarray(global_rows, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.rows, global_rows), max(0, len(self.rows) - 1))
        mine = (self.rows[at] == global_rows) if len(self.rows) else np.zeros(len(global_rows), dtype=bool)
        return mine, at[mine]


def global_rows(shard: ReferenceShard | None, local: np.ndarray) -> np.ndarray:
    """Reference rows local to ``shard`` as rows of the whole reference (the same rows without a shard)."""
    return np.asarray(local) if shard is None else shard.to_global(local)


def _large_enough_to_align(table: FingerprintTable) -> np.ndarray:
    return np.minimum(np.asarray(table.width), np.asarray(table.height)) >= ALIGN_MIN_SIDE


def top_k_per_query(q: np.ndarray, r: np.ndarray, score: np.ndarray, k: int
                    ) -> np.ndarray:
    """Positions of each query's ``k`` best pairs: highest ``score`` first, then the lowest ``r``."""
    order = np.lexsort((r, -score, q))
    sorted_q = q[order]
    place = np.arange(len(order)) - np.searchsorted(sorted_q, sorted_q)
    return order[place < k]


def top_k_across_ranks(shard: ReferenceShard, q: np.ndarray, r: np.ndarray, score: np.ndarray, k: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each query's ``k`` best pairs over every rank's rows, as one process holding the whole reference keeps
    them (:func:`top_k_per_query` on global rows), and of those this rank's: ``(q, r, global rows, score)``, ``r``
    this rank's rows and ``score`` float32. Collective."""
    rank = np.full(len(q), shard.rank, np.int64)
    q, rg, score, owner, r = all_gather_arrays(q, shard.to_global(r), score.astype(np.float32), rank, r)
    best = top_k_per_query(q, rg, score, k)
    best = best[owner[best] == shard.rank]
    return q[best], r[best], rg[best], score[best]
