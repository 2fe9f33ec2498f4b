"""The fingerprint of decoded images: border trimming, pHashes (whole, mirror, 27 crops), thumbnail and detail.

Everything comes from the one decode of each image; a batch of images of one size is processed as one stack.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vdc_torch.data.decode import (
    DecodedImage,
    pixel_digest,
    shrink_to_side,
)
from vdc_torch.errors import ImageDecodeError
from vdc_torch.fingerprints.hashes import compute_hash
from vdc_torch.fingerprints.table import CROP_BOXES, DETAIL_SIDE, THUMB_SIDE, Fingerprint

log = logging.getLogger(__name__)

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


def fingerprint_decoded(decoded: DecodedImage, extra_hashes: Sequence[str] = (),
                        view_size: tuple[int, int] | None = None) -> Fingerprint:
    """Compute every fingerprint of one decoded image (no further reading or decoding)."""
    return fingerprint_batch([decoded], extra_hashes, view_size)[0]


@dataclass
class _Prepared:
    """Internal: one image's working copies on the way to its fingerprint."""

    content: np.ndarray  # RGB content (borders trimmed) of the <= DETAIL_SIDE working copy
    gray: np.ndarray  # its gray version
    thumb: np.ndarray  # THUMB_SIDE x THUMB_SIDE RGB
    whole: np.ndarray | None  # gray THUMB_SIDE x THUMB_SIDE of the untrimmed picture; None when nothing was trimmed


def compact_decoded(decoded: DecodedImage) -> DecodedImage:
    """``decoded`` holding only what :func:`fingerprint_batch` needs: the digest of its pixels and the working copy
    (longer side at most ``DETAIL_SIDE``) instead of the full-size pixels; the same fingerprints come out.

    Fingerprinting a batch then holds one full-size image at a time (the one being decoded), not the whole batch.
    """
    digest = decoded.pixel_digest or pixel_digest(decoded.pixels)
    return dataclasses.replace(decoded, pixels=_working_copy(decoded.pixels), pixel_digest=digest)


def _working_copy(pixels: np.ndarray) -> np.ndarray:
    """The picture at most :data:`DETAIL_SIDE` px on its longer side (area-resized), from which everything is taken."""
    return shrink_to_side(pixels, DETAIL_SIDE)


def rows_by_shape(grays: Sequence[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    """Positions of the images of each shape (images of one shape are processed as one stack)."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, gray in enumerate(grays):
        by_shape.setdefault(gray.shape, []).append(i)
    return by_shape


def _content_boxes(grays: Sequence[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """:func:`content_box` of each image; images of one shape whose four edges are all textured (most pictures)
    are recognised together, without a call each."""
    boxes: list[tuple[int, int, int, int] | None] = [None] * len(grays)
    for (h, w), rows in rows_by_shape(grays).items():
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


def fingerprint_batch(decoded: Sequence[DecodedImage], extra_hashes: Sequence[str] = (),
                      view_size: tuple[int, int] | None = None) -> list[Fingerprint]:
    """:func:`fingerprint_decoded` of many images at once: the same values, the hash arithmetic done batch-wide.

    ``view_size`` (height, width) adds each image's view for a model encoder (:func:`encoder_view`) to its
    fingerprint, from the same working copy.

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
            pixel_digest=d.pixel_digest or pixel_digest(d.pixels),
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
            view=None if view_size is None else encoder_view(p.content, view_size),
        ))
    return out


def encoder_view(content: np.ndarray, view_size: tuple[int, int]) -> np.ndarray:
    """The border-trimmed RGB ``content`` of the working copy (longer side at most :data:`DETAIL_SIDE`) resized to
    ``view_size`` (height, width): what a model encoder is shown, the thumbnail's picture at the model's input size.
    Area-averaged where it shrinks, bilinear where a side grows (inputs larger than the working copy)."""
    height, width = int(view_size[0]), int(view_size[1])
    shrinks = height <= content.shape[0] and width <= content.shape[1]
    return cv2.resize(content, (width, height), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)


def crop_coefficients(grays: Sequence[np.ndarray]) -> np.ndarray:
    """(n, len(CROP_BOXES), 8, 8) low-frequency DCT coefficients of the :data:`CROP_BOXES` crops of each gray image.

    Each crop is area-resized to THUMB_SIDE² in float (OpenCV ``INTER_AREA``) and transformed like a pHash. Images of
    one shape up to :data:`SMALL_CONTENT_SIDE` are done together as ``L_box @ image @ R_box.T`` with the resize and
    the DCT folded into two small matrices per box (:func:`_crop_matrices`); larger ones crop by crop.
    """
    out = np.empty((len(grays), len(CROP_BOXES), 8, 8), np.float32)
    for (h, w), rows in rows_by_shape(grays).items():
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


#: JPEG markers that begin a frame (SOF0..SOF15 but DHT, JPG and DAC); encode_detail writes SOF0 (baseline) only.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_RAW_MAX_PIXELS = 64 * 64


def detail_problem(detail: bytes) -> str | None:
    """Why ``detail`` is not a detail image :func:`encode_detail` writes, read from its header alone; else None.

    A raw detail: the tag, two sizes, exactly that many pixels, at most 64×64 of them. A JPEG: one baseline frame
    (SOF0), 8-bit, one (gray) component, larger than 64×64 and at most :data:`DETAIL_SIDE` px a side — so a stored
    "detail" declaring 30000×30000 px (or a PNG, a progressive JPEG) is refused before any decoder allocates.
    """
    checked = _declared_detail_size(detail)
    return checked if isinstance(checked, str) else None


def _declared_detail_size(detail: bytes) -> tuple[int, int] | str:
    """The ``(height, width)`` a valid detail's header declares, or why it is not one (:func:`detail_problem`)."""
    if not isinstance(detail, (bytes, bytearray, memoryview)):
        return f"a {type(detail).__name__}, not bytes"
    data = bytes(detail[:65536]) if len(detail) > 65536 else bytes(detail)
    if data[:4] == _RAW_DETAIL:
        if len(data) < 8:
            return f"a raw detail of {len(data)} bytes, shorter than its header"
        h, w = struct.unpack_from("<HH", data, 4)
        if not (0 < h * w <= _RAW_MAX_PIXELS and max(h, w) <= DETAIL_SIDE):
            return f"a raw detail declaring {w}×{h} px (raw details are at most {_RAW_MAX_PIXELS} px)"
        if len(detail) != 8 + h * w:
            return f"a raw {w}×{h} detail of {len(detail)} bytes, expected {8 + h * w}"
        return h, w
    return _declared_jpeg_detail_size(data)


def _declared_jpeg_detail_size(data: bytes) -> tuple[int, int] | str:
    if data[:2] != b"\xff\xd8":
        return f"neither a raw detail nor a JPEG (it starts with {data[:8]!r})"
    at, frame = 2, None
    while True:
        if at + 4 > len(data):
            return "a JPEG whose header is truncated (no scan)"
        if data[at] != 0xFF:
            return f"a malformed JPEG (no marker at byte {at})"
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            return f"a malformed JPEG (marker 0x{marker:02X} in its header)"
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2 or at + 2 + length > len(data):
            return f"a malformed JPEG (segment 0x{marker:02X} of length {length})"
        if marker in _SOF_MARKERS:
            if marker != 0xC0:
                return f"a JPEG of another kind (SOF{marker - 0xC0}; details are baseline JPEG)"
            if frame is not None or length < 11:
                return "a malformed JPEG (a second or short frame header)"
            precision, h, w, components = struct.unpack_from(">BHHB", data, at + 4)
            frame = (precision, h, w, components)
        at += 2 + length
    if frame is None:
        return "a JPEG without a frame header"
    precision, h, w, components = frame
    if precision != 8 or components != 1:
        return f"a {precision}-bit JPEG of {components} components (details are 8-bit gray)"
    if not (0 < h <= DETAIL_SIDE and 0 < w <= DETAIL_SIDE and h * w > _RAW_MAX_PIXELS):
        return f"a JPEG declaring {w}×{h} px (details are at most {DETAIL_SIDE} px a side)"
    return h, w


def decode_detail(detail: bytes) -> np.ndarray:
    """The gray detail image stored in a fingerprint, as a uint8 array.

    The header is checked first (:func:`detail_problem`), so nothing but a detail this library writes reaches
    the decoder; anything else is an :class:`ImageDecodeError` saying what is wrong.
    """
    size = _declared_detail_size(detail)
    if isinstance(size, str):
        raise ImageDecodeError(f"stored detail image is corrupt: {size}")
    if detail[:4] == _RAW_DETAIL:
        return np.frombuffer(detail, np.uint8, offset=8).reshape(size).copy()
    image = cv2.imdecode(np.frombuffer(detail, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.shape != size:
        raise ImageDecodeError("stored detail image is corrupt: its JPEG data does not decode to its declared size")
    return image
