"""Geometry of a candidate pair: transforms as 3x3 matrices, the share of the reference a copy shows (what makes it
a crop), and turning copies rotated on their own canvas back (the rotation stage)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from vdc_torch.fingerprints.compute import CROP_BOXES, THUMB_SIDE, crop_windows
from vdc_torch.search.config import MatchConfig

#: Slack of :func:`_clean_keep`: a centred crop box may reach this share of its side beyond the rotated canvas.
CLEAN_KEEP_TOLERANCE = 0.02
#: A detail is shrunk to about this many times the working side before it is turned back (no aliasing in the warp).
ROTATION_OVERSAMPLE = 2.0

def _homogeneous(transform: np.ndarray) -> np.ndarray:
    """A 2×3 affine (or 3×3) transform as a 3×3 matrix."""
    m = np.eye(3)
    m[: transform.shape[0]] = transform
    return m


def reference_share(transform: np.ndarray | None, new_shape: tuple[int, int], ref_shape: tuple[int, int]) -> float:
    """Share of the reference's area that the new image shows (1.0 for a whole copy, ~0.81 for a 10 % crop).

    ``transform`` (2×3 or 3×3) maps new-detail pixels to reference-detail pixels; the new image's outline mapped
    by it is intersected with the reference's outline. 1.0 when there is no transform (nothing to measure).

    >>> round(reference_share(np.array([[0.9, 0, 5], [0, 0.9, 5]]), (100, 100), (100, 100)), 2)
    0.81
    """
    if transform is None:
        return 1.0
    (nh, nw), (rh, rw) = new_shape, ref_shape
    corners = np.array([[-0.5, -0.5, 1], [nw - 0.5, -0.5, 1], [nw - 0.5, nh - 0.5, 1], [-0.5, nh - 0.5, 1]])
    mapped = corners @ _homogeneous(transform).T
    if np.any(mapped[:, 2] <= 1e-9) or rw * rh <= 0:
        return 1.0
    outline = cv2.convexHull((mapped[:, :2] / mapped[:, 2:]).astype(np.float32))
    box = np.array([[-0.5, -0.5], [rw - 0.5, -0.5], [rw - 0.5, rh - 0.5], [-0.5, rh - 0.5]], np.float32)
    area, _ = cv2.intersectConvexConvex(outline, box)
    return float(min(1.0, max(0.0, area) / (rw * rh)))


#: The rotation stage turns unmatched samples back by every multiple of this many degrees up to ``max_rotation``
#: (either way): a pHash still agrees within about half a step.
ROTATION_STEP = 5.0


#: Working side of the turned-back centre crops (then area-resized to the thumbnail side, like the crop hashes).
_ROTATION_WORK_SIDE = 2 * THUMB_SIDE


#: The centred crops of :data:`CROP_BOXES` by their ``keep``, largest first: the turned-back crop of each angle is
#: hashed as the largest one that the rotated canvas still covers (about).
_CENTRE_BOXES: tuple[tuple[float, int], ...] = tuple(sorted(
    ((keep, i) for i, (keep, top, left) in enumerate(CROP_BOXES)
     if abs(top - (1 - keep) / 2) < 1e-6 and abs(left - (1 - keep) / 2) < 1e-6), reverse=True))


def _clean_keep(height: int, width: int, degrees: float) -> tuple[float, int]:
    """``(keep, box)``: the largest centred crop box whose window, on a copy rotated by ``degrees`` on its own
    canvas, stays inside that canvas (2 % tolerance), else the smallest."""
    a = math.radians(abs(degrees))
    c, s = math.cos(a), math.sin(a)
    half_w, half_h = width / 2.0, height / 2.0
    fits = min(half_w / (half_w * c + half_h * s), half_h / (half_w * s + half_h * c))
    for keep, box in _CENTRE_BOXES:
        if keep <= fits + CLEAN_KEEP_TOLERANCE:
            return keep, box
    return _CENTRE_BOXES[-1]


def _rotation_angles(config: MatchConfig) -> np.ndarray:
    """The angles (degrees) the rotation stage turns samples back by: ``±ROTATION_STEP, ... ±max_rotation``."""
    steps = np.arange(ROTATION_STEP, config.max_rotation + 1e-6, ROTATION_STEP)
    return np.concatenate([steps, -steps])


def _turn_back_matrix(height: int, width: int, degrees: float, window: tuple[slice, slice], out_w: int,
                      out_h: int) -> np.ndarray:
    """3×3: pixel of an ``out_w`` × ``out_h`` image of the crop ``window`` (reference frame) -> pixel of a copy of
    a ``height`` × ``width`` picture rotated by ``degrees`` about its centre on the same canvas."""
    y0, x0 = window[0].start, window[1].start
    ch, cw = window[0].stop - y0, window[1].stop - x0
    to_crop = np.array([[cw / out_w, 0, x0 + 0.5 * cw / out_w - 0.5], [0, ch / out_h, y0 + 0.5 * ch / out_h - 0.5],
                        [0, 0, 1]])
    return _homogeneous(cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, 1.0)) @ to_crop


def _turned_back_crops(detail: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each angle: the centred crop box (:func:`_clean_keep`) of ``detail`` turned back by that angle about its
    centre, area-resized to the thumbnail side; ``((len(angles), 32, 32) float32, (len(angles),) box ids)``.

    A copy rotated by ``a`` on the same canvas, turned back by ``a``, shows the reference's centre unharmed: that
    crop's pHash lies near the reference's crop hash of the same box.
    """
    h, w = detail.shape
    factor = min(1.0, ROTATION_OVERSAMPLE * _ROTATION_WORK_SIDE / max(h, w))
    small = detail if factor == 1.0 else cv2.resize(detail, (max(1, round(w * factor)), max(1, round(h * factor))),
                                                    interpolation=cv2.INTER_AREA)
    sh, sw = small.shape
    side = _ROTATION_WORK_SIDE
    out = np.empty((len(angles), THUMB_SIDE, THUMB_SIDE), np.float32)
    boxes = np.empty(len(angles), np.int64)
    for i, degrees in enumerate(angles.tolist()):
        _, box = _clean_keep(sh, sw, degrees)
        back = _turn_back_matrix(sh, sw, degrees, crop_windows(sh, sw)[box], side, side)
        warped = cv2.warpAffine(small, back[:2], (side, side),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(warped.astype(np.float32), (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        boxes[i] = box
    return out, boxes
