"""8-bit PNGs decoded by OpenCV (``vdc_torch.data.png``) give exactly what Pillow's way gives: the same pixels,
digests, sizes, EXIF identity, warnings and errors, on real PNGs and real photos saved in every PNG layout."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import COWS, COWS_DUPLICATES, EXIF_JPG
from vdc_torch.data import decode as decode_module
from vdc_torch.data.decode import DEFAULT_REDUCE_ABOVE_PIXELS, decode_bytes
from vdc_torch.errors import ImageDecodeError

PHOTO = EXIF_JPG / "Canon_40D.jpg"


def _photo(width: int = 640) -> Image.Image:
    with Image.open(PHOTO) as im:
        im = im.convert("RGB")
        return im.resize((width, round(im.height * width / im.width)))


def _png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, **params)
    return buffer.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, position = [], 8
    while position < len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        out.append((kind, data[position + 8 : position + 8 + length]))
        position += 12 + length
    return out


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(payload)) + kind + payload
                    + struct.pack(">I", zlib.crc32(kind + payload)) for kind, payload in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _exif_after_image_data(data: bytes) -> bytes:
    """The same file with its eXIf chunk moved behind the image data (where many writers put it)."""
    chunks = _chunks(data)
    exif = [c for c in chunks if c[0] == b"eXIf"]
    rest = [c for c in chunks if c[0] != b"eXIf"]
    return _assemble(rest[:-1] + exif + rest[-1:])


def _translucent(image: Image.Image, mode: str) -> Image.Image:
    base = image.convert(mode[0] if mode == "LA" else "RGB")
    alpha = np.tile(np.linspace(0, 255, base.width).astype(np.uint8), (base.height, 1))
    out = base.convert(mode)
    out.putalpha(Image.fromarray(alpha))
    return out


def _oriented_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 40D"
    exif.get_ifd(0x8769)[0x9003] = "2008:05:30 15:56:01"  # DateTimeOriginal: what makes an identity
    return exif.tobytes()


def _layouts() -> dict[str, tuple[bytes, bool]]:
    """Name -> (PNG bytes, whether OpenCV's way applies)."""
    photo = _photo()
    rotated = _png(photo, exif=_oriented_exif(6))
    layouts = {
        "RGB": (_png(photo), True),
        "L": (_png(photo.convert("L")), True),
        "RGBA opaque": (_png(photo.convert("RGBA")), True),
        "LA opaque": (_png(photo.convert("LA")), True),
        "RGBA translucent": (_png(_translucent(photo, "RGBA")), True),
        "LA translucent": (_png(_translucent(photo, "LA")), True),
        "RGB interlaced by OpenCV": (_opencv_png(photo), True),
        "eXIf before the image data, orientation 6": (rotated, True),
        "eXIf after the image data, orientation 6": (_exif_after_image_data(rotated), True),
        "palette": (_png(photo.quantize(64)), False),
        "RGB with tRNS": (_png(photo, transparency=(0, 0, 0)), False),
        "16-bit gray": (_png(Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257))), False),
        "zTXt after the image data": (_assemble(_chunks(_png(photo))[:-1] + [(b"zTXt", b"k\x00\x00"
                                                                               + zlib.compress(b"v"))]
                                                + _chunks(_png(photo))[-1:]), False),
    }
    for path in sorted(COWS.glob("*.png"))[:3] + sorted(COWS_DUPLICATES.glob("*.png"))[:2]:
        layouts[f"real file {path.parent.name}/{path.name}"] = (path.read_bytes(), True)
    return layouts


def _opencv_png(image: Image.Image) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


LAYOUTS = _layouts()


def _by_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "opencv_png", lambda *args, **kwargs: None)


def _outcome(data: bytes, **kwargs: object) -> tuple[object, ...]:
    try:
        d = decode_bytes(data, name="x.png", **kwargs)
    except ImageDecodeError as exc:
        return ("error", str(exc))
    return (d.pixels.shape, d.pixels.tobytes(), d.pixel_digest, d.width, d.height, d.exif_identity, d.frames,
            d.format, tuple(d.warnings))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_opencv_way_equals_pillow_way(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data, applies = LAYOUTS[layout]
    taken: list[bool] = []
    real = decode_module.opencv_png

    def spy(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(decode_module, "opencv_png", spy)
    fast = _outcome(data)
    assert taken == [applies]
    _by_pillow(monkeypatch)
    assert fast == _outcome(data)
    assert fast[0] != "error"


def test_orientation_in_either_place_is_applied() -> None:
    before = decode_bytes(LAYOUTS["eXIf before the image data, orientation 6"][0])
    after = decode_bytes(LAYOUTS["eXIf after the image data, orientation 6"][0])
    upright = decode_bytes(LAYOUTS["RGB"][0])
    assert before.pixels.shape == after.pixels.shape == (upright.width, upright.height, 3)
    assert np.array_equal(before.pixels, np.rot90(upright.pixels, -1))
    assert before.exif_identity == after.exif_identity == "Canon|Canon EOS 40D|2008:05:30 15:56:01.||"


def test_large_png_is_reduced_with_the_full_size_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    side = int(np.sqrt(DEFAULT_REDUCE_ABOVE_PIXELS)) + 64
    big = _png(_photo(900).resize((side, side)))
    fast = _outcome(big)
    assert fast[0][0] < side and fast[2] is not None  # reduced, digest of the full size kept
    _by_pillow(monkeypatch)
    assert fast == _outcome(big)


@pytest.mark.parametrize("damage", ["truncated", "IDAT CRC", "IEND missing", "junk after IEND", "IHDR size lies"])
def test_damaged_pngs_end_as_pillow_decides(damage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = LAYOUTS["RGB"][0]
    chunks = _chunks(data)
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "IDAT CRC":
        at = data.index(b"IDAT") + 100
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    elif damage == "IEND missing":
        data = _assemble(chunks[:-1])
    elif damage == "junk after IEND":
        data = data + b"\x00garbage" * 10
    else:
        kind, payload = chunks[0]
        data = _assemble([(kind, struct.pack(">II", 700, 700) + payload[8:]), *chunks[1:]])
    fast = _outcome(data)
    _by_pillow(monkeypatch)
    assert fast == _outcome(data)


def test_a_real_png_folder_fingerprints_alike_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    from vdc_torch.fingerprints.per_image import fingerprint_decoded

    def prints() -> list[tuple[object, ...]]:
        out = []
        for path in sorted(COWS.glob("*.png")) + sorted(COWS_DUPLICATES.glob("*.png")):
            fp = fingerprint_decoded(decode_module.decode_file(path))
            out.append((fp.pixel_digest, fp.phash, fp.thumb.tobytes()))
        return out

    fast = prints()
    _by_pillow(monkeypatch)
    assert fast == prints()
    assert len(fast) == len(list(COWS.glob("*.png"))) + len(list(COWS_DUPLICATES.glob("*.png"))) > 10


def test_nothing_but_pngs_takes_the_opencv_way(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _photo().save(buffer, format="TIFF")
    from vdc_torch.data.png import opencv_png

    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert opencv_png(image, buffer.getvalue(), max_rgba_pixels=1 << 30) is None
