"""Quality flags of the delta (issue 19): blank, black, white, blurred, tiny and strip-shaped copies of real photos
are flagged, the photos themselves are not, and ``Policy(exclude_low_quality=True)`` leaves the flagged out."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from vdc_torch import DatasetGate, Policy
from vdc_torch.fingerprints import quality

#: degraded copy name -> the flag it must carry
DEGRADED = {"blank": "blank", "black": "dark", "white": "bright", "blurred": "blurry", "thumbnail": "tiny",
            "strip": "extreme_aspect"}


def degrade(photo: Path, kind: str) -> Image.Image:
    with Image.open(photo) as im:
        rgb = im.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 1.0, pixels.shape)
    if kind == "blank":  # a frame of the photo's mean colour, with sensor noise
        return Image.fromarray(np.clip(pixels.reshape(-1, 3).mean(axis=0) + noise, 0, 255).astype(np.uint8))
    if kind == "black":
        return Image.fromarray(np.clip(pixels * 0.05 + noise, 0, 255).astype(np.uint8))
    if kind == "white":
        return Image.fromarray(np.clip(255 - (255 - pixels) * 0.05 + noise, 0, 255).astype(np.uint8))
    if kind == "blurred":
        return rgb.filter(ImageFilter.GaussianBlur(0.02 * max(rgb.size)))
    if kind == "thumbnail":
        return rgb.resize((24, 18))
    if kind == "strip":
        return rgb.crop((0, 0, rgb.width, rgb.width // 6))
    raise ValueError(kind)


@pytest.fixture
def drop(photos: list[Path], tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """Reference: 6 photos. New: 6 other photos (good, novel) and one degraded copy of each kind of a 13th."""
    large = [p for p in photos if min(Image.open(p).size) >= 200]
    reference, new = tmp_path / "reference", tmp_path / "new"
    reference.mkdir()
    new.mkdir()
    for path in large[:6]:
        shutil.copy(path, reference / path.name)
    good = large[6:12]
    for path in good:
        shutil.copy(path, new / path.name)
    for kind in DEGRADED:
        degrade(large[12 + list(DEGRADED).index(kind)], kind).save(new / f"{kind}.png")
    return reference, new, good


def test_degraded_novel_samples_are_flagged_and_good_photos_are_not(drop: tuple[Path, Path, list[Path]]) -> None:
    reference, new, good = drop
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    flags = dict(zip(decision.quality["path"], decision.quality["flags"]))
    for kind, flag in DEGRADED.items():
        assert flag in flags.get(f"{kind}.png", "").split(","), (kind, flags)
    assert not set(flags) & {p.name for p in good}, flags
    assert decision.counts["low_quality"] == len(DEGRADED)
    assert decision.counts["delta"] == len(good) + len(DEGRADED)  # reported, not removed, by default
    assert f"{len(DEGRADED)} novel sample(s) look low-quality" in decision.reason
    assert json.loads(decision.to_json())["quality"][0]["flags"]


def test_exclude_low_quality_leaves_the_flagged_samples_out_of_the_delta(drop: tuple[Path, Path, list[Path]]) -> None:
    reference, new, good = drop
    decision = DatasetGate(reference=str(reference), policy=Policy(exclude_low_quality=True),
                           workers=0).check(str(new))
    assert sorted(decision.delta_keys) == sorted(p.name for p in good)
    assert len(decision.delta) == len(good)
    assert f"{len(DEGRADED)} low-quality novel sample(s) were left out of the delta" in decision.reason


def test_a_reference_copy_is_not_judged_only_the_delta(photos: list[Path], tmp_path: Path) -> None:
    reference, new = tmp_path / "reference", tmp_path / "new"
    reference.mkdir()
    new.mkdir()
    degrade(photos[0], "black").save(reference / "black.png")  # dark, but the model has seen it already
    shutil.copy(reference / "black.png", new / "black.png")
    shutil.copy(photos[1], new / photos[1].name)
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    assert decision.counts["exact"] == 1 and decision.quality.empty


def test_flags_follow_their_documented_thresholds() -> None:
    rows = pd.DataFrame([
        {"row": 0, "width": 640, "height": 480, "contrast": 50.0, "colour": 50.0, "p05": 10, "p95": 200,
         "sharpness": 0.031 * 50.0 ** 2},
        {"row": 1, "width": 640, "height": 480, "contrast": 50.0, "colour": 50.0, "p05": 10, "p95": 200,
         "sharpness": 0.029 * 50.0 ** 2},
        {"row": 2, "width": 31, "height": 400, "contrast": 50.0, "colour": 50.0, "p05": 10, "p95": 19,
         "sharpness": 1e4},
        {"row": 3, "width": 32, "height": 160, "contrast": 3.9, "colour": 3.9, "p05": 236, "p95": 240,
         "sharpness": 0.0},
    ])
    assert quality.flags_of(rows) == [[], ["blurry"], ["dark", "tiny", "extreme_aspect"], ["blank", "bright"]]


def test_the_html_report_pictures_the_flagged_samples_and_lists_classes(drop: tuple[Path, Path, list[Path]],
                                                                         tmp_path: Path) -> None:
    from vdc_torch.faces.report import write_html

    reference, new, _ = drop
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    page = write_html(decision, tmp_path / "report.html").read_text()
    quality_part = page[page.index('<section id="quality">'):]
    quality_part = quality_part[:quality_part.index("</section>")]
    assert f"Low-quality novel samples — {len(DEGRADED)}, kept in the delta" in quality_part
    assert quality_part.count("data-flags=") == len(DEGRADED) and re.search('data-flags="[a-z_,]*dark', quality_part)
    assert quality_part.count("src=\"data:image/") == len(DEGRADED)
    assert '<section id="classes"><h2>Classes</h2><p class="muted">The new data is unlabelled' in page


def _measure_one_by_one(table, rows) -> pd.DataFrame:
    """The measurements as they were taken before batching (one row at a time), the reference for the batched."""
    import cv2

    from vdc_torch.fingerprints.per_image import decode_detail

    out = []
    for row in rows:
        gray = decode_detail(table.details[row])
        thumb = np.asarray(table.thumbs[row], dtype=np.float32)
        p05, p95 = np.percentile(gray, (5, 95))
        sharpness = float(cv2.Laplacian(gray, cv2.CV_32F).var()) if min(gray.shape) >= 3 else 0.0
        out.append({"contrast": round(float(gray.std()), 2), "p05": p05, "p95": p95, "sharpness": round(sharpness, 2),
                    "colour": round(float(thumb.reshape(-1, 3).std(axis=0).max()), 2)})
    return pd.DataFrame(out)


def test_measuring_in_batches_gives_the_values_of_one_by_one(drop: tuple[Path, Path, list[Path]], tmp_path) -> None:
    reference, new, good = drop  # photos of many sizes, degraded copies, tiny and strip-shaped ones
    for i, path in enumerate(good):  # and photos of one size, measured as one stack
        with Image.open(path) as im:
            im.convert("RGB").resize((320, 240)).save(new / f"same_size_{i}.png")
    gate = DatasetGate(reference=str(reference), workers=0)
    table = gate.check(str(new)).new_fingerprints
    gate.save(tmp_path / "ref.vdc")
    stored = DatasetGate.load(tmp_path / "ref.vdc", workers=0).reference_table  # rows read from the manifest
    for fingerprints in (table, stored):
        rows = list(range(len(fingerprints)))[::-1]  # any order
        batched = quality.measure(fingerprints, rows)
        expected = _measure_one_by_one(fingerprints, rows)
        for column in ("contrast", "colour", "p05", "p95", "sharpness"):
            np.testing.assert_array_equal(batched[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
        assert batched["row"].tolist() == rows
    shapes = [quality.decode_detail(table.details[r]).shape for r in range(len(table))]
    assert max(shapes.count(shape) for shape in shapes) >= 6  # the stacked path was taken
