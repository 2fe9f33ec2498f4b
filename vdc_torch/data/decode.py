"""Stage 1 of the data flow: one safe read and decode of one sample.

``decode_file`` reads a file's bytes exactly once, digests them, parses the EXIF identity and decodes
the pixels (DCT-reduced for large JPEGs, EXIF orientation applied) into an RGB ``uint8`` array. Pillow opens
and checks every file; small JPEGs are decoded by torchvision's libjpeg and plain 8-bit PNGs by OpenCV
(:mod:`vdc_torch.data.png`), each giving Pillow's pixels exactly and falling back to Pillow for anything else.
``decode_object`` does the same for in-memory samples (PIL images, tensors, arrays). Every failure is an
:class:`~vdc_torch.errors.ImageDecodeError` whose message names the file and the reason; a malformed EXIF
block is *not* a failure: the pixels are used and the problem is recorded in ``DecodedImage.warnings``.

Untrusted files are handled defensively: only regular files are read (a FIFO, socket, device or directory
named ``*.jpg`` is refused without blocking), files larger than ``max_bytes`` are refused before they are
read, images declaring more than ``max_pixels`` pixels are refused before any pixel memory is allocated, and
no exception other than ``ImageDecodeError`` leaves :func:`decode_bytes` / :func:`decode_file`. Pillow's
global settings (``LOAD_TRUNCATED_IMAGES``, ``MAX_IMAGE_PIXELS``) are read, never changed.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import stat as stat_module
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vdc_torch.data.exif import (  # noqa: F401 - re-exported where they were before the split
    _IFD_POINTERS,
    _TIFF_TYPE_NAMES,
    _TIFF_TYPE_SIZES,
    _clean,
    _exif_fields,
    _read_exif_identity,
    exif_problems,
    printable_exif_value,
    read_exif_tags,
)
from vdc_torch.data.jpeg import (  # noqa: F401 - re-exported where they were before the split
    _PLAIN_SOF,
    MAX_JPEG_SCAN_PIXELS,
    MAX_JPEG_SCANS,
    _JpegHeader,
    _plain_jpeg_header,
    scan_budget_exceeded,
)
from vdc_torch.data.pixels import (  # noqa: F401 - re-exported where they were before the split
    FLOAT_PIXEL_TOLERANCE,
    apply_orientation,
    array_to_rgb_uint8,
    check_unit_range,
    pixel_digest,
    reduced_rgb,
    reduced_rgb_array,
    to_rgb_array,
)
from vdc_torch.data.png import opencv_png
from vdc_torch.errors import ImageDecodeError

log = logging.getLogger(__name__)

#: File extensions scanned by default (lower case, with the dot): torchvision's ``IMG_EXTENSIONS`` plus the other
#: raster formats Pillow reads that turn up in datasets (GIF, MPO, PBM/PNM, TGA, ICO, JPEG 2000, HEIC with a plugin).
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm",
    ".pbm", ".pnm", ".mpo", ".tga", ".ico", ".jp2", ".j2k", ".heic", ".heif",
)

#: Leading bytes of the image formats vdc_torch decodes, to recognise an image under a foreign extension.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"GIF87a", "GIF"), (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"), (8, b"WEBP", "WebP"), (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (4, b"ftypheic", "HEIC"), (4, b"ftypmif1", "HEIF"), (4, b"ftypavif", "AVIF"), (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)

#: Images declaring more pixels than this are refused before any pixel memory is allocated.
DEFAULT_MAX_PIXELS = 150_000_000

#: Files larger than this are refused before they are read (an image file this large is not a training sample).
DEFAULT_MAX_BYTES = 1 << 30

#: Large JPEGs are decoded with DCT scaling so that their shorter side stays at least this long.
DEFAULT_DECODE_SIDE = 256

#: Other images of more pixels than this are reduced (by an integer factor, at most 8 like JPEG's DCT scaling)
#: while they are converted to RGB, so their full-size RGB copy never exists: decoding one costs the decoder's buffer
#: (Pillow: 4 bytes a pixel for RGB and RGBA, 2 for 16-bit gray, 4 for float) plus a few MB, never two full copies.
#: Their pixel digest is still that of the full-size pixels.
DEFAULT_REDUCE_ABOVE_PIXELS = 16_000_000

#: Decoding one image may need at most this much memory (an estimate from its format and size, before decoding:
#: :data:`DECODER_BYTES_PER_PIXEL`). With the default ``max_pixels`` only WebP above ~50 MP and JPEG 2000 above
#: ~40 MP reach it; every other format stays under 4 bytes a pixel (600 MB at 150 MP). Together with the reduced
#: conversion above, peak memory of fingerprinting is about ``workers x MAX_DECODE_BYTES`` plus the file bytes
#: being read, whatever the batch size.
MAX_DECODE_BYTES = 800 << 20

#: Decoder memory per pixel, measured (peak above baseline / pixels) on 16-megapixel files with Pillow 13: libwebp
#: decodes into its own RGBA canvas that Pillow then copies (animated or not), OpenJPEG keeps 32-bit samples per
#: component. Other formats: Pillow's own buffer, 4 bytes a pixel at most.
DECODER_BYTES_PER_PIXEL: dict[str, int] = {"WEBP": 16, "JPEG2000": 20}

#: The Pillow formats vdc_torch decodes (``Image.open(formats=...)``). Every other plugin stays closed: EPS and
#: PostScript (Pillow hands them to Ghostscript, which would run the file's code), PDF, PSD, FITS, and the rest.
DECODED_FORMATS: tuple[str, ...] = (
    "JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO", "JPEG2000", "AVIF", "HEIF",
)


_FILE_KINDS = (
    (stat_module.S_ISDIR, "a directory"),
    (stat_module.S_ISFIFO, "a named pipe (FIFO)"),
    (stat_module.S_ISSOCK, "a socket"),
    (stat_module.S_ISCHR, "a character device"),
    (stat_module.S_ISBLK, "a block device"),
)


@dataclass
class DecodedImage:
    """The single decode of one sample: pixels plus everything read alongside them."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB, orientation applied, possibly DCT-reduced
    width: int  # full-resolution width after orientation
    height: int  # full-resolution height after orientation
    byte_digest: bytes | None = None  # digest() of the file bytes (None for in-memory samples)
    exif_identity: str | None = None  # make|model|DateTimeOriginal.SubSec|ImageUniqueID|BodySerial
    pixel_digest: bytes | None = None  # pixel_digest() of the full-size pixels when ``pixels`` is a reduced copy
    file_size: int | None = None
    mtime_ns: int | None = None
    format: str | None = None
    frames: int = 1
    warnings: list[str] = field(default_factory=list)  # non-fatal problems (e.g. malformed EXIF)


def digest(data: bytes | memoryview) -> bytes:
    """The digest of a file's bytes (``byte_digest``; BLAKE2b, 16 bytes), also the fingerprint cache's key."""
    return hashlib.blake2b(data, digest_size=16).digest()


def has_image_extension(path: str | os.PathLike[str], extensions: tuple[str, ...] = IMG_EXTENSIONS) -> bool:
    """True when ``path`` ends with one of ``extensions`` (case-insensitive)."""
    return str(path).lower().endswith(extensions)


def sniff_image_format(path: str | os.PathLike[str]) -> str | None:
    """The image format a file's first bytes announce (``"JPEG"``, ``"PNG"``, ...), or ``None``; never raises.

    Used to report images hidden under a foreign extension (a JPEG named ``.svg``) instead of dropping them.
    """
    try:
        if not stat_module.S_ISREG(os.stat(path).st_mode):  # a FIFO must not block the scan
            return None
        with open(path, "rb", buffering=0) as handle:
            head = handle.read(16)
    except OSError:
        return None
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def shrink_to_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` area-resized so its longer side is at most ``side`` px (never enlarged; the same array if small)."""
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return image
    import cv2

    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def display_name(path: str | bytes | os.PathLike[Any]) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (e.g. a Latin-1 file name) become ``\\xNN`` escapes.

    >>> display_name(b"caf\\xe9.jpg")
    'caf\\\\xe9.jpg'
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def read_file(
    path: str | bytes | os.PathLike[Any], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[bytes, os.stat_result]:
    """Read a regular file's bytes once; anything else (pipe, device, directory, link loop...) is refused.

    The file is opened non-blocking, so a FIFO named ``x.jpg`` cannot hang the run, and checked with ``fstat``
    on the open descriptor, so a file swapped after a check cannot slip through.
    """
    name = display_name(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageDecodeError(f"{name}: {_open_failure(path, exc)}") from exc
    try:
        st = os.fstat(fd)
        for test, kind in _FILE_KINDS:
            if test(st.st_mode):
                raise ImageDecodeError(f"{name}: is {kind}, not a regular image file")
        if st.st_size > max_bytes:
            raise ImageDecodeError(f"{name}: file of {st.st_size} bytes is larger than max_bytes={max_bytes}; refused")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 22, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ImageDecodeError(f"{name}: file grew beyond max_bytes={max_bytes} while it was read; refused")
        return b"".join(chunks), st
    except OSError as exc:
        raise ImageDecodeError(f"{name}: read error ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def _open_failure(path: str | bytes | os.PathLike[Any], exc: OSError) -> str:
    """The reason, in words, why ``open`` failed."""
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            try:
                target = display_name(os.readlink(path))
            except OSError:
                target = "?"
            return f"broken symbolic link (points to {target!r}, which does not exist)"
        return "file not found (deleted or moved after the dataset was scanned?)"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a regular image file"
    if exc.errno == errno.ENXIO:
        return "is a socket or a device without a reader, not a regular image file"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a parent folder is not a directory)"
    return f"cannot be opened ({exc.strerror or exc})"


def decode_file(
    path: str | bytes | os.PathLike[Any],
    *,
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Read and decode one image file once.

    ``decode_side`` lets JPEG decoding skip detail the fingerprints do not use (``None``: full size).

    >>> decoded = decode_file("photo.jpg")  # doctest: +SKIP
    >>> decoded.pixels.shape, decoded.width, decoded.height  # doctest: +SKIP
    """
    name = display_name(path)
    data, st = read_file(path, max_bytes=max_bytes)
    if not data:
        reason = "empty file (0 bytes)" if st.st_size == 0 else f"empty when read, {st.st_size} bytes at open"
        raise ImageDecodeError(f"{name}: {reason}")
    decoded = decode_bytes(data, name=name, decode_side=decode_side, max_pixels=max_pixels)
    decoded.byte_digest = digest(data)
    decoded.file_size = len(data)
    decoded.mtime_ns = st.st_mtime_ns
    if st.st_size != len(data):
        decoded.warnings.append(
            f"{name}: file changed while it was read ({st.st_size} bytes at open, {len(data)} read)"
        )
    return decoded


def load_image(
    path: str | bytes | os.PathLike[Any], *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """An image file as an RGB PIL image, read and converted exactly as the fingerprints see it.

    The same safety as :func:`decode_file` (regular files only, size and pixel limits, one clear
    :class:`ImageDecodeError` naming the file), full resolution, EXIF orientation applied, alpha composited on
    white, 16-bit scaled. Suitable as ``Dataset(loader=...)``.

    >>> image = load_image("photo.jpg")  # doctest: +SKIP
    """
    name = display_name(path)
    data, _ = read_file(path, max_bytes=max_bytes)
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    decoded = decode_bytes(data, name=name, decode_side=None, max_pixels=max_pixels)
    return Image.fromarray(decoded.pixels, "RGB")


def decode_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode an encoded image held in memory (see :func:`decode_file`).

    Returns a :class:`DecodedImage` with (H, W, 3) ``uint8`` pixels or raises :class:`ImageDecodeError`; no other
    exception escapes, whatever the bytes.
    """
    try:
        return _decode_bytes(data, name, decode_side, max_pixels)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(f"{name}: out of memory while decoding; refused") from exc
    except Exception as exc:  # a decoder bug or an exotic failure: one sample must never end the run
        log.debug("unexpected decode failure for %s", name, exc_info=True)
        raise ImageDecodeError(f"{name}: corrupt image data ({type(exc).__name__}: {exc})") from exc


def _decode_bytes(data: bytes, name: str, decode_side: int | None, max_pixels: int) -> DecodedImage:
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    if data[:2] == b"\xff\xd8":
        too_costly = scan_budget_exceeded(data, max_pixels=max_pixels)
        if too_costly is not None:
            raise ImageDecodeError(f"{name}: {too_costly}; refused without decoding (decoding time grows with every "
                                   "scan: a possible scan bomb)")
    plain = _decode_plain_jpeg(data, name, decode_side, max_pixels)
    if plain is not None:
        return plain
    try:
        with warnings.catch_warnings(record=True) as opening:  # Pillow may parse (and warn about) EXIF here
            warnings.simplefilter("always")
            image = Image.open(io.BytesIO(data), formats=_decoded_formats())
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: {_unidentified_reason(data)}") from exc
    except Exception as exc:  # PIL raises many types for garbage headers
        raise ImageDecodeError(f"{name}: corrupt or truncated image header ({type(exc).__name__}: {exc})") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"{name}: declares an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"{name}: declares {width}x{height} pixels, more than max_pixels={max_pixels}; "
                "refused without decoding (possible decompression bomb)"
            )
        need = width * height * DECODER_BYTES_PER_PIXEL.get(str(image.format), 4)
        if need > MAX_DECODE_BYTES:
            raise ImageDecodeError(
                f"{name}: a {image.format} image of {width}x{height} pixels needs about {need >> 20} MB to decode, "
                f"more than MAX_DECODE_BYTES={MAX_DECODE_BYTES >> 20} MB; refused without decoding"
            )
        problems: list[str] = []
        early = [str(w.message) for w in opening if not issubclass(w.category, Image.DecompressionBombWarning)]
        exif_early = [m for m in early if "exif" in m.lower() or "tag" in m.lower()]
        other_early = list(dict.fromkeys(m for m in early if m not in exif_early))
        by_opencv = opencv_png(image, data, max_rgba_pixels=DEFAULT_REDUCE_ABOVE_PIXELS)
        exif_of = image if by_opencv is None else _ExifOnly(by_opencv[1])  # (a PNG's getexif() decodes it)
        exif_identity, orientation = _read_exif_identity(exif_of, problems, exif_early)
        if other_early:
            problems.append(f"header oddities ignored: {'; '.join(other_early[:4])}")
        problems = [f"{name}: {p}" for p in problems]
        with warnings.catch_warnings():
            # Pillow warns about broken tags of later frames and the like while seeking and decoding; the
            # outcome (pixels or ImageDecodeError) says what matters, so the library stays quiet.
            warnings.simplefilter("ignore")
            try:
                frames = int(getattr(image, "n_frames", 1) or 1)
                image.seek(0)
            except Exception as exc:  # noqa: BLE001 - a broken frame table: the first frame may still be fine
                problems.append(f"{name}: frame count unreadable, first frame used ({type(exc).__name__}: {exc})")
                frames = 1
            fmt = image.format
            if decode_side and fmt == "JPEG" and min(width, height) > 2 * decode_side:
                scale = min(width, height) / decode_side
                image.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))
            try:
                if by_opencv is None:
                    image.load()
                    pixels, pixel_digest = _converted(image, decode_side if fmt != "JPEG" else None)
                else:
                    pixels, pixel_digest = _converted(by_opencv[0], decode_side)
            except Image.DecompressionBombError as exc:
                raise ImageDecodeError(f"{name}: refused as a decompression bomb ({exc})") from exc
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
                raise ImageDecodeError(f"{name}: corrupt or truncated image data ({exc})") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8 or pixels.size == 0:
        raise ImageDecodeError(f"{name}: decoded to an unusable array of shape {pixels.shape} ({pixels.dtype})")
    pixels = apply_orientation(pixels, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(
        pixels=pixels, width=width, height=height, exif_identity=exif_identity,
        pixel_digest=pixel_digest if orientation == 1 else None,  # else: the digest of the oriented reduced copy
        format=fmt, frames=frames, warnings=problems,
    )


def _converted(image: Image.Image | np.ndarray, decode_side: int | None) -> tuple[np.ndarray, bytes | None]:
    """RGB pixels of a loaded image (or of an RGB array), reduced when it is large
    (:data:`DEFAULT_REDUCE_ABOVE_PIXELS`), with the full-size pixels' digest when they were reduced."""
    width, height = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    if decode_side and width * height > DEFAULT_REDUCE_ABOVE_PIXELS and min(width, height) > 2 * decode_side:
        factor = min(8, min(width, height) // decode_side)
        return reduced_rgb(image, factor) if isinstance(image, Image.Image) else reduced_rgb_array(image, factor)
    return (to_rgb_array(image) if isinstance(image, Image.Image) else image), None


@functools.lru_cache(maxsize=1)
def _decoded_formats() -> tuple[str, ...]:
    """:data:`DECODED_FORMATS` that this Pillow has (``Image.open`` refuses names it does not know)."""
    Image.init()
    return tuple(f for f in DECODED_FORMATS if f in Image.OPEN)


class _ExifOnly:
    """The EXIF block of a JPEG as :func:`_read_exif_identity` reads it from a Pillow image."""

    def __init__(self, raw: bytes | None) -> None:
        self.info: dict[str, Any] = {"exif": raw} if raw else {}

    def getexif(self) -> Image.Exif:
        exif = Image.Exif()
        if "exif" in self.info:
            exif.load(self.info["exif"])
        return exif


def _decode_plain_jpeg(data: bytes, name: str, decode_side: int | None, max_pixels: int) -> DecodedImage | None:
    """:func:`_decode_bytes` for a plain JPEG (:func:`_plain_jpeg_header`) decoded at full size, without Pillow.

    Small images are where Pillow's per-file set-up costs more than the decode (a 32x32 JPEG: ~85 us of Pillow
    overhead around ~25 us of libjpeg). The same checks, EXIF identity and orientation as Pillow's way; the
    pixels come from torchvision's libjpeg decoder, identical to Pillow's (checked on CIFAR-10, the EXIF samples
    and the accuracy suites). torchvision refuses a stream on *any* libjpeg warning (cut, corrupt data, extra
    bytes), where Pillow tolerates some and reports others: every such file, every DCT-scaled decode (large
    files, where Pillow's overhead does not matter) and anything unusual returns None and goes Pillow's way, so
    what is an error and what decodes stays exactly as Pillow decides.
    """
    header = _plain_jpeg_header(data)
    if header is None:
        return None
    width, height = header.width, header.height
    if decode_side and min(width, height) > 2 * decode_side:
        return None  # DCT-scaled: Pillow's draft
    bomb_limit = Image.MAX_IMAGE_PIXELS
    if bomb_limit is not None and width * height > bomb_limit:
        return None  # Pillow's own warning or refusal applies
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{name}: declares {width}x{height} pixels, more than max_pixels={max_pixels}; "
            "refused without decoding (possible decompression bomb)"
        )
    pixels = _libjpeg_rgb(data)
    if pixels is None or pixels.shape != (height, width, 3):
        return None  # Pillow decodes it or names the problem
    problems: list[str] = []
    exif_identity, orientation = _read_exif_identity(_ExifOnly(header.exif), problems) if header.exif else (None, 1)
    pixels = apply_orientation(pixels, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(pixels=pixels, width=width, height=height, exif_identity=exif_identity, format="JPEG",
                        frames=1, warnings=[f"{name}: {p}" for p in problems])


def _libjpeg_rgb(data: bytes) -> np.ndarray | None:
    """(H, W, 3) RGB pixels from torchvision's JPEG decoder (no EXIF rotation), or None if it refuses the stream.

    The registered operator is called directly: the public ``torchvision.io.decode_jpeg`` wrapper adds ~20 us of
    argument handling per call, as much as decoding a 32x32 image. Any failure (a warning turned error, another
    operator signature in another torchvision) means None: Pillow's way.
    """
    import torch

    if not _image_ops_loaded():
        return None
    try:
        tensor = torch.ops.image.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                             _TORCHVISION_RGB, False)
    except Exception:  # noqa: BLE001 - corrupt data or an unexpected operator: Pillow decides
        return None
    if tensor.dim() != 3 or tensor.shape[0] != 3 or tensor.dtype != torch.uint8:
        return None
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())


@functools.lru_cache(maxsize=1)
def _image_ops_loaded() -> bool:
    """Register torchvision's image operators (``torch.ops.image``) once per process; False if there are none.

    Only torchvision's image library is loaded (~2 ms), not the package: ``import torchvision`` imports its models
    and datasets, ~1.8 s, which every fingerprinting worker process paid before its first sample (the start-up of a
    10k CIFAR-10 run was 2 s of its 3.5). Falls back to importing ``torchvision.io`` where the library file is not
    found under the names this torchvision uses.
    """
    import importlib.machinery
    import importlib.util

    import torch

    def registered() -> bool:
        try:
            return callable(torch.ops.image.decode_jpeg)
        except (AttributeError, RuntimeError):
            return False

    if registered():
        return True
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for name in ("image", "image_stable"):
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, name + suffix)
                if os.path.isfile(path):
                    try:
                        torch.ops.load_library(path)
                    except (OSError, RuntimeError):
                        continue
                    if registered():
                        return True
    try:
        import torchvision.io  # noqa: F401 - registers torch.ops.image
    except ImportError:
        return False
    return registered()


#: ``torchvision.io.ImageReadMode.RGB``: the decoder converts gray and YCbCr to RGB as Pillow's ``convert("RGB")``.
_TORCHVISION_RGB = 3


def decode_sample(
    sample: Any,
    *,
    name: str = "<sample>",
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode whatever a dataset stores for one image: encoded bytes, a file path, a Hugging Face image dict
    (``{"bytes": ..., "path": ...}``), a PIL image, a tensor or an array.

    Encoded bytes keep their digest, so a sample stored as bytes matches the same file byte for byte.
    """
    if isinstance(sample, dict) and ("bytes" in sample or "path" in sample):  # datasets.Image(decode=False)
        if sample.get("bytes"):
            sample = sample["bytes"]
        elif sample.get("path"):
            sample = sample["path"]
        else:
            raise ImageDecodeError(f"{name}: the image record holds neither bytes nor a path")
    if isinstance(sample, (bytes, bytearray, memoryview)):
        data = bytes(sample)
        decoded = decode_bytes(data, name=name, decode_side=decode_side, max_pixels=max_pixels)
        decoded.byte_digest = digest(data)
        decoded.file_size = len(data)
        return decoded
    if isinstance(sample, (str, os.PathLike)):
        return decode_file(sample, decode_side=decode_side, max_pixels=max_pixels)
    return decode_object(sample, name=name)


def decode_object(sample: Any, *, name: str = "<sample>") -> DecodedImage:
    """Decode an in-memory sample: a PIL image, a ``torch.Tensor`` (C,H,W) or an ``ndarray`` (H,W[,C]).

    Like :func:`decode_bytes`, it returns valid pixels or raises :class:`ImageDecodeError` naming ``name``.
    Float tensors and arrays must hold pixels in [0, 1] (what ``ToTensor`` makes); anything else (the output of
    ``Normalize(mean, std)``, say) is refused with a message saying how to pass the untransformed images.
    """
    try:
        return _decode_object(sample, name)
    except ImageDecodeError:
        raise
    except Exception as exc:  # e.g. a lazily opened PIL image whose file turns out truncated
        reason = f"cannot convert the sample to RGB pixels ({type(exc).__name__}: {exc})"
        raise ImageDecodeError(f"{name}: {reason}") from exc


def _decode_object(sample: Any, name: str) -> DecodedImage:
    if isinstance(sample, Image.Image):
        problems: list[str] = []
        exif_identity, orientation = _read_exif_identity(sample, problems)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = apply_orientation(to_rgb_array(sample), orientation)
        h, w = pixels.shape[:2]
        if h == 0 or w == 0:
            raise ImageDecodeError(f"{name}: empty image of size {w}x{h}")
        return DecodedImage(pixels=pixels, width=w, height=h, exif_identity=exif_identity,
                            warnings=[f"{name}: {p}" for p in problems])
    array = _tensor_to_hwc(sample) if _is_tensor(sample) else sample
    if not isinstance(array, np.ndarray):
        raise ImageDecodeError(
            f"{name}: unsupported sample type {type(sample).__name__}; expected a PIL image, tensor or ndarray"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        check_unit_range(array, name)
    pixels = array_to_rgb_uint8(array, name)
    h, w = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=w, height=h)


def _unidentified_reason(data: bytes) -> str:
    head = data[:32]
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypheim", b"ftyphevc"):
        return "HEIC/HEIF image, but no HEIF decoder is installed (pip install pillow-heif)"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return ("PostScript/EPS document, not decoded (rendering it would run Ghostscript on the file's code); "
                "convert it to PNG or JPEG if it is a training image")
    if head.startswith(b"%PDF"):
        return "PDF document, not an image"
    other = _other_pillow_format(head)
    if other is not None:
        return (f"{other} file, a format vdc_torch does not decode (it decodes "
                f"{', '.join(_decoded_formats())}); convert it to PNG")
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"<svg")):
        return "not an image: the file holds text/markup (HTML, XML, JSON or SVG)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not an image: the file holds plain text"
    return "not a recognised image format"


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _tensor_to_hwc(tensor: Any) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):  # (C, H, W) as torchvision's ToTensor makes it
        array = array.transpose(1, 2, 0)
    return array


def _other_pillow_format(head: bytes) -> str | None:
    """The name of a Pillow format outside :data:`DECODED_FORMATS` whose signature ``head`` carries, or None.

    Only the plugins' signature checks run (they look at the first bytes); no plugin opens the data.
    """
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt in DECODED_FORMATS or accept is None or fmt in ("IM", "IMT", "SPIDER", "MPEG", "IPTC"):
            continue  # those without a reliable signature would claim arbitrary bytes
        try:
            if accept(head):
                return fmt
        except Exception:  # noqa: BLE001, S112 - a signature check that fails is no answer
            continue
    return None
