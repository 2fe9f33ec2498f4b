"""Fingerprints of one decoded image: OpenCV-identical pHashes, border trimming, crop hashes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import COWS, EXIF_JPG

from vdc_torch.data.decode import decode_file
from vdc_torch.fingerprints.compute import content_box, fingerprint_decoded, phash_batch
from vdc_torch.fingerprints.hashes import compute_hash


def real_gray32() -> np.ndarray:
    files = sorted(COWS.glob("*.png")) + sorted(EXIF_JPG.glob("*.jpg"))[:20]
    images = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    return np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in images if im is not None])


@pytest.mark.parametrize("mirror", [False, True])
def test_batched_phash_is_bit_identical_to_opencv(mirror: bool) -> None:
    stack = real_gray32()
    ours = phash_batch(stack, mirror=mirror)
    source = stack[:, :, ::-1] if mirror else stack
    theirs = [compute_hash("p", np.ascontiguousarray(g)).to_uint64() for g in source]
    assert ours.tolist() == theirs


def test_letterboxed_copy_fingerprints_like_its_original() -> None:
    decoded = decode_file(EXIF_JPG / "Reconyx_HC500_Hyperfire.jpg")
    original = fingerprint_decoded(decoded)
    h, w = decoded.pixels.shape[:2]
    decoded.pixels = cv2.copyMakeBorder(decoded.pixels, h // 6, h // 6, w // 10, w // 10, cv2.BORDER_CONSTANT, value=0)
    boxed = fingerprint_decoded(decoded)
    assert bin(original.phash ^ boxed.phash).count("1") <= 4


def test_content_box_leaves_textured_images_whole() -> None:
    gray = cv2.imread(str(sorted(COWS.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    assert content_box(gray) == (0, gray.shape[0], 0, gray.shape[1])
    framed = cv2.copyMakeBorder(gray, 7, 7, 5, 5, cv2.BORDER_CONSTANT, value=255)
    assert content_box(framed) == (7, 7 + gray.shape[0], 5, 5 + gray.shape[1])


def test_content_box_keeps_dark_picture_regions_and_trims_tall_letterboxes() -> None:
    gray = cv2.cvtColor(decode_file(EXIF_JPG / "Reconyx_HC500_Hyperfire.jpg").pixels, cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (256, 192), interpolation=cv2.INTER_AREA)
    # a dark gradient (values 0..~20) is part of the picture: a gamma-edited copy would not trim it alike
    shaded = gray.copy()
    shaded[-40:] = (np.linspace(20, 0, 40)[:, None] * np.ones((1, 256))).astype(np.uint8)
    assert content_box(shaded)[1] > 192 - 40 + 5
    # a 16:9 picture letterboxed into a 9:16 canvas has bars of a third of the height on each side
    h, w = gray.shape
    bar = int(w * 16 / 9 - h) // 2
    tall = cv2.copyMakeBorder(gray, bar, bar, 0, 0, cv2.BORDER_CONSTANT, value=0)
    top, bottom, left, right = content_box(tall)
    assert abs(top - bar) <= 2 and abs(bottom - (bar + h)) <= 2 and (left, right) == (0, w)


def test_small_details_are_stored_raw_and_read_back_exactly() -> None:
    from vdc_torch.errors import ImageDecodeError
    from vdc_torch.fingerprints.compute import decode_detail, encode_detail

    gray = cv2.resize(cv2.imread(str(sorted(COWS.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE), (40, 30))
    stored = encode_detail(gray)
    assert len(stored) == 8 + 40 * 30 and np.array_equal(decode_detail(stored), gray)
    for damaged in (stored[:6], stored[:-1], stored + b"x"):
        with pytest.raises(ImageDecodeError):
            decode_detail(damaged)
    big = cv2.resize(gray, (200, 150))
    assert np.abs(decode_detail(encode_detail(big)).astype(int) - big).mean() < 2  # JPEG above 64x64 px


def test_batch_fingerprints_equal_one_at_a_time() -> None:
    # the batch path (shared matrix products, edges recognised together) gives each image's own fingerprint
    from vdc_torch.fingerprints.compute import fingerprint_batch

    files = sorted(COWS.glob("*.png"))[:3] + sorted(EXIF_JPG.glob("*.jpg"))[:6]
    decoded = [decode_file(f) for f in files]
    for small in (decoded[3], decoded[4]):  # CIFAR-size images, one with a letterbox, take the small path
        pixels = cv2.resize(small.pixels, (32, 32), interpolation=cv2.INTER_AREA)
        decoded.append(decode_file(files[0]))
        decoded[-1].pixels = pixels
        boxed = decode_file(files[0])
        boxed.pixels = cv2.copyMakeBorder(pixels[4:28], 4, 4, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        decoded.append(boxed)
    together = fingerprint_batch(decoded)
    for d, fp in zip(decoded, together):
        alone = fingerprint_decoded(d)
        assert (fp.phash, fp.phash_mirror, fp.phash_whole, fp.pixel_digest, fp.detail) == (
            alone.phash, alone.phash_mirror, alone.phash_whole, alone.pixel_digest, alone.detail)
        assert np.array_equal(fp.crop_hashes, alone.crop_hashes) and np.array_equal(fp.thumb, alone.thumb)


@pytest.mark.parametrize("shape", [(32, 32), (24, 40), (64, 17), (5, 7), (100, 150)])
def test_crop_coefficients_are_those_of_the_resized_crops(shape: tuple[int, int]) -> None:
    # the folded matrices (small images) and the crop-by-crop path both mean: DCT of the float INTER_AREA resize
    from vdc_torch.fingerprints.compute import _DCT8, crop_coefficients, crop_windows

    photo = cv2.cvtColor(decode_file(EXIF_JPG / "Canon_40D.jpg").pixels, cv2.COLOR_RGB2GRAY)
    grays = [cv2.resize(photo[i * 10 :], shape[::-1], interpolation=cv2.INTER_AREA) for i in range(3)]
    got = crop_coefficients(grays)
    for gray, coefficients in zip(grays, got):
        f = gray.astype(np.float32)
        expected = np.stack([_DCT8 @ cv2.resize(f[w], (32, 32), interpolation=cv2.INTER_AREA) @ _DCT8.T
                             for w in crop_windows(*shape)])
        np.testing.assert_allclose(coefficients, expected, rtol=1e-5, atol=1e-2)


def test_crop_resize_weights_read_in_one_call_equal_one_probe_at_a_time() -> None:
    # the crop hashes' resize matrices are read off OpenCV with the one-hot probes stacked as channels (one call);
    # they must equal probing row by row, bit for bit, for enlarged, integer-shrunk, shrunk and mixed crops
    from vdc_torch.fingerprints.compute import THUMB_SIDE, _resize_factor, crop_windows

    def one_at_a_time(height: int, width: int, along: int, full: int, start: int) -> np.ndarray:
        n = height if along == 0 else width
        factor = np.zeros((THUMB_SIDE, full), np.float32)
        for i in range(n):
            probe = np.zeros((height, width), np.float32)
            if along == 0:
                probe[i, :] = 1.0
            else:
                probe[:, i] = 1.0
            resized = cv2.resize(probe, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
            factor[:, start + i] = resized[:, 0] if along == 0 else resized[0, :]
        return factor

    for shape in [(1, 1), (7, 5), (24, 32), (31, 32), (32, 32), (33, 64), (40, 63), (48, 48), (64, 45), (64, 64)]:
        for rows, cols in crop_windows(*shape):
            height, width = rows.stop - rows.start, cols.stop - cols.start
            for along, full, start in ((0, shape[0], rows.start), (1, shape[1], cols.start)):
                expected = one_at_a_time(height, width, along, full, start)
                assert np.array_equal(_resize_factor(height, width, along, full, start), expected), (shape, along)
