"""Stage 1 of the data flow: one safe read and decode of one sample.

``decode_file`` reads a file's bytes exactly once, digests them, parses the EXIF identity and decodes
the pixels (DCT-reduced for large JPEGs, EXIF orientation applied) into an RGB ``uint8`` array.
``decode_object`` does the same for in-memory samples (PIL images, tensors, arrays). Every failure is an
:class:`~vdc_torch.errors.ImageDecodeError` whose message names the file and the reason; a malformed EXIF
block is *not* a failure: the pixels are used and the problem is recorded in ``DecodedImage.warnings``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import ImageDecodeError

log = logging.getLogger(__name__)

#: File extensions scanned by default (lower case, with the dot), as in torchvision's ``IMG_EXTENSIONS``.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".heic", ".heif",
)

#: Images declaring more pixels than this are refused before any pixel memory is allocated.
DEFAULT_MAX_PIXELS = 150_000_000

#: Large JPEGs are decoded with DCT scaling so that their shorter side stays at least this long.
DEFAULT_DECODE_SIDE = 256

# EXIF tags (numeric ids) used for identity. Make/Model live in IFD0, the rest in the Exif sub-IFD.
_TAG_MAKE, _TAG_MODEL, _TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD = 0x8769
_TAG_DATETIME_ORIGINAL, _TAG_SUBSEC_ORIGINAL = 0x9003, 0x9291
_TAG_UNIQUE_ID, _TAG_BODY_SERIAL = 0xA420, 0xA431

ImageFile.LOAD_TRUNCATED_IMAGES = False


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


def decode_file(
    path: str | os.PathLike[str],
    *,
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Read and decode one image file once.

    ``decode_side`` lets JPEG decoding skip detail the fingerprints do not use (``None``: full size).

    >>> decoded = decode_file("photo.jpg")  # doctest: +SKIP
    >>> decoded.pixels.shape, decoded.width, decoded.height  # doctest: +SKIP
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except IsADirectoryError as exc:
        raise ImageDecodeError(f"{path}: is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageDecodeError(f"{path}: permission denied") from exc
    except FileNotFoundError as exc:
        reason = "broken symbolic link" if path.is_symlink() else "file not found"
        raise ImageDecodeError(f"{path}: {reason}") from exc
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    decoded = decode_bytes(data, name=str(path), decode_side=decode_side, max_pixels=max_pixels)
    decoded.byte_digest = digest(data)
    decoded.file_size = len(data)
    decoded.mtime_ns = stat.st_mtime_ns
    if stat.st_size != len(data):
        decoded.warnings.append(f"file changed while it was read ({stat.st_size} bytes at open, {len(data)} read)")
    return decoded


def decode_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode an encoded image held in memory (see :func:`decode_file`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
        exif_identity, orientation = _read_exif_identity(image, problems)
        frames = int(getattr(image, "n_frames", 1) or 1)
        fmt = image.format
        if decode_side and fmt == "JPEG" and min(width, height) > 2 * decode_side:
            scale = min(width, height) / decode_side
            image.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
            pixels = to_rgb_array(image)
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(f"{name}: refused as a decompression bomb ({exc})") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"{name}: corrupt or truncated image data ({exc})") from exc
    pixels = apply_orientation(pixels, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(
        pixels=pixels, width=width, height=height, exif_identity=exif_identity,
        format=fmt, frames=frames, warnings=problems,
    )


def decode_object(sample: Any, *, name: str = "<sample>") -> DecodedImage:
    """Decode an in-memory sample: a PIL image, a ``torch.Tensor`` (C,H,W) or an ``ndarray`` (H,W[,C])."""
    if isinstance(sample, Image.Image):
        problems: list[str] = []
        exif_identity, orientation = _read_exif_identity(sample, problems)
        pixels = apply_orientation(to_rgb_array(sample), orientation)
        h, w = pixels.shape[:2]
        return DecodedImage(pixels=pixels, width=w, height=h, exif_identity=exif_identity, warnings=problems)
    array = _tensor_to_hwc(sample) if _is_tensor(sample) else sample
    if not isinstance(array, np.ndarray):
        raise ImageDecodeError(
            f"{name}: unsupported sample type {type(sample).__name__}; expected a PIL image, tensor or ndarray"
        )
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
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.rint(rgb).astype(np.uint8))
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


def read_exif_tags(image: Image.Image) -> dict[str, Any]:
    """All EXIF tags of IFD0, the Exif sub-IFD and GPS as ``{tag name: value}`` (bytes made printable)."""
    from PIL import ExifTags

    exif = image.getexif()
    tags: dict[str, Any] = {}
    sources = [(exif, ExifTags.TAGS)]
    for ifd_id, names in ((_EXIF_IFD, ExifTags.TAGS), (0x8825, ExifTags.GPSTAGS)):
        try:
            sources.append((exif.get_ifd(ifd_id), names))
        except Exception as exc:  # malformed sub-IFD: keep what is readable
            log.debug("sub-IFD %#x unreadable: %s", ifd_id, exc)
    for source, names in sources:
        for tag_id, value in source.items():
            if tag_id in (_EXIF_IFD, 0x8825):
                continue
            tags[names.get(tag_id, f"Tag{tag_id:#06x}")] = printable_exif_value(value)
    return tags


def printable_exif_value(value: Any) -> Any:
    """Make an EXIF value safe to print and tabulate: short bytes decoded, blobs summarised."""
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        if len(text) <= 64:
            try:
                decoded = text.decode("ascii")
                if decoded.isprintable():
                    return decoded
            except UnicodeDecodeError:
                pass
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value.rstrip("\x00").strip()
    if isinstance(value, tuple):
        return tuple(printable_exif_value(v) for v in value)
    try:  # IFDRational and friends
        if hasattr(value, "numerator") and hasattr(value, "denominator") and not isinstance(value, int):
            return float(value) if value.denominator else None
    except Exception:
        return str(value)
    return value


def _read_exif_identity(image: Image.Image, problems: list[str]) -> tuple[str | None, int]:
    """Return (identity key or None, orientation) and append a message for malformed EXIF."""
    try:
        exif = image.getexif()
    except Exception as exc:
        problems.append(f"malformed EXIF ignored ({type(exc).__name__}: {exc})")
        return None, 1
    orientation = 1
    try:
        raw = exif.get(_TAG_ORIENTATION, 1)
        orientation = int(raw) if int(raw) in range(1, 9) else 1
    except Exception:
        problems.append(f"malformed EXIF orientation {exif.get(_TAG_ORIENTATION)!r} ignored")
    try:
        sub = exif.get_ifd(_EXIF_IFD) if _EXIF_IFD in exif else {}
    except Exception as exc:
        problems.append(f"malformed EXIF sub-IFD ignored ({type(exc).__name__}: {exc})")
        sub = {}
    try:
        taken = _clean(sub.get(_TAG_DATETIME_ORIGINAL))
        unique = _clean(sub.get(_TAG_UNIQUE_ID))
        if not taken and not unique:
            return None, orientation
        parts = [
            _clean(exif.get(_TAG_MAKE)), _clean(exif.get(_TAG_MODEL)),
            f"{taken}.{_clean(sub.get(_TAG_SUBSEC_ORIGINAL))}", unique, _clean(sub.get(_TAG_BODY_SERIAL)),
        ]
        return "|".join(parts), orientation
    except Exception as exc:
        problems.append(f"malformed EXIF identity tags ignored ({type(exc).__name__}: {exc})")
        return None, orientation


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    return str(value).replace("\x00", "").strip()


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
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    elif array.ndim == 3 and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    return array


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
