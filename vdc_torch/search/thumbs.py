"""Thumbnail comparisons: normalised gray, high-pass and chroma thumbnails, coarse 8x8 layout vectors, crops resized
to the thumbnail side, and the pairwise checks of :class:`ThumbVerifier`, run in bounded blocks on one thread per
core."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from vdc_torch.fingerprints.compute import (
    CROP_BOXES,
    CV_MAX_CHANNELS,
    THUMB_SIDE,
    crop_windows,
    default_workers,
    single_threaded_opencv,
)
from vdc_torch.search.config import MatchConfig

#: Gaussian blur (sigma and radius, thumbnail pixels) subtracted from a thumbnail to keep its fine structure.
HIGH_PASS_SIGMA = 1.5
HIGH_PASS_RADIUS = 5
#: Floor of a vector's norm when it is scaled to unit length: a flat thumbnail stays ~0 instead of noise blown up.
MIN_NORM = 1e-3
#: Mean Lab chroma |a|, |b| (0-255 scale, 128 = gray) up to which a thumbnail or overlap counts as colourless.
MAX_GRAY_CHROMA = 4.0
#: Side of the coarse layout grid (block means of a thumbnail): vectors of ``COARSE_SIDE ** 2`` values.
COARSE_SIDE = 8
COARSE_DIM = COARSE_SIDE * COARSE_SIDE
#: R, G, B weights of the gray value (ITU-R BT.601, as OpenCV's RGB2GRAY).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

def normalized_thumbs(thumbs: np.ndarray, high_pass: bool = False) -> np.ndarray:
    """(n, 32, 32, 3) uint8 -> (n, 1024) float32 zero-mean, unit-norm gray vectors (for NCC by dot product).

    ``high_pass=True`` keeps only fine structure (the thumbnail minus its Gaussian blur, sigma 1.5 px): two
    different pictures with the same overall light distribution correlate in gray but not in fine structure.
    """
    n, h, w = thumbs.shape[:3]
    if n == 0:
        return np.zeros((0, h * w), np.float32)
    # OpenCV's float conversion weighs R, G, B by 0.299, 0.587, 0.114 as well, at half numpy's cost
    rgb = np.ascontiguousarray(thumbs).reshape(n * h, w, 3).astype(np.float32)
    return _normalized_rows(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).reshape(n, h, w), high_pass)


def _normalized_rows(gray: np.ndarray, high_pass: bool = False) -> np.ndarray:
    """(n, h, w) float32 gray images -> (n, h*w) zero-mean, unit-norm rows (see :func:`normalized_thumbs`).

    ``gray`` is a scratch array the caller hands over: it is normalised in place (no copy of the block).
    """
    if high_pass:
        gray = gray - _gaussian_blur_each(gray, sigma=HIGH_PASS_SIGMA, radius=HIGH_PASS_RADIUS)
    flat = np.asarray(gray, dtype=np.float32).reshape(len(gray), gray.shape[1] * gray.shape[2])
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.sqrt(np.einsum("ij,ij->i", flat, flat)), MIN_NORM)[:, None]
    return flat


def _gaussian_blur_each(images: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Gaussian blur of each (h, w) float32 image of a stack, mirrored at its own edges (scipy's ``reflect``).

    One OpenCV pass per axis over all images at once: rows side by side for the horizontal pass, columns for the
    vertical one, so no image's blur reaches into its neighbour. ~3x faster than ``scipy.ndimage.gaussian_filter``
    over the stack (24 against 82 ms for 4,096 thumbnails), the same values to float rounding.
    """
    n, h, w = images.shape
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F)
    one = np.ones((1, 1), np.float32)
    rows = cv2.sepFilter2D(np.ascontiguousarray(images).reshape(n * h, w), cv2.CV_32F, kernel, one,
                           borderType=cv2.BORDER_REFLECT)
    columns = np.ascontiguousarray(rows.reshape(n, h, w).transpose(1, 0, 2)).reshape(h, n * w)
    columns = cv2.sepFilter2D(columns, cv2.CV_32F, one, kernel, borderType=cv2.BORDER_REFLECT)
    return columns.reshape(h, n, w).transpose(1, 0, 2)


def chroma_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) uint8 RGB -> (n, 32, 32, 2) float32 Lab chroma (a, b) centred on 0."""
    if len(thumbs) == 0:
        return np.zeros((0, thumbs.shape[1], thumbs.shape[2], 2), np.float32)
    n, h, w, _ = thumbs.shape
    lab = cv2.cvtColor(thumbs.reshape(n * h, w, 3), cv2.COLOR_RGB2LAB).reshape(n, h, w, 3)
    return lab[..., 1:].astype(np.float32) - 128.0


#: Saturation gains a copy may carry: a muted re-export keeps the hues at 30 % of the colour (a filter that
#: boosts colour: up to 150 %); a colour variant of a picture changes the hues, which no gain explains.
SATURATION_GAIN_RANGE = (0.3, 1.5)


def saturation_matched_difference(new_chroma: np.ndarray, ref_chroma: np.ndarray) -> np.ndarray:
    """Mean Lab chroma difference |Δa|+|Δb| per pair after the best saturation gain of the reference.

    The gain is the least-squares scale of the reference's chroma onto the new one's, clipped to
    :data:`SATURATION_GAIN_RANGE`: a desaturated (or more saturated) copy keeps its hues and leaves almost no
    difference, a recoloured variant keeps its full one. ``(n, h, w, 2)`` float32 chroma of aligned pairs.
    """
    n = len(new_chroma)
    flat_new, flat_ref = new_chroma.reshape(n, -1), ref_chroma.reshape(n, -1)
    gain = np.einsum("ij,ij->i", flat_new, flat_ref) / np.maximum(np.einsum("ij,ij->i", flat_ref, flat_ref), 1e-6)
    gain = np.clip(gain, *SATURATION_GAIN_RANGE).astype(np.float32)
    return np.abs(new_chroma - gain[:, None, None, None] * ref_chroma).sum(axis=3).mean(axis=(1, 2))


#: Candidate pairs a ThumbVerifier compares at once: 27k pHash candidates at 1M x 100k took +1.0 GB in one go.
THUMB_BLOCK = 1024


def _threaded_map(fn: Callable[[Any], Any], parts: list[Any], workers: int) -> list[Any]:
    """``[fn(part) for part in parts]`` on ``workers`` threads taking parts as they free up, results in order.

    Threads, not processes: the work is numpy and OpenCV, which release the GIL, and it shares in-memory state.
    OpenCV itself runs single-threaded meanwhile, so the threads do not oversubscribe the cores.
    """
    if workers <= 1 or len(parts) < 2:
        return [fn(part) for part in parts]
    with single_threaded_opencv(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, parts))


def _block_size() -> int:
    """Pairs per thread of the thumbnail checks: :data:`THUMB_BLOCK` / cores, so the temporaries in flight stay
    those of one block."""
    return max(1, THUMB_BLOCK // default_workers())


def _map_blocks(fn: Callable[[slice], Any], n: int) -> list[Any]:
    """``fn`` over consecutive slices of ``range(n)`` of :func:`_block_size`, results in order, one thread per core
    (2 threads: ~1.7x faster on 2 cores)."""
    size = _block_size()
    return _threaded_map(fn, [slice(start, min(n, start + size)) for start in range(0, n, size)], default_workers())


class ThumbVerifier:
    """Thumbnail checks for candidate pairs, vectorised over the pairs (only candidate rows are touched)."""

    def __init__(self, new_thumbs: Any, ref_thumbs: Any, config: MatchConfig) -> None:
        self.config = config
        self.new_thumbs = new_thumbs  # arrays, or stored columns read on demand
        self.ref_thumbs = ref_thumbs

    @staticmethod
    def _in_blocks(method: Any, q: np.ndarray, r: np.ndarray, mirror: bool) -> np.ndarray:
        return np.concatenate(_map_blocks(lambda part: method(q[part], r[part], mirror), len(q)))

    @staticmethod
    def _blocked(q: np.ndarray) -> bool:
        """True when the pairs are split into blocks (bounded float32 temporaries, ~40 KB a pair; same values)."""
        return len(q) > _block_size()

    def _pair_thumbs(self, q: np.ndarray, r: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
        new = self.new_thumbs[q]
        return (new[:, :, ::-1] if mirror else new), self.ref_thumbs[r]

    def gray_similarity(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> np.ndarray:
        """NCC of gray thumbnails for pairs ``(q[i], r[i])`` (no colour check)."""
        if self._blocked(q):
            return self._in_blocks(self.gray_similarity, q, r, mirror)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        a, b = self._pair_thumbs(q, r, mirror)
        return np.einsum("ij,ij->i", normalized_thumbs(a), normalized_thumbs(b)).astype(np.float32)

    def similarity(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> np.ndarray:
        """NCC of gray thumbnails for pairs ``(q[i], r[i])``, set to -1 where colours disagree."""
        if self._blocked(q):
            return self._in_blocks(self.similarity, q, r, mirror)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        a, b = self._pair_thumbs(q, r, mirror)
        ncc = np.einsum("ij,ij->i", normalized_thumbs(a), normalized_thumbs(b))
        new_chroma, ref_chroma = chroma_thumbs(a), chroma_thumbs(b)
        colourful = ((np.abs(new_chroma).mean(axis=(1, 2, 3)) > MAX_GRAY_CHROMA)
                     & (np.abs(ref_chroma).mean(axis=(1, 2, 3)) > MAX_GRAY_CHROMA))
        difference = saturation_matched_difference(new_chroma, ref_chroma)
        ncc = np.where(colourful & (difference > self.config.max_color_difference), -1.0, ncc)
        return ncc.astype(np.float32)

    def similarities(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(similarity, detail_similarity)`` of pairs ``(q[i], r[i])``, each pair's thumbnails read once.

        At 1M stored references most of the pHash stage's time went into reading the same random thumbnail rows
        from the manifest twice, once per similarity.
        """
        def block(part: slice) -> tuple[np.ndarray, np.ndarray]:
            new_rows, new_inverse = np.unique(q[part], return_inverse=True)
            ref_rows, ref_inverse = np.unique(r[part], return_inverse=True)
            # the same checks, on this block's thumbnails only (read once)
            verifier = ThumbVerifier(np.asarray(self.new_thumbs[new_rows]), np.asarray(self.ref_thumbs[ref_rows]),
                                     self.config)
            return (verifier.similarity(new_inverse, ref_inverse, mirror),
                    verifier.detail_similarity(new_inverse, ref_inverse, mirror))

        parts = _map_blocks(block, len(q))
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate([sim for sim, _ in parts]), np.concatenate([fine for _, fine in parts])

    def detail_similarity(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> np.ndarray:
        """NCC of the high-pass thumbnails (fine structure) for pairs ``(q[i], r[i])``."""
        if self._blocked(q):
            return self._in_blocks(self.detail_similarity, q, r, mirror)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        a, b = self._pair_thumbs(q, r, mirror)
        return np.einsum("ij,ij->i", normalized_thumbs(a, True), normalized_thumbs(b, True)).astype(np.float32)


#: Rows per chunk when coarse vectors are computed for a whole table (bounds the float32 temporaries).
COARSE_CHUNK = 16384


def coarse_vectors(thumbs: Any) -> np.ndarray:
    """(n, 32, 32, 3) uint8 -> (n, 64) zero-mean unit 8x8 gray vectors: layout without fine detail.

    Computed ``COARSE_CHUNK`` rows at a time (each row's vector does not depend on the others, bit for bit), so a
    million thumbnails need 256 MB for the result instead of 12 GB of float32 temporaries; ``thumbs`` may be a
    stored column (read chunk by chunk).
    """
    if len(thumbs) > COARSE_CHUNK:
        out = np.empty((len(thumbs), COARSE_DIM), np.float32)
        for start in range(0, len(thumbs), COARSE_CHUNK):
            out[start : start + COARSE_CHUNK] = coarse_vectors(np.asarray(thumbs[start : start + COARSE_CHUNK]))
        return out
    thumbs = np.asarray(thumbs)
    if len(thumbs) == 0:
        return np.zeros((0, COARSE_DIM), np.float32)
    n, h, w, _ = thumbs.shape
    side = COARSE_SIDE
    if h % side == 0 and w % side == 0:  # block means of the stacked thumbnails at once (blocks never straddle two)
        pooled = cv2.resize(thumbs.reshape(n * h, w, 3).astype(np.float32), (side, n * side),
                            interpolation=cv2.INTER_AREA)
        coarse = pooled.reshape(n, COARSE_DIM, 3) @ np.array(GRAY_WEIGHTS, np.float32)
    else:
        gray = thumbs.astype(np.float32) @ np.array(GRAY_WEIGHTS, np.float32)
        coarse = gray.reshape(n, side, h // side, side, w // side).mean(axis=(2, 4)).reshape(n, COARSE_DIM)
    coarse -= coarse.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(coarse / np.maximum(np.linalg.norm(coarse, axis=1, keepdims=True), MIN_NORM))


def table_coarse_vectors(thumbs: Any, rows: np.ndarray | slice | None = None) -> np.ndarray:
    """:func:`coarse_vectors` of a thumbnail column (``rows`` of it), from the stored copy when a manifest has one.

    Manifests store the coarse vectors computed by the same function at save time, so the kNN stage reads 256 B a
    row instead of every 3 KB thumbnail; the values are identical.
    """
    stored = getattr(thumbs, "coarse", None)
    if stored is not None:
        return np.ascontiguousarray(stored[:] if rows is None else stored[rows], dtype=np.float32)
    return coarse_vectors(thumbs if rows is None else thumbs[rows])


def _resized_crops(details: list[np.ndarray], which: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(n, 32, 32)`` uint8: crop ``boxes[i]`` of ``details[which[i]]``, resized to the thumbnail side.

    Crops of one size that are enlarged (CIFAR-size details) are resized together: OpenCV resizes each channel on
    its own, so crops stacked as the channels of one image come out as if resized one by one (CIFAR: ~90k crops in
    about a thousand calls instead of 90k). Shrinking with ``INTER_AREA`` by a non-integer factor takes at most 4
    channels, so crops larger than the thumbnail go one by one.
    """
    side = THUMB_SIDE
    out = np.empty((len(which), side, side), np.uint8)
    if not len(which):
        return out
    shape_of: dict[tuple[int, ...], int] = {}
    shape_ids = np.array([shape_of.setdefault(d.shape, len(shape_of)) for d in details], dtype=np.int64)
    keys = shape_ids[which] * len(CROP_BOXES) + boxes
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1], True])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        members = order[a:b]
        first = details[which[members[0]]]
        window = crop_windows(*first.shape)[boxes[members[0]]]
        crops = [details[i][window] for i in which[members].tolist()]
        if max(crops[0].shape) > side:
            for i, crop in zip(members.tolist(), crops):
                out[i] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
            continue
        stack = np.stack(crops, axis=-1)  # (h, w, m)
        for c in range(0, len(crops), CV_MAX_CHANNELS):
            part = np.ascontiguousarray(stack[..., c : c + CV_MAX_CHANNELS])
            resized = cv2.resize(part, (side, side), interpolation=cv2.INTER_AREA)
            out[members[c : c + CV_MAX_CHANNELS]] = resized.reshape(side, side, -1).transpose(2, 0, 1)
    return out
