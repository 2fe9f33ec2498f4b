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
import html
import io
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image as PILImage
from PIL import ImageOps

from vdc_torch.data.decode import shrink_to_side
from vdc_torch.decision.store.manifest import resolve_sample_path
from vdc_torch.errors import InvalidParameterError
from vdc_torch.fingerprints.per_image import decode_detail
from vdc_torch.fingerprints.table import FingerprintTable
from vdc_torch.search.cascade import KIND_RANK

log = logging.getLogger(__name__)

__all__ = ["plot_overlap_per_class", "plot_score_histograms", "write_csv", "write_duplicates_csv",
           "write_duplicates_html", "write_html"]

#: Longest side, in pixels, of the pictures embedded in the HTML report.
THUMB_PX = 160
_JPEG_QUALITY = 82
_KIND_COLOURS = {"exact": "#1b7f3b", "near_duplicate": "#2a62b8", "similar": "#a36a00", "novel": "#8a8f98",
                 "internal_duplicate": "#7b4fb3"}


# -- pictures ------------------------------------------------------------------------------------------------


class _Pictures:
    """Small embedded pictures of samples: from the file when it exists, else from the stored fingerprint.

    ``contained``: only paths lexically inside ``root`` are read (a manifest's stored paths); ``read_files=False``:
    never a file, always the stored fingerprint.
    """

    def __init__(self, table: FingerprintTable | None, root: str, *, read_files: bool = True,
                 contained: bool = False) -> None:
        self.root = root
        self.read_files = read_files
        self.contained = contained
        self.rows: dict[int, int] = {}
        self.table = table
        if table is not None:
            self.rows = {int(s): i for i, s in enumerate(table.sample_index)}
        self._cache: dict[tuple[int, str], tuple[str, str]] = {}

    def get(self, sample_index: int, rel_path: str) -> tuple[str, str]:
        """``(data URI or "", source)`` where source is ``"file"``, ``"fingerprint"`` or ``"missing"``."""
        key = (int(sample_index), str(rel_path))
        if key not in self._cache:
            self._cache[key] = self._load(*key)
        return self._cache[key]

    def _load(self, sample_index: int, rel_path: str) -> tuple[str, str]:
        path = self._file(rel_path)
        if path is not None:
            try:
                return _data_uri(_thumbnail_from_file(path)), "file"
            except Exception as exc:  # noqa: BLE001 - unreadable now: fall back to the fingerprint, never fail the report
                log.debug("report: cannot read %s (%s); using the stored fingerprint", path, exc)
        row = self.rows.get(sample_index)
        if self.table is not None and row is not None:
            try:
                return _data_uri(_thumbnail_from_fingerprint(self.table, row)), "fingerprint"
            except Exception as exc:  # noqa: BLE001 - a corrupt stored picture shows as "no picture"
                log.debug("report: fingerprint picture of row %d failed (%s)", row, exc)
        return "", "missing"

    def _file(self, rel_path: str) -> str | None:
        if not self.read_files or not rel_path or rel_path.startswith("<"):
            return None  # not to be read, or an in-memory sample, e.g. "<CIFAR10[3]>"
        if self.contained:
            inside = resolve_sample_path(self.root, rel_path)
            return str(inside) if inside is not None and inside.is_file() else None
        path = rel_path if os.path.isabs(rel_path) else os.path.join(self.root, rel_path) if self.root else None
        return path if path and os.path.isfile(path) else None


def _thumbnail_from_file(path: str) -> np.ndarray:
    with PILImage.open(path) as image:
        image.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at a reduced DCT scale
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = PILImage.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("RGB")
        image.thumbnail((THUMB_PX, THUMB_PX), PILImage.Resampling.LANCZOS)
        return np.asarray(image)


def _thumbnail_from_fingerprint(table: FingerprintTable, row: int) -> np.ndarray:
    """The detail image's luminance with the thumbnail's chroma: a faithful small colour picture."""
    gray = shrink_to_side(decode_detail(table.details[row]), THUMB_PX)
    h, w = gray.shape
    ycrcb = cv2.cvtColor(np.ascontiguousarray(table.thumbs[row]), cv2.COLOR_RGB2YCrCb)
    chroma = cv2.resize(ycrcb, (w, h), interpolation=cv2.INTER_LINEAR)
    chroma[:, :, 0] = gray
    return cv2.cvtColor(chroma, cv2.COLOR_YCrCb2RGB)


def _data_uri(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- shared helpers ------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return html.escape(str(value), quote=True)


def _check_decision(decision: Any) -> None:
    for name in ("action", "reason", "overlap", "matches", "conflicts", "problems", "counts", "policy",
                 "novel_indices"):
        if not hasattr(decision, name):
            raise InvalidParameterError(
                f"decision of type {type(decision).__name__} has no {name!r}; pass the Decision returned by "
                "DatasetGate.check()"
            )


def _counted_kinds(decision: Any) -> frozenset[str]:
    """The kinds the decision counted as already trained on (its policy's definition, never recomputed here)."""
    return decision.policy.counted_kinds


def _novel_rows(decision: Any) -> list[int]:
    """Rows of ``decision.new_fingerprints`` that are in the delta (``decision.novel_indices``)."""
    table = decision.new_fingerprints
    if table is None:
        return []
    novel = set(decision.novel_indices)
    return [i for i, s in enumerate(table.sample_index) if int(s) in novel]


def _spread(items: list[int], limit: int) -> list[int]:
    """At most ``limit`` items evenly spread over ``items`` (deterministic)."""
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, num=limit).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


# -- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:20px;font-weight:600}
header .sub{color:#b9c0cc;font-size:12px;margin-top:4px;word-break:break-all}
main{padding:18px 28px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px 18px;margin:0 0 18px}
h2{font-size:16px;margin:0 0 10px}
.verdict{display:flex;gap:18px;align-items:center;flex-wrap:wrap}
.action{font-size:22px;font-weight:700;letter-spacing:.04em;color:#fff;padding:8px 18px;border-radius:6px}
.action.train{background:#2a62b8}.action.skip{background:#1b7f3b}
.action.duplicates{background:#7b4fb3}.action.clean{background:#1b7f3b}
.group .imgs{flex-wrap:wrap}.group .imgs>div{flex:0 1 170px}
.reason{flex:1 1 480px;font-size:15px}
.bar{height:14px;background:#e6e9ee;border-radius:7px;overflow:hidden;margin:12px 0 4px;display:flex}
.bar span{display:block;height:100%}
.legend{font-size:12px;color:#4a5160}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 10px;vertical-align:-1px}
table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #e6e9ee;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f7f8fa;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid2{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(372px,1fr));gap:12px}
.pair{border:1px solid #dde1e7;border-radius:6px;padding:8px;margin:0;background:#fafbfc}
.pair.conflict{border-color:#c62828;background:#fff5f5}
.imgs{display:flex;gap:8px}
.imgs div{flex:1 1 0;min-width:0;text-align:center}
.imgs img,.novel img{display:block;width:100%;height:150px;object-fit:contain;border-radius:3px;background:#eef0f3}
.novel img{height:120px}
.noimg{height:150px;display:flex;align-items:center;justify-content:center;color:#8a8f98;background:#eef0f3;
border-radius:3px;font-size:12px}
.path{font-size:11px;color:#4a5160;word-break:break-all;margin-top:2px}
.src{font-size:10px;color:#a36a00}
.meta{font-size:12px;margin-top:6px}
.badge{display:inline-block;color:#fff;border-radius:3px;padding:0 6px;font-size:11px;font-weight:600;margin-right:4px}
.evidence{color:#4a5160;font-size:11px;margin-top:2px}
.novel{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:10px}
.novel figure{margin:0;text-align:center}
.muted{color:#6b7280}
.plots img{max-width:100%;border:1px solid #e6e9ee;border-radius:4px}
code{font-size:12px}
"""


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
    for name, value in (("max_pairs", max_pairs), ("max_novel", max_novel)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidParameterError(f"{name}={value!r} must be a non-negative integer")
    new_pics = _Pictures(decision.new_fingerprints, decision.new_root)
    ref_pics = _Pictures(decision.reference_fingerprints, decision.reference_root,
                         read_files=bool(getattr(decision, "reference_from_files", False)), contained=True)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_esc(title or 'vdc_torch decision: ' + str(decision.action))}</title>",
        f"<style>{_CSS}</style></head><body>",
        _header(decision, title),
        "<main>",
        _summary(decision),
    ]
    if plots:
        parts.append(_plots_section(decision))
    parts += [
        _pairs_section(decision, new_pics, ref_pics, max_pairs),
        _novel_section(decision, new_pics, max_novel),
        _conflicts_section(decision),
        _internal_section(decision, max_pairs),
        _problems_section(decision),
        "</main></body></html>",
    ]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts), encoding="utf-8")
    log.info("wrote HTML report %s", target)
    return target


def _header(decision: Any, title: str | None) -> str:
    from vdc_torch import __version__

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"<header><h1>{_esc(title or 'vdc_torch — should this model be retrained on this data?')}</h1>"
        f'<div class="sub">new: {_esc(decision.new_root or "(in-memory dataset)")} &nbsp;·&nbsp; reference: '
        f'{_esc(decision.reference_root or "(manifest)")} &nbsp;·&nbsp; generated {_esc(stamp)} by vdc_torch '
        f"{_esc(__version__)}</div></header>"
    )


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
                         ("count_similar", policy.count_similar))
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


def _picture(uri: str, source: str, path: str, side: str) -> str:
    if uri:
        img = f'<img alt="{_esc(side)}: {_esc(path)}" src="{uri}" data-side="{_esc(side)}">'
    else:
        img = f'<div class="noimg" data-side="{_esc(side)}">no picture</div>'
    note = '<div class="src">rebuilt from the stored fingerprint (no image file)</div>' if source == "fingerprint" else ""
    return f"<div>{img}<div class='path'>{_esc(side)}: {_esc(path)}</div>{note}</div>"


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


def _table(frame: pd.DataFrame, columns: Iterable[str], limit: int | None = None) -> str:
    cols = [c for c in columns if c in frame.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
        for row in (frame[cols].head(limit) if limit else frame[cols]).itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


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


def _problems_section(decision: Any) -> str:
    frame = decision.problems
    if not len(frame):
        return '<section id="problems"><h2>Problem files</h2><p class="muted">None: every file was read.</p></section>'
    frame = frame.assign(
        effect=["left out" if f else "used (warning)" for f in frame["fatal"]],
        reason=[r[len(p) + 2:] if str(r).startswith(f"{p}: ") else r for p, r in zip(frame["path"], frame["reason"])],
    )
    return (f'<section id="problems"><h2>Problem files — {len(frame)}</h2>'
            + _table(frame, ["path", "effect", "reason"]) + "</section>")


# -- duplicates inside one folder (vdc dedup) ------------------------------------------------------------


def _check_duplicates(found: Any) -> None:
    for name in ("files", "similar", "problems", "counts", "keep", "root"):
        if not hasattr(found, name):
            raise InvalidParameterError(
                f"{type(found).__name__} has no {name!r}; pass the Duplicates returned by find_duplicates()"
            )


def write_duplicates_html(
    found: Any,
    path: str | os.PathLike[str],
    *,
    max_groups: int = 200,
    max_files: int = 12,
    title: str | None = None,
) -> Path:
    """Write a self-contained HTML report of a :class:`~vdc_torch.dedup.Duplicates` to ``path``: the summary, every
    group (at most ``max_groups``, ``max_files`` pictures each) with its kept and removable files side by side,
    the similar pairs not counted and the problem files. Returns the path.

    >>> write_duplicates_html(find_duplicates("data/v2"), "reports/v2-dups.html")   # doctest: +SKIP
    """
    _check_duplicates(found)
    for name, value in (("max_groups", max_groups), ("max_files", max_files)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidParameterError(f"{name}={value!r} must be a non-negative integer")
    pics = _Pictures(getattr(found, "fingerprints", None), found.root)
    verdict = "duplicates" if found.counts.get("removable") else "clean"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_esc(title or f'vdc_torch duplicates: {found.root}')}</title>",
        f"<style>{_CSS}</style></head><body>",
        _duplicates_header(found, title),
        "<main>",
        _duplicates_summary(found, verdict),
        _groups_section(found, pics, max_groups, max_files),
        _similar_section(found, pics, max_groups),
        _problems_section(found),
        "</main></body></html>",
    ]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts), encoding="utf-8")
    log.info("wrote HTML report %s", target)
    return target


def _duplicates_header(found: Any, title: str | None) -> str:
    from vdc_torch import __version__

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"<header><h1>{_esc(title or 'vdc_torch — duplicates inside one folder')}</h1>"
        f'<div class="sub">folder: {_esc(found.root or "(in-memory dataset)")} &nbsp;·&nbsp; keep: '
        f"{_esc(found.keep)} &nbsp;·&nbsp; generated {_esc(stamp)} by vdc_torch {_esc(__version__)}</div></header>"
    )


def _duplicates_summary(found: Any, verdict: str) -> str:
    c = dict(found.counts)
    readable = max(1, int(c.get("readable", 0)))
    removable = int(c.get("removable", 0))
    kept = int(c.get("groups", 0))
    segments = [("exact", int(c.get("exact", 0))), ("near_duplicate", int(c.get("near_duplicate", 0))),
                ("similar", int(c.get("similar", 0))), ("novel", readable - removable - kept),
                ("internal_duplicate", kept)]
    names = {"exact": "removable exact copy", "near_duplicate": "removable near-duplicate",
             "similar": "removable similar", "novel": "unique, in no group", "internal_duplicate": "kept of a group"}
    bar = "".join(f'<span style="width:{100 * n / readable:.3f}%;background:{_KIND_COLOURS[k]}" '
                  f'title="{_esc(names[k])}: {n}"></span>' for k, n in segments if n > 0)
    legend = "".join(f'<i style="background:{_KIND_COLOURS[k]}"></i>{_esc(names[k])} {n}' for k, n in segments if n > 0)
    rows = [
        ("images", c.get("images")), ("readable", c.get("readable")), ("unreadable (left out)", c.get("unreadable")),
        ("duplicate groups", c.get("groups")), ("files in groups", c.get("duplicate_files")),
        ("removable", removable), ("unique after removal", c.get("unique")),
        (f"similar pairs ({'counted' if found.count_similar else 'not counted'})",
         c.get("similar") if found.count_similar else c.get("similar_pairs")),
        ("groups mixing class labels", c.get("label_conflicts")), ("files that are not images", c.get("skipped_files")),
    ]
    counts = "".join(f"<tr><th>{_esc(k)}</th><td class='num'>{_esc(v if v is not None else '')}</td></tr>"
                     for k, v in rows)
    settings = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                       for k, v in (("keep", found.keep), ("count_similar", found.count_similar),
                                    ("max_problem_share", getattr(getattr(found, "policy", None),
                                                                  "max_problem_share", ""))))
    text = found.summary() if hasattr(found, "summary") else ""
    return (
        '<section id="summary"><div class="verdict">'
        f'<div class="action {verdict}" data-verdict="{verdict}">'
        f'{"DUPLICATES" if verdict == "duplicates" else "NO DUPLICATES"}</div>'
        f'<div class="reason">{_esc(text)}</div></div>'
        f'<div class="bar">{bar}</div><div class="legend">{legend}</div>'
        f'<div class="grid2" style="margin-top:14px"><table>{counts}</table>'
        f'<table><tr><th colspan="2">settings</th></tr>{settings}</table></div></section>'
    )


def _groups_section(found: Any, pics: _Pictures, max_groups: int, max_files: int) -> str:
    files = found.files
    if not len(files):
        return '<section id="groups"><h2>Duplicate groups</h2><p class="muted">No duplicates: every readable ' \
               "image is unique.</p></section>"
    groups = list(files.groupby("group", sort=True))
    cards = []
    for number, frame in groups[:max_groups]:
        figures = []
        for row in frame.head(max_files).itertuples(index=False):
            uri, src = pics.get(int(row.index), str(row.path))
            badges = ('<span class="badge" style="background:#1b7f3b">keep</span>' if row.action == "keep" else
                      '<span class="badge" style="background:#c62828">remove</span>')
            colour = _KIND_COLOURS.get(row.kind, "#555")
            badges += f'<span class="badge" style="background:{colour}">{_esc(row.kind)}</span>'
            size = f"{int(row.width)}×{int(row.height)}"
            if row.file_size is not None and not pd.isna(row.file_size):
                size += f", {int(row.file_size):,} bytes"
            figures.append(
                f'<div data-index="{int(row.index)}" data-action="{_esc(row.action)}">'
                f"{_picture(uri, src, str(row.path), str(row.action))}"
                f'<div class="meta">{badges}</div><div class="evidence">{_esc(size)} · {_esc(row.method)} '
                f"{float(row.score):.3f} with {_esc(row.matched_path)}</div></div>"
            )
        more = f'<div class="muted">… {len(frame) - max_files} more file(s)</div>' if len(frame) > max_files else ""
        cards.append(f'<figure class="pair group" data-group="{int(number)}"><div class="imgs">{"".join(figures)}'
                     f"</div>{more}<figcaption class='meta'>group {int(number)}: {len(frame)} files, keep "
                     f"<b>{_esc(frame.iloc[0]['kept_path'])}</b></figcaption></figure>")
    shown = f"all {len(groups)}" if len(groups) <= max_groups else f"{max_groups} of {len(groups)} (raise max_groups)"
    rule = ("the first file in the folder's sorted order" if found.keep == "first" else
            "the largest file (most pixels, then bytes, then first)")
    return (f'<section id="groups"><h2>Duplicate groups — {shown}</h2>'
            f'<p class="muted">Each group keeps {_esc(rule)}; the others would be removed. Under each picture: its '
            "size and the verified match that put it into the group. No file was changed.</p>"
            f'<div class="gallery">{"".join(cards)}</div></section>')


def _similar_section(found: Any, pics: _Pictures, limit: int) -> str:
    frame = found.similar
    if not len(frame):
        return ""
    cards = []
    for row in frame.head(limit).itertuples(index=False):
        a_uri, a_src = pics.get(int(row.index), str(row.path))
        b_uri, b_src = pics.get(int(row.similar_index), str(row.similar_path))
        cards.append(
            f'<figure class="pair" data-index="{int(row.index)}" data-similar-index="{int(row.similar_index)}">'
            f'<div class="imgs">{_picture(a_uri, a_src, str(row.path), "file")}'
            f'{_picture(b_uri, b_src, str(row.similar_path), "similar to")}</div>'
            f'<figcaption class="meta"><span class="badge" style="background:{_KIND_COLOURS["similar"]}">similar'
            '</span><span class="badge" style="background:#8a8f98">not counted</span> method '
            f"<b>{_esc(row.method)}</b> · score <b>{float(row.score):.3f}</b>"
            f'<div class="evidence">{_esc(row.evidence)}</div></figcaption></figure>'
        )
    note = "" if len(frame) <= limit else f" (first {limit} shown)"
    return (f'<section id="similar"><h2>Similar pairs, not counted — {len(frame)}{note}</h2>'
            '<p class="muted">They look alike but were not verified as the same picture; --count-similar '
            "(count_similar=True) counts them as duplicates.</p>"
            f'<div class="gallery">{"".join(cards)}</div></section>')


def write_duplicates_csv(found: Any, target: str | os.PathLike[str]) -> dict[str, Path]:
    """Write a :class:`~vdc_torch.dedup.Duplicates` as CSV: ``duplicates.csv`` (one row per file of a group),
    ``similar.csv`` and ``problems.csv`` into the directory ``target``, or only the duplicates to ``target`` when it
    ends in ``.csv``. Returns the files written by name.

    >>> write_duplicates_csv(find_duplicates("data/v2"), "reports/v2")["duplicates"]   # doctest: +SKIP
    PosixPath('reports/v2/duplicates.csv')
    """
    _check_duplicates(found)
    out = Path(target)
    if out.suffix.lower() == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        found.files.to_csv(out, index=False)
        return {"duplicates": out}
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, frame in (("duplicates", found.files), ("similar", found.similar), ("problems", found.problems)):
        written[name] = out / f"{name}.csv"
        frame.to_csv(written[name], index=False)
    log.info("wrote CSV files to %s", out)
    return written


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
