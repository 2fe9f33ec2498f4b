"""Hostile and heavy images: each becomes a problem row naming the file and the reason, within the documented budget.

The heavy cases run in a child process whose address space is capped at 1 GiB above its size after the imports
(``resource.setrlimit``) and whose run is capped in time: a conversion that makes full-size float64 copies, or a
batch that holds every full-size image at once, runs out of memory there and the test fails.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from tests.conftest import EXIF_JPG
from vdc_torch.data import decode as decode_module
from vdc_torch.data.decode import MAX_DECODE_BYTES, decode_bytes, decode_file, pixel_digest
from vdc_torch.data.jpeg import MAX_JPEG_SCANS, count_jpeg_scans, scan_budget_exceeded
from vdc_torch.data.pixels import reduced_rgb, to_rgb_array
from vdc_torch.errors import ImageDecodeError
from vdc_torch.fingerprints.per_image import compact_decoded, fingerprint_batch

REPO = Path(__file__).resolve().parents[1]
PHOTO = EXIF_JPG / "Canon_40D.jpg"

#: Runs in the child: imports, then caps the address space at its current size + CAP, then runs the case.
CHILD = r"""
import json, os, resource, sys
import cv2
cv2.setNumThreads(1)
from vdc_torch.data.decode import decode_file, load_image
from vdc_torch.fingerprints.compute import fingerprint_stream
from vdc_torch.fingerprints.per_image import compact_decoded, fingerprint_batch
from vdc_torch.errors import ImageDecodeError
case, paths, cap = sys.argv[1], sys.argv[2:-1], int(sys.argv[-1])
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + cap, size + cap))
try:
    if case == "fingerprint":
        decoded = decode_file(paths[0])
        fp = fingerprint_batch([compact_decoded(decoded)])[0]
        result = {"ok": True, "shape": list(decoded.pixels.shape), "size": [fp.width, fp.height]}
    elif case == "full":
        image = load_image(paths[0])
        result = {"ok": True, "size": list(image.size)}
    else:  # a stream of many large images: one batch of up to 64
        table, problems = fingerprint_stream((i, p, p) for i, p in enumerate(paths))
        result = {"ok": not problems, "rows": len(table), "problems": [str(p) for p in problems]}
except ImageDecodeError as exc:
    result = {"ok": False, "error": str(exc)}
print(json.dumps(result))
"""

#: Address space the child may use beyond what its imports took.
CAP = 1 << 30


def run_capped(case: str, *paths: Path, timeout: float = 120) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", CHILD, case, *map(str, paths), str(CAP)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def photo_array(side: int, height: int | None = None) -> np.ndarray:
    """A real photo resized (nearest neighbour: compresses well, so the files stay small) to side x height."""
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB").resize((side, height or side), Image.Resampling.NEAREST))


# -- formats that must not be decoded --------------------------------------------------------------------------


def test_eps_named_jpg_never_reaches_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda self, *a, **k: loads.append("load"))
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((64, 48)).save(buffer, "EPS")
    path = tmp_path / "holiday.jpg"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ImageDecodeError, match=r"holiday\.jpg: PostScript/EPS document, not decoded"):
        decode_file(path)
    assert loads == []  # Pillow's EPS plugin (which runs Ghostscript) was never asked to load it


def test_other_pillow_formats_are_named_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    Image.open(PHOTO).convert("RGB").resize((64, 48)).save(path, "PCX")
    with pytest.raises(ImageDecodeError, match=r"scan\.png: PCX file, a format vdc_torch does not decode \(it "
                                               r"decodes JPEG, PNG"):
        decode_file(path)


def test_supported_formats_still_decode(tmp_path: Path) -> None:
    array = photo_array(96, 64)
    for fmt, suffix in (("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp"), ("GIF", "gif"),
                        ("PPM", "ppm"), ("TGA", "tga"), ("JPEG2000", "jp2"), ("JPEG", "jpg")):
        path = tmp_path / f"photo.{suffix}"
        Image.fromarray(array).save(path, fmt)
        assert decode_file(path).pixels.shape == (64, 96, 3), fmt


# -- progressive-JPEG scan bombs ------------------------------------------------------------------------------


def _scans(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A JPEG cut into (everything before the first scan, each scan with its entropy data, the end)."""
    pos, starts = 2, []
    while data[pos + 1] != 0xD9:
        length = (data[pos + 2] << 8) | data[pos + 3]
        if data[pos + 1] == 0xDA:
            starts.append(pos)
            pos += 2 + length
            while True:
                pos = data.find(b"\xff", pos)
                if data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                    pos += 2
                else:
                    break
        else:
            pos += 2 + length
    return data[: starts[0]], [data[a:b] for a, b in zip(starts, [*starts[1:], pos])], data[pos:]


def progressive(side: int, extra_scans: int = 0) -> bytes:
    """A real photo as a progressive JPEG, its last scan repeated ``extra_scans`` times (libjpeg decodes them all)."""
    buffer = io.BytesIO()
    Image.fromarray(photo_array(side)).save(buffer, "JPEG", progressive=True, quality=85)
    head, scans, tail = _scans(buffer.getvalue())
    return head + b"".join(scans) + scans[-1] * extra_scans + tail


def test_scans_are_counted_exactly() -> None:
    plain = progressive(64)
    assert count_jpeg_scans(plain) == 10  # libjpeg's progressive script for colour
    assert count_jpeg_scans(progressive(64, 7)) == 17
    # a camera JPEG with an EXIF thumbnail (a JPEG of its own, with its own scan) inside its APP1 segment
    camera = PHOTO.read_bytes()
    assert camera.count(b"\xff\xda") >= 2 and count_jpeg_scans(camera) == 1


def test_scan_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(progressive(64, extra_scans=400))
    with pytest.raises(ImageDecodeError, match=rf"bomb\.jpg: JPEG with 410 scans, more than "
                                               rf"MAX_JPEG_SCANS={MAX_JPEG_SCANS}; refused without decoding"):
        decode_file(path)
    fine = tmp_path / "fine.jpg"  # 30 scans: unusual, within the budget
    fine.write_bytes(progressive(64, extra_scans=20))
    assert decode_file(fine).pixels.shape == (64, 64, 3)


def test_scan_pixel_budget() -> None:
    data = progressive(64, 20)  # 30 scans of 4096 pixels
    assert scan_budget_exceeded(data) is None
    assert "30 scans of 4096 pixels each, more than MAX_JPEG_SCAN_PIXELS=100000" in scan_budget_exceeded(
        data, max_scan_pixels=100_000)


# -- high bit depth, alpha, huge canvases: bounded memory ----------------------------------------------------


def _old_wide_conversion(array: np.ndarray) -> np.ndarray:
    """What vdc_torch did before the conversion went band by band (whole-image float64 maths), to compare."""
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max() > 255):
        out = array.astype(np.float64) * (255.0 / max(int(array.max()), 65535 if array.max() > 4095 else 4095))
        out = np.rint(out).clip(0, 255).astype(np.uint8)
    else:
        finite = np.nan_to_num(array.astype(np.float64))
        scale = 255.0 if finite.max() <= 1.0 + 1e-6 and finite.min() >= -1e-6 else 1.0
        out = np.rint(finite * scale).clip(0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2)


@pytest.mark.parametrize("kind", ["I;16", "12-bit", "F", "F-wide"])
def test_band_conversion_equals_whole_image_conversion(kind: str) -> None:
    gray = photo_array(1500, 1100)[..., 1].astype(np.float64)
    samples = {"I;16": (gray * 257).astype(np.uint16), "12-bit": (gray * 16).astype(np.uint16),
               "F": (gray / 255).astype(np.float32), "F-wide": (gray * 3 - 100).astype(np.float32)}[kind]
    image = Image.fromarray(samples)
    assert np.array_equal(to_rgb_array(image), _old_wide_conversion(np.asarray(image)))
    reduced, full_digest = reduced_rgb(image, 4)
    assert full_digest == pixel_digest(to_rgb_array(image))
    assert reduced.shape == (1100 // 4, 1500 // 4, 3)


def test_alpha_band_conversion_equals_whole_image_composite() -> None:
    rgb = photo_array(1300, 900)
    alpha = np.tile(np.linspace(0, 255, 1300, dtype=np.uint8), (900, 1))
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, image).convert("RGB"))
    assert np.array_equal(to_rgb_array(image), expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_an_opaque_alpha_channel_converts_like_the_composite_and_one_clear_pixel_still_composites(mode: str) -> None:
    """Many PNGs carry an alpha channel that is 255 everywhere; they skip the composite, with the same pixels."""
    base = Image.fromarray(photo_array(700, 500)).convert(mode[0] if mode == "LA" else "RGB")
    image = base.convert(mode)
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    assert np.array_equal(to_rgb_array(image), np.asarray(base.convert("RGB")))
    assert np.array_equal(to_rgb_array(image), np.asarray(Image.alpha_composite(white, image.convert("RGBA"))
                                                          .convert("RGB")))
    image.putpixel((3, 4), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    assert to_rgb_array(image)[4, 3].tolist() == [255, 255, 255]
    assert np.array_equal(to_rgb_array(image), np.asarray(Image.alpha_composite(white, image.convert("RGBA"))
                                                          .convert("RGB")))


@pytest.fixture(scope="module")
def huge_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """81-megapixel images of a real photo, each a few hundred KB on disk."""
    folder = tmp_path_factory.mktemp("huge")
    side = 9000
    small = photo_array(90)
    big = np.kron(small, np.ones((100, 100, 1), np.uint8))
    files = {"gray16": folder / "gray16.png", "rgba": folder / "rgba.png", "float": folder / "float.tif"}
    Image.fromarray(big[..., 1].astype(np.uint16) * 257).save(files["gray16"])
    Image.fromarray(np.dstack([big, np.full((side, side), 180, np.uint8)]), "RGBA").save(files["rgba"])
    Image.fromarray(big[..., 1].astype(np.float32) / 255, "F").save(files["float"], compression="tiff_deflate")
    return files


@pytest.mark.parametrize("name", ["gray16", "rgba", "float"])
def test_huge_image_fingerprints_within_a_memory_cap(huge_images: dict[str, Path], name: str) -> None:
    result = run_capped("fingerprint", huge_images[name])
    assert result["ok"], result
    assert result["size"] == [9000, 9000]
    assert result["shape"] == [1125, 1125, 3]  # reduced 8 times while converted: no full-size RGB copy


def test_huge_16_bit_image_loads_at_full_size_within_a_memory_cap(huge_images: dict[str, Path]) -> None:
    assert run_capped("full", huge_images["gray16"]) == {"ok": True, "size": [9000, 9000]}


def test_reduced_decode_keeps_the_full_size_pixel_digest(tmp_path: Path) -> None:
    array = photo_array(5000, 4000)  # 20 MP: reduced while converted
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path, compress_level=1)
    decoded = decode_file(path)
    assert decoded.pixels.shape == (4000 // 8, 5000 // 8, 3) and (decoded.width, decoded.height) == (5000, 4000)
    assert decoded.pixel_digest == pixel_digest(np.ascontiguousarray(array))
    assert fingerprint_batch([decoded])[0].pixel_digest == decoded.pixel_digest


def test_forged_webp_canvas_is_refused_before_decoding(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    frames = [Image.fromarray(photo_array(16)), Image.fromarray(photo_array(16)[::-1])]
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"VP8X") + 8 + 4  # the canvas size: 24-bit width - 1, height - 1
    data[at : at + 6] = struct.pack("<I", 11999)[:3] + struct.pack("<I", 11999)[:3]
    path = tmp_path / "tiny.webp"
    path.write_bytes(bytes(data))
    assert len(data) < 4000  # a few KB that declare a 144-megapixel canvas
    with pytest.raises(ImageDecodeError, match=rf"tiny\.webp: a WEBP image of 12000x12000 pixels needs about "
                                               rf"\d+ MB to decode, more than MAX_DECODE_BYTES={MAX_DECODE_BYTES >> 20}"):
        decode_file(path)


def test_a_batch_holds_one_full_size_image_at_a_time(tmp_path: Path) -> None:
    """24 photos of 16 MP (48 MB of RGB each, 1.15 GB together) in one batch of the stream, under a 1 GiB cap."""
    paths = []
    for i in range(24):
        array = photo_array(4000).copy()
        array[:4, :4] = i
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(array).save(paths[-1], compress_level=1)
    result = run_capped("stream", *paths, timeout=300)
    assert result == {"ok": True, "rows": 24, "problems": []}


def test_compacting_keeps_the_fingerprints(photos: list[Path]) -> None:
    decoded = [decode_file(p) for p in photos[:8]]
    full = fingerprint_batch(decoded)
    compact = fingerprint_batch([compact_decoded(d) for d in decoded])
    for a, b in zip(full, compact):
        assert a.pixel_digest == b.pixel_digest and a.phash == b.phash and a.detail == b.detail
        assert np.array_equal(a.thumb, b.thumb) and np.array_equal(a.crop_hashes, b.crop_hashes)


def test_postscript_bytes_are_named() -> None:
    with pytest.raises(ImageDecodeError, match=r"x\.jpg: PostScript/EPS document"):
        decode_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", name="x.jpg")
    assert "PostScript" not in decode_module.DECODED_FORMATS and "EPS" not in decode_module.DECODED_FORMATS


def test_large_png_copies_of_large_jpegs_are_still_recognised(photos: list[Path], tmp_path: Path) -> None:
    """A 24-MP PNG copy (reduced while converted) of a 24-MP JPEG (DCT-scaled) is seen; other photos are new."""
    from vdc_torch import DatasetGate

    (tmp_path / "ref").mkdir()
    (tmp_path / "new").mkdir()
    for i, path in enumerate(photos[:6]):
        with Image.open(path) as image:
            big = image.convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC)
        big.save(tmp_path / "ref" / f"{i}.jpg", quality=90)
        if i < 3:
            big.save(tmp_path / "new" / f"copy_{i}.png", compress_level=1)
    for path in photos[6:9]:
        with Image.open(path) as image:
            image.convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC).save(
                tmp_path / "new" / f"fresh_{path.stem}.png", compress_level=1)
    decision = DatasetGate(reference=tmp_path / "ref").check(tmp_path / "new")
    seen = {Path(p).name for p in decision.matches["new_path"]}
    assert seen == {"copy_0.png", "copy_1.png", "copy_2.png"}, decision.matches
