"""Rows of a match table (columns :data:`~vdc_torch.search.config.MATCH_COLUMNS`) and the choice of one match per
new sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vdc_torch.search.config import KIND_RANK, MATCH_COLUMNS


def _rows(q: Any, r: Any, kind: str, method: str, score: Any, evidence: Any) -> pd.DataFrame:
    q = np.atleast_1d(np.asarray(q, dtype=np.int64))
    if not len(q) and _EMPTY is not None:  # most stages find nothing for most calls: one shared empty frame
        return _EMPTY
    return pd.DataFrame({
        "new_row": q,
        "ref_row": np.atleast_1d(np.asarray(r, dtype=np.int64)),
        "kind": kind,
        "method": method,
        "score": np.broadcast_to(np.asarray(score, dtype=np.float64), q.shape),
        "evidence": np.broadcast_to(np.asarray(evidence, dtype=object), q.shape) if np.ndim(evidence) == 0
        else np.asarray(evidence, dtype=object),
    })


#: The empty result of :func:`_rows` (typed like a full one; callers only concatenate or read it).
_EMPTY: pd.DataFrame | None = None
_EMPTY = _rows(np.zeros(0, np.int64), np.zeros(0, np.int64), "exact", "bytes", np.zeros(0), np.zeros(0, object))


def _first_per_query(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates("new_row", keep="first") if len(frame) else frame


def _best_per_query(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep each new row's strongest match: best kind first, then highest score, then lowest ref row."""
    if not len(frame):
        return frame if len(frame.columns) else pd.DataFrame(columns=MATCH_COLUMNS)
    frame = frame.assign(_rank=frame["kind"].map(KIND_RANK))
    frame = frame.sort_values(["new_row", "_rank", "score", "ref_row"], ascending=[True, True, False, True])
    return frame.drop_duplicates("new_row").drop(columns="_rank").reset_index(drop=True)
