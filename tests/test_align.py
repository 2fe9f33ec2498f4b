"""Dense alignment (align.py) and its place in the cascade: crops of smooth pictures that SIFT cannot verify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from conftest import EXIF_JPG

from vdc_torch import DatasetGate
from vdc_torch.data.decode import decode_file
from vdc_torch.fingerprints.align import align


def smooth_gray(name: str, side: int = 256) -> np.ndarray:
    """A real photo, blurred until it has the texture of a gradient wallpaper."""
    rgb = decode_file(EXIF_JPG / name).pixels
    h, w = rgb.shape[:2]
    rgb = cv2.resize(rgb, (side, round(h * side / w)), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 6)


def test_align_finds_an_offcentre_crop_and_where_it_came_from() -> None:
    ref = smooth_gray("Canon_40D.jpg")
    h, w = ref.shape
    y, x, ch, cw = 10, 50, int(h * 0.75), int(w * 0.75)
    crop = cv2.resize(ref[y : y + ch, x : x + cw], (200, round(200 * ch / cw)), interpolation=cv2.INTER_AREA)
    result = align(crop, ref)
    assert result is not None and result.similarity > 0.97 and abs(result.scale - 0.75) <= 0.05
    corner = result.transform @ np.array([0.0, 0.0, 1.0])  # the crop's top-left corner, in the reference
    assert abs(corner[0] - x) < 6 and abs(corner[1] - y) < 6


def test_align_does_not_pass_another_photo() -> None:
    ref = smooth_gray("Canon_40D.jpg")
    for other in ("Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg"):
        result = align(smooth_gray(other)[20:170, 20:220], ref)
        assert result is None or result.similarity < 0.92 or result.detail_similarity < 0.3


def smooth_photo(name: str) -> np.ndarray:
    """A real photo at 640 px wide, blurred to the texture of a gradient wallpaper (RGB)."""
    rgb = decode_file(EXIF_JPG / name).pixels
    h, w = rgb.shape[:2]
    return cv2.GaussianBlur(cv2.resize(rgb, (640, round(h * 640 / w)), interpolation=cv2.INTER_AREA), (0, 0), 12)


def gate_pairs(tmp_path: Path, edit: Callable[[int, np.ndarray], np.ndarray], names: list[str]) -> Any:
    """Reference ``r{i}.png`` = smooth photo ``i``; new ``n{i}.jpg`` = ``edit(i, photo)``; the gate's decision."""
    ref_dir, new_dir = tmp_path / "ref", tmp_path / "new"
    ref_dir.mkdir()
    new_dir.mkdir()
    for i, name in enumerate(names):
        rgb = smooth_photo(name)
        cv2.imwrite(str(ref_dir / f"r{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(new_dir / f"n{i}.jpg"), cv2.cvtColor(edit(i, rgb.copy()), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 80])
    return DatasetGate(reference=ref_dir, workers=0).check(new_dir)


def counted_pairs(decision: Any) -> dict[str, str]:
    m = decision.matches
    return {Path(n).name: Path(r).name for n, r, k in zip(m["new_path"], m["ref_path"], m["kind"]) if k != "similar"}


def test_gate_matches_crops_of_smooth_pictures(tmp_path: Path) -> None:
    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg", "Olympus_C8080WZ.jpg"]

    def crop(_: int, rgb: np.ndarray) -> np.ndarray:  # off-centre: bottom-left 78 % x 80 %
        h, w = rgb.shape[:2]
        return rgb[int(h * 0.2) :, : int(w * 0.78)]

    decision = gate_pairs(tmp_path, crop, names)
    assert counted_pairs(decision) == {f"n{i}.jpg": f"r{i}.png" for i in range(len(names))}
    assert "alignment" in set(decision.matches["method"])  # at least one was beyond the features


def test_gate_matches_smooth_pictures_under_a_caption_or_logo(tmp_path: Path) -> None:
    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg"]

    def overlay(i: int, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if i % 2:  # a caption bar across the bottom 12 %
            rgb[int(h * 0.88) :] = (20, 20, 20)
            cv2.putText(rgb, "Holiday 2019 - all rights reserved", (10, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                        (255, 255, 255), 2)
        else:  # a logo in the top-right corner, a fifth of the width
            side = w // 5
            cv2.rectangle(rgb, (w - side - 10, 10), (w - 10, 10 + side), (220, 30, 30), -1)
            cv2.circle(rgb, (w - side // 2 - 10, 10 + side // 2), side // 3, (255, 255, 0), -1)
        return rgb

    decision = gate_pairs(tmp_path, overlay, names)
    assert counted_pairs(decision) == {f"n{i}.jpg": f"r{i}.png" for i in range(len(names))}


def test_gate_matches_a_framed_copy_of_a_picture_with_plain_sides(tmp_path: Path) -> None:
    # the reference's own plain side bands are trimmed as if they were a border; the framed copy trims only its
    # frame, so the two trimmed contents differ and only the whole-picture pHash brings them together
    ref_dir, new_dir = tmp_path / "ref", tmp_path / "new"
    ref_dir.mkdir()
    new_dir.mkdir()
    rgb = decode_file(EXIF_JPG / "Canon_40D.jpg").pixels
    h, w = rgb.shape[:2]
    rgb = cv2.resize(rgb, (480, round(h * 480 / w)), interpolation=cv2.INTER_AREA)
    picture = cv2.copyMakeBorder(rgb, 0, 0, 120, 120, cv2.BORDER_CONSTANT, value=(40, 110, 60))  # plain sides
    cv2.imwrite(str(ref_dir / "r.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    framed = cv2.copyMakeBorder(picture, 60, 60, 50, 50, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    cv2.imwrite(str(new_dir / "n.jpg"), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    decision = DatasetGate(reference=ref_dir, workers=0).check(new_dir)
    assert decision.counts["near_duplicate"] == 1, decision.matches[["kind", "method", "evidence"]]


def test_gate_matches_heavy_offcentre_crops_between_the_indexed_crops(tmp_path: Path) -> None:
    # 76 % of each side (58 % of the area) at offsets between the 3x3 crop grid: 13-19 bits from the nearest
    # indexed crop hash, found because the crop radius grows while the reference is small (chance_limited_radius)
    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg", "Olympus_C8080WZ.jpg"]
    offsets = ((0.07, 0.17), (0.2, 0.04), (0.11, 0.09), (0.02, 0.22), (0.16, 0.13))

    def crop(i: int, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        top, left = int(h * offsets[i][0]), int(w * offsets[i][1])
        return rgb[top : top + int(h * 0.76), left : left + int(w * 0.76)]

    decision = gate_pairs(tmp_path, crop, names)
    assert counted_pairs(decision) == {f"n{i}.jpg": f"r{i}.png" for i in range(len(names))}
