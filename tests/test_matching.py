"""Verification primitives of the matching cascade, on real photos."""

from __future__ import annotations

import cv2
import numpy as np
from conftest import EXIF_JPG

from vdc_torch.decode import decode_file
from vdc_torch.matching import tone_mapped_colour_difference


def test_one_tone_curve_explains_gamma_edits_but_not_colour_variants() -> None:
    for name in ("Canon_40D.jpg", "Canon_PowerShot_S40.jpg", "Nikon_D70.jpg"):
        rgb = cv2.resize(decode_file(EXIF_JPG / name).pixels, (32, 32), interpolation=cv2.INTER_AREA)
        pixels = rgb.reshape(-1, 3)
        for gamma in (0.65, 1.55):
            edited = (255.0 * (pixels / 255.0) ** gamma).round().astype(np.uint8)
            assert tone_mapped_colour_difference(edited, pixels) < 6.0
        variant = pixels[:, [1, 2, 0]].copy()  # channels rotated: the same layout in other colours
        assert tone_mapped_colour_difference(variant, pixels) > 14.0
        gray = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).reshape(-1, 1), 3, axis=1)
        assert tone_mapped_colour_difference(gray, pixels) == 0.0  # grayscale copies are not judged by colour
