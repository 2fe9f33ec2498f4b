"""Property tests on the two untrusted-input parsers: image decoding (with EXIF) and manifest loading.

Whatever the bytes, ``decode_bytes`` returns a valid :class:`DecodedImage` or raises :class:`ImageDecodeError`, and
``load_manifest`` returns exactly the saved content or raises :class:`ManifestError` — nothing else ever escapes.
Bounded (a couple of hundred examples each, derandomised) to keep CI fast; ``benchmarks/fuzz.py`` runs longer.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EXIF_JPG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vdc_torch import DatasetGate, ManifestError
from vdc_torch.data.decode import DecodedImage, decode_bytes, exif_problems, read_exif_tags
from vdc_torch.decision.store.manifest import load_manifest, save_manifest
from vdc_torch.errors import ImageDecodeError
from vdc_torch.fingerprints.compute import FingerprintTable

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seed_images() -> dict[str, bytes]:
    """Small real images in every format the decoder meets, the JPEG with a real camera EXIF block."""
    canon = (EXIF_JPG / "Canon_40D.jpg").read_bytes()  # 100 x 68 with full EXIF
    with Image.open(io.BytesIO(canon)) as im:
        rgb = im.convert("RGB")
    seeds = {"camera JPEG": canon}
    for fmt, kwargs in (("PNG", {}), ("WEBP", {"quality": 80}), ("BMP", {}), ("TIFF", {"compression": "tiff_lzw"})):
        buffer = io.BytesIO()
        rgb.save(buffer, format=fmt, **kwargs)
        seeds[fmt] = buffer.getvalue()
    buffer = io.BytesIO()
    rgb.convert("RGBA").save(buffer, format="PNG")
    seeds["RGBA PNG"] = buffer.getvalue()
    buffer = io.BytesIO()
    rgb.save(buffer, format="GIF", save_all=True, append_images=[rgb.rotate(90)], duration=50)
    seeds["animated GIF"] = buffer.getvalue()
    return seeds


SEEDS = seed_images()


def assert_valid(decoded: DecodedImage) -> None:
    """What every successful decode must give."""
    assert isinstance(decoded, DecodedImage)
    pixels = decoded.pixels
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0
    assert pixels.flags.c_contiguous
    assert decoded.width > 0 and decoded.height > 0
    assert all(isinstance(w, str) for w in decoded.warnings)


def decode_or_clean_error(data: bytes) -> DecodedImage | None:
    try:
        decoded = decode_bytes(data, name="fuzz.bin")
    except ImageDecodeError as exc:
        assert str(exc).startswith("fuzz.bin: ")
        return None
    assert_valid(decoded)
    return decoded


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A seed image with a few byte flips, overwrites, insertions, deletions or a truncation."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


@st.composite
def exif_mutated(draw: st.DrawFn) -> bytes:
    """The camera JPEG with bytes changed inside its EXIF (APP1) segment only, so the pixels stay decodable."""
    data = bytearray(SEEDS["camera JPEG"])
    start = data.index(b"Exif\x00\x00") + 6
    length = int.from_bytes(data[start - 8 : start - 6], "big") - 8
    for _ in range(draw(st.integers(1, 12))):
        at = start + draw(st.integers(0, length - 1))
        if draw(st.booleans()):
            data[at] ^= draw(st.integers(1, 255))
        else:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    decode_or_clean_error(data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.binary(max_size=512))
def test_a_valid_header_followed_by_garbage_decodes_or_fails_cleanly(seed: str, tail: bytes) -> None:
    decode_or_clean_error(SEEDS[seed][:64] + tail)


@FUZZ
@given(mutated(SEEDS))
def test_mutated_real_images_decode_or_fail_cleanly(data: bytes) -> None:
    decode_or_clean_error(data)


@FUZZ
@given(exif_mutated())
def test_damaged_exif_never_costs_the_pixels(data: bytes) -> None:
    decoded = decode_bytes(data, name="exif.jpg")  # the image data is untouched, so it must decode
    assert_valid(decoded)
    with Image.open(io.BytesIO(data)) as image:
        tags = read_exif_tags(image)
    assert isinstance(tags, dict)


@FUZZ
@given(st.binary(max_size=2048))
def test_exif_checker_never_raises(raw: bytes) -> None:
    for block in (raw, b"Exif\x00\x00II*\x00" + raw, b"MM\x00*" + raw):
        issues = exif_problems(block)
        assert isinstance(issues, list) and all(isinstance(i, str) for i in issues)


# -- the manifest loader -----------------------------------------------------------------------------------------------


def rows(table: FingerprintTable) -> list[tuple]:
    return [(table.paths[i], table.labels[i], table.pixel_digest[i], table.thumbs[i].tobytes(), table.details[i],
             int(table.phash[i]), table.crop_hashes[i].tobytes(), table.extra_hashes[i]) for i in range(len(table))]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[tuple], Path]:
    """(bytes of a small real manifest, its rows, a scratch folder)."""
    root = tmp_path_factory.mktemp("fuzz_reference")
    for path in sorted(EXIF_JPG.glob("*.jpg"))[:3]:
        shutil.copy(path, root / path.name)
    table = DatasetGate(reference=str(root), workers=0).reference_table
    folder = tmp_path_factory.mktemp("fuzz_manifest")
    path = save_manifest(folder / "reference.vdc", table, {"reference_root": str(root)})
    return path.read_bytes(), rows(table), folder


@st.composite
def damaged(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """A list of (operation, offset, value) edits for a file of ``size`` bytes."""
    return draw(st.lists(st.tuples(st.sampled_from(["flip", "truncate", "zero-page", "insert"]),
                                   st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=5))


def apply_edits(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    blob = bytearray(data)
    for kind, at, value in edits:
        at = min(at, max(0, len(blob) - 1))
        if kind == "flip" and blob:
            blob[at] ^= value
        elif kind == "truncate":
            del blob[at:]
        elif kind == "zero-page":
            page = at - at % 4096
            blob[page : page + 4096] = bytes(len(blob[page : page + 4096]))
        else:
            blob[at:at] = bytes([value]) * value
    return bytes(blob)


@settings(FUZZ, max_examples=200, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_damaged_manifests_load_exactly_or_fail_cleanly(manifest: tuple[bytes, list[tuple], Path],
                                                       data: st.DataObject) -> None:
    original, expected, folder = manifest
    path = folder / "damaged.vdc"
    path.write_bytes(apply_edits(original, data.draw(damaged(len(original)))))
    try:
        table, meta = load_manifest(path)
    except ManifestError as exc:
        assert "damaged.vdc" in str(exc)
        return
    try:
        loaded = rows(table)  # thumbnails and details are read (and checked) on first access
    except ManifestError as exc:
        assert "damaged.vdc" in str(exc)
        return
    assert loaded == expected  # loads only when the content is intact
    assert meta["samples"] == len(expected)
