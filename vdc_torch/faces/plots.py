"""Plots of a decision (matplotlib, Agg backend): overlap per class and match-score histograms."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vdc_torch.errors import InvalidParameterError
from vdc_torch.faces.html import _KIND_COLOURS, _check_decision, _counted_kinds

log = logging.getLogger(__name__)


# -- plots ---------------------------------------------------------------------------------------------------


def _figure() -> Any:
    from matplotlib.figure import Figure  # the object API: no pyplot, no global state, no window

    return Figure


def _save(fig: Any, path: str | os.PathLike[str] | io.IOBase) -> Any:
    if isinstance(path, (str, os.PathLike)):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=110, bbox_inches="tight")
        return target
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def _class_breakdown(decision: Any) -> pd.DataFrame:
    """Per new-sample class: how many readable samples were exact, near-duplicate, similar, duplicate, novel."""
    table = decision.new_fingerprints
    if table is None:
        raise InvalidParameterError("decision has no new_fingerprints; per-class counts need them")
    kinds = {int(i): k for i, k in zip(decision.matches["new_index"], decision.matches["kind"])}
    counted = _counted_kinds(decision)
    dups = set(decision.internal_duplicates["new_index"].astype(int)) if len(decision.internal_duplicates) else set()
    rows = []
    for s, label in zip(table.sample_index, table.labels):
        kind = kinds.get(int(s))
        if kind in counted:
            status = kind
        elif int(s) in dups:
            status = "internal_duplicate"
        else:
            status = "similar" if kind == "similar" else "novel"
        rows.append({"label": "(no label)" if label is None else str(label), "status": status})
    frame = pd.DataFrame(rows, columns=["label", "status"])
    order = ["exact", "near_duplicate", "similar", "internal_duplicate", "novel"]
    counts = frame.groupby(["label", "status"]).size().unstack(fill_value=0) if len(frame) else pd.DataFrame()
    return counts.reindex(columns=order, fill_value=0)


def plot_overlap_per_class(decision: Any, path: str | os.PathLike[str] | io.IOBase) -> Any:
    """Stacked bars per class of the new data: already trained on (exact, near-duplicate), similar, novel.

    >>> plot_overlap_per_class(decision, "reports/overlap.png")   # doctest: +SKIP
    """
    _check_decision(decision)
    counts = _class_breakdown(decision)
    Figure = _figure()
    n = max(1, len(counts))
    fig = Figure(figsize=(7.5, 1.2 + 0.38 * n))
    ax = fig.add_subplot()
    if not len(counts):
        ax.text(0.5, 0.5, "no readable new samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    counted = _counted_kinds(decision)
    totals = counts.sum(axis=1).to_numpy(dtype=float)
    left = np.zeros(len(counts))
    y = np.arange(len(counts))
    for status in counts.columns:
        values = counts[status].to_numpy(dtype=float)
        if not values.any():
            continue
        name = status.replace("_", " ") + (" (not counted)" if status == "similar" and status not in counted else "")
        ax.barh(y, values / totals, left=left, color=_KIND_COLOURS[status], label=name, height=0.7)
        left += values / totals
    seen = counts[[c for c in counts.columns if c in counted]].sum(axis=1).to_numpy(dtype=float) / totals
    for i, (frac, total) in enumerate(zip(seen, totals)):
        ax.text(1.01, i, f"{frac:.0%} of {int(total)}", va="center", fontsize=8)
    ax.set_yticks(y, [str(c) for c in counts.index], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the class's readable new samples")
    ax.set_title(f"Already trained on, per class (overall overlap {decision.overlap:.1%})", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5 / max(1.0, n ** 0.5)), ncol=5, fontsize=7, frameon=False)
    return _save(fig, path)


def plot_score_histograms(decision: Any, path: str | os.PathLike[str] | io.IOBase) -> Any:
    """One histogram of match scores per matching method, bars stacked by kind.

    >>> plot_score_histograms(decision, "reports/scores.png")   # doctest: +SKIP
    """
    _check_decision(decision)
    matches = decision.matches
    Figure = _figure()
    methods = sorted(matches["method"].astype(str).unique()) if len(matches) else []
    if not methods:
        fig = Figure(figsize=(5, 1.6))
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no matches: nothing to plot", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    cols = min(3, len(methods))
    rows = (len(methods) + cols - 1) // cols
    fig = Figure(figsize=(3.4 * cols, 2.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, method in zip(axes.ravel(), methods):
        subset = matches[matches["method"].astype(str) == method]
        data, colours, names = [], [], []
        for kind in ("exact", "near_duplicate", "similar"):
            scores = subset.loc[subset["kind"] == kind, "score"].to_numpy(dtype=float)
            if len(scores):
                data.append(np.clip(scores, 0.0, 1.0))
                colours.append(_KIND_COLOURS[kind])
                names.append(f"{kind.replace('_', ' ')} ({len(scores)})")
        ax.hist(data, bins=bins, stacked=True, color=colours, label=names)
        ax.set_title(f"method: {method}", fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    for ax in axes.ravel()[len(methods):]:
        ax.set_axis_off()
    fig.suptitle("Match scores per method", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
