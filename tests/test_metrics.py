"""Tests for vdc_torch.fingerprints.metrics on real images (read-only shared data)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import metrics as skm

from vdc_torch.fingerprints.metrics import (
    METRIC_RANGES,
    METRICS,
    image_digest,
    in_range,
    metric_matrix,
    normalize_images,
    pix2pix_matrix,
)

DATA = Path("/work/shared/data")
EXIF = DATA / "exif-samples" / "jpg"
COWS = DATA / "visdatcompy-examples" / "cows"
COWS_DUP = DATA / "visdatcompy-examples" / "cows_duplicates"
EXIF_NAMES = ["Canon_40D.jpg", "Kodak_CX7530.jpg", "Nikon_COOLPIX_P1.jpg", "Fujifilm_FinePix_E500.jpg"]
COW_NAMES = ["V00001.png", "V00002.png", "V00007.png"]

pytestmark = pytest.mark.skipif(
    not (EXIF.is_dir() and COWS.is_dir() and COWS_DUP.is_dir()), reason="shared test images not available"
)

NUMERIC = [m for m in METRICS if m != "pix2pix"]


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


def _jpeg(img: np.ndarray, quality: int = 75) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def exif() -> list[np.ndarray]:
    return [_read(EXIF / n) for n in EXIF_NAMES]


@pytest.fixture(scope="module")
def images(exif: list[np.ndarray]) -> list[np.ndarray]:
    """7 real images of 4 different sizes (gray-ish photos, a portrait one, video frames)."""
    return exif + [_read(COWS / n) for n in COW_NAMES]


def _skimage(metric: str, x: np.ndarray, y: np.ndarray, color: bool) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # psnr of identical images divides by 0
        if metric == "mse":
            return skm.mean_squared_error(x, y)
        if metric == "nrmse":
            return skm.normalized_root_mse(x, y)
        if metric == "psnr":
            return skm.peak_signal_noise_ratio(x, y, data_range=255)
        if metric == "ssim":
            return skm.structural_similarity(x, y, data_range=255, channel_axis=-1 if color else None)
        if metric == "nmi":
            return skm.normalized_mutual_information(x, y, bins=100)
        if metric == "mae":
            return float(np.mean(np.abs(x.astype(np.float64) - y.astype(np.float64))))
    raise AssertionError(metric)


def _assert_close(ours: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=rtol, atol=1e-9)


# --- equality with skimage -----------------------------------------------------


@pytest.mark.parametrize("metric", NUMERIC)
@pytest.mark.parametrize(
    "gray, dtype, rtol",
    [
        (True, np.float64, 1e-9),  # same values in float64: skimage and we agree to rounding
        (True, np.float32, 1e-4),  # skimage on the float32 stack itself rounds in float32
        (False, np.float64, 1e-9),  # colour stacks (ssim averages channels as channel_axis=-1)
    ],
)
def test_metric_matrix_equals_skimage(
    metric: str, gray: bool, dtype: type, rtol: float, images: list[np.ndarray]
) -> None:
    stack = normalize_images(images, size=(48, 40), gray=gray).astype(dtype)
    a, b = stack[:5], stack[3:]  # overlapping: identical pairs included
    ours = metric_matrix(metric, a, b)
    ref = np.array([[_skimage(metric, x, y, not gray) for y in b] for x in a])
    assert ours.dtype == np.float64
    _assert_close(ours, ref, rtol)


@pytest.mark.parametrize("metric", NUMERIC)
def test_non_integer_input_equals_skimage(metric: str, images: list[np.ndarray]) -> None:
    # Values that normalize_images never produces take the generic float path.
    rng = np.random.default_rng(3)
    stack = normalize_images(images, size=(32, 32)).astype(np.float64)
    stack = np.clip(stack + rng.uniform(-0.5, 0.5, stack.shape), 0, 255)
    ours = metric_matrix(metric, stack[:4], stack[2:])
    ref = np.array([[_skimage(metric, x, y, False) for y in stack[2:]] for x in stack[:4]])
    _assert_close(ours, ref, 1e-9)


@pytest.mark.parametrize("metric", NUMERIC)
@pytest.mark.parametrize("batch", [1, 3])
def test_blocking_does_not_change_results(metric: str, batch: int, images: list[np.ndarray]) -> None:
    stack = normalize_images(images)
    full = metric_matrix(metric, stack, stack[:5])
    np.testing.assert_array_equal(metric_matrix(metric, stack, stack[:5], batch=batch), full)
    np.testing.assert_array_equal(metric_matrix(metric, stack[2:3], stack[:5])[0], full[2])


def test_nrmse_uses_a_as_reference(images: list[np.ndarray]) -> None:
    stack = normalize_images(images)
    ab = metric_matrix("nrmse", stack[:3], stack[3:])
    ba = metric_matrix("nrmse", stack[3:], stack[:3])
    assert not np.allclose(ab, ba.T)
    assert ab[0, 1] == pytest.approx(skm.normalized_root_mse(stack[0], stack[4]), rel=1e-6)


# --- identity, duplicates and similar images ------------------------------------


@pytest.mark.parametrize("metric", NUMERIC)
def test_identical_images_get_the_identical_value(metric: str, images: list[np.ndarray]) -> None:
    stack = normalize_images(images)
    diag = np.diag(metric_matrix(metric, stack, stack))
    assert in_range(metric, diag, "identical").all(), diag
    if metric in ("mse", "mae", "nrmse", "ssim", "psnr"):
        assert (diag == METRIC_RANGES[metric]["identical"]).all()  # exact, not approximate


@pytest.mark.parametrize("metric", NUMERIC)
def test_tiers_on_reencoded_resized_and_unrelated(metric: str, exif: list[np.ndarray]) -> None:
    ref = normalize_images(exif)
    jpeg = normalize_images([_jpeg(x) for x in exif])
    resized = normalize_images([cv2.resize(x, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA) for x in exif])
    assert in_range(metric, np.diag(metric_matrix(metric, ref, jpeg)), "duplicate").all()
    assert in_range(metric, np.diag(metric_matrix(metric, ref, resized)), "similar").all()
    unrelated = metric_matrix(metric, ref, ref)[~np.eye(len(exif), dtype=bool)]
    assert not in_range(metric, unrelated, "similar").any()
    assert not in_range(metric, unrelated, "duplicate").any()


def test_metric_ranges_are_complete_and_consistent() -> None:
    assert METRICS == ("pix2pix", "mse", "nrmse", "ssim", "psnr", "mae", "nmi")
    assert set(METRIC_RANGES) == set(METRICS)
    for metric in NUMERIC:
        info = METRIC_RANGES[metric]
        lo, hi = info["range"]
        dup, sim = info["duplicate"], info["similar"]
        assert lo <= info["identical"] <= hi
        # duplicate is a sub-interval of similar, both contain the identical value
        assert sim[0] <= dup[0] <= info["identical"] <= dup[1] <= sim[1]
    # psnr and mse tiers describe the same pairs
    for kind in ("duplicate", "similar"):
        mse_hi = METRIC_RANGES["mse"][kind][1]
        assert METRIC_RANGES["psnr"][kind][0] <= 10 * math.log10(255**2 / mse_hi) + 0.5


# --- pix2pix -------------------------------------------------------------------


def test_pix2pix_finds_exact_copies_in_cows_duplicates() -> None:
    cows = sorted(COWS.glob("*.png"))
    dups = sorted(COWS_DUP.glob("*.png"))
    found = pix2pix_matrix([_read(p) for p in cows], [_read(p) for p in dups])
    assert found.dtype == bool and found.shape == (len(cows), len(dups))
    pairs = {(cows[i].name, dups[j].name) for i, j in zip(*np.nonzero(found))}
    assert pairs == {
        ("V00001.png", "V00001 (copy).png"),
        ("V00001.png", "V00001.png"),
        ("V00003.png", "V00003.png"),
        ("V00006.png", "V00006.png"),
        ("V00010.png", "V00010.png"),
    }


def test_pix2pix_rejects_near_copies(exif: list[np.ndarray]) -> None:
    img = exif[0]
    others = [img.copy(), _jpeg(img), img[:-1], cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), img.astype(np.uint16)]
    assert pix2pix_matrix([img], others).tolist() == [[True, False, False, False, False]]
    # A flipped-back view is the same pixels although not contiguous.
    assert image_digest(img[::-1][::-1]) == image_digest(img)


def test_metric_matrix_pix2pix_compares_the_given_arrays(images: list[np.ndarray]) -> None:
    stack = normalize_images(images)
    np.testing.assert_array_equal(metric_matrix("pix2pix", stack, stack), np.eye(len(images), dtype=bool))


# --- normalize_images and validation ---------------------------------------------


def test_normalize_images_common_size(images: list[np.ndarray]) -> None:
    gray = normalize_images(images, size=(48, 40))
    assert gray.shape == (len(images), 48, 40) and gray.dtype == np.float32
    assert np.array_equal(gray, np.rint(gray)) and gray.min() >= 0 and gray.max() <= 255
    expected = cv2.resize(cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY), (40, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(gray[0], expected)
    color = normalize_images(images, gray=False)
    assert color.shape == (len(images), 64, 64, 3)
    # gray input, BGRA input and (H, W, 1) input are accepted
    g = cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY)
    mixed = normalize_images([g, g[:, :, None], cv2.cvtColor(images[0], cv2.COLOR_BGR2BGRA)])
    np.testing.assert_array_equal(mixed[0], mixed[1])
    np.testing.assert_array_equal(mixed[0], mixed[2])
    assert normalize_images([]).shape == (0, 64, 64)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8), np.float32), r"images\[1\]\.dtype=float32"),
        (np.zeros((8, 8, 2), np.uint8), r"images\[1\]\.shape=\(8, 8, 2\)"),
        (np.zeros((0, 8), np.uint8), r"images\[1\]\.shape=\(0, 8\)"),
    ],
)
def test_normalize_images_rejects_bad_images(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalize_images([np.zeros((8, 8), np.uint8), bad])


def test_invalid_metric_names_the_choices() -> None:
    stack = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError) as info:
        metric_matrix("ssmi", stack, stack)
    msg = str(info.value)
    assert "metric='ssmi'" in msg
    for name in METRICS:
        assert name in msg


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [((2, 8, 8), (2, 8, 9)), ((2, 64), (2, 64)), ((2, 8, 8), (2, 8, 8, 3))],
)
def test_shape_mismatch_is_rejected(a_shape: tuple, b_shape: tuple) -> None:
    with pytest.raises(ValueError):
        metric_matrix("mse", np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32))


def test_ssim_needs_the_7x7_window() -> None:
    with pytest.raises(ValueError, match="7x7"):
        metric_matrix("ssim", np.zeros((1, 6, 20), np.float32), np.zeros((1, 6, 20), np.float32))


def test_empty_stacks() -> None:
    a = np.zeros((0, 16, 16), np.float32)
    b = np.zeros((3, 16, 16), np.float32)
    for metric in NUMERIC:
        assert metric_matrix(metric, a, b).shape == (0, 3)
        assert metric_matrix(metric, b, a).shape == (3, 0)
