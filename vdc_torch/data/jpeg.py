"""JPEG markers, read without decoding: the plain-JPEG header walk and the count of scans.

Both read only the marker segments (and, to count scans, skip the entropy-coded data between them), so they cost
microseconds and allocate nothing: they run before any decoder sees the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A JPEG with more scans than this is refused before decoding. Each scan of a progressive JPEG is a pass over all
#: of its coefficients, so decoding time grows with scans x pixels: a valid 8000x8000 file of a few thousand scans
#: (a "scan bomb", 0.4-2 MB) decodes for minutes. Encoders write 1 scan (baseline) or about 10 (progressive:
#: libjpeg's default script has 10 for colour, 6 for gray; mozjpeg's optimised scripts a few more); libjpeg-turbo's
#: own tools suggest 500 as the limit against denial of service. 100 leaves a wide margin for any real encoder.
MAX_JPEG_SCANS = 100

#: ...and a JPEG whose scans x pixels exceed this is refused too: the work of decoding it. 3e9 is 20 scans of a
#: 150-megapixel image (twice the scans of a progressive JPEG from libjpeg) or 47 of an 8000x8000 one; on this
#: project's 2-core machine a decode at that budget takes about 3 s (100 scans of 64 MP took 6 s with DCT scaling).
MAX_JPEG_SCAN_PIXELS = 3_000_000_000


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


def count_jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS segments) of a JPEG stream, found by walking its markers.

    Segments are skipped by their length, so a JPEG thumbnail inside the EXIF block is not counted; the
    entropy-coded data after each scan header is skipped up to the next marker (``FF 00`` stuffing, restart markers
    and fill bytes belong to the scan).
    """
    n, pos, scans = len(data), 2, 0
    while pos + 1 < n:
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0xFF or marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length follows
            pos += 1 if marker == 0xFF else 2
            continue
        if pos + 4 > n:
            break
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker != 0xDA:
            continue
        scans += 1
        while True:  # the entropy-coded data of this scan
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return scans
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                pos += 2
            elif following == 0xFF:
                pos += 1
            else:
                break  # the next marker
    return scans


def _frame_pixels(data: bytes) -> int | None:
    """Width x height from a JPEG's frame header (the segments before its first scan), or None."""
    n, pos = len(data), 2
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= n:
            return ((data[pos + 5] << 8) | data[pos + 6]) * ((data[pos + 7] << 8) | data[pos + 8])
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return None


def scan_budget_exceeded(data: bytes, max_scans: int = MAX_JPEG_SCANS,
                         max_scan_pixels: int = MAX_JPEG_SCAN_PIXELS, max_pixels: int | None = None) -> str | None:
    """Why decoding this JPEG would cost too much (more than ``max_scans`` scans, or scans x pixels above
    ``max_scan_pixels``), or None. Microseconds for real files: the scans are only counted exactly when a raw count of
    ``FF DA`` pairs (an upper bound) does not already settle it. A frame of more than ``max_pixels`` pixels is left
    to the pixel limit (None), which names the real problem."""
    upper = data.count(b"\xff\xda")
    pixels = _frame_pixels(data) or 0
    if (upper <= max_scans and upper * pixels <= max_scan_pixels) or (max_pixels is not None and pixels > max_pixels):
        return None
    scans = count_jpeg_scans(data)
    if scans > max_scans:
        return f"JPEG with {scans} scans, more than MAX_JPEG_SCANS={max_scans}"
    if scans * pixels > max_scan_pixels:
        return (f"JPEG with {scans} scans of {pixels} pixels each, more than MAX_JPEG_SCAN_PIXELS={max_scan_pixels} "
                "scan-pixels")
    return None
