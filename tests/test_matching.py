"""Verification primitives of the matching cascade, on real photos."""

from __future__ import annotations

import cv2
import numpy as np
from conftest import EXIF_JPG

from vdc_torch.data.decode import decode_file
from vdc_torch.search.cascade import tone_mapped_colour_difference


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


def test_crop_hint_compares_the_new_image_with_the_crop_that_matched(tmp_path) -> None:
    from vdc_torch import Dataset
    from vdc_torch.fingerprints.compute import CROP_BOXES, compute_fingerprints, crop_pixels
    from vdc_torch.search.cascade import _crop_hint_similarity

    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg"]
    (tmp_path / "ref").mkdir()
    (tmp_path / "new").mkdir()
    box = 2  # 70 % of each side at the top right
    for name in names:
        rgb = decode_file(EXIF_JPG / name).pixels
        cv2.imwrite(str(tmp_path / "ref" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        y, x, h, w = crop_pixels(CROP_BOXES[box], *rgb.shape[:2])
        cv2.imwrite(str(tmp_path / "new" / name), cv2.cvtColor(rgb[y : y + h, x : x + w], cv2.COLOR_RGB2BGR))
    ref, _ = compute_fingerprints(Dataset(tmp_path / "ref"), workers=0)
    new, _ = compute_fingerprints(Dataset(tmp_path / "new"), workers=0)
    q = np.repeat(np.arange(3), 3)
    r = np.tile(np.arange(3), 3)
    similarity, tiny = _crop_hint_similarity(new, ref, q, r, np.full(9, box))
    assert not tiny.any()
    same = similarity[q == r]
    assert same.min() > 0.9 and similarity[q != r].max() < same.min() - 0.3


def test_batched_crop_resize_equals_resizing_each_crop() -> None:
    # crops of one size are resized as the channels of one image; more crops than OpenCV takes as channels, of
    # several sizes, mixed order: every one must come out as cv2.resize of that crop alone
    from vdc_torch.fingerprints.compute import CROP_BOXES, CV_MAX_CHANNELS, crop_windows
    from vdc_torch.search.cascade import _resized_crops

    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg"]
    details = []
    for name in names:
        gray = cv2.cvtColor(decode_file(EXIF_JPG / name).pixels, cv2.COLOR_RGB2GRAY)
        for side in (32, 57, 256):
            details.append(cv2.resize(gray, (side, side * 3 // 4), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(0)
    n = 3 * CV_MAX_CHANNELS + 7
    which = rng.integers(0, len(details), n)
    boxes = rng.integers(0, len(CROP_BOXES), n)
    # ... and one size and box only, so that one group spans more than one call (and a group of one)
    single = [d for d in details if d.shape == (24, 32)][0:1]
    cases = [(details, which, boxes)]
    for count in (2 * CV_MAX_CHANNELS + 1, 1):
        cases.append((single, np.zeros(count, np.int64), np.full(count, 4)))
    for images, rows, crop_boxes in cases:
        batched = _resized_crops(images, rows, crop_boxes)
        assert batched.shape == (len(rows), 32, 32)
        for i in range(len(rows)):
            image = images[rows[i]]
            one = cv2.resize(image[crop_windows(*image.shape)[crop_boxes[i]]], (32, 32), interpolation=cv2.INTER_AREA)
            assert np.array_equal(batched[i], one), i
    assert _resized_crops(details, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0, 32, 32)


def test_a_gate_check_describes_each_image_once_across_stages_and_threads(tmp_path, monkeypatch) -> None:
    # a crop of each photo and a crop of that crop: both are verified by features against the reference, then the
    # second against the first inside the new set; the shared caches describe each image once per side
    from vdc_torch import DatasetGate
    from vdc_torch.fingerprints import features as local_features

    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg", "Olympus_C8080WZ.jpg"]
    (tmp_path / "ref").mkdir()
    (tmp_path / "new").mkdir()
    for name in names:
        rgb = decode_file(EXIF_JPG / name).pixels
        h, w = rgb.shape[:2]
        cv2.imwrite(str(tmp_path / "ref" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        crop = rgb[: int(h * 0.85), int(w * 0.1) : int(w * 0.95)]
        ch, cw = crop.shape[:2]
        for copy, part in enumerate((crop, crop[int(ch * 0.1) : int(ch * 0.86), int(cw * 0.15) : int(cw * 0.91)])):
            cv2.imwrite(str(tmp_path / "new" / f"{copy}_{name}"), cv2.cvtColor(part, cv2.COLOR_RGB2BGR))
    calls: list[tuple[int, bool]] = []
    extract = local_features.extract

    def counting(image, extractor="sift", max_features=500, *, flip=False):
        calls.append((hash(image.tobytes()), flip))
        return extract(image, extractor, max_features, flip=flip)

    monkeypatch.setattr(local_features, "extract", counting)
    decision = DatasetGate(reference=tmp_path / "ref", workers=2).check(tmp_path / "new")
    assert decision.counts["near_duplicate"] + decision.counts["internal_duplicates"] >= 2 * len(names)
    assert decision.counts["delta"] == 0
    assert len(calls) >= 2 * len(names) and len(calls) == len(set(calls))  # no image described twice


def test_a_query_with_too_few_keypoints_does_not_describe_its_candidates(tmp_path, monkeypatch) -> None:
    # a strongly blurred copy of a CIFAR-size photo has fewer SIFT keypoints than min_inliers: verification could
    # never pass (verify itself says so below), so the reference is not described; dense alignment is still tried
    from vdc_torch import Dataset
    from vdc_torch.fingerprints import features as local_features
    from vdc_torch.fingerprints.compute import compute_fingerprints
    from vdc_torch.search import verify as matching
    from vdc_torch.search.cascade import FeatureCache, MatchConfig, _FeatureJob, _verify_pair

    aligned: list[int] = []
    by_alignment = matching._verify_by_alignment

    def recording(job, q, *args, **kwargs):
        aligned.append(q)
        return by_alignment(job, q, *args, **kwargs)

    monkeypatch.setattr(matching, "_verify_by_alignment", recording)

    (tmp_path / "ref").mkdir()
    (tmp_path / "new").mkdir()
    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg"]
    for name in names:
        small = cv2.resize(decode_file(EXIF_JPG / name).pixels, (32, 32), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(tmp_path / "ref" / f"{name}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        blurred = cv2.GaussianBlur(small, (0, 0), 2.5)
        cv2.imwrite(str(tmp_path / "new" / f"{name}.png"), cv2.cvtColor(blurred, cv2.COLOR_RGB2BGR))
    ref, _ = compute_fingerprints(Dataset(tmp_path / "ref"), workers=0)
    new, _ = compute_fingerprints(Dataset(tmp_path / "new"), workers=0)
    config = MatchConfig()
    job = _FeatureJob(new, ref, config, FeatureCache(new, "sift", config.max_features),
                      FeatureCache(ref, "sift", config.max_features))
    few = [q for q in range(len(names)) if len(job.new_cache.get(q)) < config.min_inliers]
    assert few, "the blurred copies should have few keypoints"
    for q in few:
        _verify_pair(job, q, q, 0, False)
        assert q not in job.ref_cache._plain  # not described
        assert aligned[-1:] == [q]  # the fallback for smooth pictures still ran
        described = local_features.extract(job.ref_cache.image(q), "sift", config.max_features)
        assert not local_features.verify(job.new_cache.get(q), described, min_inliers=config.min_inliers).matched


def test_inverted_file_finds_what_faiss_ivf_finds_above_the_threshold(monkeypatch) -> None:
    """The kNN index above KNN_EXACT_MAX_ROWS, searched list by list: faiss IndexIVFFlat's candidates (same
    centroids, same probes), top-k of those above the similarity bound, on the coarse vectors of real photos."""
    import faiss

    from vdc_torch.search import candidates as matching

    monkeypatch.setattr(matching, "KNN_EXACT_MAX_ROWS", 1000)
    monkeypatch.setattr(matching, "KNN_ROWS_PER_LIST", 64)
    monkeypatch.setattr(matching, "KNN_NPROBE", 4)
    rng = np.random.default_rng(4)
    photos = [cv2.resize(decode_file(p).pixels, (160, 120), interpolation=cv2.INTER_AREA)
              for p in sorted(EXIF_JPG.glob("*.jpg"))[:12] if p.name != "corrupted.jpg"]
    thumbs = []
    for i in range(3000):  # 32x32 windows of real photos at random places: related, not identical, vectors
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, 120 - 48), rng.integers(0, 160 - 48)
        thumbs.append(cv2.resize(photo[y : y + 48, x : x + 48], (32, 32), interpolation=cv2.INTER_AREA))
    thumbs = np.stack(thumbs)
    index = matching._coarse_index(thumbs)
    assert isinstance(index, matching.InvertedFileIP) and index.nlist == 3000 // 64
    vectors = matching.coarse_vectors(thumbs)
    ivf = faiss.IndexIVFFlat(index.quantizer, 64, index.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    ivf.add(vectors)
    ivf.nprobe = index.nprobe
    queries = vectors[::5] + rng.normal(0, 0.02, size=vectors[::5].shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    q, r, sim = index.search_above(queries, 3, 0.9)
    sims, ids = ivf.search(queries, 3)
    expected = {(i, int(j)) for i in range(len(queries)) for j, v in zip(ids[i], sims[i]) if j >= 0 and v >= 0.9}
    got = set(zip(q.tolist(), r.tolist()))
    assert len(expected) > len(queries) // 2 and len(got ^ expected) <= len(expected) // 100  # rounding ties only
    for i in range(len(queries)):  # the same similarities, whichever of two tied rows was kept
        ours = np.sort(sim[q == i])
        theirs = np.sort(sims[i][(ids[i] >= 0) & (sims[i] >= 0.9)])
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(sim, [float(vectors[j] @ queries[i]) for i, j in zip(q, r)], atol=1e-5)


def test_coarse_vectors_are_8x8_gray_block_means_independent_of_their_batch() -> None:
    from vdc_torch.search import cascade as matching

    photos = [decode_file(p).pixels for p in sorted(EXIF_JPG.glob("*.jpg"))[:9] if p.name != "corrupted.jpg"]
    thumbs = np.stack([cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA) for p in photos])
    vectors = matching.coarse_vectors(thumbs)
    # the definition, one picture at a time: gray, 4x4 block means, zero mean, unit norm
    gray = thumbs.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    blocks = gray.reshape(len(thumbs), 8, 4, 8, 4).mean(axis=(2, 4)).reshape(len(thumbs), 64)
    blocks -= blocks.mean(axis=1, keepdims=True)
    blocks /= np.linalg.norm(blocks, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, blocks, atol=1e-5)
    # a row's vector does not depend on the rows computed with it (manifests store them; queries recompute them)
    one_by_one = np.concatenate([matching.coarse_vectors(thumbs[i : i + 1]) for i in range(len(thumbs))])
    assert np.array_equal(vectors, one_by_one)


def test_stacked_gaussian_blur_equals_scipy_per_image() -> None:
    from scipy.ndimage import gaussian_filter

    from vdc_torch.search import cascade as matching

    photos = [decode_file(p).pixels for p in sorted(EXIF_JPG.glob("*.jpg"))[:9] if p.name != "corrupted.jpg"]
    gray = np.stack([cv2.cvtColor(cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                     for p in photos]).astype(np.float32)
    expected = gaussian_filter(gray, sigma=(0, 1.5, 1.5), mode="reflect", truncate=3.0)  # no blur across images
    np.testing.assert_allclose(matching._gaussian_blur_each(gray, 1.5, 5), expected, atol=1e-3)
