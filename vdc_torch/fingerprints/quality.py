"""Quality flags of samples, read from the fingerprints already computed (no second decode of any file).

Every flag is one named threshold on one measurement of the sample's thumbnail (32×32 RGB), its gray detail image
(the picture at ≤ 256 px a side, borders trimmed: about the size a model is trained at) or its size. They were
calibrated on real photos (camera JPEGs, Debian wallpapers, the visdatcompy examples) and on all 60,000 CIFAR-10
images, where they flag almost nothing, against blank, black, white, blurred, shrunk and cut-out copies of the
same pictures, which they flag (``benchmarks/quality_flags.py``; its galleries show what gets flagged). Precision
comes first: a flag removes a sample from training when ``Policy(exclude_low_quality=True)``.

- ``blank``: a near-constant picture — gray levels vary by less than :data:`BLANK_CONTRAST` (standard deviation)
  and no colour channel of the thumbnail varies by more than that either. Blank frames, solid fills.
  Composited on white as the fingerprints are, a transparent overlay is blank too.
- ``dark`` / ``bright``: 95 % of the pixels darker than :data:`DARK_LEVEL` / 95 % brighter than
  :data:`BRIGHT_LEVEL` (of 255): an under- or over-exposed shot with next to nothing visible (a black or white
  frame is ``blank`` and ``dark`` or ``bright``).
- ``blurry``: low detail — the detail image's Laplacian variance is below :data:`BLUR_RATIO` times its gray
  variance: no edge survives at training size (heavy defocus or motion blur, or a picture of smooth gradients
  only). The ratio does not depend on contrast or exposure; pictures with almost no contrast are not judged.
- ``tiny``: the shorter side below :data:`TINY_SIDE` px: too few pixels for any model.
- ``extreme_aspect``: the longer side more than :data:`EXTREME_ASPECT` times the shorter (banners, strips).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd

from vdc_torch.fingerprints.per_image import decode_detail, rows_by_shape
from vdc_torch.fingerprints.table import FingerprintTable, values_at

#: Standard deviation of the gray levels (and of each thumbnail channel) under which a picture is ``blank``.
BLANK_CONTRAST = 4.0
#: ``dark``: the 95th percentile of the gray levels is below this (of 255).
DARK_LEVEL = 20
#: ``bright``: the 5th percentile of the gray levels is above this (of 255).
BRIGHT_LEVEL = 235
#: ``blurry``: the Laplacian variance of the gray detail image is under this share of its gray variance.
BLUR_RATIO = 0.03
#: Pictures whose gray levels vary less than this are not judged for blur (a near-constant picture has no edges
#: to lose; it is ``blank``, ``dark`` or ``bright`` if anything).
BLUR_MIN_CONTRAST = 8.0
#: ``tiny``: the shorter side is below this many pixels.
TINY_SIDE = 32
#: ``extreme_aspect``: the longer side exceeds the shorter this many times.
EXTREME_ASPECT = 5.0

#: The flags, in the order they are reported.
QUALITY_FLAGS = ("blank", "dark", "bright", "blurry", "tiny", "extreme_aspect")
#: Columns of a quality frame: the row's sample index, its flags (``"dark,blurry"``; empty: none) and the
#: measurements behind them.
QUALITY_COLUMNS = ("index", "path", "flags", "width", "height", "contrast", "p05", "p95", "sharpness")


def measure(table: FingerprintTable, rows: Sequence[int] | None = None) -> pd.DataFrame:
    """The measurements behind the flags for ``rows`` of ``table`` (default: all): contrast (gray standard
    deviation), 5th and 95th gray percentiles, thumbnail colour spread and sharpness (Laplacian variance).

    The rows' thumbnails and detail images are read in one call each, and detail images of one size are measured
    together (CIFAR-10's 9,500 novel test images took 2.3 s one by one, most of a cached re-run)."""
    rows = list(range(len(table))) if rows is None else [int(r) for r in rows]
    picked = np.asarray(rows, dtype=np.int64)
    contrast = np.zeros(len(rows), np.float64)
    p05 = np.zeros(len(rows), np.float64)
    p95 = np.zeros(len(rows), np.float64)
    sharpness = np.zeros(len(rows), np.float64)
    colour = np.zeros(len(rows), np.float64)
    if len(rows):
        thumbs = np.asarray(table.thumbs[picked], dtype=np.float32).reshape(len(rows), -1, 3)
        colour[:] = thumbs.std(axis=1).max(axis=1)
        details = values_at(table.details, picked)
        grays = [decode_detail(detail) for detail in details]
        for shape, members in rows_by_shape(grays).items():
            stack = np.stack([grays[out] for out in members])
            contrast[members] = stack.std(axis=(1, 2))
            p05[members], p95[members] = np.percentile(stack, (5, 95), axis=(1, 2))
            if min(shape) >= 3:  # else no Laplacian: sharpness 0
                edges = np.stack([cv2.Laplacian(gray, cv2.CV_32F) for gray in stack])
                sharpness[members] = edges.var(axis=(1, 2))
    return pd.DataFrame({
        "row": picked,
        "width": table.width[rows].astype(np.int64), "height": table.height[rows].astype(np.int64),
        "contrast": contrast.round(2), "colour": colour.round(2), "p05": p05, "p95": p95,
        "sharpness": sharpness.round(2),
    })


def flags_of(measured: pd.DataFrame) -> list[list[str]]:
    """The flags (:data:`QUALITY_FLAGS`) of each row of :func:`measure`."""
    out = []
    for m in measured.itertuples(index=False):
        blank = m.contrast < BLANK_CONTRAST and m.colour < BLANK_CONTRAST
        short, long = min(m.width, m.height), max(m.width, m.height)
        found = {
            "blank": blank,
            "dark": m.p95 < DARK_LEVEL,
            "bright": m.p05 > BRIGHT_LEVEL,
            "blurry": m.contrast >= BLUR_MIN_CONTRAST and m.sharpness < BLUR_RATIO * m.contrast ** 2,
            "tiny": short < TINY_SIDE,
            "extreme_aspect": short > 0 and long / short > EXTREME_ASPECT,
        }
        out.append([flag for flag in QUALITY_FLAGS if found[flag]])
    return out


def quality_of(table: FingerprintTable, rows: Sequence[int] | None = None) -> pd.DataFrame:
    """Quality of ``rows`` of ``table`` (default: all; :data:`QUALITY_COLUMNS`), one row per sample, in row
    order."""
    measured = measure(table, rows)
    flags = flags_of(measured)
    rows_used = measured["row"].to_numpy()
    return pd.DataFrame({
        "index": table.sample_index[rows_used].astype(np.int64) if len(rows_used) else pd.Series([], dtype=np.int64),
        "path": pd.Series([table.paths[r] for r in rows_used], dtype=object),
        "flags": pd.Series([",".join(f) for f in flags], dtype=object),
        **{c: measured[c] for c in ("width", "height", "contrast", "p05", "p95", "sharpness")},
    }, columns=list(QUALITY_COLUMNS))
