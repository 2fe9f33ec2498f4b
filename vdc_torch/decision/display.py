"""How a :class:`~vdc_torch.decision.gate.Decision` shows itself in a notebook cell (``_repr_html_``).

A compact fragment — the verdict and its reason, the counts, the per-class table and a few matched pairs pictured
from the stored 32×32 thumbnails (never from files, so a decision against a manifest shows nothing its stored
paths name). The full, self-contained page is ``vdc_torch.faces.report.write_html``.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from PIL import Image

#: Matched pairs and classes shown in a notebook cell at most.
NOTEBOOK_PAIRS = 6
NOTEBOOK_CLASSES = 20
_COLOURS = {"train": "#b3261e", "skip": "#1b7f3b"}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _thumb_uri(thumbs: Any, row: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(thumbs[row], dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(frame: Any, columns: list[str], limit: int) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
                   for row in frame[columns].head(limit).itertuples(index=False))
    more = f"<p>… {len(frame) - limit} more (see the frame)</p>" if len(frame) > limit else ""
    return f"<table><tr>{head}</tr>{rows}</table>{more}"


def _pairs(decision: Any) -> str:
    new, ref = decision.new_fingerprints, decision.reference_fingerprints
    matches = decision.matches
    if new is None or ref is None or not len(matches):
        return ""
    new_rows = {int(s): i for i, s in enumerate(new.sample_index)}
    ref_rows = {int(s): i for i, s in enumerate(ref.sample_index)}
    figures = []
    for m in matches.head(NOTEBOOK_PAIRS).itertuples(index=False):
        q, r = new_rows.get(int(m.new_index)), ref_rows.get(int(m.ref_index))
        if q is None or r is None:
            continue
        style = 'width="64" height="64" style="image-rendering:pixelated;margin:1px"'
        figures.append(
            f'<figure style="display:inline-block;margin:4px;text-align:center;font-size:11px">'
            f'<img alt="new: {_esc(m.new_path)}" src="{_thumb_uri(new.thumbs, q)}" {style}>'
            f'<img alt="reference: {_esc(m.ref_path)}" src="{_thumb_uri(ref.thumbs, r)}" {style}>'
            f"<figcaption>{_esc(m.kind)} · {_esc(m.method)}</figcaption></figure>")
    shown = f"{len(figures)} of {len(matches)}" if len(matches) > len(figures) else f"all {len(figures)}"
    return f"<p><b>Matched pairs</b> (new | reference), {shown}:</p><div>{''.join(figures)}</div>"


def decision_html(decision: Any) -> str:
    """The notebook fragment of ``decision``: verdict, reason, counts, per-class table, a few matched pairs."""
    action = str(decision.action)
    c = decision.counts
    counts = [("readable new", c.get("readable", 0)), ("reference", c.get("reference", 0)),
              ("overlap", f"{decision.overlap:.1%}"), ("delta", c.get("delta", 0)),
              ("exact", c.get("exact", 0)), ("near-duplicate", c.get("near_duplicate", 0)),
              ("duplicates inside", c.get("internal_duplicates", 0)), ("label conflicts", c.get("conflicts", 0)),
              ("new classes", c.get("new_classes", 0)), ("low quality", c.get("low_quality", 0)),
              ("unreadable", c.get("unreadable", 0))]
    summary = "".join(f"<tr><th style='text-align:left'>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in counts)
    parts = [
        f'<div class="vdc-decision" data-action="{_esc(action)}">',
        f'<p><span style="background:{_COLOURS.get(action, "#555")};color:white;padding:2px 8px;'
        f'border-radius:4px;font-weight:bold">{_esc(action.upper())}</span> {_esc(decision.reason)}</p>',
        f"<table>{summary}</table>",
    ]
    classes = decision.classes
    if len(classes):
        shown = classes.assign(in_reference=["yes" if v else "NEVER SEEN" for v in classes["in_reference"]])
        shown = shown.sort_values(["in_reference", "class"], key=lambda col: col.map(
            lambda v: 0 if v == "NEVER SEEN" else 1) if col.name == "in_reference" else col, kind="stable")
        parts.append("<p><b>Classes</b>:</p>" + _table(shown, ["class", "in_reference", "reference", "new", "seen",
                                                              "novel", "conflicts"], NOTEBOOK_CLASSES))
    parts.append(_pairs(decision))
    parts.append("</div>")
    return "".join(parts)
