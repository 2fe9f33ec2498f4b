"""Dense alignment of a candidate pair: is the new image a (cropped, slightly rotated) view of the reference?

Local features need texture; smooth pictures (gradients, wallpapers, skies) give SIFT a handful of keypoints and
their crops go unverified. This module aligns the two gray detail images directly: the new image, shrunk to a
range of scales, is slid over the reference (normalised cross-correlation, ``cv2.matchTemplate``), the best
placement is refined to an affine transform by maximising the correlation (``cv2.findTransformECC``, which also
absorbs small rotations and aspect changes), and the aligned pair is then judged like any thumbnail pair.

Only for images whose detail is at least :data:`MIN_SIDE` px on its short side: at CIFAR-10 size there is too
little left to align reliably.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Long side of the reference at which placements are searched.
WORK_SIDE = 96
#: Both detail images need at least this short side.
MIN_SIDE = 48
#: Linear scales (new side / reference side) tried: crops keeping 55–100 % of the picture.
SCALES: tuple[float, ...] = tuple(np.round(np.arange(0.55, 1.001, 0.05), 2))
#: Side of the square the aligned pair is compared at (the thumbnail side).
COMPARE_SIDE = 32


@dataclass(frozen=True)
class Alignment:
    """Outcome of :func:`align`: ``transform`` maps new-detail pixels to reference-detail pixels (2×3)."""

    transform: np.ndarray
    similarity: float  # gray NCC of the aligned pair at COMPARE_SIDE
    detail_similarity: float  # NCC of the high-pass versions (fine structure)
    scale: float  # new side / reference side of the placement


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(image, (max(1, width), max(1, height)), interpolation=cv2.INTER_AREA)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float32).ravel() - a.mean()
    b = b.astype(np.float32).ravel() - b.mean()
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-6))


def _high_pass(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return image - cv2.GaussianBlur(image, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)


def align(new_detail: np.ndarray, ref_detail: np.ndarray) -> Alignment | None:
    """Best placement of the gray ``new_detail`` inside the gray ``ref_detail``, or None if none is possible."""
    if min(new_detail.shape) < MIN_SIDE or min(ref_detail.shape) < MIN_SIDE:
        return None
    rh, rw = ref_detail.shape
    factor = WORK_SIDE / max(rh, rw)
    ref_small = _resized(ref_detail, round(rw * factor), round(rh * factor))
    sh, sw = ref_small.shape
    nh, nw = new_detail.shape
    best: tuple[float, float, int, int, int, int] | None = None  # (score, scale, x, y, tw, th)
    for scale in SCALES:
        # the new image at this scale, keeping its own aspect, its area scale² of the reference's
        area = scale * scale * sw * sh
        th = int(round(np.sqrt(area * nh / nw)))
        tw = int(round(area / max(th, 1)))
        if th < 16 or tw < 16 or th > sh or tw > sw:
            continue
        template = _resized(new_detail, tw, th)
        if template.std() < 1.0:
            continue
        result = cv2.matchTemplate(ref_small, template, cv2.TM_CCOEFF_NORMED)
        _, score, _, (x, y) = cv2.minMaxLoc(result)
        if best is None or score > best[0]:
            best = (float(score), float(scale), x, y, tw, th)
    if best is None:
        return None
    _, scale, x, y, tw, th = best
    template = _resized(new_detail, tw, th)
    warp = np.array([[1.0, 0.0, x], [0.0, 1.0, y]], np.float32)  # template pixel -> ref_small pixel
    try:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 1e-4)
        _, warp = cv2.findTransformECC(template, ref_small, warp, cv2.MOTION_AFFINE, criteria, None, 3)
    except cv2.error:
        pass  # ECC did not converge: keep the template placement
    # compare at COMPARE_SIDE: the new image and the reference region it covers
    aligned = cv2.warpAffine(ref_small, warp, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
    a = _resized(template, COMPARE_SIDE, COMPARE_SIDE)
    b = _resized(aligned, COMPARE_SIDE, COMPARE_SIDE)
    similarity = _ncc(a, b)
    detail = _ncc(_high_pass(a), _high_pass(b))
    # new-detail pixel -> template pixel -> ref_small pixel -> ref-detail pixel
    to_template = np.diag([tw / nw, th / nh, 1.0])
    to_ref = np.diag([1.0 / factor, 1.0 / factor, 1.0])
    m = np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]])
    transform = (to_ref @ m @ to_template)[:2]
    return Alignment(transform=transform, similarity=similarity, detail_similarity=detail, scale=scale)
