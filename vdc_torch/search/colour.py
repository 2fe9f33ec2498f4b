"""Colour check of a verified pair: the chroma difference that no shared tone curve explains (a brightness, contrast
or gamma edit keeps the colours; a colour variant of the picture does not)."""

from __future__ import annotations

import cv2
import numpy as np

from vdc_torch.fingerprints.compute import crop_windows
from vdc_torch.search.geometry import _homogeneous
from vdc_torch.search.thumbs import MAX_GRAY_CHROMA

#: Overlap (thumbnail pixels, after the eroded border) below which two pictures' colours are not compared.
MIN_COLOUR_PIXELS = 16
#: A pixel counts in the curve residual when either side's Lab |a| + |b| exceeds this (0-255 scale).
MIN_PIXEL_CHROMA = 8.0
#: Colourful pixels below which the curve residual is 0 (too few to say anything).
MIN_COLOURFUL_PIXELS = 8
#: Share of the colourful pixels, best-agreeing first, whose mean is the residual (the rest: overlays, edits).
CURVE_TRIM_SHARE = 0.8

def _aligned_colour_difference(
    new_thumb: np.ndarray,
    ref_thumb: np.ndarray,
    transform: np.ndarray | None,
    new_shape: tuple[int, int],
    ref_shape: tuple[int, int],
    box: int | None = None,
) -> float:
    """Mean Lab chroma difference of two thumbnails after aligning the reference onto the new one.

    ``transform`` maps detail-image pixels of the new image to the reference's (from :func:`features.verify`);
    it is rescaled to thumbnail pixels. 0 when either overlap is colourless (grayscale copies keep their match).
    """
    if transform is None:
        return 0.0
    side = new_thumb.shape[0]

    def to_thumb(shape: tuple[int, int]) -> np.ndarray:  # detail pixel -> thumbnail pixel (centres aligned)
        h, w = shape
        sx, sy = side / max(w, 1), side / max(h, 1)
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)

    new_to_ref = to_thumb(ref_shape) @ _homogeneous(transform) @ np.linalg.inv(to_thumb(new_shape))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if transform.shape[0] == 3:
        warped = cv2.warpPerspective(ref_thumb, new_to_ref, (side, side), flags=flags)
        valid = cv2.warpPerspective(np.full((side, side), 255, np.uint8), new_to_ref, (side, side), flags=flags)
    else:
        warped = cv2.warpAffine(ref_thumb, new_to_ref[:2], (side, side), flags=flags)
        valid = cv2.warpAffine(np.full((side, side), 255, np.uint8), new_to_ref[:2], (side, side), flags=flags)
    mask = cv2.erode(valid, np.ones((3, 3), np.uint8)) == 255
    if box is not None:  # only this crop (an index into CROP_BOXES) of the new thumbnail
        inside = np.zeros_like(mask)
        inside[crop_windows(side, side)[box]] = True
        mask &= inside
    if mask.sum() < MIN_COLOUR_PIXELS:
        return 0.0
    return tone_mapped_colour_difference(new_thumb[mask], warped[mask])


def tone_mapped_colour_difference(new_rgb: np.ndarray, ref_rgb: np.ndarray, bins: int = 16) -> float:
    """Chroma difference (Lab |Δa|+|Δb|, 0–255 scale) of aligned pixels that no single tone curve explains.

    Brightness, contrast and gamma edits apply one curve to R, G and B alike. The curve is fitted both ways
    (reference -> new and new -> reference: a flat stretch of a curve can drain colour one way but never
    create it the other) and the larger mean difference of the 80 % best-agreeing pixels is returned, so an
    overlay on a small part does not count. A colour variant of a picture (grey sky made blue) keeps a large
    difference. ``(n, 3)`` uint8 RGB arrays of the same pixels; 0 when the new pixels are colourless.
    """
    new_lab = cv2.cvtColor(new_rgb.reshape(1, -1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB)[0, :, 1:]
    if np.abs(new_lab.astype(np.float32) - 128.0).mean() <= MAX_GRAY_CHROMA:
        return 0.0  # a grayscale copy: nothing to compare
    return max(_curve_residual(new_rgb, ref_rgb, bins), _curve_residual(ref_rgb, new_rgb, bins))


def _curve_residual(target_rgb: np.ndarray, source_rgb: np.ndarray, bins: int) -> float:
    """Trimmed mean chroma difference between ``target`` and ``curve(source)`` for the best shared curve."""
    target = target_rgb.astype(np.float32).reshape(-1, 3)
    source = source_rgb.astype(np.float32).reshape(-1, 3)
    which = np.minimum((source * bins / 256.0).astype(np.int64), bins - 1).reshape(-1)
    sums = np.bincount(which, weights=target.reshape(-1), minlength=bins)
    counts = np.bincount(which, minlength=bins)
    centres = (np.arange(bins) + 0.5) * 256.0 / bins
    seen = counts > 0
    curve = np.maximum.accumulate(np.interp(centres, centres[seen], sums[seen] / counts[seen]))
    mapped = np.interp(source, centres, curve).clip(0, 255).astype(np.uint8)
    lab_t = cv2.cvtColor(target_rgb.reshape(1, -1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB)[0, :, 1:]
    lab_m = cv2.cvtColor(mapped.reshape(1, -1, 3), cv2.COLOR_RGB2LAB)[0, :, 1:]
    lab_t, lab_m = lab_t.astype(np.float32) - 128.0, lab_m.astype(np.float32) - 128.0
    # only where either side has colour: colourless shadows and skies agree trivially and would dilute the mean
    colourful = np.maximum(np.abs(lab_t).sum(axis=1), np.abs(lab_m).sum(axis=1)) > MIN_PIXEL_CHROMA
    if colourful.sum() < MIN_COLOURFUL_PIXELS:
        return 0.0
    diff = np.sort(np.abs(lab_t - lab_m).sum(axis=1)[colourful])
    return float(diff[: max(1, int(len(diff) * CURVE_TRIM_SHARE))].mean())
