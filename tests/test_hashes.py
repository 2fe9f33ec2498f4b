"""Tests for vdc_torch.fingerprints.hashes on real images (read-only shared data)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from vdc_torch.fingerprints.hashes import (
    BINARY_METHODS,
    DEFAULT_THRESHOLDS,
    HASH_ALIASES,
    HASH_BITS,
    HASH_FUNCTIONS,
    HASH_METHODS,
    HASH_NBYTES,
    ImageHash,
    compare_matrix,
    compute_hash,
    distance,
    distance_matrix,
    hamming_matrix,
    hashes_to_array,
    hashes_to_uint64,
    resolve_method,
)

DATA = Path("/work/shared/data")
EXIF = DATA / "exif-samples" / "jpg"
COWS = DATA / "visdatcompy-examples" / "cows"
EXIF_NAMES = [
    "Canon_40D.jpg",
    "Kodak_CX7530.jpg",
    "Nikon_COOLPIX_P1.jpg",
    "Olympus_C8080WZ.jpg",
    "Pentax_K10D.jpg",
    "Ricoh_Caplio_RR330.jpg",
]
COW_NAMES = ["V00001.png", "V00005.png"]

pytestmark = pytest.mark.skipif(not EXIF.is_dir() or not COWS.is_dir(), reason="shared test images not available")

CV2_CLASSES = {
    "average": "AverageHash_create",
    "p": "PHash_create",
    "marr_hildreth": "MarrHildrethHash_create",
    "radial_variance": "RadialVarianceHash_create",
    "block_mean": "BlockMeanHash_create",
    "color_moment": "ColorMomentHash_create",
}


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
    return exif + [_read(COWS / n) for n in COW_NAMES]


def _cv2_hasher(method: str):
    return getattr(cv2.img_hash, CV2_CLASSES[method])()


# --- registry and names -----------------------------------------------------


def test_registry_covers_every_method() -> None:
    assert HASH_METHODS == ("average", "p", "marr_hildreth", "radial_variance", "block_mean", "color_moment")
    assert tuple(HASH_FUNCTIONS) == HASH_METHODS
    assert set(DEFAULT_THRESHOLDS) == set(HASH_METHODS)
    assert set(HASH_NBYTES) == set(HASH_METHODS)


@pytest.mark.parametrize("alias, canonical", sorted(HASH_ALIASES.items()))
def test_aliases_resolve(alias: str, canonical: str, exif: list[np.ndarray]) -> None:
    assert resolve_method(alias) == canonical
    assert compute_hash(alias, exif[0]) == compute_hash(canonical, exif[0])
    assert ImageHash(alias, compute_hash(canonical, exif[0]).bits).method == canonical


@pytest.mark.parametrize("bad", ["phsh", "", "P", "dhash", None])
def test_invalid_method_names_the_choices(bad: object, exif: list[np.ndarray]) -> None:
    with pytest.raises(ValueError) as info:
        compute_hash(bad, exif[0])  # type: ignore[arg-type]
    msg = str(info.value)
    assert f"method={bad!r}" in msg
    for name in HASH_METHODS:
        assert name in msg


# --- computation equals OpenCV ------------------------------------------------


@pytest.mark.parametrize("method", HASH_METHODS)
def test_compute_hash_equals_opencv(method: str, images: list[np.ndarray]) -> None:
    hasher = _cv2_hasher(method)
    for img in images:
        for variant in (img, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)):
            ours = compute_hash(method, variant)
            ref = hasher.compute(variant.copy())  # OpenCV may write into earlier inputs
            assert ours.method == method
            assert len(ours.bits) == HASH_NBYTES[method]
            np.testing.assert_array_equal(ours.to_array(), ref)
            assert ours.to_array().dtype == ref.dtype


@pytest.mark.parametrize("method", HASH_METHODS)
def test_per_method_function_is_registered(method: str, exif: list[np.ndarray]) -> None:
    assert HASH_FUNCTIONS[method](exif[1]) == compute_hash(method, exif[1])


@pytest.mark.parametrize(
    "image, error",
    [
        (np.zeros((8, 8), dtype=np.float32), ValueError),
        (np.zeros((8, 8, 2), dtype=np.uint8), ValueError),
        (np.zeros((0, 8, 3), dtype=np.uint8), ValueError),
        ([[0, 1], [2, 3]], TypeError),
    ],
)
def test_bad_images_are_rejected(image: object, error: type) -> None:
    with pytest.raises(error):
        compute_hash("p", image)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", HASH_METHODS)
def test_hashing_never_modifies_inputs(method: str, exif: list[np.ndarray]) -> None:
    # OpenCV's MarrHildreth/RadialVariance/ColorMoment keep a reference to
    # their input and overwrite it on the next call with a same-sized image.
    color = exif[0].copy()
    gray = cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)
    color_flip, gray_flip = color[::-1].copy(), gray[::-1].copy()
    keep = [x.copy() for x in (color, gray, color_flip, gray_flip)]
    for img in (color, gray, color_flip, gray_flip, color, gray):
        compute_hash(method, img)
    for before, after in zip(keep, (color, gray, color_flip, gray_flip)):
        np.testing.assert_array_equal(after, before)


def test_single_channel_3d_image_is_gray(exif: list[np.ndarray]) -> None:
    gray = cv2.cvtColor(exif[0], cv2.COLOR_BGR2GRAY)
    assert compute_hash("p", gray[:, :, None]) == compute_hash("p", gray)


def _hash_strings_in_child(path: str) -> list[str]:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return [str(compute_hash(m, img)) for m in HASH_METHODS]


def test_hashers_work_after_fork(exif: list[np.ndarray]) -> None:
    parent = [str(compute_hash(m, exif[0])) for m in HASH_METHODS]  # creates the cache before fork
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply(_hash_strings_in_child, (str(EXIF / EXIF_NAMES[0]),))
    assert child == parent


def test_hashing_from_threads_matches_serial(images: list[np.ndarray]) -> None:
    # Each thread gets its own hashers (OpenCV objects keep scratch buffers).
    jobs = [(m, i) for m in HASH_METHODS for i in range(len(images))] * 3
    serial = [compute_hash(m, images[i]) for m, i in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: compute_hash(job[0], images[job[1]]), jobs))
    assert threaded == serial


# --- compare semantics --------------------------------------------------------


@pytest.mark.parametrize("method", HASH_METHODS)
def test_compare_matrix_equals_opencv_compare(method: str, images: list[np.ndarray]) -> None:
    hasher = _cv2_hasher(method)
    hashes = [compute_hash(method, img) for img in images] + [compute_hash(method, _jpeg(images[0]))]
    ref = np.array([[hasher.compare(x.to_array(), y.to_array()) for y in hashes] for x in hashes])
    ours = compare_matrix(method, hashes, hashes)
    if method == "radial_variance":
        # OpenCV correlates in float32; we use float64.
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert hashes[0] - hashes[1] == pytest.approx(ref[0, 1], abs=1e-6)


def test_radial_variance_compare_on_synthetic_hashes() -> None:
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(12, 40), dtype=np.uint8)
    raw[1] = np.roll(raw[0], 5)  # a cyclic shift: peak correlation 1
    raw[2] = 255 - raw[0]  # anti-correlated: OpenCV returns DBL_MIN
    hashes = [ImageHash("radial_variance", r.tobytes()) for r in raw]
    hasher = cv2.img_hash.RadialVarianceHash_create()
    ref = np.array([[hasher.compare(x.to_array(), y.to_array()) for y in hashes] for x in hashes])
    np.testing.assert_allclose(compare_matrix("radial_variance", hashes, hashes), ref, rtol=0, atol=1e-6)
    assert hashes[0] - hashes[1] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("method", HASH_METHODS)
def test_distance_direction_and_copies(method: str, exif: list[np.ndarray]) -> None:
    hashes = [compute_hash(method, img) for img in exif]
    copies = [compute_hash(method, _jpeg(img)) for img in exif]
    dist = distance_matrix(method, hashes, hashes)
    assert np.diag(dist) == pytest.approx(0.0, abs=1e-9)
    assert (dist >= 0).all()
    np.testing.assert_allclose(dist, dist.T, atol=1e-12)
    for i, (h, c) in enumerate(zip(hashes, copies)):
        assert distance(h, h) == pytest.approx(0.0, abs=1e-9)
        d_copy = distance(h, c)
        d_unrelated = min(dist[i, j] for j in range(len(hashes)) if j != i)
        assert d_copy < d_unrelated, (EXIF_NAMES[i], d_copy, d_unrelated)
        assert d_copy <= DEFAULT_THRESHOLDS[method]
    off_diag = dist[~np.eye(len(hashes), dtype=bool)]
    assert (off_diag > DEFAULT_THRESHOLDS[method]).all()


@pytest.mark.parametrize("method", HASH_METHODS)
def test_distance_matrix_matches_pairwise_distance(method: str, images: list[np.ndarray]) -> None:
    hashes = [compute_hash(method, img) for img in images]
    dist = distance_matrix(method, hashes[:3], hashes)
    for i in range(3):
        for j in range(len(hashes)):
            assert dist[i, j] == pytest.approx(distance(hashes[i], hashes[j]), abs=1e-12)
    raw = compare_matrix(method, hashes[:3], hashes)
    expected = np.clip(1.0 - raw, 0, None) if method == "radial_variance" else raw
    np.testing.assert_array_equal(dist, expected)


def test_mixed_methods_raise_type_error(exif: list[np.ndarray]) -> None:
    a, b = compute_hash("p", exif[0]), compute_hash("average", exif[0])
    with pytest.raises(TypeError, match="method='p'"):
        a - b
    with pytest.raises(TypeError):
        distance(a, b)
    with pytest.raises(TypeError):
        distance_matrix("p", [a], [a, b])
    with pytest.raises(TypeError):
        hashes_to_uint64([a, b])


def test_empty_matrices(exif: list[np.ndarray]) -> None:
    h = compute_hash("marr_hildreth", exif[0])
    assert distance_matrix("marr_hildreth", [], [h]).shape == (0, 1)
    assert hashes_to_array([], "p").shape == (0, 8)
    assert hashes_to_uint64([]).shape == (0,)


# --- ImageHash representation -------------------------------------------------


@pytest.mark.parametrize("method", HASH_METHODS)
def test_str_round_trip(method: str, exif: list[np.ndarray]) -> None:
    h = compute_hash(method, exif[2])
    text = str(h)
    assert text.startswith(method + ":")
    assert text == f"{method}:{h.bits.hex()}"
    back = ImageHash.from_str(text)
    assert back == h and hash(back) == hash(h)
    np.testing.assert_array_equal(back.to_array(), h.to_array())


@pytest.mark.parametrize("text", ["p", "p:zz", "p:00", "nope:" + "00" * 8])
def test_from_str_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        ImageHash.from_str(text)


@pytest.mark.parametrize("method", HASH_METHODS)
def test_is_binary(method: str, exif: list[np.ndarray]) -> None:
    h = compute_hash(method, exif[0])
    assert h.is_binary == (method in {"average", "p", "marr_hildreth", "block_mean"})
    assert h.is_binary == (method in BINARY_METHODS)
    if h.is_binary:
        assert h.nbits == HASH_BITS[method] == 8 * len(h.bits)


@pytest.mark.parametrize("method", ["average", "p"])
def test_to_uint64_is_big_endian(method: str, exif: list[np.ndarray]) -> None:
    hashes = [compute_hash(method, img) for img in exif]
    for h in hashes:
        assert h.to_uint64() == int(h.bits.hex(), 16) == int.from_bytes(h.bits, "big")
    arr = hashes_to_uint64(hashes)
    assert arr.dtype == np.uint64
    assert [int(v) for v in arr] == [h.to_uint64() for h in hashes]
    # Hamming on the uint64 form equals Hamming on the packed bytes.
    np.testing.assert_array_equal(
        hamming_matrix(arr, arr), hamming_matrix(hashes_to_array(hashes), hashes_to_array(hashes))
    )


@pytest.mark.parametrize("method", ["marr_hildreth", "radial_variance", "block_mean", "color_moment"])
def test_to_uint64_rejects_other_methods(method: str, exif: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match=f"method='{method}'"):
        compute_hash(method, exif[0]).to_uint64()


def test_bits_length_is_validated() -> None:
    with pytest.raises(ValueError, match="len\\(bits\\)=7"):
        ImageHash("p", b"\x00" * 7)


# --- vectorised Hamming -------------------------------------------------------


@pytest.mark.parametrize("nbytes", [1, 5, 8, 32, 72])
def test_hamming_matrix_equals_unpackbits(nbytes: int) -> None:
    rng = np.random.default_rng(nbytes)
    a = rng.integers(0, 256, size=(37, nbytes), dtype=np.uint8)
    b = rng.integers(0, 256, size=(23, nbytes), dtype=np.uint8)
    ref = np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=-1).sum(axis=-1)
    out = hamming_matrix(a, b)
    assert out.shape == (37, 23)
    np.testing.assert_array_equal(out, ref)


def test_hamming_matrix_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError):
        hamming_matrix(np.zeros((2, 8), np.uint8), np.zeros((2, 72), np.uint8))
    with pytest.raises(ValueError):
        hamming_matrix(np.zeros((2, 8), np.float32), np.zeros((2, 8), np.uint8))
