"""Stage 6: what a person looks at to trust a :class:`~vdc_torch.gate.Decision`.

* :func:`write_html` — one self-contained HTML file (inline CSS, images as ``data:`` URIs, no external
  resource): the summary, every matched pair side by side with its kind, method, score and evidence, a sample of
  the novel (delta) images, label conflicts and problem files.
* :func:`write_csv` — ``matches.csv``, ``conflicts.csv``, ``problems.csv`` and ``internal_duplicates.csv``.
* :func:`plot_overlap_per_class` and :func:`plot_score_histograms` — PNG/SVG/PDF plots (matplotlib, Agg backend).
* :func:`write_duplicates_html` and :func:`write_duplicates_csv` — the same for the
  :class:`~vdc_torch.dedup.Duplicates` of one folder (``vdc dedup``): every group with its kept and removable files.

Pictures of the new data are read from its files under ``decision.new_root``. Reference pictures are read from
files only when the reference was fingerprinted from its files in this process (``decision.reference_from_files``),
and only paths inside its root; a reference loaded from a manifest — a file that may come from anyone — is shown
from its stored fingerprints (the gray detail image, ≤ 256 px, coloured with the chroma of the 32×32 thumbnail),
so a forged manifest cannot make a shared report carry a local picture. Nothing is ever written except the files
asked for.
"""
from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vdc_torch.faces.dedup_report import write_duplicates_csv, write_duplicates_html  # noqa: F401
from vdc_torch.faces.html import (  # noqa: F401
    _CSS,
    _JPEG_QUALITY,
    _KIND_COLOURS,
    THUMB_PX,
    _check_decision,
    _check_limits,
    _counted_kinds,
    _data_uri,
    _esc,
    _novel_rows,
    _page_header,
    _picture,
    _Pictures,
    _problems_section,
    _spread,
    _table,
    _thumbnail_from_file,
    _thumbnail_from_fingerprint,
    _write_page,
)
from vdc_torch.faces.plots import (  # noqa: F401
    _class_breakdown,
    _figure,
    _save,
    plot_overlap_per_class,
    plot_score_histograms,
)
from vdc_torch.search.cascade import KIND_RANK

log = logging.getLogger(__name__)


__all__ = ["plot_overlap_per_class", "plot_score_histograms", "write_csv", "write_duplicates_csv",
           "write_duplicates_html", "write_html"]


# -- HTML ----------------------------------------------------------------------------------------------------

def write_html(
    decision: Any,
    path: str | os.PathLike[str],
    *,
    max_pairs: int = 200,
    max_novel: int = 48,
    title: str | None = None,
    plots: bool = True,
) -> Path:
    """Write a self-contained HTML report of ``decision`` to ``path`` and return the path.

    >>> decision = DatasetGate(reference="data/v1").check("data/v2")   # doctest: +SKIP
    >>> write_html(decision, "reports/v2.html")                         # doctest: +SKIP
    """
    _check_decision(decision)
    _check_limits(max_pairs=max_pairs, max_novel=max_novel)
    new_pics = _Pictures(decision.new_fingerprints, decision.new_root)
    ref_pics = _Pictures(decision.reference_fingerprints, decision.reference_root,
                         read_files=bool(getattr(decision, "reference_from_files", False)), contained=True,
                         parts=getattr(decision, "reference_parts", None))
    parts = [_header(decision, title), "<main>", _summary(decision)]
    if plots:
        parts.append(_plots_section(decision))
    parts += [
        _classes_section(decision),
        _pairs_section(decision, new_pics, ref_pics, max_pairs),
        _novel_section(decision, new_pics, max_novel),
        _quality_section(decision, new_pics, max_novel),
        _conflicts_section(decision),
        _internal_section(decision, max_pairs),
        _problems_section(decision),
        "</main>",
    ]
    return _write_page(path, title or "vdc_torch decision: " + str(decision.action), parts)


def _header(decision: Any, title: str | None) -> str:
    return _page_header(title or "vdc_torch — should this model be retrained on this data?",
                        f"new: {_esc(decision.new_root or '(in-memory dataset)')} &nbsp;·&nbsp; reference: "
                        f"{_esc(decision.reference_root or '(manifest)')}")


def _summary(decision: Any) -> str:
    c = dict(decision.counts)
    readable = max(1, int(c.get("readable", 0)))
    action = str(decision.action)
    similar_counted = "similar" in _counted_kinds(decision)
    segments = _partition(decision)
    bar = "".join(
        f'<span style="width:{100 * n / readable:.3f}%;background:{_KIND_COLOURS[k]}" '
        f'title="{_esc(k)}: {int(n)}"></span>'
        for k, n in segments if n
    )
    names = {"similar": "similar (counted)" if similar_counted else "similar (in the delta)",
             "novel": "other novel", "internal_duplicate": "duplicate inside the new data"}
    legend = "".join(f'<i style="background:{_KIND_COLOURS[k]}"></i>{_esc(names.get(k, k.replace("_", " ")))} {int(n)}'
                     for k, n in segments)
    rows = [
        ("new samples", c.get("new")), ("readable", c.get("readable")), ("unreadable (left out)", c.get("unreadable")),
        ("reference samples", c.get("reference")), ("exact copies", c.get("exact")),
        ("near-duplicates", c.get("near_duplicate")),
        (f"similar ({'counted' if similar_counted else 'not counted'})", c.get("similar")),
        ("duplicates inside the new data", c.get("internal_duplicates")),
        ("novel samples (delta)", c.get("delta")), ("label conflicts", c.get("conflicts")),
        ("classes the reference never saw", c.get("new_classes")), ("low-quality novel samples", c.get("low_quality")),
    ]
    counts = "".join(f"<tr><th>{_esc(k)}</th><td class='num'>{_esc(v if v is not None else '')}</td></tr>"
                     for k, v in rows)
    policy = getattr(decision, "policy", None)
    policy_rows = ""
    if policy is not None:
        policy_rows = "".join(
            f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
            for k, v in (("skip_overlap", f"{policy.skip_overlap:.0%}"),
                         ("min_delta_to_train", policy.min_delta_to_train),
                         ("count_similar", policy.count_similar),
                         ("train_on_new_classes", getattr(policy, "train_on_new_classes", "")),
                         ("exclude_low_quality", getattr(policy, "exclude_low_quality", "")))
        )
    return (
        '<section id="summary"><div class="verdict">'
        f'<div class="action {_esc(action)}" data-action="{_esc(action)}">{_esc(action.upper())}</div>'
        f'<div class="reason">{_esc(decision.reason)}</div></div>'
        f'<div class="bar">{bar}</div><div class="legend">overlap <b>{decision.overlap:.1%}</b> of the readable '
        f"new samples were already trained on &nbsp; {legend}</div>"
        f'<div class="grid2" style="margin-top:14px"><table>{counts}</table>'
        f'<table><tr><th colspan="2">policy</th></tr>{policy_rows}</table></div></section>'
    )


def _classes_section(decision: Any) -> str:
    """Per-class coverage (``Decision.classes``): classes the reference never saw come first, marked."""
    frame = getattr(decision, "classes", None)
    if frame is None or not len(frame):
        return ('<section id="classes"><h2>Classes</h2><p class="muted">The new data is unlabelled: no per-class '
                "coverage.</p></section>")
    frame = frame.assign(reference_has_it=["yes" if v else "NEVER SEEN" for v in frame["in_reference"]])
    frame = frame.sort_values(["in_reference", "class"], kind="stable")
    missing = int((~frame["in_reference"].astype(bool)).sum())
    note = (f"<p><b>{missing} class(es) the reference has never seen</b>: nothing the model learnt covers them.</p>"
            if missing else "")
    return (f'<section id="classes"><h2>Classes — {len(frame)}</h2>{note}'
            + _table(frame, ["class", "reference_has_it", "reference", "new", "seen", "novel", "internal_duplicates",
                             "conflicts"]) + "</section>")


def _quality_section(decision: Any, pics: _Pictures, limit: int) -> str:
    """Novel samples with a quality flag (``Decision.quality``), pictured, with the measurements behind them."""
    frame = getattr(decision, "quality", None)
    if frame is None or not len(frame):
        return ('<section id="quality"><h2>Low-quality novel samples</h2><p class="muted">None flagged.</p>'
                "</section>")
    effect = ("left out of the delta" if getattr(decision.policy, "exclude_low_quality", False)
              else "kept in the delta (Policy(exclude_low_quality=True) leaves them out)")
    figures = "".join(
        f'<figure data-new-index="{int(i)}" data-flags="{_esc(flags)}">{_picture(*pics.get(int(i), str(p)), str(p), "new")}'
        f"<div class='path'><b>{_esc(flags)}</b></div></figure>"
        for i, p, flags in frame[["index", "path", "flags"]].head(limit).itertuples(index=False)
    )
    return (f'<section id="quality"><h2>Low-quality novel samples — {len(frame)}, {_esc(effect)}</h2>'
            f'<div class="novel">{figures}</div>'
            + _table(frame, ["path", "flags", "width", "height", "contrast", "p05", "p95", "sharpness"]) + "</section>")


def _partition(decision: Any) -> list[tuple[str, int]]:
    """Every readable new sample counted once: exact, near-duplicate, similar, internal duplicate, other novel."""
    order = ["exact", "near_duplicate", "similar", "internal_duplicate", "novel"]
    if decision.new_fingerprints is not None:
        totals = _class_breakdown(decision).sum(axis=0)
        return [(k, int(totals.get(k, 0))) for k in order]
    c = decision.counts
    return [("exact", c.get("exact", 0)), ("near_duplicate", c.get("near_duplicate", 0)),
            ("similar", 0), ("internal_duplicate", c.get("internal_duplicates", 0)), ("novel", c.get("delta", 0))]


def _plots_section(decision: Any) -> str:
    images = []
    for name, func in (("overlap per class", plot_overlap_per_class), ("match scores", plot_score_histograms)):
        try:
            buffer = io.BytesIO()
            func(decision, buffer)
            uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            images.append(f'<div><img alt="{_esc(name)}" src="{uri}"></div>')
        except Exception as exc:  # noqa: BLE001 - a plot must never cost the report
            log.warning("report: the %s plot failed (%s)", name, exc)
    if not images:
        return ""
    return f'<section id="plots" class="plots"><h2>Plots</h2><div class="grid2">{"".join(images)}</div></section>'


def _ordered_matches(decision: Any) -> pd.DataFrame:
    matches = decision.matches
    if not len(matches):
        return matches
    conflicted = set(decision.conflicts["new_index"].astype(int)) if len(decision.conflicts) else set()
    order = matches.assign(
        _conflict=[0 if int(i) in conflicted else 1 for i in matches["new_index"]],
        _kind=matches["kind"].map(KIND_RANK).fillna(len(KIND_RANK)),
    )
    return order.sort_values(["_conflict", "_kind", "score", "new_index"]).drop(columns=["_conflict", "_kind"])


def _pairs_section(decision: Any, new_pics: _Pictures, ref_pics: _Pictures, max_pairs: int) -> str:
    matches = _ordered_matches(decision)
    total = len(matches)
    if not total:
        return '<section id="pairs"><h2>Matched pairs</h2><p class="muted">No new sample matched the reference.</p></section>'
    conflicted = set(decision.conflicts["new_index"].astype(int)) if len(decision.conflicts) else set()
    counted = _counted_kinds(decision)
    cards = []
    for row in matches.head(max_pairs).itertuples(index=False):
        new_uri, new_src = new_pics.get(int(row.new_index), str(row.new_path))
        ref_uri, ref_src = ref_pics.get(int(row.ref_index), str(row.ref_path))
        is_conflict = int(row.new_index) in conflicted
        badges = f'<span class="badge" style="background:{_KIND_COLOURS.get(row.kind, "#555")}">{_esc(row.kind)}</span>'
        if row.kind not in counted:
            badges += '<span class="badge" style="background:#8a8f98">not counted</span>'
        if is_conflict:
            badges += '<span class="badge" style="background:#c62828">label conflict</span>'
        labels = ""
        if row.new_label is not None or row.ref_label is not None:
            labels = f" · label new <b>{_esc(row.new_label)}</b> / reference <b>{_esc(row.ref_label)}</b>"
        cards.append(
            f'<figure class="pair{" conflict" if is_conflict else ""}" data-new-index="{int(row.new_index)}" '
            f'data-ref-index="{int(row.ref_index)}" data-kind="{_esc(row.kind)}">'
            f'<div class="imgs">{_picture(new_uri, new_src, str(row.new_path), "new")}'
            f'{_picture(ref_uri, ref_src, str(row.ref_path), "reference")}</div>'
            f'<figcaption class="meta">{badges} method <b>{_esc(row.method)}</b> · score '
            f"<b>{float(row.score):.3f}</b>{labels}"
            f'<div class="evidence">{_esc(row.evidence)}</div></figcaption></figure>'
        )
    shown = f"all {total}" if total <= max_pairs else f"{max_pairs} of {total} (raise max_pairs to see more)"
    return (
        f'<section id="pairs"><h2>Matched pairs — {shown}</h2>'
        '<p class="muted">Label conflicts first, then exact copies, near-duplicates and similar pictures; within '
        "each kind the least certain match comes first. Left: the new sample; right: its reference match.</p>"
        f'<div class="gallery">{"".join(cards)}</div></section>'
    )


def _novel_section(decision: Any, pics: _Pictures, max_novel: int) -> str:
    rows = _novel_rows(decision)
    table = decision.new_fingerprints
    if not rows or table is None:
        return '<section id="novel"><h2>Novel samples</h2><p class="muted">No novel sample.</p></section>'
    picked = _spread(rows, max_novel)
    figures = []
    for r in picked:
        uri, src = pics.get(int(table.sample_index[r]), table.paths[r])
        label = f"<div class='path'><b>{_esc(table.labels[r])}</b></div>" if table.labels[r] is not None else ""
        figures.append(f'<figure data-new-index="{int(table.sample_index[r])}">{_picture(uri, src, table.paths[r], "new")}'
                       f"{label}</figure>")
    shown = f"all {len(rows)}" if len(rows) == len(picked) else f"{len(picked)} of {len(rows)}, evenly spread"
    return (f'<section id="novel"><h2>Novel samples (the delta) — {shown}</h2>'
            f'<div class="novel">{"".join(figures)}</div></section>')


def _conflicts_section(decision: Any) -> str:
    frame = decision.conflicts
    if not len(frame):
        return '<section id="conflicts"><h2>Label conflicts</h2><p class="muted">None: every matched sample ' \
               "carries the same label as in the reference.</p></section>"
    return (f'<section id="conflicts"><h2>Label conflicts — {len(frame)}</h2><p class="muted">Matched samples whose '
            "label differs from the reference: relabelled data is new information, so the gate trains.</p>"
            + _table(frame, ["new_path", "new_label", "ref_path", "ref_label", "kind", "method", "score"])
            + "</section>")


def _internal_section(decision: Any, limit: int) -> str:
    frame = decision.internal_duplicates
    if not len(frame):
        return ""
    note = "" if len(frame) <= limit else f" (first {limit} shown)"
    return (f'<section id="internal"><h2>Duplicates inside the new data — {len(frame)}{note}</h2>'
            '<p class="muted">Only the first copy stays in the delta.</p>'
            + _table(frame, ["new_path", "first_path", "kind", "method", "score"], limit) + "</section>")


# -- CSV -----------------------------------------------------------------------------------------------------


def write_csv(decision: Any, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``matches.csv``, ``conflicts.csv``, ``problems.csv`` and ``internal_duplicates.csv`` into ``directory``.

    >>> write_csv(decision, "reports/v2")["matches"]   # doctest: +SKIP
    PosixPath('reports/v2/matches.csv')
    """
    _check_decision(decision)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in ("matches", "conflicts", "problems", "internal_duplicates"):
        frame = getattr(decision, name)
        target = out / f"{name}.csv"
        frame.to_csv(target, index=False)
        written[name] = target
    log.info("wrote CSV files to %s", out)
    return written
