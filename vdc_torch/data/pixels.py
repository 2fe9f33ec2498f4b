"""Pixels of any mode as (H, W, 3) ``uint8`` RGB, in bands of rows so that memory stays bounded.

A decoded image is converted band by band: 16-bit and float samples are scaled a band at a time (never a float64
copy of the whole image), alpha is composited on white a band at a time. Converting the whole image therefore needs
the decoder's buffer, the output and one band; :func:`reduced_rgb` does not even keep the full-size output — it
reduces each band by an integer factor as it goes and digests the full-size pixels on the way, which is how images
too large to hold twice are fingerprinted (see ``decode_bytes``).
"""

from __future__ import annotations

from collections.abc import Iterator

import blake3
import numpy as np
from PIL import Image

from vdc_torch.errors import ImageDecodeError

#: Pixels converted at a time (a band of rows of about this many pixels: ~4 MB of RGB, ~8 MB of float64 samples).
BAND_PIXELS = 1 << 20

#: Pillow modes holding more than 8 bits per sample; scaled to 8 bits as :func:`_scaled_to_uint8` says.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")

#: Bytes of a pixel digest.
PIXEL_DIGEST_SIZE = 16

#: Float pixels may stray this far outside [0, 1] (rounding in resize/colour transforms) and still count as images.
FLOAT_PIXEL_TOLERANCE = 1e-3


def pixel_digest(data: bytes | memoryview | np.ndarray) -> bytes:
    """The digest of decoded RGB pixels (``pixel_digest``; BLAKE3, 16 bytes), since fingerprint version 6.

    BLAKE3 is a cryptographic hash, like the BLAKE2b of version 5, so no crafted image can pass for another's
    pixels; it runs at ~7 GB/s on one core here against BLAKE2b's 0.9 GB/s, which was 10-15 % of fingerprinting
    a large PNG. ``data`` is hashed as its bytes in C order.
    """
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).data
    return blake3.blake3(data).digest(PIXEL_DIGEST_SIZE)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an (H, W, 3) uint8 RGB array (16-bit scaled, alpha composited on white).

    Peak memory: the image itself, the output and one band (:data:`BAND_PIXELS`).
    """
    width, height = image.size
    if image.mode == "RGB":
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    out = np.empty((height, width, 3), np.uint8)
    for top, band in _rgb_bands(image, _band_rows(width, 1)):
        out[top : top + band.shape[0]] = band
    return out


def reduced_rgb(image: Image.Image, factor: int) -> tuple[np.ndarray, bytes]:
    """``image`` as RGB reduced ``factor`` times in each direction (box average), and the :func:`pixel_digest` of its
    full-size RGB pixels (the same as ``pixel_digest(to_rgb_array(image))``), without the full-size RGB in memory.

    The output is ``(height // factor, width // factor, 3)``: the last ``height % factor`` rows and
    ``width % factor`` columns (fewer than ``factor`` pixels) are left out of the reduced copy, not of the digest.
    """
    import cv2  # (decoding is Pillow's: OpenCV only resizes)

    width, height = image.size
    out_w, out_h = width // factor, height // factor
    if factor < 1 or out_w < 1 or out_h < 1:
        raise ValueError(f"cannot reduce a {width}x{height} image {factor} times")
    out = np.empty((out_h, out_w, 3), np.uint8)
    hasher = blake3.blake3()
    for top, band in _rgb_bands(image, _band_rows(width, factor)):
        hasher.update(np.ascontiguousarray(band).data)
        rows = min(band.shape[0], height - top) // factor
        start = top // factor
        rows = min(rows, out_h - start)
        if rows > 0:
            block = band[: rows * factor, : out_w * factor]
            out[start : start + rows] = cv2.resize(block, (out_w, rows), interpolation=cv2.INTER_AREA)
    return out, hasher.digest(PIXEL_DIGEST_SIZE)


def reduced_rgb_array(pixels: np.ndarray, factor: int) -> tuple[np.ndarray, bytes]:
    """:func:`reduced_rgb` of pixels already decoded into an (H, W, 3) ``uint8`` RGB array: the same reduced copy
    (a box average over the same ``factor`` x ``factor`` blocks) and the same full-size :func:`pixel_digest`."""
    import cv2

    height, width = pixels.shape[:2]
    out_w, out_h = width // factor, height // factor
    if factor < 1 or out_w < 1 or out_h < 1:
        raise ValueError(f"cannot reduce a {width}x{height} image {factor} times")
    block = pixels[: out_h * factor, : out_w * factor]
    return cv2.resize(block, (out_w, out_h), interpolation=cv2.INTER_AREA), pixel_digest(pixels)


def _band_rows(width: int, factor: int) -> int:
    """Rows per band: about :data:`BAND_PIXELS` pixels, a multiple of ``factor``."""
    rows = max(1, BAND_PIXELS // max(1, width))
    return max(factor, rows - rows % factor)


def _rgb_bands(image: Image.Image, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, band)`` pairs covering ``image`` from the top: each band (rows, W, 3) uint8 RGB."""
    width, height = image.size
    mode = image.mode
    scale = _wide_scale(image, rows) if mode in _WIDE_MODES else None
    alpha = (mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info)) and not _opaque(image)
    for top in range(0, height, rows):
        part = image.crop((0, top, width, min(height, top + rows)))
        if scale is not None:
            band = _gray_to_rgb(_scaled_to_uint8(np.asarray(part), *scale))
        elif alpha:
            rgba = part.convert("RGBA")  # composited in Pillow's C code: a float copy costs ~1 s per 18 MP image
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            band = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
        else:
            band = np.asarray(part if mode == "RGB" else part.convert("RGB"), dtype=np.uint8)
        yield top, band


def _opaque(image: Image.Image) -> bool:
    """True for an RGBA or LA image whose alpha is 255 everywhere (many PNGs carry an unused alpha channel):
    compositing it on white changes no pixel, so it converts as if it had no alpha, at a third of the cost."""
    if image.mode not in ("RGBA", "LA"):
        return False
    return image.getchannel("A").getextrema() == (255, 255)


def _wide_scale(image: Image.Image, rows: int) -> tuple[str, float]:
    """How the samples of a 16-bit, 32-bit or float image map to 8 bits, from the whole image's range."""
    width, height = image.size
    low, high = np.inf, -np.inf
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        if np.issubdtype(band.dtype, np.floating):
            band = np.nan_to_num(band.astype(np.float64))
        if band.size:
            low, high = min(low, float(band.min())), max(high, float(band.max()))
    return _scale_for(np.dtype(np.asarray(image.crop((0, 0, 1, 1))).dtype), low, high)


def _scale_for(dtype: np.dtype, low: float, high: float) -> tuple[str, float]:
    """``(how, factor)`` for samples of ``dtype`` ranging over ``[low, high]``.

    16-bit samples (and integers above 255) are scaled so that 65535 (or 4095 for 12-bit data) is white; floats in
    [0, 1] are scaled by 255, other floats clipped; other integers clipped to [0, 255].
    """
    if dtype == np.uint8:
        return "same", 1.0
    if dtype == np.uint16 or (np.issubdtype(dtype, np.integer) and high > 255):
        return "scale", 255.0 / max(int(high), 65535 if high > 4095 else 4095)
    if np.issubdtype(dtype, np.floating):
        return "float", 255.0 if high <= 1.0 + 1e-6 and low >= -1e-6 else 1.0
    return "clip", 1.0


def _scaled_to_uint8(array: np.ndarray, how: str, factor: float) -> np.ndarray:
    """One band of samples mapped to uint8 as :func:`_scale_for` decided (float64 maths on the band only)."""
    if how == "same":
        return array
    if how == "scale":
        return np.rint(array.astype(np.float64) * factor).clip(0, 255).astype(np.uint8)
    if how == "float":
        return np.rint(np.nan_to_num(array.astype(np.float64)) * factor).clip(0, 255).astype(np.uint8)
    return array.clip(0, 255).astype(np.uint8)


def _gray_to_rgb(band: np.ndarray) -> np.ndarray:
    if band.ndim == 2:
        return np.repeat(band[..., None], 3, axis=2)
    return band[..., :3] if band.shape[-1] == 4 else band


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


def check_unit_range(array: np.ndarray, name: str) -> None:
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


def array_to_rgb_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric dtype as (H, W, 3) uint8 RGB.

    Scaled as :func:`_scale_for` says, a band of rows at a time; a fourth channel is dropped (not composited).
    """
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageDecodeError(f"{name}: array of shape {array.shape} is not an image (H,W), (H,W,3) or (H,W,4)")
    if array.size == 0:
        raise ImageDecodeError(f"{name}: empty image array of shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(_gray_to_rgb(array))
    height, width = array.shape[:2]
    rows = _band_rows(width * (array.shape[2] if array.ndim == 3 else 1), 1)
    low, high = np.inf, -np.inf
    for top in range(0, height, rows):
        band = array[top : top + rows]
        if np.issubdtype(band.dtype, np.floating):
            band = np.nan_to_num(band.astype(np.float64))
        low, high = min(low, float(band.min())), max(high, float(band.max()))
    how, factor = _scale_for(array.dtype, low, high)
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, rows):
        out[top : top + rows] = _gray_to_rgb(_scaled_to_uint8(array[top : top + rows], how, factor))
    return out
