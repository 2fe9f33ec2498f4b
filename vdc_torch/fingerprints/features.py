"""Local-feature extraction, matching and geometric verification.

Confirms near-duplicate candidates that global hashes miss: crops, small
rotations, borders, watermarks, re-encodings, resizes, aspect-ratio changes
and, via :func:`extract_flipped`, horizontal mirror copies.  Works on the small
gray "detail" images of the pipeline (max side 256 px, down to 32x32) and is
meant to be called lazily for candidate pairs only::

    fa, fb = extract(img_a), extract(img_b)          # LocalFeatures
    v = verify(fa, fb)                                # Verification
    if not v.matched:                                 # mirror copy?
        v = verify(fa, extract_flipped(img_b))        # v.reflected is True

Only numpy, OpenCV and the standard library are used.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vdc_torch.errors import InvalidParameterError, InvalidTypeError

log = logging.getLogger(__name__)

__all__ = [
    "EXTRACTORS",
    "MAX_ANISOTROPY",
    "MIN_COVERAGE",
    "MIN_INLIERS",
    "MIN_INLIER_RATIO",
    "MIN_REPROJ_PX",
    "MODELS",
    "REPROJ_FRACTION",
    "SCALE_RANGE",
    "LocalFeatures",
    "Verification",
    "best_matches",
    "extract",
    "extract_flipped",
    "match",
    "verify",
]

EXTRACTORS: tuple[str, ...] = ("sift", "orb", "fast")
"""Supported extractors; ``fast`` = FAST corners described with ORB (BRIEF)."""

MODELS: tuple[str, ...] = ("affine", "similarity", "homography")
"""Geometric models of :func:`verify`.

``affine`` (default): 6-DOF ``cv2.estimateAffine2D``; crops, resizes,
rotations *and* aspect-ratio changes (copies squashed to a square), which the
4-DOF model misses.  ``similarity``: rotation + uniform scale + translation,
``cv2.estimateAffinePartial2D``.  ``homography``: ``cv2.findHomography``.
"""

# Decision thresholds of verify() (measured on real photos, see tests).
MIN_INLIERS: int = 10
"""RANSAC inliers needed; different photos reach <= 4, copies typically > 40."""
MIN_INLIER_RATIO: float = 0.3
"""Inliers / ratio-test matches needed."""
MIN_COVERAGE: float = 0.15
"""Convex hull of the inliers must span this fraction of image a or b.

Rejects a shared watermark/logo/object in otherwise different photos (their
hull covered <= 0.13 of the image in tests; a pasted object covering 25 % of
both images reaches ~0.16) while costing ~3 % recall on texture-poor copies.
"""
SCALE_RANGE: tuple[float, float] = (0.2, 5.0)
"""Plausible local scale of the transform a -> b (resizes and crops)."""
MAX_ANISOTROPY: float = 2.0
"""Max ratio of the transform's singular values (aspect change, shear)."""
REPROJ_FRACTION: float = 0.015
"""RANSAC reprojection threshold as a fraction of b's larger side ..."""
MIN_REPROJ_PX: float = 2.0
"""... but at least this many pixels."""

# Images whose smaller side is below _MIN_SIDE are upscaled by an integer
# factor (<= _MAX_UPSCALE) before detection; points are mapped back.  A 32x32
# image is detected at 96x96.  This lifts SIFT recall at 32 px from ~20 % to
# ~88 % and lets ORB's 31-px patches fit at all.
_MIN_SIDE: int = 96
_MAX_UPSCALE: int = 4
# ORB/FAST: border (detection pixels) without keypoints.  ORB pads its pyramid
# by reflection, so the descriptor patch may cross the border.  OpenCV's
# default of 31 px discards 40 % of a 256-px image and breaks 50 % resizes.
_ORB_EDGE: int = 8
_ORB_PATCH: int = 31
_ORB_LEVELS: int = 8
_FAST_THRESHOLD: int = 10

_MAGIC = b"VDCF"
_VERSION = 1
# magic, version, extractor index, flags, (pad), n, d, (pad), height, width
_HEADER = struct.Struct("<4sBBBxIHxxII")
_FLAG_FLIPPED = 1
_FLAG_U8_DESCRIPTORS = 2  # float32 SIFT descriptors stored losslessly as uint8

_DESCRIPTOR_DTYPE: dict[str, type] = {"sift": np.float32, "orb": np.uint8, "fast": np.uint8}
_DESCRIPTOR_SIZE: dict[str, int] = {"sift": 128, "orb": 32, "fast": 32}


def _check_extractor(extractor: str) -> None:
    if extractor not in EXTRACTORS:
        raise InvalidParameterError(f"extractor={extractor!r} is not one of {', '.join(EXTRACTORS)}")


@dataclass(frozen=True, eq=False)
class LocalFeatures:
    """Keypoint locations and descriptors of one image (arrays are read-only copies).

    ``points``: (n, 2) float32 (x, y) pixel coordinates in the image the
    features were extracted from, i.e. the mirrored image when ``flipped``.
    ``descriptors``: (n, d) float32 for sift, uint8 for orb/fast.
    ``image_shape``: (height, width) of the image.
    """

    extractor: str
    points: np.ndarray
    descriptors: np.ndarray
    image_shape: tuple[int, int]
    flipped: bool = False

    def __post_init__(self) -> None:
        _check_extractor(self.extractor)
        dtype = np.dtype(_DESCRIPTOR_DTYPE[self.extractor])
        points = np.array(self.points, dtype=np.float32, copy=True)
        if points.size == 0:
            points = points.reshape(0, 2)
        desc = np.asarray(self.descriptors)
        if desc.dtype != dtype:
            raise InvalidTypeError(
                f"descriptors dtype={desc.dtype} does not fit extractor={self.extractor!r}; expected {dtype}"
            )
        if points.ndim != 2 or points.shape[1] != 2:
            raise InvalidParameterError(f"points shape={points.shape} is not (n, 2)")
        if desc.ndim != 2 or desc.shape[0] != points.shape[0]:
            raise InvalidParameterError(f"descriptors shape={desc.shape} is not (n, d) with n={points.shape[0]} like points")
        desc = np.array(desc, copy=True, order="C")
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 2 or min(shape) < 0:
            raise InvalidParameterError(f"image_shape={self.image_shape!r} is not a (height, width) pair")
        points.flags.writeable = False
        desc.flags.writeable = False
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "descriptors", desc)
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "flipped", bool(self.flipped))

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __repr__(self) -> str:
        return (
            f"LocalFeatures(extractor={self.extractor!r}, n={len(self)}, d={self.descriptors.shape[1]}, "
            f"image_shape={self.image_shape}, flipped={self.flipped})"
        )

    def to_bytes(self) -> bytes:
        """Compact little-endian blob: 24-byte versioned header, points, descriptors (no pickle)."""
        n, d = self.descriptors.shape
        flags = _FLAG_FLIPPED if self.flipped else 0
        desc = self.descriptors
        if self.extractor == "sift" and n:
            # OpenCV's SIFT descriptors are integers 0..255 held in float32.
            as_u8 = desc.astype(np.uint8)
            if np.array_equal(as_u8, desc):
                desc, flags = as_u8, flags | _FLAG_U8_DESCRIPTORS
        header = _HEADER.pack(_MAGIC, _VERSION, EXTRACTORS.index(self.extractor), flags, n, d, *self.image_shape)
        points = np.ascontiguousarray(self.points, dtype="<f4")
        desc = np.ascontiguousarray(desc, dtype=desc.dtype.newbyteorder("<"))
        return b"".join((header, points.tobytes(), desc.tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> LocalFeatures:
        """Inverse of :meth:`to_bytes`; raises ValueError on malformed data."""
        buf = memoryview(data).cast("B")
        if len(buf) < _HEADER.size:
            raise InvalidParameterError(f"data length={len(buf)} is shorter than the {_HEADER.size}-byte header")
        magic, version, code, flags, n, d, h, w = _HEADER.unpack_from(buf)
        if magic != _MAGIC:
            raise InvalidParameterError(f"magic={magic!r} is not {_MAGIC!r}: not LocalFeatures bytes")
        if version != _VERSION:
            raise InvalidParameterError(f"version={version} is not one of {_VERSION}")
        if code >= len(EXTRACTORS):
            raise InvalidParameterError(f"extractor index={code} is not one of 0..{len(EXTRACTORS) - 1}")
        extractor = EXTRACTORS[code]
        u8 = extractor != "sift" or bool(flags & _FLAG_U8_DESCRIPTORS)
        stored = np.dtype(np.uint8) if u8 else np.dtype("<f4")
        expected = _HEADER.size + n * 8 + n * d * stored.itemsize
        if len(buf) != expected:
            raise InvalidParameterError(f"data length={len(buf)} does not match its header (expected {expected})")
        points = np.frombuffer(buf, dtype="<f4", count=n * 2, offset=_HEADER.size).reshape(n, 2)
        desc = np.frombuffer(buf, dtype=stored, count=n * d, offset=_HEADER.size + n * 8).reshape(n, d)
        desc = desc.astype(_DESCRIPTOR_DTYPE[extractor])
        return cls(extractor, points, desc, (h, w), bool(flags & _FLAG_FLIPPED))


@dataclass(frozen=True, eq=False)
class Verification:
    """Outcome of :func:`verify` for a pair (a, b).

    ``transform`` maps pixel coordinates of a to b in their original
    (un-mirrored) frames, so it contains the mirror when ``reflected``; 2x3
    for the affine models, 3x3 for ``homography``, None if no model was
    found.  ``scale`` and ``rotation_deg`` describe the transform's linear part
    at a's centre, without any mirror.  ``coverage_a`` / ``coverage_b`` are
    the fractions of each image's area spanned by the convex hull of the
    inlier points; ``coverage`` is their maximum.
    """

    matched: bool
    inliers: int
    good_matches: int
    inlier_ratio: float
    transform: np.ndarray | None
    scale: float
    rotation_deg: float
    reflected: bool = False
    coverage: float = 0.0
    coverage_a: float = 0.0
    coverage_b: float = 0.0


# --------------------------------------------------------------------------- extraction

_CACHE: dict[tuple[Any, ...], Any] = {}


def _cached(key: tuple[Any, ...], factory: Callable[[], Any]) -> Any:
    """OpenCV object cached per process and thread, created lazily.

    The key holds the pid, so a forked worker (e.g. a DataLoader worker)
    builds its own objects; the key's thread id means no lock is needed.
    """
    full = (os.getpid(), threading.get_ident(), *key)
    obj = _CACHE.get(full)
    if obj is None:
        obj = _CACHE[full] = factory()
    return obj


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_CACHE.clear)  # drop the parent's objects in the child


def _to_gray(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InvalidTypeError(f"image of type {type(image).__name__} is not a numpy.ndarray")
    if image.dtype != np.uint8:
        raise InvalidTypeError(f"image dtype={image.dtype} is not uint8")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    raise InvalidParameterError(f"image shape={image.shape} is not one of (h, w), (h, w, 1), (h, w, 3), (h, w, 4)")


def _empty(extractor: str, shape: tuple[int, int], flipped: bool) -> LocalFeatures:
    d = _DESCRIPTOR_SIZE[extractor]
    return LocalFeatures(
        extractor, np.zeros((0, 2), np.float32), np.zeros((0, d), _DESCRIPTOR_DTYPE[extractor]), shape, flipped
    )


def _upscale_factor(shape: tuple[int, int]) -> int:
    side = min(shape)
    if side >= _MIN_SIDE:
        return 1
    return int(min(_MAX_UPSCALE, math.ceil(_MIN_SIDE / max(side, 1))))


def _points(kps: Sequence[cv2.KeyPoint], factor: int) -> np.ndarray:
    if not kps:
        return np.zeros((0, 2), np.float32)
    pts = np.asarray(cv2.KeyPoint_convert(kps), dtype=np.float32).reshape(-1, 2)
    if factor > 1:  # cv2.resize maps pixel centres: x_up = (x + 0.5) * f - 0.5
        pts = (pts + 0.5) / factor - 0.5
    return pts


def _strongest(kps: Sequence[cv2.KeyPoint], idx: np.ndarray, n: int) -> np.ndarray:
    """Indices (subset of idx) of the n keypoints with the highest response."""
    if idx.size <= n:
        return idx
    resp = np.fromiter((kps[i].response for i in idx), np.float32, idx.size)
    return np.sort(idx[np.argsort(-resp, kind="stable")[:n]])


def _detect(work: np.ndarray, extractor: str, n: int) -> tuple[Sequence[cv2.KeyPoint], np.ndarray | None]:
    if extractor == "sift":
        sift = _cached(("sift", n), lambda: cv2.SIFT_create(nfeatures=n))
        kps, desc = sift.detectAndCompute(work, None)
        if desc is not None and len(kps) > n:  # retainBest keeps ties
            keep = _strongest(kps, np.arange(len(kps)), n)
            kps, desc = [kps[i] for i in keep], desc[keep]
        return kps, desc
    params = (_ORB_EDGE, _ORB_PATCH, _ORB_LEVELS)
    if extractor == "orb":
        orb = _cached(
            ("orb", n, *params),
            lambda: cv2.ORB_create(nfeatures=n, edgeThreshold=_ORB_EDGE, patchSize=_ORB_PATCH, nlevels=_ORB_LEVELS),
        )
        return orb.detectAndCompute(work, None)
    # fast: FAST corners (single scale, unoriented) described with ORB's BRIEF,
    # as the original library did; the n strongest away from the border.
    fast = _cached(("fast", _FAST_THRESHOLD), lambda: cv2.FastFeatureDetector_create(threshold=_FAST_THRESHOLD))
    kps = fast.detect(work, None)
    if not kps:
        return (), None
    h, w = work.shape
    pts = _points(kps, 1)
    e = _ORB_EDGE
    inside = np.flatnonzero((pts[:, 0] >= e) & (pts[:, 0] < w - e) & (pts[:, 1] >= e) & (pts[:, 1] < h - e))
    kps = [kps[i] for i in _strongest(kps, inside, n)]
    orb = _cached(
        ("fast-orb", *params),
        lambda: cv2.ORB_create(nfeatures=1, edgeThreshold=_ORB_EDGE, patchSize=_ORB_PATCH, nlevels=_ORB_LEVELS),
    )
    return orb.compute(work, kps)


def extract(
    image: np.ndarray, extractor: str = "sift", max_features: int = 500, *, flip: bool = False
) -> LocalFeatures:
    """Keypoints and descriptors of a gray, BGR or BGRA uint8 image.

    ``sift``: ``cv2.SIFT_create(nfeatures=max_features)``.  ``orb``:
    ``cv2.ORB_create(nfeatures=max_features)`` with an 8-px detection border.
    ``fast``: the ``max_features`` strongest FAST corners with ORB descriptors;
    single scale and unoriented, so it misses resized copies (use sift/orb).
    Images whose smaller side is < 96 px are upscaled by an integer factor
    (<= 4) for detection; points are in original pixel coordinates.
    ``flip=True`` mirrors the image first, see :func:`extract_flipped`.
    Images smaller than 8 px give empty features.
    """
    _check_extractor(extractor)
    if isinstance(max_features, bool) or not isinstance(max_features, (int, np.integer)) or max_features < 1:
        raise InvalidParameterError(f"max_features={max_features!r} is not a positive integer")
    gray = _to_gray(image)
    shape = (int(gray.shape[0]), int(gray.shape[1]))
    if min(shape) < 8:
        log.debug("image shape %s is too small for %s features", shape, extractor)
        return _empty(extractor, shape, flip)
    if flip:
        gray = cv2.flip(gray, 1)
    factor = _upscale_factor(shape)
    work = gray if factor == 1 else cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    kps, desc = _detect(work, extractor, int(max_features))
    if desc is None or not len(kps):
        return _empty(extractor, shape, flip)
    return LocalFeatures(extractor, _points(kps, factor), desc, shape, flip)


def extract_flipped(image: np.ndarray, extractor: str = "sift", max_features: int = 500) -> LocalFeatures:
    """Features of the horizontally mirrored image (``flipped=True``).

    Local descriptors are not mirror invariant, so mirror copies only match
    these: ``verify(fa, extract_flipped(img_b))`` reports ``reflected=True`` and
    a transform into b's original frame.  Only one side needs mirroring.
    """
    return extract(image, extractor, max_features, flip=True)


# --------------------------------------------------------------------------- matching


def match(a: LocalFeatures, b: LocalFeatures, ratio: float = 0.75) -> np.ndarray:
    """Index pairs (i of a, j of b) passing Lowe's ratio test on brute-force 2-NN.

    L2 for sift, Hamming for orb/fast.  Each j is kept once (its closest i),
    so repeated texture cannot inflate inlier counts.  Returns an (k, 2)
    int64 array sorted by i; empty if either side has too few descriptors.
    """
    if a.extractor != b.extractor:
        raise InvalidTypeError(f"cannot match extractor={a.extractor!r} with extractor={b.extractor!r}")
    if not 0.0 < ratio <= 1.0:
        raise InvalidParameterError(f"ratio={ratio!r} is not in (0, 1]")
    empty = np.zeros((0, 2), np.int64)
    if len(a) == 0 or len(b) < 2:
        return empty
    norm = cv2.NORM_L2 if a.extractor == "sift" else cv2.NORM_HAMMING
    matcher = _cached(("bf", norm), lambda: cv2.BFMatcher(norm, crossCheck=False))
    knn = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    rows = [
        (p[0].queryIdx, p[0].trainIdx, p[0].distance)
        for p in knn
        if len(p) == 2 and p[0].distance < ratio * p[1].distance
    ]
    if not rows:
        return empty
    arr = np.array(rows, dtype=np.float64)
    arr = arr[np.lexsort((arr[:, 2], arr[:, 1]))]  # by j, then distance
    first = np.ones(len(arr), bool)
    first[1:] = arr[1:, 1] != arr[:-1, 1]
    arr = arr[first]
    return arr[np.argsort(arr[:, 0], kind="stable"), :2].astype(np.int64)


# --------------------------------------------------------------------------- verification


def _hull_fraction(points: np.ndarray, shape: tuple[int, int]) -> float:
    area = float(shape[0]) * float(shape[1])
    if len(points) < 3 or area <= 0:
        return 0.0
    hull = cv2.convexHull(np.ascontiguousarray(points, dtype=np.float32))
    return float(min(1.0, cv2.contourArea(hull) / area))


def _flip_matrix(width: int) -> np.ndarray:
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _linear_part(m3: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Jacobian of ``m3`` at the centre of an image of ``shape``; None if it folds over the image."""
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    probes = [[cx, cy], [cx + 1, cy], [cx, cy + 1], [0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]
    hom = np.c_[np.array(probes, float), np.ones(len(probes))] @ m3.T
    if np.any(hom[:, 2] <= 1e-9):  # a homography sending part of a to infinity
        return None
    mapped = hom[:3, :2] / hom[:3, 2:3]
    return np.stack([mapped[1] - mapped[0], mapped[2] - mapped[0]], axis=1)


def verify(
    a: LocalFeatures,
    b: LocalFeatures,
    *,
    ratio: float = 0.75,
    min_inliers: int = MIN_INLIERS,
    min_inlier_ratio: float = MIN_INLIER_RATIO,
    min_coverage: float = MIN_COVERAGE,
    model: str = "affine",
    scale_range: tuple[float, float] = SCALE_RANGE,
    max_anisotropy: float = MAX_ANISOTROPY,
    reproj_fraction: float = REPROJ_FRACTION,
    min_reproj_px: float = MIN_REPROJ_PX,
) -> Verification:
    """Decide whether b shows (part of) the same picture as a.

    Ratio-test matches (:func:`match`) are fitted by RANSAC with ``model`` (see
    :data:`MODELS`) and a reprojection threshold of ``reproj_fraction`` times
    b's larger side, at least ``min_reproj_px``.  ``matched`` requires

    * ``inliers >= min_inliers`` and ``inliers / good_matches >= min_inlier_ratio``;
    * a plausible transform: orientation preserving, local scale within
      ``scale_range``, singular-value ratio <= ``max_anisotropy``;
    * ``coverage >= min_coverage``: the inliers' convex hull spans that
      fraction of a or of b (the max, so the decision is symmetric and a crop
      is judged in its own frame) -- rejects a shared logo/watermark.

    The result is ``reflected`` when exactly one of a, b is ``flipped``.
    """
    if model not in MODELS:
        raise InvalidParameterError(f"model={model!r} is not one of {', '.join(MODELS)}")
    if min_inliers < 1:
        raise InvalidParameterError(f"min_inliers={min_inliers!r} is not >= 1")
    reflected = a.flipped != b.flipped
    pairs = match(a, b, ratio)
    good = len(pairs)
    minimal = {"affine": 3, "similarity": 2, "homography": 4}[model]
    failed = Verification(False, 0, good, 0.0, None, 0.0, 0.0, reflected)
    if good < max(minimal, min_inliers):
        return failed
    src = a.points[pairs[:, 0]]
    dst = b.points[pairs[:, 1]]
    thr = max(float(min_reproj_px), float(reproj_fraction) * max(b.image_shape))
    ransac = {"ransacReprojThreshold": thr, "maxIters": 2000, "confidence": 0.995}
    if model == "affine":
        m, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, refineIters=10, **ransac)
    elif model == "similarity":
        m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, refineIters=10, **ransac)
    else:
        m, mask = cv2.findHomography(src, dst, cv2.RANSAC, thr, maxIters=2000, confidence=0.995)
    if m is None or mask is None or not np.all(np.isfinite(m)):
        return failed
    inl = mask.ravel().astype(bool)
    n_in = int(inl.sum())
    m3 = np.eye(3)
    m3[: m.shape[0]] = m
    jac = _linear_part(m3, a.image_shape)
    if jac is None:
        det, scale, rot, aniso = -1.0, 0.0, 0.0, math.inf
    else:
        det = float(np.linalg.det(jac))
        sv = np.linalg.svd(jac, compute_uv=False)
        scale = math.sqrt(abs(det))
        aniso = float(sv[0] / max(sv[1], 1e-12))
        rot = math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))
    cov_a = _hull_fraction(src[inl], a.image_shape)
    cov_b = _hull_fraction(dst[inl], b.image_shape)
    coverage = max(cov_a, cov_b)
    # m3 maps the frames the features were extracted in; undo mirrors.
    fa = _flip_matrix(a.image_shape[1]) if a.flipped else np.eye(3)
    fb = _flip_matrix(b.image_shape[1]) if b.flipped else np.eye(3)
    full = fb @ m3 @ fa
    transform = full if model == "homography" else full[:2].copy()
    inlier_ratio = n_in / good
    plausible = det > 0 and scale_range[0] <= scale <= scale_range[1] and aniso <= max_anisotropy
    matched = n_in >= min_inliers and inlier_ratio >= min_inlier_ratio and plausible and coverage >= min_coverage
    return Verification(
        matched=bool(matched),
        inliers=n_in,
        good_matches=good,
        inlier_ratio=float(inlier_ratio),
        transform=transform,
        scale=float(scale),
        rotation_deg=float(rot),
        reflected=reflected,
        coverage=coverage,
        coverage_a=cov_a,
        coverage_b=cov_b,
    )


def best_matches(
    query: Sequence[LocalFeatures],
    reference: Sequence[LocalFeatures],
    candidates: np.ndarray | None = None,
    **verify_kwargs: Any,
) -> list[tuple[int, int, Verification]]:
    """Verify (query_idx, ref_idx) candidate pairs; per query keep the verified reference with most inliers.

    Returns only genuine matches (``matched``), at most one per query (ties:
    higher inlier ratio, then lower ref index), sorted by query index; queries
    without a verified candidate are absent.  ``candidates=None`` verifies all
    len(query) x len(reference) pairs (~2-4 ms each): only for small sets;
    otherwise pass the pairs proposed by a global hash/embedding search.
    To also find mirror copies, call again with :func:`extract_flipped` queries.
    """
    if candidates is None:
        qi, ri = np.meshgrid(np.arange(len(query)), np.arange(len(reference)), indexing="ij")
        pairs = np.stack([qi.ravel(), ri.ravel()], axis=1)
    else:
        pairs = np.asarray(candidates)
        if pairs.size == 0:
            return []
        if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
            raise InvalidParameterError(f"candidates shape={pairs.shape} dtype={pairs.dtype} is not an integer (k, 2) array")
        bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= len(query)) | (pairs[:, 1] < 0) | (pairs[:, 1] >= len(reference))
        if bad.any():
            raise InvalidParameterError(
                f"candidates pair {pairs[bad][0].tolist()} is out of range for "
                f"{len(query)} query and {len(reference)} reference features"
            )
    best: dict[int, tuple[int, Verification]] = {}
    for q, r in pairs.tolist():
        v = verify(query[q], reference[r], **verify_kwargs)
        if not v.matched:
            continue
        cur = best.get(q)
        if cur is None or (v.inliers, v.inlier_ratio, -r) > (cur[1].inliers, cur[1].inlier_ratio, -cur[0]):
            best[q] = (r, v)
    log.debug("best_matches: verified %d pairs, %d of %d queries matched", len(pairs), len(best), len(query))
    return [(q, r, v) for q, (r, v) in sorted(best.items())]
