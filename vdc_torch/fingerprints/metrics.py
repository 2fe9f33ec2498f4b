"""The seven pairwise image metrics of visdatcompy, as vectorised matrices.

visdatcompy compared two datasets by reading and upsizing both images for
every pair.  Here every image is normalised once (:func:`normalize_images`:
gray, INTER_AREA to a common size, default 64x64) and whole (n, m) matrices
are computed in chunks (:func:`metric_matrix`).  Images of different sizes
are therefore compared on that common normalised size, not on their
original pixels; only ``pix2pix`` (:func:`pix2pix_matrix`) looks at the
original arrays.

Metrics (``x`` = image of ``a``, the reference; ``y`` = image of ``b``;
values 0..255, ``D`` = pixels per image):

* ``pix2pix`` - True when both arrays have the same shape and pixels.
* ``mse``   - mean((x - y)^2), as skimage ``mean_squared_error``.
* ``nrmse`` - ||x - y|| / ||x||, skimage ``normalized_root_mse`` with its
  default ``normalization="euclidean"`` (asymmetric: ``a`` is the reference).
* ``ssim``  - skimage ``structural_similarity(data_range=255)`` defaults:
  uniform 7x7 window, K1=0.01, K2=0.03, sample covariance, mean over the
  area 3 pixels away from the border; colour stacks average the channels.
* ``psnr``  - 10 log10(255^2 / mse), ``inf`` when mse == 0.
* ``mae``   - mean|x - y|.
* ``nmi``   - skimage ``normalized_mutual_information(bins=100)``:
  (H(X) + H(Y)) / H(X, Y), 1..2, with each image binned over its own
  min..max exactly like ``np.histogramdd``; ``nan`` if both are constant.

All of them equal skimage on the same normalised arrays (float64: ~1e-14;
skimage run on float32 input rounds in float32, ~1e-5 for ssim).
:func:`normalize_images` returns integer-valued float32, which the code
exploits: mse / mae / ssim window sums are exact integer arithmetic, so
identical images give exactly mse 0, psnr inf, ssim 1.

:data:`METRIC_RANGES` gives, per metric, the value range, whether higher is
more similar, the value for identical images, and the "duplicate" and
"similar" tiers (closed intervals, see :func:`in_range`).  Exact identity is
what ``pix2pix`` (originals) and the ``identical`` value (normalised) detect,
so "duplicate" is calibrated to also cover a re-encoded copy of the same
picture and "similar" to cover resized copies.  Measured at 64x64 gray on
the 44 readable photos of exif-samples/jpg (top level, gps/, exif-org/) and
the 10 cows frames (54 images): "jpeg75" = image vs its JPEG quality 75
re-encode (54 pairs); "resized" = image vs itself scaled by 0.5 and 0.75
(INTER_AREA) and 2.0 (INTER_LINEAR) before normalising (162); "frames" =
different cow frames (45; the cow walks, so pixel metrics see them as
different images); "unrelated" = ordered pairs of different photos (1892)::

    metric  identical  jpeg75 worst  resized worst/median  frames best  unrelated best / 1% most similar
    mse         0          5.45         212  / 0.72          1437          1065 / 2216
    nrmse       0          0.0214       0.103 / 0.0071       0.293         0.235 / 0.370
    ssim        1          0.9955       0.880 / 0.9993       0.516         0.383 / 0.214
    psnr       inf         40.8         24.9 / 49.6          16.6          17.9 / 14.7
    mae         0          1.68         9.86 / 0.42          22.5          25.8 / 36.9
    nmi         2          1.506        1.239 / 1.738        1.193         1.176 / 1.162

Chosen tiers (duplicate / similar): mse <= 10 / <= 500, nrmse <= 0.03 /
<= 0.16, ssim >= 0.99 / >= 0.8, psnr >= 38 / >= 21 (psnr 38 and 21 are
mse 10 and ~517), mae <= 2.5 / <= 15, nmi >= 1.45 / >= 1.2.  With them every
jpeg75 copy is a duplicate, every resized copy is similar (78-83% of them
also duplicate), and no unrelated or cow-frame pair is similar; nmi
separates worst (unrelated up to 1.176 vs 1.2).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from vdc_torch.cores import available_cores
from vdc_torch.errors import InvalidParameterError, InvalidTypeError

log = logging.getLogger(__name__)

__all__ = [
    "DATA_RANGE",
    "METRICS",
    "METRIC_RANGES",
    "image_digest",
    "in_range",
    "metric_matrix",
    "normalize_images",
    "pix2pix_matrix",
]

METRICS: tuple[str, ...] = ("pix2pix", "mse", "nrmse", "ssim", "psnr", "mae", "nmi")

#: Value range of the normalised images (uint8 data).
DATA_RANGE: float = 255.0

_SSIM_WIN = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_NMI_BINS = 100

#: Per metric: ``range`` (lo, hi) of the values, ``higher_is_similar``,
#: ``identical`` (the value for two equal images), and the ``duplicate``
#: (same picture, e.g. re-encoded) and ``similar`` (e.g. resized copy) tiers
#: as closed (lo, hi) intervals, see :func:`in_range`.  Calibrated at 64x64
#: gray; the module docstring lists the measurements.
METRIC_RANGES: dict[str, dict] = {
    "pix2pix": {
        "range": (False, True),
        "higher_is_similar": True,
        "identical": True,
        "duplicate": (True, True),
        "similar": (True, True),
    },
    "mse": {
        "range": (0.0, DATA_RANGE**2),
        "higher_is_similar": False,
        "identical": 0.0,
        "duplicate": (0.0, 10.0),
        "similar": (0.0, 500.0),
    },
    "nrmse": {
        "range": (0.0, math.inf),
        "higher_is_similar": False,
        "identical": 0.0,
        "duplicate": (0.0, 0.03),
        "similar": (0.0, 0.16),
    },
    "ssim": {
        "range": (-1.0, 1.0),
        "higher_is_similar": True,
        "identical": 1.0,
        "duplicate": (0.99, 1.0),
        "similar": (0.8, 1.0),
    },
    "psnr": {
        "range": (0.0, math.inf),
        "higher_is_similar": True,
        "identical": math.inf,
        "duplicate": (38.0, math.inf),
        "similar": (21.0, math.inf),
    },
    "mae": {
        "range": (0.0, DATA_RANGE),
        "higher_is_similar": False,
        "identical": 0.0,
        "duplicate": (0.0, 2.5),
        "similar": (0.0, 15.0),
    },
    "nmi": {
        "range": (1.0, 2.0),
        "higher_is_similar": True,
        "identical": 2.0,
        "duplicate": (1.45, 2.0),
        "similar": (1.2, 2.0),
    },
}


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InvalidParameterError(f"metric={metric!r} is not one of {', '.join(METRICS)}")
    return metric


def in_range(metric: str, values: np.ndarray | float, kind: str = "similar", *, tol: float = 1e-9) -> np.ndarray:
    """Boolean mask: ``values`` inside ``METRIC_RANGES[metric][kind]``.

    ``kind`` is ``"duplicate"``, ``"similar"`` or ``"identical"`` (the exact
    value of equal images, e.g. mse 0, ssim 1, psnr inf, nmi 2).

    Bounds are widened by ``tol`` (relative to max(1, |bound|)) to absorb
    floating-point rounding, e.g. nmi 2 - 4e-16 for identical images.
    """
    _check_metric(metric)
    if kind not in ("identical", "duplicate", "similar"):
        raise InvalidParameterError(f"kind={kind!r} is not one of identical, duplicate, similar")
    if kind == "identical":
        lo = hi = METRIC_RANGES[metric]["identical"]
    else:
        lo, hi = METRIC_RANGES[metric][kind]
    v = np.asarray(values)
    if metric == "pix2pix":
        return v.astype(bool) == bool(lo)
    v = v.astype(np.float64)
    with np.errstate(invalid="ignore"):
        lo_ok = v >= lo - tol * max(1.0, abs(lo)) if math.isfinite(lo) else v == lo
        hi_ok = v <= hi + tol * max(1.0, abs(hi)) if math.isfinite(hi) else np.ones(v.shape, dtype=bool)
    return lo_ok & hi_ok


# ---------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------


def _check_uint8_image(image: np.ndarray, i: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InvalidTypeError(f"images[{i}]={type(image).__name__} is not a numpy.ndarray")
    if image.dtype != np.uint8:
        raise InvalidParameterError(f"images[{i}].dtype={image.dtype} is not uint8")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise InvalidParameterError(f"images[{i}].shape={image.shape} is not one of (H, W), (H, W, 1), (H, W, 3), (H, W, 4)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidParameterError(f"images[{i}].shape={image.shape} is empty")
    return image


def normalize_images(images: Sequence[np.ndarray], size: tuple[int, int] = (64, 64), gray: bool = True) -> np.ndarray:
    """Stack uint8 images (gray, BGR or BGRA; any size) at one common size.

    Each image is converted (BGR->gray if ``gray``, else gray->BGR) and
    resized with ``cv2.INTER_AREA`` to ``size`` = (height, width), in uint8,
    so the result is integer-valued float32 of shape (N, h, w), or
    (N, h, w, 3) if ``gray`` is False.  Images of different sizes are thus
    compared on this common normalised size.
    """
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise InvalidParameterError(f"size={size!r} must be two positive ints (height, width)")
    shape = (len(images), h, w) if gray else (len(images), h, w, 3)
    out = np.empty(shape, dtype=np.float32)
    for i, image in enumerate(images):
        img = _check_uint8_image(image, i)
        if gray:
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
        elif img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if img.shape[0] != h or img.shape[1] != w:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        out[i] = img
    return out


def image_digest(image: np.ndarray) -> bytes:
    """blake2b digest of an array's dtype, shape and bytes (equal iff pixel-identical)."""
    arr = np.ascontiguousarray(image)
    d = hashlib.blake2b(digest_size=20)
    d.update(f"{arr.dtype.str}{arr.shape}".encode())
    d.update(memoryview(arr).cast("B"))
    return d.digest()


def pix2pix_matrix(images_a: Sequence[np.ndarray], images_b: Sequence[np.ndarray]) -> np.ndarray:
    """Bool (n, m): True where the two original arrays have equal shape, dtype and pixels.

    One digest per image (O(n + m) hashing), then an integer id comparison.
    """
    ids: dict[bytes, int] = {}
    ia = np.array([ids.setdefault(image_digest(x), len(ids)) for x in images_a], dtype=np.int64)
    ib = np.array([ids.setdefault(image_digest(x), len(ids)) for x in images_b], dtype=np.int64)
    return ia[:, None] == ib[None, :]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# Temporaries of one vectorised block of pairs are kept around this size so
# that they stay in the CPU cache (measured 2-3x faster than 64 MB chunks).
_BLOCK_BYTES = 1 << 20
# Row blocks of the matmul-based metrics (mse, nrmse, psnr) are ~this size.
_MATMUL_BYTES = 64 << 20


def _workers() -> int:
    return available_cores()


def _run_blocks(fn: Callable[[int, int, int, int], None], n: int, m: int, bytes_per_pair: int, batch: int) -> None:
    """Call ``fn(s, e, t, u)`` for blocks a[s:e] x b[t:u] covering all pairs.

    A block holds at most ``batch`` pairs and about ``_BLOCK_BYTES`` of
    temporaries; row spans run in a thread pool (numpy releases the GIL).
    """
    pairs = max(1, min(batch, _BLOCK_BYTES // max(1, bytes_per_pair)))
    cols = min(m, pairs)
    rows = max(1, pairs // max(1, cols))

    def task(s: int) -> None:
        e = min(n, s + rows)
        for t in range(0, m, cols):
            fn(s, e, t, min(m, t + cols))

    starts = range(0, n, rows)
    workers = min(_workers(), len(starts))
    if workers <= 1:
        for s in starts:
            task(s)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(task, starts):
            pass


def _flat64(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)


def _is_uint8_valued(x: np.ndarray) -> bool:
    """True if every value is an integer in 0..255 (normalize_images output)."""
    if x.size == 0:
        return True
    if x.min() < 0 or x.max() > 255:
        return False
    return bool(np.array_equal(x, np.rint(x)))


def _slice(x: np.ndarray, start: int, length: int, axis: int) -> np.ndarray:
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, start + length)
    return x[tuple(idx)]


def _window_sum(x: np.ndarray, win: int, axis: int) -> np.ndarray:
    """Sums over every full window of ``win`` along ``axis`` (length n - win + 1).

    Built from power-of-two window sums (7 = 4 + 2 + 1: 4 adds), so partial
    sums never exceed one window's sum (int32 stays exact for uint8 data).
    """
    n = x.shape[axis]
    length = n - win + 1
    sums = {1: x}
    k = 1
    while 2 * k <= win:
        prev = sums[k]
        size = n - 2 * k + 1
        sums[2 * k] = _slice(prev, 0, size, axis) + _slice(prev, k, size, axis)
        k *= 2
    out = None
    offset = 0
    while k >= 1:
        if win & k:
            part = _slice(sums[k], offset, length, axis)
            out = part.copy() if out is None else out.__iadd__(part)
            offset += k
        k //= 2
    assert out is not None
    return out


def _box_valid(x: np.ndarray, win: int) -> np.ndarray:
    """Sum over every full ``win`` x ``win`` window of the last two axes."""
    return _window_sum(_window_sum(x, win, x.ndim - 1), win, x.ndim - 2)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def _mse(a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    """||x||^2 + ||y||^2 - 2 x.y in float64 (exact for integer-valued images)."""
    xa, xb = _flat64(a), _flat64(b)
    d = xa.shape[1]
    na = np.einsum("ij,ij->i", xa, xa)
    nb = np.einsum("ij,ij->i", xb, xb)
    n, m = xa.shape[0], xb.shape[0]
    out = np.empty((n, m), dtype=np.float64)
    # One BLAS matmul per (large) row block; BLAS is multi-threaded itself.
    rows = max(1, batch, _MATMUL_BYTES // max(1, 8 * m))
    for s in range(0, n, rows):
        blk = out[s : s + rows]
        np.matmul(xa[s : s + rows], xb.T, out=blk)
        blk *= -2.0
        blk += na[s : s + rows, None]
        blk += nb[None, :]
        # Non-integer values: for (near-)identical pairs the expansion cancels to rounding noise (2e-8 instead
        # of 0); those few pairs are summed directly, so an identical pair is exactly 0 as in skimage.
        close = np.argwhere(blk <= 1e-9 * (na[s : s + rows, None] + nb[None, :]))
        for i, j in close:
            diff = xa[s + i] - xb[j]
            blk[i, j] = diff @ diff
        np.maximum(blk, 0.0, out=blk)
        blk /= d
    return out


def _mae(a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    n, m = a.shape[0], b.shape[0]
    d = int(np.prod(a.shape[1:]))
    out = np.empty((n, m), dtype=np.float64)
    if _is_uint8_valued(a) and _is_uint8_valued(b):
        # sum|x - y| = sum x + sum y - 2 sum min(x, y): uint8 work, exact integers.
        ua = np.ascontiguousarray(a.reshape(n, d), dtype=np.uint8)
        ub = np.ascontiguousarray(b.reshape(m, d), dtype=np.uint8)
        sa = ua.sum(axis=1, dtype=np.int64)
        sb = ub.sum(axis=1, dtype=np.int64)

        def run(s: int, e: int, t: int, u: int) -> None:
            smin = np.minimum(ua[s:e, None, :], ub[None, t:u, :]).sum(axis=-1, dtype=np.uint32)
            out[s:e, t:u] = (sa[s:e, None] + sb[None, t:u] - 2 * smin.astype(np.int64)) / d

        _run_blocks(run, n, m, 4 * d, batch)
    else:
        xa, xb = _flat64(a), _flat64(b)

        def run(s: int, e: int, t: int, u: int) -> None:
            out[s:e, t:u] = np.abs(xa[s:e, None, :] - xb[None, t:u, :]).mean(axis=-1)

        _run_blocks(run, n, m, 16 * d, batch)
    return out


def _nrmse(a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    mse = _mse(a, b, batch)
    xa = _flat64(a)
    denom = np.sqrt(np.einsum("ij,ij->i", xa, xa) / xa.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(mse) / denom[:, None]


def _psnr(a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    mse = _mse(a, b, batch)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(DATA_RANGE**2 / mse)


def _ssim_gray(a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    """SSIM matrix for (n, h, w) and (m, h, w) stacks (skimage defaults).

    With window sums Sx = 49 ux and c_xy = 49 Sxy - Sx Sy (= 49^2 vxy /
    cov_norm), skimage's S = A1 A2 / (B1 B2) becomes
    (2 Sx Sy + 49^2 C1)(2 cov_norm c_xy + 49^2 C2) /
    ((Sx^2 + Sy^2 + 49^2 C1)(cov_norm (c_xx + c_yy) + 49^2 C2)).
    For integer-valued images every window sum and c_xy is an exact int32,
    so the only rounding is in the final float64 ratio.
    """
    win = _SSIM_WIN
    h, w = a.shape[1:]
    if h < win or w < win:
        raise InvalidParameterError(f"image size (h, w)={(h, w)} is smaller than the {win}x{win} SSIM window")
    npix = win * win
    cov_norm = npix / (npix - 1.0)
    c1 = npix * npix * (_SSIM_K1 * DATA_RANGE) ** 2
    c2 = npix * npix * (_SSIM_K2 * DATA_RANGE) ** 2
    wd = np.int32 if (_is_uint8_valued(a) and _is_uint8_valued(b)) else np.float64
    xa = np.ascontiguousarray(a, dtype=wd)
    xb = np.ascontiguousarray(b, dtype=wd)

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sx = _box_valid(x, win)
        cxx = npix * _box_valid(x * x, win) - sx * sx
        q = sx.astype(np.float64) ** 2 + c1 / 2
        r = cov_norm * cxx.astype(np.float64) + c2 / 2
        return sx, q, r

    sa, qa, ra = stats(xa)
    sb, qb, rb = stats(xb)
    n, m = a.shape[0], b.shape[0]
    out = np.empty((n, m), dtype=np.float64)

    def run(s: int, e: int, t: int, u: int) -> None:
        sxy = _box_valid(xa[s:e, None] * xb[None, t:u], win)
        sxsy = sa[s:e, None] * sb[None, t:u]
        sxy *= npix
        sxy -= sxsy  # c_xy
        a2 = sxy.astype(np.float64)
        a2 *= 2.0 * cov_norm
        a2 += c2
        num = sxsy.astype(np.float64)
        num *= 2.0
        num += c1
        num *= a2
        den = qa[s:e, None] + qb[None, t:u]
        den *= ra[s:e, None] + rb[None, t:u]
        num /= den
        out[s:e, t:u] = num.reshape(e - s, u - t, -1).mean(axis=-1)

    _run_blocks(run, n, m, 16 * h * w, batch)
    return out


def _ssim(a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
    if a.ndim == 3:
        return _ssim_gray(a, b, batch)
    # Colour: mean of the per-channel SSIM, as skimage with channel_axis=-1.
    chans = a.shape[-1]
    total = sum(_ssim_gray(a[..., c], b[..., c], batch) for c in range(chans))
    return total / chans


def _nmi_codes(x: np.ndarray, bins: int) -> np.ndarray:
    """Per-image bin index 0..bins-1, exactly as np.histogramdd bins each dimension."""
    flat = x.reshape(x.shape[0], -1)
    codes = np.empty(flat.shape, dtype=np.int32)
    for i, v in enumerate(flat):
        smin, smax = v.min(), v.max()
        if smin == smax:
            smin = smin - 0.5
            smax = smax + 0.5
        edges = np.linspace(smin, smax, bins + 1)
        idx = np.searchsorted(edges, v, side="right")
        idx[v == edges[-1]] -= 1
        codes[i] = idx - 1
    return codes


def _nmi(a: np.ndarray, b: np.ndarray, batch: int, bins: int) -> np.ndarray:
    """(H(X) + H(Y)) / H(X, Y) from integer joint counts, per block via one bincount."""
    dtype = np.result_type(a.dtype, b.dtype)
    ca = _nmi_codes(np.asarray(a, dtype=dtype), bins)
    cb = _nmi_codes(np.asarray(b, dtype=dtype), bins)
    n, m = ca.shape[0], cb.shape[0]
    npx = ca.shape[1]
    # Entropy from integer counts: H = log N - sum(c log c) / N.
    clogc = np.zeros(npx + 1, dtype=np.float64)
    c = np.arange(1, npx + 1, dtype=np.float64)
    clogc[1:] = c * np.log(c)
    log_n = math.log(npx)

    def entropies(codes: np.ndarray) -> np.ndarray:
        off = codes + (np.arange(codes.shape[0], dtype=np.int64) * bins)[:, None]
        cnt = np.bincount(off.ravel(), minlength=codes.shape[0] * bins).reshape(-1, bins)
        return log_n - clogc[cnt].sum(axis=1) / npx

    ha, hb = entropies(ca), entropies(cb)
    ja = ca.astype(np.int64) * bins
    nb2 = bins * bins
    out = np.empty((n, m), dtype=np.float64)

    def run(s: int, e: int, t: int, u: int) -> None:
        k = (e - s) * (u - t)
        joint = (ja[s:e, None, :] + cb[None, t:u, :]).reshape(k, npx)
        joint += (np.arange(k, dtype=np.int64) * nb2)[:, None]
        cnt = np.bincount(joint.ravel(), minlength=k * nb2)
        hab = log_n - clogc[cnt].reshape(k, nb2).sum(axis=1) / npx
        with np.errstate(divide="ignore", invalid="ignore"):
            out[s:e, t:u] = (ha[s:e, None] + hb[None, t:u]) / hab.reshape(e - s, u - t)

    _run_blocks(run, n, m, 8 * npx + 16 * nb2, batch)
    return out


def metric_matrix(
    metric: str, a: np.ndarray, b: np.ndarray, *, batch: int = 256, nmi_bins: int = _NMI_BINS
) -> np.ndarray:
    """Metric value for every pair (a[i], b[j]): array of shape (len(a), len(b)).

    ``a`` and ``b`` are stacks from :func:`normalize_images` ((N, h, w) or
    (N, h, w, C)) with the same per-image shape; ``a`` is the reference
    image for the asymmetric nrmse.  Returns float64, except bool for
    ``pix2pix`` (exact equality of the given arrays; use
    :func:`pix2pix_matrix` on the original images to compare those).
    ``batch`` caps the number of pairs evaluated in one vectorised block
    for mae / ssim / nmi (blocks are also kept to ~1 MB of temporaries, so
    they stay in cache, and run in a thread per CPU) and is the minimum row
    block of the BLAS matmul behind mse / nrmse / psnr.  ``nmi_bins`` is
    skimage's ``bins``.
    """
    _check_metric(metric)
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim not in (3, 4) or b.ndim not in (3, 4):
        raise InvalidParameterError(f"a.shape={a.shape}, b.shape={b.shape}; expected (N, h, w) or (N, h, w, C) stacks")
    if a.shape[1:] != b.shape[1:]:
        raise InvalidParameterError(f"a.shape={a.shape} and b.shape={b.shape} differ per image; normalise both to one size")
    if batch < 1:
        raise InvalidParameterError(f"batch={batch} must be >= 1")
    log.debug("metric_matrix %s: %d x %d images of shape %s", metric, a.shape[0], b.shape[0], a.shape[1:])
    if metric == "pix2pix":
        return pix2pix_matrix(list(a), list(b))
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    if metric == "mse":
        return _mse(a, b, batch)
    if metric == "nrmse":
        return _nrmse(a, b, batch)
    if metric == "psnr":
        return _psnr(a, b, batch)
    if metric == "mae":
        return _mae(a, b, batch)
    if metric == "ssim":
        return _ssim(a, b, batch)
    if nmi_bins < 1:
        raise InvalidParameterError(f"nmi_bins={nmi_bins} must be >= 1")
    return _nmi(a, b, batch, nmi_bins)
