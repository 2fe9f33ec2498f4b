"""The report of ``vdc dedup``: every group of duplicates inside one folder, its kept and removable files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vdc_torch.errors import InvalidParameterError

log = logging.getLogger(__name__)
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
    _check_limits(max_groups=max_groups, max_files=max_files)
    pics = _Pictures(getattr(found, "fingerprints", None), found.root)
    verdict = "duplicates" if found.counts.get("removable") else "clean"
    header = _page_header(title or "vdc_torch — duplicates inside one folder",
                          f"folder: {_esc(found.root or '(in-memory dataset)')} &nbsp;·&nbsp; keep: {_esc(found.keep)}")
    return _write_page(path, title or f"vdc_torch duplicates: {found.root}", [
        header,
        "<main>",
        _duplicates_summary(found, verdict),
        _groups_section(found, pics, max_groups, max_files),
        _similar_section(found, pics, max_groups),
        _problems_section(found),
        "</main>",
    ])


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
