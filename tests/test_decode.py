"""One safe decode per sample: orientation, EXIF identity, modes, and clear errors for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import EXIF_JPG
from PIL import Image

from vdc_torch.data.decode import decode_bytes, decode_file, decode_object
from vdc_torch.errors import ImageDecodeError
from vdc_torch.fingerprints.compute import fingerprint_decoded
from vdc_torch.search.cascade import normalized_thumbs

ORIENTATION = EXIF_JPG / "orientation"


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_every_exif_orientation_decodes_upright(kind: str) -> None:
    decoded = [decode_file(ORIENTATION / f"{kind}_{i}.jpg") for i in range(1, 9)]
    shapes = {d.pixels.shape[:2] for d in decoded}
    assert len(shapes) == 1  # all stand the same way once orientation is applied
    thumbs = normalized_thumbs(np.stack([fingerprint_decoded(d).thumb for d in decoded]))
    similarity = thumbs @ thumbs[0]
    assert similarity.min() > 0.95


def test_exif_identity_has_camera_and_capture_time() -> None:
    decoded = decode_file(EXIF_JPG / "Canon_40D.jpg")
    make, model, taken = decoded.exif_identity.split("|")[:3]
    assert make == "Canon" and model == "Canon EOS 40D"
    assert taken.startswith("2008:05:30 15:56:01")
    assert decoded.byte_digest is not None and len(decoded.byte_digest) == 16


def test_large_jpeg_is_decoded_reduced_but_reports_full_size() -> None:
    path = EXIF_JPG / "Reconyx_HC500_Hyperfire.jpg"  # 2048 x 1536
    with Image.open(path) as im:
        full = im.size
    decoded = decode_file(path, decode_side=128)
    assert (decoded.width, decoded.height) == full
    assert max(decoded.pixels.shape[:2]) < max(full)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "not an image: the file holds text"),
        (b"hello, this is a text file\n", "not an image: the file holds plain text"),
        (bytes(range(256)) * 4, "not a recognised image format"),
    ],
)
def test_non_images_get_specific_reasons(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "sample.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match=reason):
        decode_file(path)


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = (EXIF_JPG / "Canon_40D.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.jpg.*(truncated|corrupt)"):
        decode_file(path, decode_side=None)


def test_decompression_bomb_refused_without_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_bytes(buffer.getvalue(), name="bomb.png", max_pixels=100_000_000)


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "RGBA", "LA", "1", "L"])
def test_every_pil_mode_becomes_rgb_uint8(mode: str) -> None:
    with Image.open(EXIF_JPG / "Canon_40D.jpg") as im:
        base = im.convert("RGB").resize((64, 48))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
    else:
        image = base.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
    decoded = decode_bytes(buffer.getvalue())
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (48, 64, 3)
    assert decoded.pixels.mean() > 10  # 16-bit scaled, not saturated or black


def test_in_memory_tensor_and_array() -> None:
    import torch

    tensor = torch.rand(3, 20, 30)
    decoded = decode_object(tensor)
    assert decoded.pixels.shape == (20, 30, 3) and decoded.pixels.dtype == np.uint8
    array = (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)
    assert decode_object(array).pixels.shape == (20, 30, 3)
    with pytest.raises(ImageDecodeError, match="unsupported sample type"):
        decode_object("not an image")


def test_small_jpegs_decoded_without_pillow_equal_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    # plain JPEGs at full size skip Pillow (own marker walk + torchvision's libjpeg decoder); they must give
    # exactly what Pillow gives: every camera photo, every EXIF orientation, malformed EXIF blocks, gray images
    import vdc_torch.data.decode as decode_module

    files = sorted(EXIF_JPG.rglob("*.jpg"))
    assert len(files) > 40

    def decode_all() -> dict[Path, tuple]:
        out: dict[Path, tuple] = {}
        for path in files:
            try:
                d = decode_file(path, decode_side=None)  # full size: the path small images take
                out[path] = (d.pixels.tobytes(), d.pixels.shape, d.width, d.height, d.exif_identity, d.warnings,
                             d.format, d.frames)
            except ImageDecodeError as exc:
                out[path] = ("error", str(exc))
        return out

    plain = decode_module._decode_plain_jpeg
    taken = []
    monkeypatch.setattr(decode_module, "_decode_plain_jpeg", lambda *a: taken.append(plain(*a)) or taken[-1])
    fast = decode_all()
    monkeypatch.setattr(decode_module, "_decode_plain_jpeg", lambda *args: None)  # Pillow alone
    pillow = decode_all()
    for path in files:
        assert fast[path] == pillow[path], path
    assert sum(t is not None for t in taken) > 30 and sum(t is None for t in taken) > 3  # both ways were used


def test_cut_or_corrupt_jpegs_stay_pillows_errors(tmp_path: Path) -> None:
    # libjpeg only warns about a cut stream or a broken entropy segment (OpenCV, for one, returns gray-filled
    # pixels); the fast path gives such files to Pillow, which reports them
    import cv2

    rgb = decode_file(EXIF_JPG / "Nikon_D70.jpg").pixels
    data = cv2.imencode(".jpg", cv2.resize(rgb, (96, 64), interpolation=cv2.INTER_AREA))[1].tobytes()
    scan = data.rindex(b"\xff\xda")
    cases = {f"cut{c}.jpg": data[: int(len(data) * c)] for c in (0.5, 0.9, 0.995)}
    for offset in (100, 800):
        broken = bytearray(data)
        broken[scan + offset : scan + offset + 2] = b"\xff\x38"  # a marker inside the scan data
        cases[f"broken{offset}.jpg"] = bytes(broken)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageDecodeError, match=f"{name}.*(truncated|corrupt|broken)"):
            decode_file(tmp_path / name)


def test_small_jpeg_decoder_loads_torchvision_image_ops_without_importing_torchvision() -> None:
    # every fingerprinting worker decodes in a fresh fork: importing torchvision (models, datasets) there took ~1.8 s
    # per worker before its first sample; only its image library is needed
    import subprocess
    import sys

    photo = next(p for p in sorted(EXIF_JPG.glob("*.jpg")) if p.name != "corrupted.jpg")
    code = (
        "import sys\n"
        "import vdc_torch.data.decode as d\n"
        f"d.decode_file({str(photo)!r}, decode_side=None)\n"
        "assert d._image_ops_loaded(), 'no torch.ops.image'\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
