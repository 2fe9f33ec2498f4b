"""What every HTML page of vdc_torch shares: the embedded pictures (from files, or rebuilt from stored
fingerprints), escaping, the style sheet and small table and picture blocks.
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
from vdc_torch.decision.roots import root_of
from vdc_torch.decision.store.manifest import resolve_sample_path
from vdc_torch.errors import InvalidParameterError
from vdc_torch.fingerprints.per_image import decode_detail
from vdc_torch.fingerprints.table import FingerprintTable

log = logging.getLogger(__name__)


#: Longest side, in pixels, of the pictures embedded in the HTML report.
THUMB_PX = 160
_JPEG_QUALITY = 82
_KIND_COLOURS = {"exact": "#1b7f3b", "near_duplicate": "#2a62b8", "similar": "#a36a00", "novel": "#8a8f98",
                 "internal_duplicate": "#7b4fb3"}


# -- pictures ------------------------------------------------------------------------------------------------


class _Pictures:
    """Small embedded pictures of samples: from the file when it exists, else from the stored fingerprint.

    ``contained``: only paths lexically inside ``root`` are read (a manifest's stored paths); ``read_files=False``:
    never a file, always the stored fingerprint. ``parts`` (a reference grown by updates, see
    :mod:`vdc_torch.decision.roots`): each sample's path is under its own part's folder instead of ``root``.
    """

    def __init__(self, table: FingerprintTable | None, root: str, *, read_files: bool = True,
                 contained: bool = False, parts: list[tuple[int, str]] | None = None) -> None:
        self.root = root
        self.parts = parts or []
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
        path = self._file(rel_path, root_of(self.parts, sample_index) if self.parts else self.root)
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

    def _file(self, rel_path: str, root: str) -> str | None:
        if not self.read_files or not rel_path or rel_path.startswith("<"):
            return None  # not to be read, or an in-memory sample, e.g. "<CIFAR10[3]>"
        if self.contained:
            inside = resolve_sample_path(root, rel_path)
            return str(inside) if inside is not None and inside.is_file() else None
        path = rel_path if os.path.isabs(rel_path) else os.path.join(root, rel_path) if root else None
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


def _picture(uri: str, source: str, path: str, side: str) -> str:
    if uri:
        img = f'<img alt="{_esc(side)}: {_esc(path)}" src="{uri}" data-side="{_esc(side)}">'
    else:
        img = f'<div class="noimg" data-side="{_esc(side)}">no picture</div>'
    note = '<div class="src">rebuilt from the stored fingerprint (no image file)</div>' if source == "fingerprint" else ""
    return f"<div>{img}<div class='path'>{_esc(side)}: {_esc(path)}</div>{note}</div>"


def _table(frame: pd.DataFrame, columns: Iterable[str], limit: int | None = None) -> str:
    cols = [c for c in columns if c in frame.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
        for row in (frame[cols].head(limit) if limit else frame[cols]).itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


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


def _check_limits(**limits: Any) -> None:
    """Each keyword a non-negative ``int`` (the gallery limits of a report), else :class:`InvalidParameterError`."""
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidParameterError(f"{name}={value!r} must be a non-negative integer")


def _page_header(heading: str, where: str) -> str:
    """The page's header: ``heading`` and a line of ``where`` (already escaped) with the time and version."""
    from vdc_torch import __version__

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"<header><h1>{_esc(heading)}</h1>"
            f'<div class="sub">{where} &nbsp;·&nbsp; generated {_esc(stamp)} by vdc_torch {_esc(__version__)}'
            "</div></header>")


def _write_page(path: str | os.PathLike[str], title: str, body: list[str]) -> Path:
    """Write one self-contained HTML page (the style sheet inline) of ``body`` fragments to ``path``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        *body,
        "</body></html>",
    ]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts), encoding="utf-8")
    log.info("wrote HTML report %s", target)
    return target

