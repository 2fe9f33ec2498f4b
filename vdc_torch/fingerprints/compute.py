"""Stage 2: the fingerprint of one decoded image, and of a whole dataset in parallel.

A :class:`Fingerprint` holds everything later stages need, all derived from the single decode:

* ``byte_digest`` / ``pixel_digest`` — exact identity of the file and of its decoded pixels;
* ``exif_identity`` — camera make, model, capture time (with sub-seconds), unique id, body serial;
* ``phash`` / ``phash_mirror`` — 64-bit perceptual hashes of the content and of its mirror image;
* ``phash_whole`` — the pHash of the whole picture, borders included (a copy whose border trimming differs
  from its original's still finds it);
* ``crop_hashes`` — pHashes of 27 crops (:data:`CROP_BOXES`), so a cropped copy finds its original in the index;
* ``thumb`` — a 32×32 RGB thumbnail of the content for metric verification;
* ``detail`` — the content as a gray image of at most 256 px (raw up to 64×64, else JPEG) for lazy local features.

Uniform borders (letterboxing, frames) are trimmed before anything perceptual is computed, so a bordered copy
fingerprints like its original.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import logging
import operator
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import torch
import torch.utils.data
from threadpoolctl import threadpool_limits

from vdc_torch.cores import available_cores
from vdc_torch.data.decode import (
    DEFAULT_DECODE_SIDE,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_file,
    decode_sample,
    digest,
    read_file,
    shrink_to_side,
)
from vdc_torch.data.files import FileKey, file_key
from vdc_torch.errors import ImageDecodeError, InvalidParameterError
from vdc_torch.fingerprints.hashes import HASH_METHODS, compute_hash
from vdc_torch.progress import progress_bar

log = logging.getLogger(__name__)

#: Bumped whenever a change alters fingerprint values; manifests of another version are recomputed or refused.
#: 2: tighter border trimming (BORDER_TOL 12 -> 6, BORDER_MAX_TRIM 0.3 -> 0.45); 3: 27 crop hashes (CROP_BOXES),
#: small detail images stored raw; 4: phash_whole; 5: crop hashes from float resizes (fingerprint_batch).
FINGERPRINT_VERSION = 5
THUMB_SIDE = 32
DETAIL_SIDE = 256
#: Crops whose pHashes are indexed, as ``(keep, top, left)`` fractions of the content: 70, 80 and 90 % of each
#: side, each at the 3×3 positions from one corner to the other. Any crop keeping 65–95 % of each side lies
#: within 5 % of one of them, close enough for its pHash (seeds 1–6 of benchmarks/accuracy.py: 96 % of the
#: cropped copies within radius 10 of one crop hash, against 49 % with the former nine 80 % crops).
CROP_BOXES: tuple[tuple[float, float, float], ...] = tuple(
    (keep, t * (1 - keep), l * (1 - keep)) for keep in (0.7, 0.8, 0.9) for t in (0.0, 0.5, 1.0) for l in (0.0, 0.5, 1.0)
)


@dataclass(frozen=True)
class Problem:
    """A sample that could not be used (``fatal``) or was used with a caveat (e.g. malformed EXIF)."""

    index: int
    path: str
    reason: str
    fatal: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "reason": self.reason, "fatal": self.fatal}


@dataclass
class Fingerprint:
    """All fingerprints of one image, from one decode."""

    width: int
    height: int
    pixel_digest: bytes
    phash: int
    phash_mirror: int
    crop_hashes: np.ndarray  # (len(CROP_BOXES),) uint64
    thumb: np.ndarray  # (THUMB_SIDE, THUMB_SIDE, 3) uint8 RGB
    detail: bytes  # encoded gray image, max side DETAIL_SIDE
    byte_digest: bytes | None = None
    exif_identity: str | None = None
    file_size: int | None = None
    mtime_ns: int | None = None
    extra_hashes: dict[str, str] = field(default_factory=dict)  # method -> ImageHash string
    warnings: list[str] = field(default_factory=list)
    phash_whole: int | None = None  # pHash of the untrimmed picture; None: nothing was trimmed (= phash)


#: Border trimming: a border line stays within this many gray levels of the side's outermost line (tight, so
#: the near-black or near-white parts of a picture are not taken for a border, and a gamma-edited copy trims
#: like its original) ...
BORDER_TOL = 6
#: ... and no side loses more than this share (a 16:9 picture letterboxed into 9:16 has 34 % bars per side).
BORDER_MAX_TRIM = 0.45


def content_box(gray: np.ndarray, tol: int | None = None, max_trim: float | None = None) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the content after trimming uniform borders on each side.

    A side is trimmed while its lines stay within ``tol`` (default :data:`BORDER_TOL`) of that side's outermost
    line colour; no side loses more than ``max_trim`` (default :data:`BORDER_MAX_TRIM`) of the image.
    """
    tol = BORDER_TOL if tol is None else tol
    max_trim = BORDER_MAX_TRIM if max_trim is None else max_trim
    h, w = gray.shape
    g = gray.astype(np.int16)

    def run(lines: np.ndarray, limit: int) -> int:
        edge = lines[0]
        if int(edge.max()) - int(edge.min()) > 2 * tol:  # most pictures: not a uniform edge, nothing to trim
            return 0
        colour = int(np.median(edge))
        outside = (np.abs(lines[:limit] - colour) > tol).mean(axis=1) > 0.02
        hits = np.flatnonzero(outside)
        return int(hits[0]) if hits.size else limit

    top = run(g, int(h * max_trim))
    bottom = run(g[::-1], int(h * max_trim))
    left = run(g.T, int(w * max_trim))
    right = run(g.T[::-1], int(w * max_trim))
    return top, h - bottom, left, w - right


def _dct_rows(n: int = THUMB_SIDE, k: int = 8) -> np.ndarray:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size ``n`` (what ``cv2.dct`` applies)."""
    rows, cols = np.arange(k)[:, None], np.arange(n)[None, :]
    scale = np.where(rows == 0, np.sqrt(1.0 / n), np.sqrt(2.0 / n))
    return (np.cos(np.pi * (2 * cols + 1) * rows / (2 * n)) * scale).astype(np.float32)


_DCT8 = _dct_rows()
#: Sign of each low-frequency DCT coefficient under a horizontal flip: (-1) ** horizontal frequency.
_MIRROR_SIGN = np.tile((-1.0) ** np.arange(8), 8).astype(np.float32)


def phash_batch(gray32: np.ndarray, mirror: bool = False) -> np.ndarray:
    """OpenCV's pHash of each (32, 32) uint8 image in a stack, as uint64 (``ImageHash.to_uint64`` order).

    Bit-identical to ``cv2.img_hash.pHash``: 8×8 low-frequency DCT block, DC zeroed, bit = coefficient > mean,
    bits packed little-endian per byte. ``mirror=True`` gives the pHash of the horizontally flipped images
    from the same coefficients (odd horizontal frequencies change sign).
    """
    coeffs = (_DCT8 @ gray32.astype(np.float32) @ _DCT8.T).reshape(len(gray32), 64)
    return _hash_bits(coeffs * _MIRROR_SIGN if mirror else coeffs)


def _hash_bits(coeffs: np.ndarray) -> np.ndarray:
    """(n, 64) low-frequency DCT coefficients -> pHash codes (DC zeroed, bit = coefficient > mean)."""
    coeffs = coeffs.copy()
    coeffs[:, 0] = 0.0
    bits = coeffs > coeffs.mean(axis=1, keepdims=True)
    packed = np.packbits(bits, axis=1, bitorder="little")  # (n, 8) bytes as OpenCV lays them out
    return np.ascontiguousarray(packed).view(">u8").reshape(-1).astype(np.uint64)


@functools.lru_cache(maxsize=256)
def crop_windows(height: int, width: int) -> tuple[tuple[slice, slice], ...]:
    """The :data:`CROP_BOXES` of a ``height`` × ``width`` content as array slices (cached per size)."""
    windows = []
    for box in CROP_BOXES:
        y, x, h, w = crop_pixels(box, height, width)
        windows.append((slice(y, min(y + h, height)), slice(x, min(x + w, width))))  # clipped as numpy would
    return tuple(windows)


def crop_pixels(box: tuple[float, float, float], height: int, width: int) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` in pixels of a :data:`CROP_BOXES` entry on a ``height`` × ``width`` content."""
    keep, top, left = box
    return round(height * top), round(width * left), max(1, round(height * keep)), max(1, round(width * keep))


#: Contents up to this side (CIFAR-size images) get their crop hashes from one matrix product per batch
#: (:func:`_crop_matrices`) instead of 27 resizes each; larger contents are resized crop by crop.
SMALL_CONTENT_SIDE = 64


def fingerprint_decoded(decoded: DecodedImage, extra_hashes: Sequence[str] = ()) -> Fingerprint:
    """Compute every fingerprint of one decoded image (no further reading or decoding)."""
    return fingerprint_batch([decoded], extra_hashes)[0]


@dataclass
class _Prepared:
    """Internal: one image's working copies on the way to its fingerprint."""

    content: np.ndarray  # RGB content (borders trimmed) of the <= DETAIL_SIDE working copy
    gray: np.ndarray  # its gray version
    thumb: np.ndarray  # THUMB_SIDE x THUMB_SIDE RGB
    whole: np.ndarray | None  # gray THUMB_SIDE x THUMB_SIDE of the untrimmed picture; None when nothing was trimmed


def _working_copy(pixels: np.ndarray) -> np.ndarray:
    """The picture at most :data:`DETAIL_SIDE` px on its longer side (area-resized), from which everything is taken."""
    return shrink_to_side(pixels, DETAIL_SIDE)


def _rows_by_shape(grays: Sequence[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    """Positions of the images of each shape (images of one shape are processed as one stack)."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, gray in enumerate(grays):
        by_shape.setdefault(gray.shape, []).append(i)
    return by_shape


def _content_boxes(grays: Sequence[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """:func:`content_box` of each image; images of one shape whose four edges are all textured (most pictures)
    are recognised together, without a call each."""
    boxes: list[tuple[int, int, int, int] | None] = [None] * len(grays)
    for (h, w), rows in _rows_by_shape(grays).items():
        if len(rows) > 1:
            stack = np.stack([grays[i] for i in rows])
            edges = (stack[:, 0, :], stack[:, -1, :], stack[:, :, 0], stack[:, :, -1])
            textured = np.all([e.max(axis=1).astype(np.int16) - e.min(axis=1) > 2 * BORDER_TOL for e in edges], axis=0)
            for i in np.asarray(rows)[textured].tolist():
                boxes[i] = (0, h, 0, w)
    return [box if box is not None else content_box(gray) for box, gray in zip(boxes, grays)]


def _prepare(small: np.ndarray, full_gray: np.ndarray, box: tuple[int, int, int, int]) -> _Prepared:
    top, bottom, left, right = box
    gray = full_gray[top:bottom, left:right]
    content = small[top:bottom, left:right]
    thumb = cv2.resize(content, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    whole = None
    if box != (0, small.shape[0], 0, small.shape[1]):
        whole = cv2.resize(full_gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    return _Prepared(content, gray, thumb, whole)


def fingerprint_batch(decoded: Sequence[DecodedImage], extra_hashes: Sequence[str] = ()) -> list[Fingerprint]:
    """:func:`fingerprint_decoded` of many images at once: the same values, the hash arithmetic done batch-wide.

    The pHash of the content and its mirror come from the 8-bit gray thumbnail (bit-identical to
    ``cv2.img_hash.pHash``); the crop hashes are the pHashes of the float area-resized crops of the gray content
    (:func:`crop_coefficients`), so no 8-bit rounding sits between a crop and its DCT.
    """
    if not decoded:
        return []
    smalls = [_working_copy(d.pixels) for d in decoded]
    full_grays = [cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) for small in smalls]
    prepared = [_prepare(*args) for args in zip(smalls, full_grays, _content_boxes(full_grays))]
    n = len(prepared)
    thumbs = np.stack([p.thumb for p in prepared])
    thumb_gray = cv2.cvtColor(thumbs.reshape(n * THUMB_SIDE, THUMB_SIDE, 3), cv2.COLOR_RGB2GRAY)
    coeffs = (_DCT8 @ thumb_gray.reshape(n, THUMB_SIDE, THUMB_SIDE).astype(np.float32) @ _DCT8.T).reshape(n, 64)
    phashes = _hash_bits(coeffs)
    mirrors = _hash_bits(coeffs * _MIRROR_SIGN)
    crop_hashes = _hash_bits(crop_coefficients([p.gray for p in prepared]).reshape(-1, 64)).reshape(n, -1)
    trimmed = [i for i, p in enumerate(prepared) if p.whole is not None]
    wholes = dict(zip(trimmed, phash_batch(np.stack([prepared[i].whole for i in trimmed])).tolist())) if trimmed else {}
    out = []
    for i, (d, p) in enumerate(zip(decoded, prepared)):
        extras: dict[str, str] = {}
        if extra_hashes:
            bgr = cv2.cvtColor(p.content, cv2.COLOR_RGB2BGR)
            extras = {m: str(compute_hash(m, bgr)) for m in extra_hashes}
        out.append(Fingerprint(
            width=d.width,
            height=d.height,
            pixel_digest=digest(np.ascontiguousarray(d.pixels).data),
            phash=int(phashes[i]),
            phash_mirror=int(mirrors[i]),
            phash_whole=wholes.get(i),
            crop_hashes=crop_hashes[i],
            thumb=p.thumb,
            detail=encode_detail(p.gray),
            byte_digest=d.byte_digest,
            exif_identity=d.exif_identity,
            file_size=d.file_size,
            mtime_ns=d.mtime_ns,
            extra_hashes=extras,
            warnings=list(d.warnings),
        ))
    return out


def crop_coefficients(grays: Sequence[np.ndarray]) -> np.ndarray:
    """(n, len(CROP_BOXES), 8, 8) low-frequency DCT coefficients of the :data:`CROP_BOXES` crops of each gray image.

    Each crop is area-resized to THUMB_SIDE² in float (OpenCV ``INTER_AREA``) and transformed like a pHash. Images of
    one shape up to :data:`SMALL_CONTENT_SIDE` are done together as ``L_box @ image @ R_box.T`` with the resize and
    the DCT folded into two small matrices per box (:func:`_crop_matrices`); larger ones crop by crop.
    """
    out = np.empty((len(grays), len(CROP_BOXES), 8, 8), np.float32)
    for (h, w), rows in _rows_by_shape(grays).items():
        if max(h, w) <= SMALL_CONTENT_SIDE:
            left, right, left_of_box, right_of_box = _crop_matrices(h, w)
            stack = np.stack([grays[i] for i in rows]).astype(np.float32)  # (m, h, w)
            m, k_left, k_right = len(rows), len(left), len(right)
            # two matrix products for the whole group: every distinct column transform, then every row transform
            cols = stack.reshape(m * h, w) @ right.reshape(-1, w).T  # (m*h, k_right*8)
            cols = cols.reshape(m, h, -1).transpose(1, 0, 2).reshape(h, -1)  # (h, m*k_right*8)
            both = (left.reshape(-1, h) @ cols).reshape(k_left, 8, m, k_right, 8).transpose(2, 0, 3, 1, 4)
            out[rows] = both[:, list(left_of_box), list(right_of_box)]  # (m, boxes, 8, 8)
            continue
        windows = crop_windows(h, w)
        for i in rows:
            gray = grays[i].astype(np.float32)
            crops = np.stack([cv2.resize(gray[window], (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
                              for window in windows])
            out[i] = _DCT8 @ crops @ _DCT8.T
    return out


@functools.lru_cache(maxsize=256)
def _crop_matrices(height: int, width: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """Folded resize + DCT matrices of the crop boxes of a ``height`` × ``width`` image.

    Returns ``(left, right, left_of_box, right_of_box)``: ``left[a]`` (8, height) and ``right[b]`` (8, width) such
    that ``left[a] @ image @ right[b].T`` is the 8×8 DCT block of the resized crop ``box`` with ``a =
    left_of_box[box]``, ``b = right_of_box[box]`` (boxes share rows or columns, so only the distinct ones are
    kept). The factors are read off OpenCV itself by resizing one-hot images of the crop's own 2-D size, so they
    are the weights ``cv2.resize`` applies (area for shrinking, bilinear where a side grows).
    """
    lefts: dict[tuple[int, int, int, int], int] = {}
    rights: dict[tuple[int, int, int, int], int] = {}
    left_rows, right_rows, left_of_box, right_of_box = [], [], [], []
    for y, x in crop_windows(height, width):
        hh, ww = y.stop - y.start, x.stop - x.start
        for key_store, rows, of_box, key, n, start, along in (
            (lefts, left_rows, left_of_box, (y.start, hh, ww, 0), height, y.start, 0),
            (rights, right_rows, right_of_box, (x.start, ww, hh, 1), width, x.start, 1),
        ):
            if key not in key_store:
                key_store[key] = len(rows)
                rows.append(_DCT8 @ _resize_factor(hh, ww, along, n, start))
            of_box.append(key_store[key])
    return np.stack(left_rows), np.stack(right_rows), tuple(left_of_box), tuple(right_of_box)


#: Channels of one image OpenCV's Python binding accepts (beyond, an array is taken for a 3-d matrix).
CV_MAX_CHANNELS = 128


def _resize_factor(height: int, width: int, along: int, full: int, start: int) -> np.ndarray:
    """(THUMB_SIDE, full) matrix of ``cv2.resize(crop, (THUMB_SIDE, THUMB_SIDE), INTER_AREA)`` along one axis.

    ``along=0``: rows (the crop's ``height`` rows start at ``start`` of ``full``); ``along=1``: columns. Found by
    resizing ``height`` × ``width`` images that are one-hot along that axis: the weights are separable, so a
    one-hot row (column) comes out as that row's (column's) weights. The probes go through OpenCV as the channels
    of one image, which it resizes one by one; shrinking by a non-integer factor takes at most 4 channels.
    """
    n = height if along == 0 else width
    probes = np.zeros((height, width, n), np.float32)
    hot = np.arange(n)
    if along == 0:
        probes[hot, :, hot] = 1.0
    else:
        probes[:, hot, hot] = 1.0
    factor = np.empty((THUMB_SIDE, n), np.float32)
    step = CV_MAX_CHANNELS
    start_probe = 0
    while start_probe < n:
        part = np.ascontiguousarray(probes[:, :, start_probe : start_probe + step])
        try:
            resized = cv2.resize(part, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        except cv2.error:
            if step == 4:
                raise
            step = 4  # OpenCV's area shrink: at most 4 channels
            continue
        resized = resized.reshape(THUMB_SIDE, THUMB_SIDE, -1)
        factor[:, start_probe : start_probe + part.shape[2]] = resized[:, 0, :] if along == 0 else resized[0, :, :]
        start_probe += part.shape[2]
    out = np.zeros((THUMB_SIDE, full), np.float32)
    out[:, start : start + n] = factor
    return out


#: Header of a detail image stored raw (small images: rows of uint8 after a 4-byte tag and two uint16 sizes).
_RAW_DETAIL = b"VDG1"


def encode_detail(gray: np.ndarray) -> bytes:
    """The gray detail image as stored: raw bytes up to 64×64 px (CIFAR-size images; no codec time, and PNG
    would hardly be smaller), JPEG quality 92 above."""
    h, w = gray.shape
    if h * w <= 64 * 64:
        return _RAW_DETAIL + np.array([h, w], "<u2").tobytes() + np.ascontiguousarray(gray).tobytes()
    ok, encoded = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise ImageDecodeError(f"could not encode the detail image ({gray.shape})")
    return encoded.tobytes()


def decode_detail(detail: bytes) -> np.ndarray:
    """The gray detail image stored in a fingerprint, as a uint8 array."""
    if detail[:4] == _RAW_DETAIL:
        if len(detail) < 8:
            raise ImageDecodeError("stored detail image is corrupt")
        h, w = struct.unpack_from("<HH", detail, 4)
        if len(detail) != 8 + h * w:
            raise ImageDecodeError("stored detail image is corrupt")
        return np.frombuffer(detail, np.uint8, offset=8).reshape(h, w).copy()
    image = cv2.imdecode(np.frombuffer(detail, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ImageDecodeError("stored detail image is corrupt")
    return image


# -- a whole dataset ---------------------------------------------------------------------------------------


@dataclass
class FingerprintTable:
    """Fingerprints of a dataset, column by column (row ``i`` is the ``i``-th usable sample)."""

    sample_index: np.ndarray  # (n,) int64: position of the row's sample in its dataset
    paths: list[str]
    labels: list[str | None]
    width: np.ndarray  # (n,) int32
    height: np.ndarray  # (n,) int32
    byte_digest: list[bytes | None]
    pixel_digest: list[bytes]
    exif_identity: list[str | None]
    phash: np.ndarray  # (n,) uint64
    phash_mirror: np.ndarray  # (n,) uint64
    phash_whole: np.ndarray  # (n,) uint64: pHash of the untrimmed picture (= phash when nothing was trimmed)
    crop_hashes: np.ndarray  # (n, k) uint64
    thumbs: np.ndarray  # (n, 32, 32, 3) uint8 (a StoredRows read on demand when loaded from a manifest)
    details: list[bytes]  # (a StoredRows of byte strings when loaded from a manifest)
    file_size: list[int | None]
    mtime_ns: list[int | None]
    extra_hashes: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls) -> FingerprintTable:
        return cls.from_rows([], [], [], [])

    @classmethod
    def from_rows(
        cls,
        indices: Sequence[int],
        paths: Sequence[str],
        labels: Sequence[str | None],
        fps: Sequence[Fingerprint],
    ) -> FingerprintTable:
        """Build the columns from per-sample fingerprints."""
        k = len(CROP_BOXES)
        return cls(
            sample_index=np.asarray(indices, dtype=np.int64),
            paths=list(paths),
            labels=list(labels),
            width=np.asarray([f.width for f in fps], dtype=np.int32),
            height=np.asarray([f.height for f in fps], dtype=np.int32),
            byte_digest=[f.byte_digest for f in fps],
            pixel_digest=[f.pixel_digest for f in fps],
            exif_identity=[f.exif_identity for f in fps],
            phash=np.asarray([f.phash for f in fps], dtype=np.uint64),
            phash_mirror=np.asarray([f.phash_mirror for f in fps], dtype=np.uint64),
            phash_whole=np.asarray([f.phash if f.phash_whole is None else f.phash_whole for f in fps], dtype=np.uint64),
            crop_hashes=np.stack([f.crop_hashes for f in fps]) if fps else np.zeros((0, k), np.uint64),
            thumbs=np.stack([f.thumb for f in fps]) if fps else np.zeros((0, THUMB_SIDE, THUMB_SIDE, 3), np.uint8),
            details=[f.detail for f in fps],
            file_size=[f.file_size for f in fps],
            mtime_ns=[f.mtime_ns for f in fps],
            extra_hashes=[f.extra_hashes for f in fps],
        )

    def fingerprint(self, row: int) -> Fingerprint:
        """Row ``row`` as a :class:`Fingerprint` record."""
        return Fingerprint(
            width=int(self.width[row]), height=int(self.height[row]), pixel_digest=self.pixel_digest[row],
            phash=int(self.phash[row]), phash_mirror=int(self.phash_mirror[row]),
            phash_whole=None if self.phash_whole[row] == self.phash[row] else int(self.phash_whole[row]),
            crop_hashes=self.crop_hashes[row], thumb=self.thumbs[row], detail=self.details[row],
            byte_digest=self.byte_digest[row], exif_identity=self.exif_identity[row],
            file_size=self.file_size[row], mtime_ns=self.mtime_ns[row], extra_hashes=self.extra_hashes[row],
        )

    def rows(self, rows: Sequence[int]) -> FingerprintTable:
        """A new table holding only ``rows`` (in that order); columns kept in a manifest stay there (views)."""
        r = [int(i) for i in rows]
        return FingerprintTable(
            sample_index=self.sample_index[r], paths=_pick(self.paths, r), labels=_pick(self.labels, r),
            width=self.width[r], height=self.height[r], byte_digest=_pick(self.byte_digest, r),
            pixel_digest=_pick(self.pixel_digest, r), exif_identity=_pick(self.exif_identity, r),
            phash=self.phash[r], phash_mirror=self.phash_mirror[r], phash_whole=self.phash_whole[r],
            crop_hashes=self.crop_hashes[r],
            thumbs=_take(self.thumbs, r), details=_take(self.details, r), file_size=_pick(self.file_size, r),
            mtime_ns=_pick(self.mtime_ns, r), extra_hashes=_pick(self.extra_hashes, r),
        )

    @staticmethod
    def concat(tables: Sequence[FingerprintTable]) -> FingerprintTable:
        """Rows of all ``tables`` one after another (a single table's columns are kept as they are)."""
        tables = [t for t in tables if len(t)] or [FingerprintTable.empty()]
        first = tables[0]
        if len(tables) == 1:
            return FingerprintTable(**{name: getattr(first, name) for name in first.__dataclass_fields__})
        kwargs: dict[str, Any] = {}
        for name in first.__dataclass_fields__:
            values = [getattr(t, name) for t in tables]
            if any(isinstance(v, np.ndarray) or (is_stored(v) and not v.is_bytes) for v in values):
                kwargs[name] = np.concatenate([np.asarray(v) for v in values])
            else:
                kwargs[name] = list(itertools.chain.from_iterable(values))  # (sum() of lists is quadratic)
        return FingerprintTable(**kwargs)


def _pick(values: Sequence[Any], rows: list[int]) -> list[Any]:
    """``[values[i] for i in rows]``, a few times faster (itemgetter runs the loop in C)."""
    if len(rows) < 2:
        return [values[i] for i in rows]
    return list(operator.itemgetter(*rows)(values))


def _take(column: Any, rows: list[int]) -> Any:
    """``rows`` of an array, a list or a stored column (a view for the latter)."""
    if is_stored(column):
        return column.take(np.asarray(rows, dtype=np.int64))
    if isinstance(column, np.ndarray):
        return column[rows]
    return _pick(column, rows)


class LazyColumn:
    """Base of table columns read on demand (the store's manifest columns): ``take(rows)`` gives a view of some
    rows; ``is_bytes`` tells byte strings from fixed-width array rows. Tables treat them like their lists and
    arrays without knowing where the rows live."""

    is_bytes: bool = False

    def take(self, rows: np.ndarray) -> LazyColumn:  # noqa: D102 - see the class docstring
        raise NotImplementedError


def is_stored(value: Any) -> bool:
    """True for a column read on demand (:class:`LazyColumn`), such as a manifest's stored rows."""
    return isinstance(value, LazyColumn)


class KnownFingerprints(Protocol):
    """Fingerprints computed before, read (never written) by :func:`compute_fingerprints`: a fingerprint cache."""

    @property
    def table(self) -> FingerprintTable:
        """The known rows."""
        ...

    def lookup_row(self, key: FileKey | None) -> int | None:
        """The row of an unchanged file (same path, size and mtime), or ``None``."""
        ...

    def known_content(self) -> tuple[frozenset[int], frozenset[bytes]]:
        """File sizes and byte digests of the known rows (a renamed or touched file is read, not decoded)."""
        ...

    def lookup_digest(self, byte_digest: bytes | None) -> int | None:
        """The row of a file with exactly these bytes, or ``None``."""
        ...


@dataclass(frozen=True)
class _FingerprintBatch:
    """Internal: the fingerprints of a batch as columns (rows in ``indices`` order), with each row's warnings.

    What a worker sends back: a few arrays pickle and unpickle in a fraction of the time of one
    :class:`Fingerprint` object per image (on CIFAR-size images that was ~40 us per image in the main process,
    about as much as decoding them).
    """

    indices: list[int]
    table: FingerprintTable
    warnings: list[list[str]]


@dataclass(frozen=True)
class _KnownContent:
    """Internal: a file whose bytes the cache already holds (found by digest, not decoded)."""

    byte_digest: bytes
    file_size: int
    mtime_ns: int


class _FingerprintTask(torch.utils.data.Dataset):
    """Internal: item ``i`` is ``(i, Fingerprint | Problem | _KnownContent)`` for sample ``i`` of a vdc_torch Dataset.

    ``known`` (file sizes, byte digests) enables the cache's content-digest fallback: a file of a known size is read
    and hashed first, and is only decoded when its digest is unknown.
    """

    def __init__(self, dataset: Any, indices: Sequence[int], extra_hashes: Sequence[str], decode_side: int | None,
                 max_pixels: int, known: tuple[frozenset[int], frozenset[bytes]] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.extra_hashes = tuple(extra_hashes)
        self.decode_side = decode_side
        self.max_pixels = max_pixels
        self.known = known

    def __len__(self) -> int:
        return len(self.indices)

    def _known_content(self, path: str) -> _KnownContent | None:
        """The file's digest when the cache holds its bytes; ``None`` otherwise (or when it cannot be read)."""
        assert self.known is not None
        sizes, digests = self.known
        try:
            if os.stat(path).st_size not in sizes:
                return None
            data, st = read_file(path)
        except (OSError, ImageDecodeError):
            return None  # decode_file reports the problem
        found = digest(data)
        if found in digests and st.st_size == len(data):
            return _KnownContent(found, len(data), st.st_mtime_ns)
        return None

    def __getitem__(self, positions: Sequence[int]) -> list[tuple[int, _FingerprintBatch | Problem | _KnownContent]]:
        """A batch: each sample read and decoded on its own, then fingerprinted together (:func:`fingerprint_batch`).

        The fingerprints come back as one :class:`_FingerprintBatch` (under the first fingerprinted sample's index),
        problems and cache hits one by one.
        """
        results: list[tuple[int, _FingerprintBatch | Problem | _KnownContent]] = []
        decoded: list[tuple[int, str, DecodedImage]] = []
        for position in positions:
            index = self.indices[position]
            path = self.dataset.samples[index][0]
            try:
                if self.known is not None and self.dataset.is_file_backed:
                    known = self._known_content(path)
                    if known is not None:
                        results.append((index, known))
                        continue
                if self.dataset.is_file_backed:
                    decoded.append((index, path, decode_file(path, decode_side=self.decode_side,
                                                             max_pixels=self.max_pixels)))
                else:
                    decoded.append((index, path, decode_sample(self.dataset.source_image(index), name=path,
                                                               decode_side=self.decode_side,
                                                               max_pixels=self.max_pixels)))
            except ImageDecodeError as exc:
                results.append((index, Problem(index, path, str(exc))))
            except Exception as exc:  # noqa: BLE001 - never let one sample end the run
                results.append((index, _unexpected(index, path, exc)))
        try:
            fingerprints = fingerprint_batch([d for _, _, d in decoded], self.extra_hashes)
            fingerprinted = [(index, fp) for (index, _, _), fp in zip(decoded, fingerprints)]
        except Exception:  # noqa: BLE001 - find the one sample that fails, keep the others
            fingerprinted = []
            for index, path, d in decoded:
                try:
                    fingerprinted.append((index, fingerprint_decoded(d, self.extra_hashes)))
                except Exception as exc:  # noqa: BLE001 - one sample's failure is its problem record
                    results.append((index, _unexpected(index, path, exc)))
        if fingerprinted:  # paths and labels are set in the main process (_labelled)
            indices = [index for index, _ in fingerprinted]
            fps = [fp for _, fp in fingerprinted]
            table = FingerprintTable.from_rows(indices, [""] * len(fps), [None] * len(fps), fps)
            results.append((indices[0], _FingerprintBatch(indices, table, [fp.warnings for fp in fps])))
        return results


def _unexpected(index: int, path: str, exc: Exception) -> Problem:
    log.debug("unexpected failure on %s", path, exc_info=exc)
    return Problem(index, path, f"{path}: unexpected {type(exc).__name__}: {exc}")


def _collate_list(batch: list[Any]) -> list[Any]:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    threadpool_limits(1, user_api="blas")  # the batch's small matrix products: threads cost more than they give


#: Samples fingerprinted together: large enough that the hash arithmetic is done batch-wide, small enough that every
#: worker gets several batches (photos of megapixels take ~50 ms each to decode).
MAX_BATCH = 64


class single_threaded_opencv:
    """Context: OpenCV on one thread while worker processes are forked, restored afterwards.

    Calling ``cv2.setNumThreads`` inside a forked child can deadlock when the parent has used OpenCV's thread
    pool (seen after a torch backward pass); setting it in the parent before the fork is safe, and each worker
    then runs OpenCV on one thread, so workers do not oversubscribe the cores.
    """

    def __enter__(self) -> None:
        self.previous = cv2.getNumThreads()
        cv2.setNumThreads(1)

    def __exit__(self, *exc: object) -> None:
        cv2.setNumThreads(self.previous)


def default_workers() -> int:
    """Worker processes used by default: every core this process may run on."""
    return available_cores()


def compute_fingerprints(
    dataset: Any,
    *,
    indices: Iterable[int] | None = None,
    workers: int | None = None,
    extra_hashes: Sequence[str] = (),
    progress: bool = False,
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "fingerprinting",
    known: KnownFingerprints | None = None,
    distributed: bool = True,
    on_chunk: Callable[[FingerprintTable], None] | None = None,
) -> tuple[FingerprintTable, list[Problem]]:
    """Fingerprint the samples of a :class:`vdc_torch.Dataset` (all, or ``indices``) on ``workers`` processes.

    ``known`` (fingerprints computed before, e.g. a :class:`vdc_torch.decision.store.cache.FingerprintCache`)
    supplies the rows of unchanged files without decoding them; it is only read, never written: the caller keeps
    what is new. ``on_chunk`` is called with each batch of newly decoded fingerprints as soon as it is done (rows
    carry their sample index, path and label), e.g. to checkpoint them. Under an initialised ``torch.distributed`` process group (and
    ``distributed=True``) each rank fingerprints its shard and every rank receives the whole table.
    Returns the table of usable samples (in index order) and one :class:`Problem` per unusable sample or caveat.
    """
    for method in extra_hashes:
        if method not in HASH_METHODS:
            raise InvalidParameterError(f"extra hash {method!r} is not one of {', '.join(HASH_METHODS)}")
    todo = list(range(len(dataset))) if indices is None else list(indices)
    rank, world = _rank_and_world() if distributed else (0, 1)
    todo = todo[rank::world]
    cache = known if known is not None and dataset.is_file_backed else None
    cached_indices: list[int] = []
    cached_rows: list[int] = []
    known_content = None
    if cache is not None:
        missing = []
        for index in todo:
            row = cache.lookup_row(file_key(dataset.samples[index][0]))
            if row is None:
                missing.append(index)
            else:
                cached_indices.append(index)
                cached_rows.append(row)
        todo = missing
        # taken now: a checkpoint (on_chunk) rebuilds the cache table and renumbers its rows
        cached = _labelled(cache.table.rows(cached_rows), dataset, cached_indices)
        sizes, digests = cache.known_content()
        known_content = (sizes, digests) if todo and digests else None
    workers = default_workers() if workers is None else max(0, int(workers))
    if workers and not _worth_forking(dataset, todo):
        workers = 0  # starting processes costs more than it saves
    task = _FingerprintTask(dataset, todo, extra_hashes, decode_side, max_pixels, known_content)
    batch_size = max(1, min(MAX_BATCH, len(todo) // (8 * max(1, workers))))
    loader = torch.utils.data.DataLoader(
        task,
        batch_size=None,  # the task takes a whole batch of positions (fingerprint_batch)
        sampler=torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(task), batch_size, drop_last=False),
        num_workers=workers,
        collate_fn=_collate_list,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        multiprocessing_context="fork" if workers and os.name == "posix" else None,
    )
    batches: list[FingerprintTable] = []
    reused: dict[int, Fingerprint] = {}
    problems: list[Problem] = []
    bar = progress_bar(len(todo), desc, progress)
    with single_threaded_opencv(), threadpool_limits(1, user_api="blas"):
        for batch in loader:
            done = 0
            chunk: list[FingerprintTable] = []
            results = list(batch)
            for index, result in results:  # (grows when a known file must be decoded after all, below)
                if isinstance(result, Problem):
                    problems.append(result)
                    done += 1
                elif isinstance(result, _KnownContent):  # same bytes as a cached file: reuse, re-key, no decode
                    row = cache.lookup_digest(result.byte_digest)
                    if row is None:  # a checkpoint replaced that entry (its path changed) meanwhile: decode here
                        redo = _FingerprintTask(dataset, [index], extra_hashes, decode_side, max_pixels)
                        results.extend(redo[[0]])
                        continue
                    reused[index] = dataclasses.replace(
                        cache.table.fingerprint(row), file_size=result.file_size, mtime_ns=result.mtime_ns,
                        warnings=[],
                    )
                    done += 1
                else:
                    batches.append(result.table)
                    chunk.append(result.table)
                    for i, warnings in zip(result.indices, result.warnings):
                        problems.extend(Problem(i, dataset.samples[i][0], w, fatal=False) for w in warnings)
                    done += len(result.indices)
            bar.update(done)
            if on_chunk is not None and chunk:
                fresh_chunk = FingerprintTable.concat(chunk)
                on_chunk(_labelled(fresh_chunk, dataset, fresh_chunk.sample_index.tolist()))
    bar.close()
    if reused:
        order = sorted(reused)
        batches.append(FingerprintTable.from_rows(order, [""] * len(order), [None] * len(order),
                                                  [reused[i] for i in order]))
    fresh = FingerprintTable.concat(batches)  # in loader order; sorted by sample index once, at the end
    order = fresh.sample_index.tolist()
    fresh = _labelled(fresh, dataset, order)
    if cache is not None:
        fresh = FingerprintTable.concat([fresh, cached])
    if world > 1:
        fresh, problems = _all_gather(fresh, problems)
    table = fresh.rows(np.argsort(fresh.sample_index, kind="stable"))
    problems.sort(key=lambda p: (p.index, not p.fatal))
    return table, problems


def fingerprint_stream(
    items: Iterable[tuple[int, str, Any]],
    *,
    extra_hashes: Sequence[str] = (),
    progress: bool = False,
    total: int | None = None,
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "fingerprinting",
) -> tuple[FingerprintTable, list[Problem]]:
    """Fingerprint ``(index, name, stored image)`` items in one pass, in this process (an iterable dataset
    cannot be split between workers without changing what each sees).

    The stored image is anything :func:`vdc_torch.decode.decode_sample` takes, or an exception (the item could
    not be read). Rows carry the item's index; paths and labels are left for the caller.
    """
    batches: list[FingerprintTable] = []
    problems: list[Problem] = []
    pending: list[tuple[int, str, DecodedImage]] = []
    bar = progress_bar(total, desc, progress)

    def flush() -> None:
        if not pending:
            return
        try:
            fps = fingerprint_batch([d for _, _, d in pending], extra_hashes)
            rows = [(i, fp) for (i, _, _), fp in zip(pending, fps)]
        except Exception:  # noqa: BLE001 - find the one sample that fails, keep the others
            rows = []
            for i, name, d in pending:
                try:
                    rows.append((i, fingerprint_decoded(d, extra_hashes)))
                except Exception as exc:  # noqa: BLE001
                    problems.append(_unexpected(i, name, exc))
        for (i, fp), (_, name, _) in zip(rows, pending):
            problems.extend(Problem(i, name, w, fatal=False) for w in fp.warnings)
        if rows:
            batches.append(FingerprintTable.from_rows([i for i, _ in rows], [""] * len(rows), [None] * len(rows),
                                                      [fp for _, fp in rows]))
        bar.update(len(pending))
        pending.clear()

    with threadpool_limits(1, user_api="blas"):
        for index, name, stored in items:
            try:
                if isinstance(stored, BaseException):
                    raise stored
                pending.append((index, name, decode_sample(stored, name=name, decode_side=decode_side,
                                                           max_pixels=max_pixels)))
            except ImageDecodeError as exc:
                problems.append(Problem(index, name, str(exc)))
                bar.update(1)
            except Exception as exc:  # noqa: BLE001 - one item's failure is its problem record
                problems.append(_unexpected(index, name, exc))
                bar.update(1)
            if len(pending) >= MAX_BATCH:
                flush()
        flush()
    bar.close()
    table = FingerprintTable.concat(batches) if batches else FingerprintTable.empty()
    return table, problems


def _worth_forking(dataset: Any, todo: Sequence[int]) -> bool:
    """Worker processes pay off for many samples, or for a few large files (megapixel photos)."""
    if len(todo) >= 256:
        return True
    if len(todo) < 8 or not dataset.is_file_backed:
        return False
    total = 0
    for index in todo:
        try:
            total += os.path.getsize(dataset.samples[index][0])
        except OSError:
            pass
    return total >= 8 * 1024 * 1024


def _labelled(table: FingerprintTable, dataset: Any, indices: Sequence[int]) -> FingerprintTable:
    """Set the sample indices, paths and labels of ``table``'s rows from ``dataset``."""
    table.sample_index = np.asarray(indices, dtype=np.int64)
    table.paths = [dataset.samples[i][0] for i in indices]
    table.labels = [dataset.label_name(dataset.samples[i][1]) for i in indices]
    return table


# -- moving tables between processes (no pickle) -------------------------------------------------------------


def table_to_bytes(table: FingerprintTable) -> bytes:
    """Serialise a table to ``.npz`` bytes without pickle (variable-length columns as blobs + offsets)."""
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {}
    for name in table.__dataclass_fields__:
        value = getattr(table, name)
        if is_stored(value):
            value = list(value) if value.is_bytes else np.asarray(value)
        if isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            items = [json.dumps(v, sort_keys=True).encode() if isinstance(v, dict) else v for v in value]
            present = np.array([v is not None for v in items], dtype=bool)
            blobs = [v if isinstance(v, bytes) else (b"" if v is None else str(v).encode()) for v in items]
            kinds = {type(v).__name__ for v in value if v is not None}
            arrays[f"{name}.blob"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            arrays[f"{name}.offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
            arrays[f"{name}.present"] = present
            arrays[f"{name}.kind"] = np.array(sorted(kinds)[0] if kinds else "NoneType")
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def table_from_bytes(data: bytes) -> FingerprintTable:
    """Inverse of :func:`table_to_bytes` (``allow_pickle=False``)."""
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    kwargs: dict[str, Any] = {}
    for name in FingerprintTable.__dataclass_fields__:
        if name in arrays:
            kwargs[name] = arrays[name]
            continue
        blob = arrays[f"{name}.blob"].tobytes()
        offsets = arrays[f"{name}.offsets"]
        present = arrays[f"{name}.present"]
        kind = str(arrays[f"{name}.kind"])
        convert = {"bytes": bytes, "str": lambda b: b.decode(), "int": lambda b: int(b.decode()),
                   "dict": lambda b: json.loads(b.decode())}.get(kind, lambda b: b.decode())
        kwargs[name] = [
            convert(blob[offsets[i] : offsets[i + 1]]) if present[i] else None for i in range(len(present))
        ]
    return FingerprintTable(**kwargs)


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(table: FingerprintTable, problems: list[Problem]) -> tuple[FingerprintTable, list[Problem]]:
    """Every rank's table and problems, concatenated, on every rank (byte tensors; works on gloo and nccl)."""
    import torch.distributed as dist

    payload = table_to_bytes(table)
    problem_payload = json.dumps([p.to_dict() for p in problems]).encode()
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered_tables, gathered_problems = [], []
    for blob, out in ((payload, gathered_tables), (problem_payload, gathered_problems)):
        size = torch.tensor([len(blob)], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        tensor = torch.zeros(longest, dtype=torch.uint8, device=device)
        tensor[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device) if blob else tensor[:0]
        received = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
        dist.all_gather(received, tensor)
        out.extend(r[: int(s.item())].cpu().numpy().tobytes() for r, s in zip(received, sizes))
    merged = FingerprintTable.concat([table_from_bytes(b) for b in gathered_tables])
    merged_problems = [Problem(**record) for b in gathered_problems for record in json.loads(b.decode())]
    return merged, merged_problems

