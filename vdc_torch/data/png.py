"""8-bit PNG pixels through OpenCV's libpng: the values Pillow decodes, without Pillow's copies.

Pillow decodes a PNG into its own 4-bytes-a-pixel buffer, and handing that to NumPy copies it once more
(``tobytes``); an RGBA one is then composited on white and converted again. For a 12-megapixel photo that is
~30 ms on top of a ~70 ms decode. OpenCV decodes straight into a NumPy array, and PNG is lossless, so the pixels
are the same. This path is taken only where nothing can differ from Pillow's way: Pillow has already opened the
file (its header checks, bomb limits and warnings stand), the image is one frame of 8-bit gray, gray + alpha, RGB
or RGBA without a ``tRNS`` chunk, and what follows the image data is only ``IEND``, ``eXIf``, ``tIME`` or small
``tEXt`` chunks (which Pillow reads only when it loads the pixels). Everything else, and every file libpng refuses
(libpng checks each chunk's CRC where Pillow does not), returns None and goes Pillow's way, so what decodes and
what is an error stays exactly as Pillow decides.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

#: Chunks that may follow the image data on this path (Pillow parses later chunks only when it loads pixels).
_AFTER_IMAGE_DATA = frozenset({b"IDAT", b"IEND", b"eXIf", b"tIME", b"tEXt"})
#: ... a ``tEXt`` chunk there at most this long (Pillow's limit for one decompressed text chunk).
_MAX_TEXT = 1 << 20
#: IHDR colour types decoded here: gray, RGB, gray + alpha, RGBA (palette images go Pillow's way).
_COLOUR_TYPES = frozenset({0, 2, 4, 6})


def opencv_png(image: Image.Image, data: bytes, *, max_rgba_pixels: int) -> tuple[np.ndarray | Image.Image, bytes | None] | None:
    """The pixels of an opened 8-bit PNG, decoded by OpenCV, and its EXIF block; None means "decode with Pillow".

    The pixels are an (H, W, 3) ``uint8`` RGB array, or, for an RGBA or gray + alpha image that is not opaque, an
    RGBA Pillow image over OpenCV's buffer (to be composited on white as any RGBA image is). The EXIF block is the
    ``eXIf`` chunk as Pillow holds it (``b"Exif\\0\\0"`` + the chunk), wherever it is in the file. An RGBA image of
    more than ``max_rgba_pixels`` pixels goes Pillow's way, whose reduced conversion holds less at once.
    """
    if image.format != "PNG" or image.mode not in ("L", "LA", "RGB", "RGBA") or getattr(image, "is_animated", False):
        return None
    if "transparency" in image.info or "Raw profile type exif" in image.info:
        return None
    if data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in _COLOUR_TYPES:
        return None
    if data[25] in (4, 6) and image.size[0] * image.size[1] > max_rgba_pixels:
        return None
    tile = getattr(image, "tile", None)
    if not tile or len(tile) != 1:
        return None
    after = _chunks_after_image_data(data, int(tile[0][2]) - 8)
    if after is None:
        return None
    exif = after if after else image.info.get("exif")
    pixels = _decode(data, image.size, alpha=data[25] in (4, 6))
    if pixels is None:
        return None
    return pixels, exif if isinstance(exif, bytes) and exif else None


def _chunks_after_image_data(data: bytes, start: int) -> bytes | None:
    """Walk the chunks from the first IDAT to IEND: the eXIf payload found there (as Pillow holds it), ``b""``
    without one, or None when a chunk is not one this path handles, is too long or the file ends before IEND."""
    exif = b""
    position = start
    end = len(data)
    while position + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, position)
        if position + 12 + length > end or kind not in _AFTER_IMAGE_DATA:
            return None
        if kind == b"IEND":
            return exif
        if kind == b"eXIf":
            exif = b"Exif\x00\x00" + data[position + 8 : position + 8 + length]
        elif kind == b"tEXt" and length > _MAX_TEXT:
            return None
        position += 12 + length
    return None


def _decode(data: bytes, size: tuple[int, int], *, alpha: bool) -> np.ndarray | Image.Image | None:
    import cv2

    # gray and RGB straight into RGB (libpng expands gray as Pillow's convert does); EXIF orientation is the
    # caller's, as on Pillow's way; alpha kept (BGRA) to composite it
    flags = cv2.IMREAD_UNCHANGED if alpha else cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    width, height = size
    if array is None or array.dtype != np.uint8 or array.ndim != 3 or array.shape[:2] != (height, width):
        return None
    if array.shape[2] == 3 and not alpha:
        return array
    if array.shape[2] != 4 or not alpha:
        return None
    if cv2.minMaxLoc(cv2.extractChannel(array, 3))[0] == 255:  # opaque: an unused alpha channel
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA, dst=array)
    return Image.frombuffer("RGBA", (width, height), array, "raw", "RGBA", 0, 1)
