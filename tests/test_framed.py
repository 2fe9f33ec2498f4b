"""A reference shown inside a larger new image (issue 17): a screenshot of an image viewer, a pad filled with a
blurred copy of the picture. The framed stage finds these; screenshots of photos the reference lacks stay new."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import photo_files
from PIL import Image, ImageDraw, ImageFilter

from vdc_torch import Dataset
from vdc_torch.fingerprints.compute import compute_fingerprints
from vdc_torch.search.cascade import MatchConfig, match_tables
from vdc_torch.search.frames import framed_picture, framed_rectangles


def large_photos() -> list[Path]:
    files = []
    for f in photo_files():
        with Image.open(f) as im:
            if min(im.size) >= 400:
                files.append(f)
    return files


def screenshot(im: Image.Image, share: float, seed: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``im`` at ``share`` of the free height in a viewer window (toolbar with icons and a title, status bar, dark
    surround); also the picture's box (left, top, right, bottom)."""
    rng = np.random.default_rng(seed)
    width, height, top, bottom = 1280, 800, 48, 32
    canvas = Image.new("RGB", (width, height), (40, 40, 44))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width, top), fill=(228, 228, 230))
    for i in range(6):
        draw.rectangle((12 + i * 40, 12, 36 + i * 40, 36), fill=(int(rng.integers(60, 160)), 110, 200))
    draw.text((300, 16), f"IMG_{int(rng.integers(1000, 9999))}.JPG - Image Viewer   100%", fill=(20, 20, 20))
    draw.rectangle((0, height - bottom, width, height), fill=(60, 60, 64))
    draw.text((12, height - bottom + 8), f"{im.width} x {im.height}", fill=(200, 200, 200))
    free = height - top - bottom
    scale = min(width * share / im.width, free * share / im.height)
    picture = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    x, y = (width - picture.width) // 2, top + (free - picture.height) // 2
    canvas.paste(picture, (x, y))
    return canvas, (x, y, x + picture.width, y + picture.height)


def blurred_pad(im: Image.Image, aspect: float) -> Image.Image:
    """``im`` in the middle of a canvas of ``aspect`` filled with a blurred, enlarged copy of itself."""
    if aspect > im.width / im.height:
        width, height = round(im.height * aspect), im.height
    else:
        width, height = im.width, round(im.width / aspect)
    cover = max(width / im.width, height / im.height)
    big = im.resize((int(im.width * cover) + 1, int(im.height * cover) + 1))
    left, top = (big.width - width) // 2, (big.height - height) // 2
    canvas = big.crop((left, top, left + width, top + height)).filter(ImageFilter.GaussianBlur(min(width, height) / 30))
    canvas.paste(im, ((width - im.width) // 2, (height - im.height) // 2))
    return canvas


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple:
    """Reference: 10 photos. New: a screenshot of each of 6, a 16:9 blurred pad of the other 4, and screenshots of
    4 photos the reference lacks."""
    return build_tables(tmp_path_factory.mktemp("framed"))


def build_tables(root: Path) -> tuple:
    files = large_photos()
    if len(files) < 14:
        pytest.fail(f"expected at least 14 exif-samples photos of 400 px and more, found {len(files)}")
    (root / "ref").mkdir()
    (root / "new").mkdir()
    for i, f in enumerate(files[:14]):
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        if i < 10:
            rgb.save(root / "ref" / f"r{i:02d}.png")
        if i < 6 or i >= 10:
            shot, _ = screenshot(rgb, 0.75 + 0.02 * (i % 6), seed=i)
            shot.save(root / "new" / (f"shot_{i:02d}.png" if i < 10 else f"other_shot_{i:02d}.png"))
        else:
            blurred_pad(rgb, 16 / 9).save(root / "new" / f"pad_{i:02d}.jpg", quality=85)
    ref, _ = compute_fingerprints(Dataset(root / "ref"), workers=0)
    new, _ = compute_fingerprints(Dataset(root / "new"), workers=0)
    return new, ref


def matched(tables: tuple, config: MatchConfig) -> dict[str, tuple[str, str]]:
    new, ref = tables
    m = match_tables(new, ref, config)
    return {Path(new.paths[q]).name: (Path(ref.paths[r]).name, kind)
            for q, r, kind in zip(m["new_row"], m["ref_row"], m["kind"]) if kind != "similar"}


def test_framed_pictures_are_found_with_their_reference(tables: tuple) -> None:
    found = matched(tables, MatchConfig())
    without = matched(tables, MatchConfig(framed=False))
    framed = {name: hit for name, hit in found.items() if not name.startswith("other")}
    for name, (ref, kind) in framed.items():
        assert ref == f"r{name[-6:-4]}.png" and kind == "near_duplicate", (name, ref, kind)
    assert len(framed) >= 9, found  # of 10: 6 screenshots, 4 pads
    assert len(framed) > len(without), (found, without)  # the stage, not an earlier one, finds them
    assert not [name for name in found if name.startswith("other")]  # a screenshot of an unseen photo stays new


def test_the_best_framed_rectangle_is_the_picture_in_a_screenshot() -> None:
    with Image.open(large_photos()[0]) as im:
        shot, (left, top, right, bottom) = screenshot(im.convert("RGB"), 0.8, seed=0)
    scale = 256 / shot.width  # the detail image: gray, at most 256 px
    detail = np.asarray(shot.convert("L").resize((256, round(shot.height * scale)), Image.BILINEAR))
    t, b, lft, r = framed_rectangles(detail)[0]
    expected = np.array([top, bottom, left, right]) * scale
    assert np.abs(np.array([t, b, lft, r]) - expected).max() <= 3, ((t, b, lft, r), expected)  # ~1 % of 256 px


def darkened(im: Image.Image) -> Image.Image:
    """``im`` with its tones pushed down (gamma 2.2 on the levels): its dark parts meet a viewer's dark surround
    with no edge between them."""
    levels = np.asarray(im.convert("RGB"), np.float32) / 255.0
    return Image.fromarray(np.round(255.0 * levels**2.2).astype(np.uint8))


def with_white_border(im: Image.Image, share: float = 0.06) -> Image.Image:
    """``im`` inside a plain white border of ``share`` of its width on every side (a print, a scan)."""
    pad = round(im.width * share)
    canvas = Image.new("RGB", (im.width + 2 * pad, im.height + 2 * pad), (255, 255, 255))
    canvas.paste(im, (pad, pad))
    return canvas


def wide_crop(im: Image.Image, aspect: float = 2.0) -> Image.Image:
    """The middle band of ``im`` at ``aspect`` (a panorama, a banner)."""
    height = round(im.width / aspect)
    top = (im.height - height) // 2
    return im.crop((0, top, im.width, top + height))


@pytest.fixture(scope="module")
def hard_tables(tmp_path_factory) -> tuple:
    """Framings the first frame stage missed: a darkened photo in a viewer's dark window, a photo with a white
    border in a viewer, a 2:1 band of a photo padded to 9:16 with a blurred copy of itself (the picture spans 28 %
    of the height), two of each; the reference holds the six originals and four photos shown in none."""
    root = tmp_path_factory.mktemp("hard_framed")
    files = large_photos()[:10]
    (root / "ref").mkdir()
    (root / "new").mkdir()
    makers = {"dark": darkened, "bordered": with_white_border, "banner": wide_crop}
    for i, f in enumerate(files):
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        if i >= 6:
            rgb.save(root / "ref" / f"r{i:02d}.png")
            continue
        kind = list(makers)[i // 2]
        original = makers[kind](rgb)
        original.save(root / "ref" / f"r{i:02d}.png")
        if kind == "banner":
            blurred_pad(original, 9 / 16).save(root / "new" / f"{kind}_{i:02d}.jpg", quality=85)
        else:
            screenshot(original, 0.72 + 0.04 * (i % 2), seed=i)[0].save(root / "new" / f"{kind}_{i:02d}.png")
    ref, _ = compute_fingerprints(Dataset(root / "ref"), workers=0)
    new, _ = compute_fingerprints(Dataset(root / "new"), workers=0)
    return new, ref


def test_dark_bordered_and_narrow_framed_pictures_are_found(hard_tables: tuple) -> None:
    found = matched(hard_tables, MatchConfig())
    expected = {name: (f"r{name[-6:-4]}.png", "near_duplicate") for name in
                (Path(p).name for p in hard_tables[0].paths)}
    assert found == expected


def test_pictures_in_a_dark_viewer_are_bounded_by_its_flat_surround() -> None:
    errors = []  # px of the 256 px detail image, the farthest side of the best rectangle
    for i, photo in enumerate(large_photos()[:10]):
        with Image.open(photo) as im:
            shot, (left, top, right, bottom) = screenshot(darkened(im), 0.8, seed=i)
        scale = 256 / shot.width
        detail = np.asarray(shot.convert("L").resize((256, round(shot.height * scale)), Image.BILINEAR))
        best = np.array(framed_rectangles(detail)[0])
        errors.append(float(np.abs(best - np.array([top, bottom, left, right]) * scale).max()))
    assert sum(e <= 3 for e in errors) >= 9, errors  # edges alone bounded 3 of these 10


def test_a_band_padded_above_and_below_spans_the_width() -> None:
    with Image.open(large_photos()[4]) as im:
        band = wide_crop(im.convert("RGB"))
    pad = blurred_pad(band, 9 / 16)
    scale = 256 / pad.height
    detail = np.asarray(pad.convert("L").resize((round(pad.width * scale), 256), Image.BILINEAR))
    top = (pad.height - band.height) // 2 * scale
    expected = np.array([top, top + band.height * scale, 0, detail.shape[1]])
    rectangles = np.array(framed_rectangles(detail))
    assert (np.abs(rectangles - expected).max(axis=1) <= 2).any(), (rectangles, expected)


def test_every_rectangle_is_a_non_empty_box_inside_the_image() -> None:
    """Small and blank details too: a bright line inside a small picture once drew both refined sides onto it
    (an empty box that crashed the whole match), and a blank image is no evidence of a frame."""
    line_in_small_picture = np.full((48, 64), 20, np.uint8)
    line_in_small_picture[10:22, 8:56] = 30
    line_in_small_picture[16:19, 8:56] = 200
    rng = np.random.default_rng(0)
    blocks = []
    for _ in range(60):  # a few flat blocks on a flat canvas, 8-80 px a side
        h, w = (int(v) for v in rng.integers(8, 81, size=2))
        image = np.full((h, w), int(rng.integers(0, 256)), np.uint8)
        for _ in range(3):
            t, b = sorted(int(v) for v in rng.integers(0, h + 1, size=2))
            lft, r = sorted(int(v) for v in rng.integers(0, w + 1, size=2))
            image[t:b, lft:r] = int(rng.integers(0, 256))
        blocks.append(image)
    photo = np.asarray(Image.open(large_photos()[0]).convert("L").resize((8, 8)))
    for detail in [line_in_small_picture, photo, *blocks]:
        h, w = detail.shape
        for box in framed_rectangles(detail):
            t, b, lft, r = box
            assert 0 <= t < b <= h and 0 <= lft < r <= w, (detail.shape, box)
            picture = framed_picture(detail, box)
            assert 0 < picture.shape[0] <= b - t and 0 < picture.shape[1] <= r - lft
    assert framed_rectangles(np.zeros((100, 100), np.uint8)) == []
