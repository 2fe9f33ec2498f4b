"""Copies made by the usual training augmentations are found: flip + crop together, rotation on the same canvas,
and ``crop_is_duplicate=False`` / ``mirror_is_duplicate=False`` really make such copies ``similar``."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import pytest
from conftest import photo_files

from vdc_torch import Dataset
from vdc_torch.data.decode import decode_file
from vdc_torch.fingerprints.compute import compute_fingerprints
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

