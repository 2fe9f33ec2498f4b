"""Copies made by the usual training augmentations are found: flip + crop together, rotation on the same canvas,
rotation then cropped upright, and ``crop_is_duplicate=False`` / ``mirror_is_duplicate=False`` really make such
copies ``similar``."""

from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import photo_files

from vdc_torch import Dataset
from vdc_torch.data.decode import decode_file
from vdc_torch.fingerprints.compute import compute_fingerprints
from vdc_torch.search.candidates import _rotation_candidates
from vdc_torch.search.cascade import MatchConfig, match_tables

N = 6


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> tuple:
    """Fingerprints of 6 reference photos and of their flip+crop, rotated and 10 %-cropped copies."""
    root = tmp_path_factory.mktemp("aug")
    (root / "ref").mkdir()
    (root / "new").mkdir()
    rng = random.Random(0)
    for i, f in enumerate(photo_files()[:N]):
        bgr = cv2.cvtColor(decode_file(f).pixels, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / "ref" / f"r{i:02d}.png"), bgr)
        h, w = bgr.shape[:2]
        keep = rng.uniform(0.8, 0.9)  # RandomResizedCrop-like: 10-20 % off each side, then a horizontal flip
        kh, kw = round(h * keep), round(w * keep)
        y, x = rng.randint(0, h - kh), rng.randint(0, w - kw)
        cv2.imwrite(str(root / "new" / f"flipcrop{i:02d}.jpg"), bgr[y : y + kh, x : x + kw][:, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 30 if i % 2 else -30, 1.0)
        cv2.imwrite(str(root / "new" / f"rot30_{i:02d}.jpg"), cv2.warpAffine(bgr, turn, (w, h)),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        crop = bgr[round(h * 0.05) : round(h * 0.95), round(w * 0.05) : round(w * 0.95)]
        cv2.imwrite(str(root / "new" / f"crop{i:02d}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    ref, _ = compute_fingerprints(Dataset(root / "ref"), workers=0)
    new, _ = compute_fingerprints(Dataset(root / "new"), workers=0)
    return new, ref


def found(copies, config: MatchConfig, prefix: str) -> dict[str, tuple[str, str]]:
    """``{copy name: (reference name, kind)}`` for the copies whose name starts with ``prefix``."""
    new, ref = copies
    m = match_tables(new, ref, config)
    out = {}
    for q, r, kind in zip(m["new_row"], m["ref_row"], m["kind"]):
        name = Path(new.paths[q]).name
        if name.startswith(prefix):
            out[name] = (Path(ref.paths[r]).name, kind)
    return out


def original_of(name: str) -> str:
    return f"r{name[-6:-4]}.png"


def test_flip_plus_crop_is_a_near_duplicate_of_its_original(copies) -> None:
    got = found(copies, MatchConfig(), "flipcrop")
    assert len(got) == N
    assert all(ref == original_of(name) and kind == "near_duplicate" for name, (ref, kind) in got.items()), got


@pytest.mark.parametrize("switch", ["mirror_is_duplicate", "crop_is_duplicate"])
def test_flip_plus_crop_is_similar_when_the_model_saw_no_such_augmentation(copies, switch: str) -> None:
    got = found(copies, MatchConfig(**{switch: False}), "flipcrop")
    assert len(got) == N and {kind for _, kind in got.values()} == {"similar"}, got


def test_rotation_by_30_degrees_on_the_same_canvas_is_found(copies) -> None:
    got = found(copies, MatchConfig(), "rot30")
    right = [name for name, (ref, kind) in got.items() if ref == original_of(name) and kind != "similar"]
    assert len(right) >= N - 1, got  # one small exif-samples detail image (100x59 px) is too coarse to verify
    assert all(ref == original_of(name) for name, (ref, _) in got.items())


def test_a_ten_percent_crop_is_similar_with_crop_is_duplicate_false(copies) -> None:
    assert {kind for _, kind in found(copies, MatchConfig(), "crop").values()} == {"near_duplicate"}
    got = found(copies, MatchConfig(crop_is_duplicate=False), "crop")
    assert len(got) == N and {kind for _, kind in got.values()} == {"similar"}, got



def rotated_then_cropped(bgr: np.ndarray, degrees: float) -> np.ndarray:
    """``bgr`` rotated by ``degrees`` about its centre, then cropped to the largest upright rectangle inside the
    rotated picture (no black corners left), as a rotate-and-straighten edit exports it."""
    h, w = bgr.shape[:2]
    turned = cv2.warpAffine(bgr, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0), (w, h))
    a = math.radians(abs(degrees))
    kw = int((w * math.cos(a) - h * math.sin(a)) / math.cos(2 * a))
    kh = int((h * math.cos(a) - w * math.sin(a)) / math.cos(2 * a))
    y, x = (h - kh) // 2, (w - kw) // 2
    return turned[y : y + kh, x : x + kw]


@pytest.fixture(scope="module")
def straightened(tmp_path_factory) -> tuple:
    """Fingerprints of 16 reference photos (400 px and more) and of a copy of each rotated by 7-12 degrees either
    way, cropped upright, JPEG."""
    root = tmp_path_factory.mktemp("rotate_crop")
    (root / "ref").mkdir()
    (root / "new").mkdir()
    rng = random.Random(0)
    photos = [decode_file(f).pixels for f in photo_files()]
    photos = [p for p in photos if min(p.shape[:2]) >= 400][:16]
    assert len(photos) == 16
    for i, rgb in enumerate(photos):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / "ref" / f"r{i:02d}.png"), bgr)
        degrees = rng.choice([-1, 1]) * rng.uniform(7, 12)
        cv2.imwrite(str(root / "new" / f"rc{i:02d}.jpg"), rotated_then_cropped(bgr, degrees),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
    ref, _ = compute_fingerprints(Dataset(root / "ref"), workers=0)
    new, _ = compute_fingerprints(Dataset(root / "new"), workers=0)
    return new, ref


def test_the_rotation_stage_proposes_the_original_of_every_copy_rotated_then_cropped(straightened) -> None:
    """Turned back, such a copy shows the reference's centre at a smaller crop box than its own canvas would; the
    stage looks the turned-back crop up among the smaller boxes too (one of these 16 was missed before)."""
    new, ref = straightened
    proposed = set()
    for c in _rotation_candidates(new, ref, np.ones(len(new), bool), False, MatchConfig()):
        proposed |= {(Path(new.paths[q]).name, Path(ref.paths[r]).name) for q, r in zip(c.q, c.r)}
    assert {(f"rc{i:02d}.jpg", f"r{i:02d}.png") for i in range(16)} <= proposed, proposed


def test_a_copy_rotated_then_cropped_is_a_near_duplicate_of_its_original(straightened) -> None:
    got = found(straightened, MatchConfig(), "rc")
    assert got == {f"rc{i:02d}.jpg": (f"r{i:02d}.png", "near_duplicate") for i in range(16)}
