"""Stage 1 of the data flow: one safe read and decode of one sample.

``decode_file`` reads a file's bytes exactly once, digests them, parses the EXIF identity and decodes
the pixels (DCT-reduced for large JPEGs, EXIF orientation applied) into an RGB ``uint8`` array.
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
    byte_digest: bytes | None = None  # blake2b-128 of the file bytes (None for in-memory samples)
    exif_identity: str | None = None  # make|model|DateTimeOriginal.SubSec|ImageUniqueID|BodySerial
    file_size: int | None = None
    mtime_ns: int | None = None
    format: str | None = None
    frames: int = 1
    warnings: list[str] = field(default_factory=list)  # non-fatal problems (e.g. malformed EXIF)


def digest(data: bytes | memoryview) -> bytes:
    """The content digest used everywhere in vdc_torch (BLAKE2b, 16 bytes)."""
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
    import cv2  # (decoding itself is Pillow's: OpenCV only where an image is resized)

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
    plain = _decode_plain_jpeg(data, name, decode_side, max_pixels)
    if plain is not None:
        return plain
    try:
        with warnings.catch_warnings(record=True) as opening:  # Pillow may parse (and warn about) EXIF here
            warnings.simplefilter("always")
            image = Image.open(io.BytesIO(data))
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
        problems: list[str] = []
        early = [str(w.message) for w in opening if not issubclass(w.category, Image.DecompressionBombWarning)]
        exif_early = [m for m in early if "exif" in m.lower() or "tag" in m.lower()]
        other_early = list(dict.fromkeys(m for m in early if m not in exif_early))
        exif_identity, orientation = _read_exif_identity(image, problems, exif_early)
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
                image.load()
                pixels = to_rgb_array(image)
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
        format=fmt, frames=frames, warnings=problems,
    )


@dataclass(frozen=True)
class _JpegHeader:
    """What :func:`_plain_jpeg_header` reads from a JPEG's markers (up to the first scan)."""

    width: int
    height: int
    gray: bool
    exif: bytes | None  # the APP1 Exif segment, "Exif\0\0" included, as Pillow keeps it in ``info["exif"]``


#: Start-of-frame markers of 8-bit Huffman JPEGs (baseline, extended, progressive): what OpenCV and Pillow both
#: decode through libjpeg alike. Lossless, arithmetic and hierarchical ones go the general way.
_PLAIN_SOF = (0xC0, 0xC1, 0xC2)


def _plain_jpeg_header(data: bytes) -> _JpegHeader | None:
    """Size, colour and EXIF block of a JPEG whose markers hold nothing unusual, or None.

    Pillow parses the markers in Python (~35 us a file, as long as decoding a 32x32 image). This walk reads only
    what the decode needs and gives up (None: Pillow's way) on anything it does not fully understand: another
    frame type or precision, CMYK or Adobe colour transforms, multi-picture (MPO) files, XMP or a second EXIF
    block (Pillow reads orientation from XMP), a segment running past the end or a marker out of place.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, size, exif = 2, None, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 2 + length
        if length < 2 or end > n:
            return None
        segment = data[pos + 4 : end]
        if marker == 0xDA:  # start of scan: the header is complete
            if size is None:
                return None
            width, height, gray = size
            return _JpegHeader(width, height, gray, exif)
        if marker in _PLAIN_SOF:
            if size is not None or len(segment) < 6 or segment[0] != 8:
                return None
            height, width, components = (segment[1] << 8) | segment[2], (segment[3] << 8) | segment[4], segment[5]
            if height == 0 or width == 0 or components not in (1, 3) or len(segment) < 6 + 3 * components:
                return None
            size = (width, height, components == 1)
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # another frame type
            return None
        elif marker == 0xE1:
            if not segment.startswith(b"Exif\x00\x00") or exif is not None:
                return None  # XMP (orientation may live there) or a second EXIF block
            exif = segment
        elif marker == 0xE2 and segment.startswith(b"MPF\x00"):  # multi-picture: Pillow's MPO plugin
            return None
        elif marker == 0xEE:  # Adobe: colour transform flags
            return None
        elif marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:  # no segment may start here
            return None
        pos = end
    return None


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
        _check_unit_range(array, name)
    pixels = _array_to_rgb_uint8(array, name)
    h, w = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=w, height=h)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an (H, W, 3) uint8 RGB array (16-bit scaled, alpha composited on white)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        return _array_to_rgb_uint8(array, "<image>")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # composited in Pillow's C code: a float copy costs ~1 s per 18 MP image
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.ascontiguousarray(np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) to an (H, W, C) array so the image stands as it was shot."""
    if orientation == 2:
        pixels = pixels[:, ::-1]
    elif orientation == 3:
        pixels = pixels[::-1, ::-1]
    elif orientation == 4:
        pixels = pixels[::-1]
    elif orientation == 5:
        pixels = pixels.transpose(1, 0, 2)
    elif orientation == 6:
        pixels = np.rot90(pixels, -1)
    elif orientation == 7:
        pixels = pixels[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        pixels = np.rot90(pixels, 1)
    else:
        return pixels
    return np.ascontiguousarray(pixels)


def _unidentified_reason(data: bytes) -> str:
    head = data[:32]
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypheim", b"ftyphevc"):
        return "HEIC/HEIF image, but no HEIF decoder is installed (pip install pillow-heif)"
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


#: Float pixels may stray this far outside [0, 1] (rounding in resize/colour transforms) and still count as images.
FLOAT_PIXEL_TOLERANCE = 1e-3


def _check_unit_range(array: np.ndarray, name: str) -> None:
    """Refuse float pixels outside [0, 1]: they are not an image but, most often, a normalised tensor."""
    if array.size == 0:
        return
    finite = np.isfinite(array)
    if not finite.all():
        raise ImageDecodeError(f"{name}: float pixels contain NaN or infinity; not an image")
    low, high = float(array.min()), float(array.max())
    if low >= -FLOAT_PIXEL_TOLERANCE and high <= 1.0 + FLOAT_PIXEL_TOLERANCE:
        return
    hint = ("it looks like the output of Normalize(mean, std)" if low < 0 else
            "float pixels must lie in [0, 1] (convert 0-255 floats to uint8)")
    raise ImageDecodeError(
        f"{name}: float pixels lie in [{low:.3f}, {high:.3f}], not in [0, 1]: {hint}. vdc_torch fingerprints "
        "images, not model inputs: pass the dataset without its transform (a dataset with a `transform` "
        "attribute is read untransformed automatically), or Dataset.from_torch(ds, denormalize=(mean, std))"
    )


def _array_to_rgb_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageDecodeError(f"{name}: array of shape {array.shape} is not an image (H,W), (H,W,3) or (H,W,4)")
    if array.size == 0:
        raise ImageDecodeError(f"{name}: empty image array of shape {array.shape}")
    if array.dtype == np.uint8:
        out = array
    elif array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max() > 255):
        out = (array.astype(np.float64) * (255.0 / max(int(array.max()), 65535 if array.max() > 4095 else 4095)))
        out = np.rint(out).clip(0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64))
        scale = 255.0 if finite.max() <= 1.0 + 1e-6 and finite.min() >= -1e-6 else 1.0
        out = np.rint(finite * scale).clip(0, 255).astype(np.uint8)
    else:
        out = array.clip(0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    elif out.shape[-1] == 4:
        out = out[..., :3]
    return np.ascontiguousarray(out)
