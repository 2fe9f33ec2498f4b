"""Stage 4: the matching cascade — candidates from the indexes, verified, one best match per new sample.

Order of evidence, cheapest and surest first:

1. ``bytes``   — identical file bytes                                           -> ``exact``
2. ``pixels``  — identical decoded pixels (re-saved, renamed, EXIF stripped)    -> ``exact``
3. ``exif``    — same camera, capture time and ids, *confirmed by pixels*       -> ``near_duplicate``
4. ``phash``   — perceptual hash within ``hash_radius``, verified on thumbnails  -> ``near_duplicate``/``similar``
5. ``mirror``  — the same for the mirror image (flip augmentation)               -> policy decides
6. ``crop``/``features`` — crop hashes (of the picture and of its mirror image) and hash candidates that failed
   the thumbnail check, verified by local features (ratio test + RANSAC inliers + coverage) -> ``near_duplicate``
7. ``rotation`` — still unmatched samples turned back by up to ``max_rotation`` degrees, their centre crops
   looked up among the crop hashes, verified by local features                  -> ``near_duplicate``

Crops and mirrors count as near-duplicates unless ``crop_is_duplicate`` / ``mirror_is_duplicate`` is False (see
:class:`MatchConfig` for what a crop is).

Each stage only looks at new samples that earlier stages left unmatched (or matched only as ``similar``).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd

from vdc_torch.fingerprints import features as local_features
from vdc_torch.fingerprints.align import MIN_SIDE as ALIGN_MIN_SIDE
from vdc_torch.fingerprints.align import Alignment, align
from vdc_torch.fingerprints.compute import (
    CROP_BOXES,
    CV_MAX_CHANNELS,
    THUMB_SIDE,
    FingerprintTable,
    crop_windows,
    decode_detail,
    default_workers,
    phash_batch,
    single_threaded_opencv,
)
from vdc_torch.progress import progress_bar
from vdc_torch.search.index import ExactIndex, HammingIndex, InvertedFileIP

log = logging.getLogger(__name__)



class MatchKind(str, enum.Enum):
    """How strongly a match says "already trained on", strongest first (the tables hold the plain strings)."""

    EXACT = "exact"
    NEAR_DUPLICATE = "near_duplicate"
    SIMILAR = "similar"


#: Rank of each kind (0 = strongest): the best match of a sample is the one of lowest rank, then highest score.
KIND_RANK: dict[str, int] = {kind.value: rank for rank, kind in enumerate(MatchKind)}
#: Bumped whenever the cascade changes its results for the same fingerprints and config (invalidates caches).
#: 13: thumbnail similarities by OpenCV's gray conversion (the same matches, scores within float rounding).
#: 14: flipped crops (the crop index queried with the mirror pHash), rotations on the same canvas (rotation stage),
#: crops defined by the share of the reference shown (crop_coverage_ratio 0.9) whatever stage found them.
MATCHING_VERSION = 14
MATCH_COLUMNS = ["new_row", "ref_row", "kind", "method", "score", "evidence"]


@dataclass(frozen=True)
class MatchConfig:
    """Thresholds of the cascade (every one named and overridable).

    ``near_duplicate_similarity`` / ``similar_similarity`` apply to the thumbnail similarity (normalised
    cross-correlation of 32×32 gray thumbnails, 1.0 = identical up to brightness and contrast).

    **Crops and mirrors.** A copy is a *crop* when the part of the reference it shows covers less than
    ``crop_coverage_ratio`` (0.9) of the reference's area: the new image's outline, mapped into the reference by
    the verified transform (local features or dense alignment), intersected with the reference. Keeping 95 % of
    each side (90 % of the area) is still the picture; a RandomResizedCrop-style 10 % crop of each side (81 % of
    the area) is a crop, as is a rotation on the same canvas that cuts off more than a tenth of the picture's
    corners. A *mirror* is a copy that matches only after a horizontal flip, alone or with a crop.
    ``crop_is_duplicate=False`` / ``mirror_is_duplicate=False`` report such copies as ``similar`` whatever
    stage found them: pairs matched by hashes or thumbnails alone are measured by local features (or
    alignment) first, and only demoted when that measurement says crop.

    >>> MatchConfig(crop_is_duplicate=False).crop_coverage_ratio
    0.9
    """

    hash_radius: int = 12  # pHash Hamming radius (of 64 bits) for candidates
    crop_radius: int = 20  # ceiling for the crop hashes; chance_limited_radius lowers it to what the index size
    # allows (~18 for 50 images, 12 for 50k, 10 at 1M): off-centre crops keeping ~58 % of the area lie 13-19 bits
    # from the nearest of the 27 indexed crops (seeds 1-13: crop_offcenter recall 0.96 at 12, 0.99 at 16 and 20)
    near_duplicate_similarity: float = 0.90
    min_detail_similarity: float = 0.30  # NCC of the high-pass thumbnails (fine structure) for a near-duplicate
    similar_similarity: float = 0.75
    max_color_difference: float = 10.0  # mean |Δa|+|Δb| (Lab, 0–255 scale) between two colourful thumbnails
    max_aligned_color_difference: float = 14.0  # feature-verified pairs: colours after one shared tone curve
    max_alignment_color_difference: float = 7.0  # the same for pairs verified by dense alignment only
    exif_min_similarity: float = 0.6  # EXIF identity must be confirmed by pixels at least this similar
    mirror_is_duplicate: bool = True  # a horizontally flipped copy counts (models trained with flip augmentation)
    crop_is_duplicate: bool = True  # a cropped copy counts (models trained with crop augmentation)
    use_features: bool = True  # verify crops/rotations with local features
    extractor: str = "sift"
    max_features: int = 400
    min_inliers: int = 12
    min_coverage: float = 0.15  # share of the image the verified matches must span (features.verify)
    crop_coverage_ratio: float = 0.9  # a copy showing less than this share of the reference's area is a crop
    max_feature_candidates: int = 5  # per new sample, best hash candidates sent to feature verification
    feature_min_thumb_similarity: float = 0.5  # hash candidates need this gray NCC before feature verification
    crop_min_thumb_similarity: float = 0.3  # crop-index candidates: gray NCC with the crop that matched, before
    tiny_crop_min_thumb_similarity: float = 0.6  # ... when the reference is below align.MIN_SIDE (CIFAR size)
    tiny_mirror_crop_min_thumb_similarity: float = 0.75  # ... and the mirror image matched (CIFAR-10: the true
    # flipped crops reach 0.82-0.97; 0.75 sends 9k of 81k hash hits to SIFT instead of 32k at 0.6)
    knn_candidates: int = 3  # unmatched samples: nearest references by 8x8 thumbnail correlation, to features
    knn_min_similarity: float = 0.88  # ... when their 8x8 correlation reaches this (0 disables the stage)
    use_alignment: bool = True  # candidates that features cannot verify: dense alignment (smooth pictures)
    overlay_boxes: bool = True  # unmatched samples: compare the 70 % corner crops box to box (captions, logos)
    aligned_similarity: float = 0.92  # gray NCC of the aligned pair (align.py) for a near-duplicate
    encoder_similarity: float = 0.92  # cosine of model embeddings to count (CIFAR-10 gallery: 0.90-0.92 mixes in look-alikes)
    encoder_min_thumb_similarity: float = 0.0  # pixel sanity check of encoder candidates (gray thumbnail NCC)
    max_rotation: float = 30.0  # unmatched samples: turned back by up to this many degrees (0 disables the stage)
    rotation_min_thumb_similarity: float = 0.6  # ... gray NCC of the turned-back centre crop with the reference's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- verification primitives --------------------------------------------------------------------------------


def normalized_thumbs(thumbs: np.ndarray, high_pass: bool = False) -> np.ndarray:
    """(n, 32, 32, 3) uint8 -> (n, 1024) float32 zero-mean, unit-norm gray vectors (for NCC by dot product).

    ``high_pass=True`` keeps only fine structure (the thumbnail minus its Gaussian blur, sigma 1.5 px): two
    different pictures with the same overall light distribution correlate in gray but not in fine structure.
    """
    n, h, w = thumbs.shape[:3]
    if n == 0:
        return np.zeros((0, h * w), np.float32)
    # OpenCV's float conversion weighs R, G, B by 0.299, 0.587, 0.114 as well, at half numpy's cost
    rgb = np.ascontiguousarray(thumbs).reshape(n * h, w, 3).astype(np.float32)
    return _normalized_rows(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).reshape(n, h, w), high_pass)


def _normalized_rows(gray: np.ndarray, high_pass: bool = False) -> np.ndarray:
    """(n, h, w) float32 gray images -> (n, h*w) zero-mean, unit-norm rows (see :func:`normalized_thumbs`).

    ``gray`` is a scratch array the caller hands over: it is normalised in place (no copy of the block).
    """
    if high_pass:
        gray = gray - _gaussian_blur_each(gray, sigma=1.5, radius=5)
    flat = np.asarray(gray, dtype=np.float32).reshape(len(gray), gray.shape[1] * gray.shape[2])
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.sqrt(np.einsum("ij,ij->i", flat, flat)), 1e-3)[:, None]
    return flat


def _gaussian_blur_each(images: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Gaussian blur of each (h, w) float32 image of a stack, mirrored at its own edges (scipy's ``reflect``).

    One OpenCV pass per axis over all images at once: rows side by side for the horizontal pass, columns for the
    vertical one, so no image's blur reaches into its neighbour. ~3x faster than ``scipy.ndimage.gaussian_filter``
    over the stack (24 against 82 ms for 4,096 thumbnails), the same values to float rounding.
    """
    n, h, w = images.shape
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F)
    one = np.ones((1, 1), np.float32)
    rows = cv2.sepFilter2D(np.ascontiguousarray(images).reshape(n * h, w), cv2.CV_32F, kernel, one,
                           borderType=cv2.BORDER_REFLECT)
    columns = np.ascontiguousarray(rows.reshape(n, h, w).transpose(1, 0, 2)).reshape(h, n * w)
    columns = cv2.sepFilter2D(columns, cv2.CV_32F, one, kernel, borderType=cv2.BORDER_REFLECT)
    return columns.reshape(h, n, w).transpose(1, 0, 2)


def chroma_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) uint8 RGB -> (n, 32, 32, 2) float32 Lab chroma (a, b) centred on 0."""
    if len(thumbs) == 0:
        return np.zeros((0, thumbs.shape[1], thumbs.shape[2], 2), np.float32)
    n, h, w, _ = thumbs.shape
    lab = cv2.cvtColor(thumbs.reshape(n * h, w, 3), cv2.COLOR_RGB2LAB).reshape(n, h, w, 3)
    return lab[..., 1:].astype(np.float32) - 128.0


#: Candidate pairs a ThumbVerifier compares at once: 27k pHash candidates at 1M x 100k took +1.0 GB in one go.
THUMB_BLOCK = 4096


def _threaded_map(fn: Callable[[Any], Any], parts: list[Any], workers: int) -> list[Any]:
    """``[fn(part) for part in parts]`` on ``workers`` threads taking parts as they free up, results in order.

    Threads, not processes: the work is numpy and OpenCV, which release the GIL, and it shares in-memory state.
    OpenCV itself runs single-threaded meanwhile, so the threads do not oversubscribe the cores.
    """
    if workers <= 1 or len(parts) < 2:
        return [fn(part) for part in parts]
    with single_threaded_opencv(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, parts))


def _block_size() -> int:
    """Pairs per thread of the thumbnail checks: :data:`THUMB_BLOCK` / cores, so the temporaries in flight stay
    those of one block."""
    return max(1, THUMB_BLOCK // default_workers())


def _map_blocks(fn: Callable[[slice], Any], n: int) -> list[Any]:
    """``fn`` over consecutive slices of ``range(n)`` of :func:`_block_size`, results in order, one thread per core
    (2 threads: ~1.7x faster on 2 cores)."""
    size = _block_size()
    return _threaded_map(fn, [slice(start, min(n, start + size)) for start in range(0, n, size)], default_workers())


class ThumbVerifier:
    """Thumbnail checks for candidate pairs, vectorised over the pairs (only candidate rows are touched)."""

    def __init__(self, new_thumbs: Any, ref_thumbs: Any, config: MatchConfig) -> None:
        self.config = config
        self.new_thumbs = new_thumbs  # arrays, or stored columns read on demand
        self.ref_thumbs = ref_thumbs

    @staticmethod
    def _in_blocks(method: Any, q: np.ndarray, r: np.ndarray, mirror: bool) -> np.ndarray:
        return np.concatenate(_map_blocks(lambda part: method(q[part], r[part], mirror), len(q)))

    @staticmethod
    def _blocked(q: np.ndarray) -> bool:
        """True when the pairs are split into blocks (bounded float32 temporaries, ~40 KB a pair; same values)."""
        return len(q) > _block_size()

    def _pair_thumbs(self, q: np.ndarray, r: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
        new = self.new_thumbs[q]
        return (new[:, :, ::-1] if mirror else new), self.ref_thumbs[r]

    def gray_similarity(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> np.ndarray:
        """NCC of gray thumbnails for pairs ``(q[i], r[i])`` (no colour check)."""
        if self._blocked(q):
            return self._in_blocks(self.gray_similarity, q, r, mirror)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        a, b = self._pair_thumbs(q, r, mirror)
        return np.einsum("ij,ij->i", normalized_thumbs(a), normalized_thumbs(b)).astype(np.float32)

    def similarity(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> np.ndarray:
        """NCC of gray thumbnails for pairs ``(q[i], r[i])``, set to -1 where colours disagree."""
        if self._blocked(q):
            return self._in_blocks(self.similarity, q, r, mirror)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        a, b = self._pair_thumbs(q, r, mirror)
        ncc = np.einsum("ij,ij->i", normalized_thumbs(a), normalized_thumbs(b))
        new_chroma, ref_chroma = chroma_thumbs(a), chroma_thumbs(b)
        colourful = (np.abs(new_chroma).mean(axis=(1, 2, 3)) > 4.0) & (np.abs(ref_chroma).mean(axis=(1, 2, 3)) > 4.0)
        difference = np.abs(new_chroma - ref_chroma).sum(axis=3).mean(axis=(1, 2))
        ncc = np.where(colourful & (difference > self.config.max_color_difference), -1.0, ncc)
        return ncc.astype(np.float32)

    def similarities(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(similarity, detail_similarity)`` of pairs ``(q[i], r[i])``, each pair's thumbnails read once.

        At 1M stored references most of the pHash stage's time went into reading the same random thumbnail rows
        from the manifest twice, once per similarity.
        """
        def block(part: slice) -> tuple[np.ndarray, np.ndarray]:
            new_rows, new_inverse = np.unique(q[part], return_inverse=True)
            ref_rows, ref_inverse = np.unique(r[part], return_inverse=True)
            # the same checks, on this block's thumbnails only (read once)
            verifier = ThumbVerifier(np.asarray(self.new_thumbs[new_rows]), np.asarray(self.ref_thumbs[ref_rows]),
                                     self.config)
            return (verifier.similarity(new_inverse, ref_inverse, mirror),
                    verifier.detail_similarity(new_inverse, ref_inverse, mirror))

        parts = _map_blocks(block, len(q))
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate([sim for sim, _ in parts]), np.concatenate([fine for _, fine in parts])

    def detail_similarity(self, q: np.ndarray, r: np.ndarray, mirror: bool = False) -> np.ndarray:
        """NCC of the high-pass thumbnails (fine structure) for pairs ``(q[i], r[i])``."""
        if self._blocked(q):
            return self._in_blocks(self.detail_similarity, q, r, mirror)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        a, b = self._pair_thumbs(q, r, mirror)
        return np.einsum("ij,ij->i", normalized_thumbs(a, True), normalized_thumbs(b, True)).astype(np.float32)


class FeatureCache:
    """Local features of table rows, extracted lazily from the stored detail images, once per row.

    Shared by the verification threads and by every stage of a gate check (:class:`FeatureCaches`), so an image
    that is a candidate in several stages is decoded and described once. Entries are plain dict items (atomic
    under the GIL); two threads may rarely extract the same row at once, with the same result. Beyond
    ``max_rows`` rows the cache starts over, which bounds its memory (~15 KB a CIFAR-size row, up to ~250 KB
    for a 256 px detail with 400 SIFT descriptors).
    """

    def __init__(self, table: FingerprintTable, extractor: str, max_features: int, max_rows: int = 20_000) -> None:
        self.table = table
        self.extractor = extractor
        self.max_features = max_features
        self.max_rows = max_rows
        self._plain: dict[int, local_features.LocalFeatures] = {}
        self._mirror: dict[int, local_features.LocalFeatures] = {}
        self._images: dict[int, np.ndarray] = {}

    def image(self, row: int) -> np.ndarray:
        """The row's gray detail image (decoded once)."""
        image = self._images.get(row)
        if image is None:
            if len(self._images) >= self.max_rows:
                self._images.clear()
            image = self._images[row] = decode_detail(self.table.details[row])
        return image

    def get(self, row: int, mirror: bool = False) -> local_features.LocalFeatures:
        store = self._mirror if mirror else self._plain
        found = store.get(row)
        if found is None:
            if len(store) >= self.max_rows:
                store.clear()
            extract = local_features.extract_flipped if mirror else local_features.extract
            found = store[row] = extract(self.image(row), self.extractor, self.max_features)
        return found


class FeatureCaches:
    """One :class:`FeatureCache` per fingerprint table, kept across the stages and calls of one gate check.

    :meth:`DatasetGate.check` matches the new table against the reference and then against itself; the new
    images verified in the first call are described already in the second.
    """

    def __init__(self) -> None:
        self._caches: dict[tuple[int, str, int], tuple[FingerprintTable, FeatureCache]] = {}

    def __call__(self, table: FingerprintTable, config: MatchConfig) -> FeatureCache:
        key = (id(table), config.extractor, config.max_features)
        entry = self._caches.get(key)
        if entry is None or entry[0] is not table:
            entry = self._caches[key] = (table, FeatureCache(table, config.extractor, config.max_features))
        return entry[1]


# -- the cascade ---------------------------------------------------------------------------------------------


def _rows(q: Any, r: Any, kind: str, method: str, score: Any, evidence: Any) -> pd.DataFrame:
    q = np.atleast_1d(np.asarray(q, dtype=np.int64))
    return pd.DataFrame({
        "new_row": q,
        "ref_row": np.atleast_1d(np.asarray(r, dtype=np.int64)),
        "kind": kind,
        "method": method,
        "score": np.broadcast_to(np.asarray(score, dtype=np.float64), q.shape),
        "evidence": np.broadcast_to(np.asarray(evidence, dtype=object), q.shape) if np.ndim(evidence) == 0
        else np.asarray(evidence, dtype=object),
    })


def match_tables(
    new: FingerprintTable,
    ref: FingerprintTable,
    config: MatchConfig = MatchConfig(),
    *,
    same_table: bool = False,
    new_embeddings: np.ndarray | None = None,
    ref_embeddings: np.ndarray | None = None,
    feature_caches: FeatureCaches | None = None,
    progress: str | None = None,
) -> pd.DataFrame:
    """Run the cascade; one row per matched new row (its best match), columns :data:`MATCH_COLUMNS`.

    With ``same_table=True`` (``new is ref``) a row is only matched to an *earlier* row, which finds the
    duplicates inside one dataset: every later copy points at its first occurrence. ``new_embeddings`` and
    ``ref_embeddings`` (unit rows from a model encoder) add a last stage: nearest neighbours in the model's
    feature space with cosine ``>= config.encoder_similarity``. ``feature_caches`` keeps the local features of
    verified images for a later call on the same tables (a fresh one per call by default). ``progress`` (a label,
    e.g. ``"matching"``) shows a bar with ETA for each verification stage; each stage's time is logged at INFO.
    """
    found: list[pd.DataFrame] = []
    caches = FeatureCaches() if feature_caches is None else feature_caches
    job = _FeatureJob(new, ref, config, caches(new, config), caches(ref, config), progress)
    settled = np.zeros(len(new), dtype=bool)  # matched as exact or near-duplicate
    clock = [time.perf_counter()]
    what = "internal duplicates" if same_table else "matching"

    def allowed(q: np.ndarray, r: np.ndarray) -> np.ndarray:
        keep = ~settled[q]
        if same_table:
            keep &= r < q
        return keep

    def add(frame: pd.DataFrame, stage: str) -> None:
        if len(frame):
            found.append(frame)
            strong = frame.loc[frame["kind"] != "similar", "new_row"].to_numpy()
            settled[strong] = True
        now = time.perf_counter()
        log.info("%s, stage %s: %d match(es) in %.2f s; %d of %d samples settled", what, stage, len(frame),
                 now - clock[0], int(settled.sum()), len(new))
        clock[0] = now

    # 1-2. exact bytes and pixels
    for method, new_keys, ref_keys in (
        ("bytes", new.byte_digest, ref.byte_digest),
        ("pixels", new.pixel_digest, ref.pixel_digest),
    ):
        pairs = np.asarray(ExactIndex(ref_keys).pairs(new_keys), dtype=np.int64).reshape(-1, 2)
        q, r = pairs[:, 0], pairs[:, 1]
        keep = allowed(q, r)
        add(_first_per_query(_rows(q[keep], r[keep], "exact", method, 1.0, f"identical {method}")), method)

    verifier = ThumbVerifier(new.thumbs, ref.thumbs, config)

    # 3. EXIF identity confirmed by pixels
    pairs = np.asarray(ExactIndex(ref.exif_identity).pairs(new.exif_identity), dtype=np.int64).reshape(-1, 2)
    q, r = pairs[:, 0], pairs[:, 1]
    keep = allowed(q, r)
    q, r = q[keep], r[keep]
    sim = verifier.similarity(q, r)
    ok = sim >= config.exif_min_similarity
    add(_best_per_query(_rows(q[ok], r[ok], "near_duplicate", "exif", sim[ok],
                              [f"same EXIF identity, thumbnail similarity {s:.3f}" for s in sim[ok]])), "exif")

    # 4-5. perceptual hash candidates, verified on thumbnails
    global_index = HammingIndex(ref.phash)
    feature_candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool]] = []
    for mirror in (False, True):
        queries = new.phash_mirror if mirror else new.phash
        q, r, dist = global_index.search(queries, config.hash_radius)
        keep = allowed(q, r)
        if same_table and mirror:
            keep &= q != r
        q, r, dist = q[keep], r[keep], dist[keep]
        sim, fine = verifier.similarities(q, r, mirror=mirror)
        near = (sim >= config.near_duplicate_similarity) & (fine >= config.min_detail_similarity)
        similar = ~near & (sim >= config.similar_similarity)
        method = "mirror" if mirror else "phash"
        near_kind = "near_duplicate" if (config.mirror_is_duplicate or not mirror) else "similar"
        evidence = [
            f"pHash distance {d}, thumbnail similarity {s:.3f}, fine-structure similarity {f:.3f}"
            for d, s, f in zip(dist, sim, fine)
        ]
        ev = np.asarray(evidence, dtype=object)
        add(_best_per_query(_rows(q[near], r[near], near_kind, method, sim[near], ev[near])), method)
        found.append(_rows(q[similar], r[similar], "similar", method, sim[similar], ev[similar]))
        feature_candidates.append((q[~near], r[~near], dist[~near], mirror, False))

    # 6. crops (and rotations that failed the thumbnail check), verified by local features
    if config.use_features and len(ref) and config.knn_candidates > 0 and config.knn_min_similarity > 0:
        feature_candidates.append(_nearest_thumbnails(new, ref, ~settled, same_table, config))
    if config.use_features and len(ref):
        k = len(CROP_BOXES)
        # only rows not settled yet: _verify_with_features drops settled rows first thing, and nothing settles
        # between here and there, so the candidates of settled rows were searched for nothing (27M codes at 1M)
        open_rows = np.flatnonzero(~settled)
        crop_index = HammingIndex(ref.crop_hashes.reshape(-1))  # code i is crop i % k of reference row i // k
        radius = chance_limited_radius(config.crop_radius, len(ref) * k)
        q, code, dist = crop_index.search(np.asarray(new.phash)[open_rows], radius)
        q, r = open_rows[q], code // k
        feature_candidates.insert(0, (q, r, dist, False, True, np.full(len(q), -1), code % k))
        # the mirror pHash too: a flipped copy that is also cropped (RandomResizedCrop + RandomHorizontalFlip),
        # verified after the rest, for the samples still unmatched then (a plain copy is preferred to a mirror)
        q, code, dist = crop_index.search(np.asarray(new.phash_mirror)[open_rows], radius)
        mirrored = [(open_rows[q], code // k, dist, True, True, np.full(len(q), -1), code % k)]
        del crop_index  # ~1 GB of MIH tables at 1M reference rows: not kept through feature verification
        add(_verify_with_features(job, feature_candidates, settled, same_table, verifier, "local features"),
            "local features")
        add(_verify_with_features(job, mirrored, settled, same_table, verifier, "mirrored crops"), "mirrored crops")
    if config.use_alignment and len(ref) and len(new) and config.overlay_boxes:
        add(_verify_with_features(job, _same_crop_candidates(new, ref, ~settled, config), settled, same_table,
                                  verifier, "overlays"), "overlays")
    if config.use_alignment and len(ref) and len(new):
        add(_verify_with_features(job, _whole_picture_candidates(new, ref, ~settled, global_index, config),
                                  settled, same_table, verifier, "alignment"), "alignment")
    if config.use_features and config.max_rotation > 0 and len(ref) and len(new):
        add(_verify_with_features(job, _rotation_candidates(new, ref, ~settled, same_table, config), settled,
                                  same_table, verifier, "rotations"), "rotations")

    # 7. model embeddings: nearest neighbours in the feature space of the model being trained
    if new_embeddings is not None and ref_embeddings is not None and len(ref) and len(new):
        from vdc_torch.fingerprints.encoder import nearest_neighbours

        sims, ids = nearest_neighbours(new_embeddings, ref_embeddings, k=8 if same_table else 1)
        q = np.repeat(np.arange(len(new)), sims.shape[1])
        r, cos = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
        keep = (r >= 0) & allowed(q, np.maximum(r, 0)) & (cos >= config.encoder_similarity)
        if same_table:
            keep &= r != q
        q, r, cos = q[keep], r[keep], cos[keep]
        pixel = verifier.similarity(q, r)
        ok = pixel >= config.encoder_min_thumb_similarity
        add(_best_per_query(_rows(q[ok], r[ok], "near_duplicate", "encoder", cos[ok],
                                  [f"model embedding cosine {c:.3f}, thumbnail similarity {p:.3f}"
                                   for c, p in zip(cos[ok], pixel[ok])])), "encoder")

    if not found:
        return pd.DataFrame(columns=MATCH_COLUMNS)
    matches = _crops_are_similar(_best_per_query(pd.concat(found, ignore_index=True)), job)
    return _other_exposures_are_similar(matches, new, ref)


def _other_exposures_are_similar(matches: pd.DataFrame, new: FingerprintTable, ref: FingerprintTable) -> pd.DataFrame:
    """Demote near-duplicates to ``similar`` when EXIF says: same camera, another capture time.

    Bracketed and burst shots (HDR / non-HDR of one scene) are pixel-wise almost identical but are different
    exposures; a re-export keeps its capture time or loses its EXIF altogether, so it is never demoted.
    """
    if not len(matches):
        return matches
    demote = []
    for i, (q, r, kind) in enumerate(zip(matches["new_row"], matches["ref_row"], matches["kind"])):
        a, b = new.exif_identity[int(q)], ref.exif_identity[int(r)]
        if kind != "near_duplicate" or not a or not b:
            continue
        a_make, a_model, a_time = a.split("|")[:3]
        b_make, b_model, b_time = b.split("|")[:3]
        if (a_make, a_model) == (b_make, b_model) and a_time != b_time and a_time.strip(".") and b_time.strip("."):
            demote.append(i)
    if demote:
        matches = matches.copy()
        matches.loc[demote, "kind"] = "similar"
        matches.loc[demote, "evidence"] = matches.loc[demote, "evidence"].astype(str) + (
            "; same camera but another capture time in EXIF (a different exposure)"
        )
    return matches


#: Rows per chunk when coarse vectors are computed for a whole table (bounds the float32 temporaries).
COARSE_CHUNK = 16384


def coarse_vectors(thumbs: Any) -> np.ndarray:
    """(n, 32, 32, 3) uint8 -> (n, 64) zero-mean unit 8x8 gray vectors: layout without fine detail.

    Computed ``COARSE_CHUNK`` rows at a time (each row's vector does not depend on the others, bit for bit), so a
    million thumbnails need 256 MB for the result instead of 12 GB of float32 temporaries; ``thumbs`` may be a
    stored column (read chunk by chunk).
    """
    if len(thumbs) > COARSE_CHUNK:
        out = np.empty((len(thumbs), 64), np.float32)
        for start in range(0, len(thumbs), COARSE_CHUNK):
            out[start : start + COARSE_CHUNK] = coarse_vectors(np.asarray(thumbs[start : start + COARSE_CHUNK]))
        return out
    thumbs = np.asarray(thumbs)
    if len(thumbs) == 0:
        return np.zeros((0, 64), np.float32)
    n, h, w, _ = thumbs.shape
    if h % 8 == 0 and w % 8 == 0:  # 8x8 block means of the stacked thumbnails at once (blocks never straddle two)
        pooled = cv2.resize(thumbs.reshape(n * h, w, 3).astype(np.float32), (8, n * 8), interpolation=cv2.INTER_AREA)
        coarse = pooled.reshape(n, 64, 3) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        gray = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        coarse = gray.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)
    coarse -= coarse.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(coarse / np.maximum(np.linalg.norm(coarse, axis=1, keepdims=True), 1e-3))


#: Crops compared box to box: the four 70 % corner crops (one of them misses any caption bar, logo or
#: watermark that covers less than 30 % of the picture's width or height at a side or corner) and the 70 and
#: 80 % centre crops (they leave out the black corners of a copy rotated by a few degrees).
OVERLAY_BOXES: tuple[int, ...] = tuple(
    i for i, (keep, top, left) in enumerate(CROP_BOXES)
    if (keep == 0.7 and round(top, 6) in (0.0, 0.3) and round(left, 6) in (0.0, 0.3))
    or (keep in (0.7, 0.8) and round(top, 6) == round(left, 6) == round((1 - keep) / 2, 6))
)


def _same_crop_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, config: MatchConfig
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool, np.ndarray]]:
    """Unmatched samples whose corner crop hashes agree with the same crop of a reference (overlays).

    Only pictures large enough for dense alignment, which verifies these pairs: below ``align.MIN_SIDE`` (CIFAR
    size) it cannot, and the stage proposed 49k such pairs on CIFAR-10 (test vs train and test vs itself) for none.
    """
    rows = np.flatnonzero(open_rows & _large_enough_to_align(new))
    ref_rows = np.flatnonzero(_large_enough_to_align(ref))
    found = []
    radius = chance_limited_radius(config.crop_radius, len(ref) * len(OVERLAY_BOXES))  # chance over every box
    for box in OVERLAY_BOXES:
        if not len(rows) or not len(ref_rows):
            break
        ref_codes = np.asarray(ref.crop_hashes[:, box])
        ref_codes = ref_codes if len(ref_rows) == len(ref) else ref_codes[ref_rows]
        q, r, dist = HammingIndex(ref_codes).search(new.crop_hashes[rows, box], radius)
        found.append((rows[q], ref_rows[r], dist, False, True, np.full(len(q), box)))
    return found


def _large_enough_to_align(table: FingerprintTable) -> np.ndarray:
    """Rows whose detail image dense alignment (``align.align``) can work on: both sides at least its MIN_SIDE."""
    return np.minimum(np.asarray(table.width), np.asarray(table.height)) >= ALIGN_MIN_SIDE


def table_coarse_vectors(thumbs: Any, rows: np.ndarray | slice | None = None) -> np.ndarray:
    """:func:`coarse_vectors` of a thumbnail column (``rows`` of it), from the stored copy when a manifest has one.

    Manifests store the coarse vectors computed by the same function at save time, so the kNN stage reads 256 B a
    row instead of every 3 KB thumbnail; the values are identical.
    """
    stored = getattr(thumbs, "coarse", None)
    if stored is not None:
        return np.ascontiguousarray(stored[:] if rows is None else stored[rows], dtype=np.float32)
    return coarse_vectors(thumbs if rows is None else thumbs[rows])


#: Chance candidates per query (expected, for uniformly random codes) above which a radius is lowered.
MAX_CHANCE_CANDIDATES = 1.0


def chance_limited_radius(radius: int, n_codes: int, bits: int = 64) -> int:
    """The largest radius ``<= radius`` at which a random query meets at most :data:`MAX_CHANCE_CANDIDATES` of
    ``n_codes`` random codes by chance.

    The crop index holds 27 codes per reference image: at 1M images (27M codes) radius 12 would hand every
    unmatched query ~6 chance candidates to verify (~3x the matching time), radius 10 ~0.3; at CIFAR-10 size
    (1.35M codes) radius 12 gives ~0.3 and is kept. Real hashes cluster, so the true rates are higher, but
    they grow with the index the same way.
    """
    total = 0.0
    for r in range(radius + 1):
        total += math.comb(bits, r) / 2.0**bits
        if n_codes * total > MAX_CHANCE_CANDIDATES:
            return max(0, r - 1)
    return radius


#: ``box`` value of candidates from :func:`_whole_picture_candidates`: verified in both directions.
WHOLE_PICTURE = -2


def _whole_picture_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, ref_index: HammingIndex,
    config: MatchConfig,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool, np.ndarray]]:
    """Unmatched samples whose border trimming differs from a reference's: pHashes of the whole pictures.

    A picture with uniform bands of its own (a dark sky, plain sides) is trimmed; a copy with a frame, an overlay
    across the band or another exposure may not be (or the other way round). Comparing the whole-picture pHash
    of one side with the trimmed or whole pHash of the other finds these pairs; only pairs where at least one
    side was trimmed are new here.
    """
    # only pictures large enough for dense alignment, this stage's verifier: below align.MIN_SIDE (CIFAR size) only
    # SIFT is left, which met ~1,600 chance pairs here for 1 match of 442 on CIFAR-10 (3 s of a 37 s check)
    new_large, ref_large = _large_enough_to_align(new), _large_enough_to_align(ref)
    rows = np.flatnonzero(open_rows & new_large)
    new_trimmed = rows[new.phash_whole[rows] != new.phash[rows]]
    ref_trimmed = np.flatnonzero((ref.phash_whole != ref.phash) & ref_large)
    found = []
    if len(new_trimmed):  # trimmed new sample vs the trimmed hashes of every reference
        q, r, dist = ref_index.search(new.phash_whole[new_trimmed], config.hash_radius)
        keep = ref_large[r]
        found.append((new_trimmed[q[keep]], r[keep], dist[keep]))
    if len(ref_trimmed) and len(rows):  # any new sample vs the whole pictures of trimmed references
        index = HammingIndex(ref.phash_whole[ref_trimmed])
        for queries in (rows, new_trimmed):
            if len(queries):
                code = new.phash[queries] if queries is rows else new.phash_whole[queries]
                q, r, dist = index.search(code, config.hash_radius)
                found.append((queries[q], ref_trimmed[r], dist))
    return [(q, r, d, False, True, np.full(len(q), WHOLE_PICTURE)) for q, r, d in found]


#: ``box`` values of candidates from :func:`_rotation_candidates`: ``ROTATED - i`` for the ``i``-th of
#: :func:`_rotation_angles` (the angle that turned the sample back onto its candidate).
ROTATED = -3
#: The rotation stage turns unmatched samples back by every multiple of this many degrees up to ``max_rotation``
#: (either way): a pHash still agrees within about half a step.
ROTATION_STEP = 5.0
#: Working side of the turned-back centre crops (then area-resized to the thumbnail side, like the crop hashes).
_ROTATION_WORK_SIDE = 2 * THUMB_SIDE
#: The centred crops of :data:`CROP_BOXES` by their ``keep``, largest first: the turned-back crop of each angle is
#: hashed as the largest one that the rotated canvas still covers (about).
_CENTRE_BOXES: tuple[tuple[float, int], ...] = tuple(sorted(
    ((keep, i) for i, (keep, top, left) in enumerate(CROP_BOXES)
     if abs(top - (1 - keep) / 2) < 1e-6 and abs(left - (1 - keep) / 2) < 1e-6), reverse=True))


def _clean_keep(height: int, width: int, degrees: float) -> tuple[float, int]:
    """``(keep, box)``: the largest centred crop box whose window, on a copy rotated by ``degrees`` on its own
    canvas, stays inside that canvas (2 % tolerance), else the smallest."""
    a = math.radians(abs(degrees))
    c, s = math.cos(a), math.sin(a)
    half_w, half_h = width / 2.0, height / 2.0
    fits = min(half_w / (half_w * c + half_h * s), half_h / (half_w * s + half_h * c))
    for keep, box in _CENTRE_BOXES:
        if keep <= fits + 0.02:
            return keep, box
    return _CENTRE_BOXES[-1]


def _rotation_angles(config: MatchConfig) -> np.ndarray:
    """The angles (degrees) the rotation stage turns samples back by: ``±ROTATION_STEP, ... ±max_rotation``."""
    steps = np.arange(ROTATION_STEP, config.max_rotation + 1e-6, ROTATION_STEP)
    return np.concatenate([steps, -steps])


def _turn_back_matrix(height: int, width: int, degrees: float, window: tuple[slice, slice], out_w: int,
                      out_h: int) -> np.ndarray:
    """3×3: pixel of an ``out_w`` × ``out_h`` image of the crop ``window`` (reference frame) -> pixel of a copy of
    a ``height`` × ``width`` picture rotated by ``degrees`` about its centre on the same canvas."""
    y0, x0 = window[0].start, window[1].start
    ch, cw = window[0].stop - y0, window[1].stop - x0
    to_crop = np.array([[cw / out_w, 0, x0 + 0.5 * cw / out_w - 0.5], [0, ch / out_h, y0 + 0.5 * ch / out_h - 0.5],
                        [0, 0, 1]])
    return _homogeneous(cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, 1.0)) @ to_crop


def _verify_rotated(job: _FeatureJob, q: int, r: int, dist: int, degrees: float) -> tuple[Any, ...] | None:
    """A rotation-stage pair: local features (rotation invariant), else the sample's clean centre crop turned back
    by ``degrees`` and aligned inside the reference (smooth or small pictures, where SIFT finds too few points)."""
    row = _verify_pair(job, q, r, dist, False, use_alignment=False)
    config = job.config
    if row is not None or not config.use_alignment:
        return row
    new_image, ref_image = job.new_cache.image(q), job.ref_cache.image(r)
    h, w = new_image.shape
    window = crop_windows(h, w)[_clean_keep(h, w, degrees)[1]]
    ch, cw = window[0].stop - window[0].start, window[1].stop - window[1].start
    back = _turn_back_matrix(h, w, degrees, window, cw, ch)  # crop pixel -> new pixel
    crop = cv2.warpAffine(new_image, back[:2], (cw, ch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    aligned = align(crop, ref_image)
    if not _alignment_agrees(aligned, config):
        return None
    transform = (_homogeneous(aligned.transform) @ np.linalg.inv(back))[:2]  # new pixel -> reference pixel
    colour = _aligned_colour_difference(job.new.thumbs[q], job.ref.thumbs[r], transform, new_image.shape,
                                        ref_image.shape)
    if colour > config.max_alignment_color_difference:
        return None
    share = reference_share(transform, new_image.shape, ref_image.shape)
    cropped = share < config.crop_coverage_ratio
    evidence = (
        f"turned back by {degrees:+.0f} deg, its centre crop aligned at scale {aligned.scale:.2f} (crop-hash "
        f"distance {dist}): thumbnail similarity {aligned.similarity:.3f}, fine-structure similarity "
        f"{aligned.detail_similarity:.3f}, colour difference {colour:.1f}, shows {share:.0%} of the reference"
        f"{', crop' if cropped else ''}"
    )
    return (q, r, _kind(config, False, cropped), "alignment", aligned.similarity, evidence)


def _turned_back_crops(detail: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each angle: the centred crop box (:func:`_clean_keep`) of ``detail`` turned back by that angle about its
    centre, area-resized to the thumbnail side; ``((len(angles), 32, 32) float32, (len(angles),) box ids)``.

    A copy rotated by ``a`` on the same canvas, turned back by ``a``, shows the reference's centre unharmed: that
    crop's pHash lies near the reference's crop hash of the same box.
    """
    h, w = detail.shape
    factor = min(1.0, 2.0 * _ROTATION_WORK_SIDE / max(h, w))  # ~2x the working side, so the warp does not alias
    small = detail if factor == 1.0 else cv2.resize(detail, (max(1, round(w * factor)), max(1, round(h * factor))),
                                                    interpolation=cv2.INTER_AREA)
    sh, sw = small.shape
    side = _ROTATION_WORK_SIDE
    out = np.empty((len(angles), THUMB_SIDE, THUMB_SIDE), np.float32)
    boxes = np.empty(len(angles), np.int64)
    for i, degrees in enumerate(angles.tolist()):
        _, box = _clean_keep(sh, sw, degrees)
        back = _turn_back_matrix(sh, sw, degrees, crop_windows(sh, sw)[box], side, side)
        warped = cv2.warpAffine(small, back[:2], (side, side),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(warped.astype(np.float32), (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        boxes[i] = box
    return out, boxes


def _rotation_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, same_table: bool, config: MatchConfig
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool, np.ndarray]]:
    """Unmatched samples that may be rotated copies on the same canvas (black or smeared corners, size unchanged).

    Each is turned back by ``±ROTATION_STEP, ±2·ROTATION_STEP, ... ±max_rotation`` degrees; the centre crop of each
    (:func:`_turned_back_crops`) is pHashed and looked up among the references' hashes of the same crop box. Hits
    whose crops correlate (gray NCC >= ``rotation_min_thumb_similarity``) go to local features, which verify any
    rotation. Only pictures large enough for dense alignment (not CIFAR size: at 32 px a turned-back crop keeps too
    little to hash) and only samples every earlier stage left unmatched pay for it.
    """
    rows = np.flatnonzero(open_rows & _large_enough_to_align(new))
    ref_rows = np.flatnonzero(_large_enough_to_align(ref))
    angles = _rotation_angles(config)
    if not len(rows) or not len(ref_rows) or not len(angles):
        return []

    def turn(part: list[int]) -> tuple[np.ndarray, np.ndarray]:
        crops = [_turned_back_crops(decode_detail(new.details[row]), angles) for row in part]
        return np.concatenate([c for c, _ in crops]), np.concatenate([b for _, b in crops])

    chunks = [rows[i : i + 64].tolist() for i in range(0, len(rows), 64)]
    parts = _threaded_map(turn, chunks, default_workers())
    crops = np.concatenate([c for c, _ in parts])
    boxes = np.concatenate([b for _, b in parts])
    query_rows = np.repeat(rows, len(angles))
    codes = phash_batch(crops)
    radius = chance_limited_radius(config.crop_radius, len(ref_rows) * len(angles))
    found_q, found_r, found_d = [], [], []
    for _, box in _CENTRE_BOXES:
        which = np.flatnonzero(boxes == box)
        if not len(which):
            continue
        q, r, dist = HammingIndex(np.asarray(ref.crop_hashes[:, box])[ref_rows]).search(codes[which], radius)
        q, r = which[q], ref_rows[r]
        keep = query_rows[q] != r if same_table else np.ones(len(q), dtype=bool)
        found_q.append(q[keep]), found_r.append(r[keep]), found_d.append(dist[keep])
    q, r, dist = np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_d)
    if same_table:
        keep = r < query_rows[q]
        q, r, dist = q[keep], r[keep], dist[keep]
    if not len(q):
        return []
    # the turned-back crop against the same crop of the reference (a cheap check before local features)
    ref_ids, which = np.unique(r, return_inverse=True)
    details = [decode_detail(ref.details[row]) for row in ref_ids.tolist()]
    ref_crops = _resized_crops(details, which, boxes[q]).astype(np.float32)
    similarity = np.einsum("ij,ij->i", _normalized_rows(crops[q].copy()), _normalized_rows(ref_crops))
    ok = similarity >= config.rotation_min_thumb_similarity
    log.debug("rotation stage: %d samples x %d angles, %d hash hits, %d to verify", len(rows), len(angles), len(q),
              int(ok.sum()))
    q, r, dist = q[ok], r[ok], dist[ok]
    if not len(q):
        return []
    # one angle per pair, the closest hash (verified once)
    order = np.lexsort((dist, r, query_rows[q]))
    q, r, dist = q[order], r[order], dist[order]
    first = np.r_[True, (query_rows[q][1:] != query_rows[q][:-1]) | (r[1:] != r[:-1])]
    q, r, dist = q[first], r[first], dist[first]
    return [(query_rows[q], r, dist, False, True, ROTATED - q % len(angles))]


#: Methods whose evidence says nothing about the geometry of a pair: with ``crop_is_duplicate=False`` their
#: near-duplicates are measured (:func:`_measured_share`) before they count.
_UNMEASURED_METHODS = ("phash", "mirror", "exif", "encoder")


def _crops_are_similar(matches: pd.DataFrame, job: _FeatureJob) -> pd.DataFrame:
    """With ``crop_is_duplicate=False``: near-duplicates found by hashes or thumbnails alone that local features
    (or alignment) measure as a crop (:func:`reference_share` below ``crop_coverage_ratio``) become ``similar``."""
    config = job.config
    if config.crop_is_duplicate or not len(matches):
        return matches
    demote, notes = [], []
    for i, (q, r, kind, method) in enumerate(zip(matches["new_row"], matches["ref_row"], matches["kind"],
                                                 matches["method"])):
        if kind != "near_duplicate" or method not in _UNMEASURED_METHODS:
            continue
        share = _measured_share(job, int(q), int(r), mirror=method == "mirror")
        if share is not None and share < config.crop_coverage_ratio:
            demote.append(i)
            notes.append(f"; shows {share:.0%} of the reference: a crop (crop_is_duplicate=False)")
    if demote:
        matches = matches.copy()
        matches.loc[demote, "kind"] = "similar"
        matches.loc[demote, "evidence"] = matches.loc[demote, "evidence"].astype(str) + np.asarray(notes, object)
    return matches


def _measured_share(job: _FeatureJob, q: int, r: int, mirror: bool) -> float | None:
    """:func:`reference_share` of a pair by local features, else by dense alignment; None when neither verifies."""
    config = job.config
    query, target = job.new_cache.get(q, mirror=mirror), job.ref_cache.get(r)
    result = local_features.verify(query, target, min_inliers=config.min_inliers, min_coverage=config.min_coverage)
    if result.matched:
        return reference_share(result.transform, query.image_shape, target.image_shape)
    new_image, ref_image = job.new_cache.image(q), job.ref_cache.image(r)
    aligned = align(np.ascontiguousarray(new_image[:, ::-1]) if mirror else new_image, ref_image)
    if _alignment_agrees(aligned, config):
        return reference_share(aligned.transform, new_image.shape, ref_image.shape)
    return None


#: Inverted lists of the approximate index: about ``KNN_ROWS_PER_LIST`` reference rows each, at most 4096.
KNN_ROWS_PER_LIST = 1024
#: Lists probed per query (of ~1000 at 1M rows) and rows the lists are trained on (k-means, fixed seed).
KNN_NPROBE = 16
#: Reference rows up to which the kNN stage searches exhaustively (faiss ``IndexFlatIP``, exact); above, the
#: inverted file (see :func:`_coarse_index`). The bound is what a query reads there anyway (``KNN_NPROBE`` lists
#: of ``KNN_ROWS_PER_LIST`` rows): an exact search costs ``queries x rows``, so at the former bound of 200k it
#: grew to 42 s for 100k queries x 100k rows, more than the whole 1M x 100k match spends on the inverted file.
KNN_EXACT_MAX_ROWS = KNN_NPROBE * KNN_ROWS_PER_LIST
KNN_TRAIN_ROWS = 65_536
#: Reference rows added to the index per step (bounds the float32 copy read from a manifest).
KNN_ADD_CHUNK = COARSE_CHUNK


def _coarse_index(ref_thumbs: Any) -> Any:
    """A faiss inner-product index over the coarse vectors of every reference row.

    Up to :data:`KNN_EXACT_MAX_ROWS` rows: ``IndexFlatIP``, exact (the results are those of every earlier version).
    Above: ``IndexIVFFlat`` (inner product; ``n / KNN_ROWS_PER_LIST`` lists trained by k-means on a fixed sample,
    :data:`KNN_NPROBE` lists probed per query). A flat search is ``queries x rows x 64`` multiply-adds: 67 s for
    95k open queries x 1M rows on 2 cores, more than all the other stages together; the inverted file reads about
    2 % of the rows per query. It is approximate, but the stage only proposes candidates (each is verified by local
    features after), and the neighbours that matter are the close ones (correlation >= ``knn_min_similarity``,
    0.88), which fall into the query's own or a nearby list. Measured on the 1M synthetic reference of
    benchmarks/speed_matching.py (976 lists; 4,000 queries made from reference vectors at correlation 0.85-1):
    recall of the true top-3 neighbours at >= 0.88 is 0.83 / 0.92 / **0.97** / 0.99 / 1.00 at nprobe 4 / 8 / 16 /
    32 / 64, and 1.00 for exact copies at every nprobe; 16 is the smallest with recall >= 0.95 (~25x less work than
    flat). Recall of *far* neighbours (random thumbnails, correlation ~0.56) is only 0.3-0.5 at nprobe 16, and
    irrelevant: they are dropped by ``knn_min_similarity`` anyway.
    The inverted file is searched list by list (``index.InvertedFileIP``: the candidates of faiss ``IndexIVFFlat``
    with the same centroids, 2x faster at 1M); the coarse vectors are read in chunks, so a manifest's column is
    never held twice in memory.
    """
    import faiss

    n = len(ref_thumbs)
    if getattr(ref_thumbs, "coarse", None) is None:  # thumbnails in memory: their vectors once (1/12 of their size)
        computed = coarse_vectors(ref_thumbs)

        def read(rows: np.ndarray | slice) -> np.ndarray:
            return computed[rows]
    else:  # a manifest's stored column, read in chunks

        def read(rows: np.ndarray | slice) -> np.ndarray:
            return table_coarse_vectors(ref_thumbs, rows)

    if n <= KNN_EXACT_MAX_ROWS:
        index = faiss.IndexFlatIP(64)
        for start in range(0, n, KNN_ADD_CHUNK):
            index.add(np.ascontiguousarray(read(slice(start, start + KNN_ADD_CHUNK))))
        return index
    nlist = int(min(4096, max(1, n // KNN_ROWS_PER_LIST)))
    trainer = faiss.IndexIVFFlat(faiss.IndexFlatIP(64), 64, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, KNN_TRAIN_ROWS), replace=False))
    trainer.cp.seed = 1234
    trainer.train(np.ascontiguousarray(read(sample)))  # k-means: the lists' centroids
    index = InvertedFileIP(trainer.quantizer.reconstruct_n(0, nlist), KNN_NPROBE)
    index.build(n, 64, lambda start, stop: read(slice(start, stop)))
    return index


def _nearest_thumbnails(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, same_table: bool, config: MatchConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool]:
    """Candidates the hashes missed (rotations, overlays, off-centre crops): nearest 8x8 thumbnails (faiss).

    Exact below :data:`KNN_EXACT_MAX_ROWS` reference rows, an inverted-file index above (:func:`_coarse_index`).
    """
    rows = np.flatnonzero(open_rows)
    empty = np.zeros(0, np.int64)
    if not len(rows):
        return empty, empty, empty, False, True
    index = _coarse_index(ref.thumbs)
    k = min(len(ref), config.knn_candidates + (1 if same_table else 0))
    queries = table_coarse_vectors(new.thumbs, rows)
    if isinstance(index, InvertedFileIP):
        found, r, sim = index.search_above(queries, k, config.knn_min_similarity)
        q = rows[found]
    else:
        sims, ids = index.search(queries, k)
        q = np.repeat(rows, k)
        r, sim = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
    del index
    keep = (r >= 0) & (sim >= config.knn_min_similarity)
    if same_table:
        keep &= r < q
    # distance column: rank by similarity (0 = most similar) so the best candidates are verified first
    return q[keep], r[keep], np.round((1.0 - sim[keep]) * 100).astype(np.int64), False, True


#: Candidate pairs whose thumbnails are compared at once by the pre-filter of :func:`_verify_with_features`
#: (about 25 KB of float32 temporaries per pair).
PREFILTER_BLOCK = 8192


#: Queries per task of the verification threads (each takes ~1-10 ms of local features).
VERIFY_CHUNK = 32


@dataclass(frozen=True)
class _FeatureJob:
    """What the verification threads share: both tables, the config and their feature caches."""

    new: FingerprintTable
    ref: FingerprintTable
    config: MatchConfig
    new_cache: FeatureCache
    ref_cache: FeatureCache
    #: Label of the progress bars of the verification stages; ``None`` = no bars.
    progress: str | None = None


def _verify_with_features(
    job: _FeatureJob,
    candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool]],
    settled: np.ndarray,
    same_table: bool,
    verifier: ThumbVerifier,
    stage: str = "local features",
) -> pd.DataFrame:
    """Verify candidate pairs; each tuple is ``(q, r, dist, mirror, skip_prefilter)`` or the same plus ``box``.

    ``box`` (an index into :data:`CROP_BOXES`) marks candidates found by that crop of *both* images: they are
    verified on that crop alone (the rest of the new image may carry a caption, logo or watermark).
    """
    new, ref, config = job.new, job.ref, job.config
    frames = [
        pd.DataFrame({"q": c[0], "r": c[1], "dist": c[2], "mirror": c[3], "crop": c[4],
                      "box": c[5] if len(c) > 5 else -1, "hint": c[6] if len(c) > 6 else -1})
        for c in candidates
    ]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not len(table):
        return pd.DataFrame(columns=MATCH_COLUMNS)
    table = table[~settled[table["q"].to_numpy(dtype=np.int64)]]
    if same_table:
        table = table[table["r"] < table["q"]]
    # cheap pre-filter: hash candidates must look roughly alike (crop candidates are not aligned, so exempt)
    # (computed for the hash candidates only, in blocks: at 1M x 100k the crop search proposes ~50k random pairs,
    # whose float32 thumbnails took 1.2 GB at once for a similarity that was never used)
    parts = []
    if "hint" in table and (table["hint"] >= 0).any():  # crop-index candidates: the crop that matched is known
        hinted = table["hint"].to_numpy() >= 0
        similar, tiny = _crop_hint_similarity(new, ref, table["q"].to_numpy(np.int64)[hinted],
                                              table["r"].to_numpy(np.int64)[hinted], table["hint"].to_numpy()[hinted],
                                              table["mirror"].to_numpy(bool)[hinted])
        keep = np.ones(len(table), dtype=bool)
        # at CIFAR size SIFT is the only verifier left and costs as much as at 256 px (upscaled x3); there the
        # crops it can verify at all are close to the crop grid (0.6 keeps every CIFAR pair, 40 % fewer to verify)
        tiny_bound = np.where(table["mirror"].to_numpy(bool)[hinted], config.tiny_mirror_crop_min_thumb_similarity,
                              config.tiny_crop_min_thumb_similarity)
        keep[hinted] = similar >= np.where(tiny, tiny_bound, config.crop_min_thumb_similarity)
        table = table[keep]
    for mirror, group in table.groupby("mirror"):
        keep = group["crop"].to_numpy(dtype=bool).copy()
        check = np.flatnonzero(~keep)
        q_all, r_all = group["q"].to_numpy(np.int64), group["r"].to_numpy(np.int64)
        for start in range(0, len(check), PREFILTER_BLOCK):
            block = check[start : start + PREFILTER_BLOCK]
            gray = verifier.gray_similarity(q_all[block], r_all[block], bool(mirror))
            keep[block] = gray >= config.feature_min_thumb_similarity
        parts.append(group[keep])
    table = pd.concat(parts) if parts else table
    if not len(table):
        return pd.DataFrame(columns=MATCH_COLUMNS)
    table = table.sort_values(["q", "dist"]).drop_duplicates(["q", "r", "mirror", "box"])
    table = table.groupby("q", sort=True).head(config.max_feature_candidates)
    # one (query, [(ref, dist, mirror, box), ...]) group per query, in candidate order (plain lists: a pandas
    # groupby over ~50k queries cost seconds at 1M references)
    q_col = table["q"].to_numpy(np.int64)
    cols = zip(table["r"].to_numpy(np.int64).tolist(), table["dist"].to_numpy(np.int64).tolist(),
               table["mirror"].to_numpy(bool).tolist(), table["box"].to_numpy(np.int64).tolist())
    starts = np.flatnonzero(np.r_[True, q_col[1:] != q_col[:-1]]).tolist() + [len(q_col)]
    candidates = list(cols)
    groups = [(int(q_col[a]), candidates[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    # threads, not processes: OpenCV (SIFT, template matching, ECC) releases the GIL, which is most of the work, and
    # the feature caches stay shared by all threads and later stages (forked workers each started empty)
    workers = min(default_workers(), max(1, len(table) // 300))
    # small chunks handed out as threads free up: a fixed share per thread left one core idle for the last ~4 s of
    # CIFAR's 20 s (queries differ in candidates, and a thread can lose its core to other work for a while)
    size = max(1, min(VERIFY_CHUNK, len(groups) // (8 * workers)))
    chunks = [groups[i : i + size] for i in range(0, len(groups), size)]
    bar = progress_bar(len(groups), f"{job.progress}: {stage}", job.progress is not None, unit="sample")

    def verify(chunk: list[tuple[int, list[tuple[int, int, bool, int]]]]) -> list[tuple[Any, ...]]:
        verified = _verify_groups(job, chunk)
        bar.update(len(chunk))
        return verified

    try:
        with single_threaded_opencv():
            results = [row for part in _threaded_map(verify, chunks, workers) for row in part]
    finally:
        bar.close()
    rows = [_rows(*row) for row in sorted(results)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=MATCH_COLUMNS)


def _crop_hint_similarity(
    new: FingerprintTable, ref: FingerprintTable, q: np.ndarray, r: np.ndarray, boxes: np.ndarray,
    mirror: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gray NCC of each new thumbnail (mirrored where ``mirror[i]``) with the crop ``boxes[i]`` of its candidate
    reference (from its detail), and whether that reference is tiny (detail below ``align.MIN_SIDE``).

    The crop index says which crop of the reference matched the new image's pHash, so the pair is aligned up to
    the crop grid: a cheap check before local features, which cost milliseconds per pair.
    """
    def block(part: slice) -> tuple[np.ndarray, np.ndarray]:  # bounded temporaries: ~27k candidates at 1M x 100k
        rows, which = np.unique(r[part], return_inverse=True)
        details = [decode_detail(ref.details[row]) for row in rows.tolist()]  # once per block (64 KB at 256 px)
        tiny = np.array([min(d.shape) < ALIGN_MIN_SIDE for d in details], dtype=bool)[which]
        crops = _resized_crops(details, which, boxes[part])
        thumbs = np.asarray(new.thumbs[q[part]])
        if mirror is not None and mirror[part].any():
            thumbs = np.where(mirror[part][:, None, None, None], thumbs[:, :, ::-1], thumbs)
        new_gray = normalized_thumbs(thumbs)
        return np.einsum("ij,ij->i", new_gray, _normalized_rows(crops.astype(np.float32))), tiny

    parts = _map_blocks(block, len(q))
    if not parts:
        return np.zeros(0, np.float32), np.zeros(0, dtype=bool)
    return np.concatenate([sims for sims, _ in parts]), np.concatenate([tiny for _, tiny in parts])


def _resized_crops(details: list[np.ndarray], which: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(n, 32, 32)`` uint8: crop ``boxes[i]`` of ``details[which[i]]``, resized to the thumbnail side.

    Crops of one size that are enlarged (CIFAR-size details) are resized together: OpenCV resizes each channel on
    its own, so crops stacked as the channels of one image come out as if resized one by one (CIFAR: ~90k crops in
    about a thousand calls instead of 90k). Shrinking with ``INTER_AREA`` by a non-integer factor takes at most 4
    channels, so crops larger than the thumbnail go one by one.
    """
    side = THUMB_SIDE
    out = np.empty((len(which), side, side), np.uint8)
    if not len(which):
        return out
    shape_of: dict[tuple[int, ...], int] = {}
    shape_ids = np.array([shape_of.setdefault(d.shape, len(shape_of)) for d in details], dtype=np.int64)
    keys = shape_ids[which] * len(CROP_BOXES) + boxes
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1], True])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        members = order[a:b]
        first = details[which[members[0]]]
        window = crop_windows(*first.shape)[boxes[members[0]]]
        crops = [details[i][window] for i in which[members].tolist()]
        if max(crops[0].shape) > side:
            for i, crop in zip(members.tolist(), crops):
                out[i] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
            continue
        stack = np.stack(crops, axis=-1)  # (h, w, m)
        for c in range(0, len(crops), CV_MAX_CHANNELS):
            part = np.ascontiguousarray(stack[..., c : c + CV_MAX_CHANNELS])
            resized = cv2.resize(part, (side, side), interpolation=cv2.INTER_AREA)
            out[members[c : c + CV_MAX_CHANNELS]] = resized.reshape(side, side, -1).transpose(2, 0, 1)
    return out


def _verify_groups(job: _FeatureJob, groups: list[tuple[int, list[tuple[int, int, bool, int]]]]) -> list[tuple[Any, ...]]:
    """Verify each query's candidates in order and keep its first verified one (runs in worker threads)."""
    found = []
    for q, candidates in groups:
        for r, dist, mirror, box in candidates:
            if box <= ROTATED:  # from the rotation stage, which found the angle
                row = _verify_rotated(job, q, r, dist, _rotation_angles(job.config)[ROTATED - box])
            elif box >= 0:
                row = _verify_box(job, q, r, dist, box)
                if row is None:  # a copy rotated with black corners fails on the crop, but the reference
                    # aligns inside it as a whole
                    row = _verify_by_alignment(job, q, r, dist, both_ways=True)
            else:
                row = _verify_pair(job, q, r, dist, mirror, both_ways=box == WHOLE_PICTURE)
            if row is not None:
                found.append(row)
                break
    return found


def _verify_pair(job: _FeatureJob, q: int, r: int, dist: int, mirror: bool,
                 both_ways: bool = False, use_alignment: bool = True) -> tuple[Any, ...] | None:
    """One candidate pair: local features first, then dense alignment (smooth pictures); a match row or None.

    Alignment places the new image inside the reference (a crop); ``both_ways`` also tries the reference inside
    the new image (the new one has a frame or more of the picture than the reference kept after trimming).
    ``mirror`` verifies the mirrored new image (features and alignment alike): a flipped and cropped copy.
    """
    new, ref, config, new_cache, ref_cache = job.new, job.ref, job.config, job.new_cache, job.ref_cache
    query = new_cache.get(q, mirror=mirror)
    # each of the query's keypoints matches at most once, so with fewer than min_inliers of them verification
    # cannot pass and the reference need not be described (~6 % of CIFAR images have fewer than 12; the average
    # is ~35)
    can_match = len(query) >= config.min_inliers
    result = local_features.verify(
        query, ref_cache.get(r), min_inliers=config.min_inliers, min_coverage=config.min_coverage
    ) if can_match else None
    if result is not None and result.matched:
        colour = _aligned_colour_difference(new.thumbs[q], ref.thumbs[r], result.transform,
                                            query.image_shape, ref_cache.get(r).image_shape)
        if colour <= config.max_aligned_color_difference:  # else: same layout, other colours (a variant)
            share = reference_share(result.transform, query.image_shape, ref_cache.get(r).image_shape)
            cropped = share < config.crop_coverage_ratio
            kind = _kind(config, mirror, cropped)
            score = min(1.0, result.inliers / max(1, len(query)))
            evidence = (
                f"pHash distance {dist}, {result.inliers} inliers of {result.good_matches} matches, "
                f"coverage {result.coverage_a:.2f} new / {result.coverage_b:.2f} reference, "
                f"scale {result.scale:.2f}, rotation {result.rotation_deg:.1f} deg, "
                f"shows {share:.0%} of the reference{', crop' if cropped else ''}"
            )
            return (q, r, kind, f"{config.extractor}{'-mirror' if mirror else ''}", score, evidence)
    if not (use_alignment and config.use_alignment):
        return None
    return _verify_by_alignment(job, q, r, dist, both_ways, mirror=mirror)


def _kind(config: MatchConfig, mirror: bool, cropped: bool) -> str:
    """``near_duplicate``, or ``similar`` for a mirror or crop that the config does not count (see MatchConfig)."""
    if (mirror and not config.mirror_is_duplicate) or (cropped and not config.crop_is_duplicate):
        return "similar"
    return "near_duplicate"


def reference_share(transform: np.ndarray | None, new_shape: tuple[int, int], ref_shape: tuple[int, int]) -> float:
    """Share of the reference's area that the new image shows (1.0 for a whole copy, ~0.81 for a 10 % crop).

    ``transform`` (2×3 or 3×3) maps new-detail pixels to reference-detail pixels; the new image's outline mapped
    by it is intersected with the reference's outline. 1.0 when there is no transform (nothing to measure).

    >>> round(reference_share(np.array([[0.9, 0, 5], [0, 0.9, 5]]), (100, 100), (100, 100)), 2)
    0.81
    """
    if transform is None:
        return 1.0
    (nh, nw), (rh, rw) = new_shape, ref_shape
    corners = np.array([[-0.5, -0.5, 1], [nw - 0.5, -0.5, 1], [nw - 0.5, nh - 0.5, 1], [-0.5, nh - 0.5, 1]])
    mapped = corners @ _homogeneous(transform).T
    if np.any(mapped[:, 2] <= 1e-9) or rw * rh <= 0:
        return 1.0
    outline = cv2.convexHull((mapped[:, :2] / mapped[:, 2:]).astype(np.float32))
    box = np.array([[-0.5, -0.5], [rw - 0.5, -0.5], [rw - 0.5, rh - 0.5], [-0.5, rh - 0.5]], np.float32)
    area, _ = cv2.intersectConvexConvex(outline, box)
    return float(min(1.0, max(0.0, area) / (rw * rh)))


def _verify_by_alignment(job: _FeatureJob, q: int, r: int, dist: int,
                         both_ways: bool = False, mirror: bool = False) -> tuple[Any, ...] | None:
    """One candidate pair by dense alignment of the whole pictures (see :func:`_verify_pair`); a match row or None.

    ``mirror`` aligns the mirrored new image (its thumbnail mirrored as well for the colour check)."""
    new, ref, config = job.new, job.ref, job.config
    new_image, ref_image = job.new_cache.image(q), job.ref_cache.image(r)
    new_thumb = new.thumbs[q]
    if mirror:
        new_image, new_thumb = np.ascontiguousarray(new_image[:, ::-1]), np.ascontiguousarray(new_thumb[:, ::-1])
    aligned = align(new_image, ref_image)
    if both_ways and not _alignment_agrees(aligned, config):
        inverse = align(ref_image, new_image)
        if inverse is not None:  # reference -> new transform, turned into new -> reference
            m = np.linalg.inv(_homogeneous(inverse.transform))[:2]
            aligned = Alignment(m, inverse.similarity, inverse.detail_similarity, 1.0 / inverse.scale)
    if not _alignment_agrees(aligned, config):
        return None
    colour = _aligned_colour_difference(new_thumb, ref.thumbs[r], aligned.transform, new_image.shape,
                                        ref_image.shape)
    if colour > config.max_alignment_color_difference:
        return None
    share = reference_share(aligned.transform, new_image.shape, ref_image.shape)
    cropped = share < config.crop_coverage_ratio
    evidence = (
        f"pHash distance {dist}, {'mirror image ' if mirror else ''}aligned at scale {aligned.scale:.2f}: "
        f"thumbnail similarity {aligned.similarity:.3f}, fine-structure similarity {aligned.detail_similarity:.3f}, "
        f"colour difference {colour:.1f}, shows {share:.0%} of the reference{', crop' if cropped else ''}"
    )
    return (q, r, _kind(config, mirror, cropped), f"alignment{'-mirror' if mirror else ''}", aligned.similarity,
            evidence)


def _alignment_agrees(aligned: Alignment | None, config: MatchConfig) -> bool:
    """An alignment good enough for a near-duplicate: thumbnail and fine-structure similarity over their bounds."""
    return (
        aligned is not None
        and aligned.similarity >= config.aligned_similarity
        and aligned.detail_similarity >= config.min_detail_similarity
    )


def _homogeneous(transform: np.ndarray) -> np.ndarray:
    """A 2×3 affine (or 3×3) transform as a 3×3 matrix."""
    m = np.eye(3)
    m[: transform.shape[0]] = transform
    return m


def _verify_box(job: _FeatureJob, q: int, r: int, dist: int, box: int) -> tuple[Any, ...] | None:
    """A pair whose crop ``box`` agrees: align that crop of both images (an overlay elsewhere does not count)."""
    new, ref, config = job.new, job.ref, job.config
    new_image, ref_image = job.new_cache.image(q), job.ref_cache.image(r)
    new_window, ref_window = crop_windows(*new_image.shape)[box], crop_windows(*ref_image.shape)[box]
    aligned = align(new_image[new_window], ref_image[ref_window])
    if not _alignment_agrees(aligned, config) or aligned.scale < 0.9:
        return None
    # the crop's transform, in whole-image pixels: shift into the crop, map, shift back
    into_new = _homogeneous(np.array([[1.0, 0, -new_window[1].start], [0, 1.0, -new_window[0].start]]))
    out_of_ref = _homogeneous(np.array([[1.0, 0, ref_window[1].start], [0, 1.0, ref_window[0].start]]))
    transform = (out_of_ref @ _homogeneous(aligned.transform) @ into_new)[:2]
    colour = _aligned_colour_difference(new.thumbs[q], ref.thumbs[r], transform, new_image.shape, ref_image.shape,
                                        box=box)
    if colour > config.max_alignment_color_difference:
        return None
    keep = CROP_BOXES[box][0]
    share = reference_share(transform, new_image.shape, ref_image.shape)
    cropped = share < config.crop_coverage_ratio
    evidence = (
        f"the same {keep:.0%} crop of both agrees (pHash distance {dist}): thumbnail similarity "
        f"{aligned.similarity:.3f}, fine-structure similarity {aligned.detail_similarity:.3f}, colour difference "
        f"{colour:.1f}; the rest differs (overlay, caption or edit); shows {share:.0%} of the reference"
        f"{', crop' if cropped else ''}"
    )
    return (q, r, _kind(config, False, cropped), "crop-alignment", aligned.similarity, evidence)


def _aligned_colour_difference(
    new_thumb: np.ndarray,
    ref_thumb: np.ndarray,
    transform: np.ndarray | None,
    new_shape: tuple[int, int],
    ref_shape: tuple[int, int],
    box: int | None = None,
) -> float:
    """Mean Lab chroma difference of two thumbnails after aligning the reference onto the new one.

    ``transform`` maps detail-image pixels of the new image to the reference's (from :func:`features.verify`);
    it is rescaled to thumbnail pixels. 0 when either overlap is colourless (grayscale copies keep their match).
    """
    if transform is None:
        return 0.0
    side = new_thumb.shape[0]

    def to_thumb(shape: tuple[int, int]) -> np.ndarray:  # detail pixel -> thumbnail pixel (centres aligned)
        h, w = shape
        sx, sy = side / max(w, 1), side / max(h, 1)
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)

    new_to_ref = to_thumb(ref_shape) @ _homogeneous(transform) @ np.linalg.inv(to_thumb(new_shape))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if transform.shape[0] == 3:
        warped = cv2.warpPerspective(ref_thumb, new_to_ref, (side, side), flags=flags)
        valid = cv2.warpPerspective(np.full((side, side), 255, np.uint8), new_to_ref, (side, side), flags=flags)
    else:
        warped = cv2.warpAffine(ref_thumb, new_to_ref[:2], (side, side), flags=flags)
        valid = cv2.warpAffine(np.full((side, side), 255, np.uint8), new_to_ref[:2], (side, side), flags=flags)
    mask = cv2.erode(valid, np.ones((3, 3), np.uint8)) == 255
    if box is not None:  # only this crop (an index into CROP_BOXES) of the new thumbnail
        inside = np.zeros_like(mask)
        inside[crop_windows(side, side)[box]] = True
        mask &= inside
    if mask.sum() < 16:
        return 0.0
    return tone_mapped_colour_difference(new_thumb[mask], warped[mask])


def tone_mapped_colour_difference(new_rgb: np.ndarray, ref_rgb: np.ndarray, bins: int = 16) -> float:
    """Chroma difference (Lab |Δa|+|Δb|, 0–255 scale) of aligned pixels that no single tone curve explains.

    Brightness, contrast and gamma edits apply one curve to R, G and B alike. The curve is fitted both ways
    (reference -> new and new -> reference: a flat stretch of a curve can drain colour one way but never
    create it the other) and the larger mean difference of the 90 % best-agreeing pixels is returned, so an
    overlay on a small part does not count. A colour variant of a picture (grey sky made blue) keeps a large
    difference. ``(n, 3)`` uint8 RGB arrays of the same pixels; 0 when the new pixels are colourless.
    """
    new_lab = cv2.cvtColor(new_rgb.reshape(1, -1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB)[0, :, 1:]
    if np.abs(new_lab.astype(np.float32) - 128.0).mean() <= 4.0:
        return 0.0  # a grayscale copy: nothing to compare
    return max(_curve_residual(new_rgb, ref_rgb, bins), _curve_residual(ref_rgb, new_rgb, bins))


def _curve_residual(target_rgb: np.ndarray, source_rgb: np.ndarray, bins: int) -> float:
    """Trimmed mean chroma difference between ``target`` and ``curve(source)`` for the best shared curve."""
    target = target_rgb.astype(np.float32).reshape(-1, 3)
    source = source_rgb.astype(np.float32).reshape(-1, 3)
    which = np.minimum((source * bins / 256.0).astype(np.int64), bins - 1).reshape(-1)
    sums = np.bincount(which, weights=target.reshape(-1), minlength=bins)
    counts = np.bincount(which, minlength=bins)
    centres = (np.arange(bins) + 0.5) * 256.0 / bins
    seen = counts > 0
    curve = np.maximum.accumulate(np.interp(centres, centres[seen], sums[seen] / counts[seen]))
    mapped = np.interp(source, centres, curve).clip(0, 255).astype(np.uint8)
    lab_t = cv2.cvtColor(target_rgb.reshape(1, -1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB)[0, :, 1:]
    lab_m = cv2.cvtColor(mapped.reshape(1, -1, 3), cv2.COLOR_RGB2LAB)[0, :, 1:]
    lab_t, lab_m = lab_t.astype(np.float32) - 128.0, lab_m.astype(np.float32) - 128.0
    # only where either side has colour: colourless shadows and skies agree trivially and would dilute the mean
    colourful = np.maximum(np.abs(lab_t).sum(axis=1), np.abs(lab_m).sum(axis=1)) > 8.0
    if colourful.sum() < 8:
        return 0.0
    diff = np.sort(np.abs(lab_t - lab_m).sum(axis=1)[colourful])
    return float(diff[: max(1, int(len(diff) * 0.8))].mean())


def _first_per_query(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates("new_row", keep="first") if len(frame) else frame


def _best_per_query(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep each new row's strongest match: best kind first, then highest score, then lowest ref row."""
    if not len(frame):
        return pd.DataFrame(columns=MATCH_COLUMNS) if frame.empty else frame
    frame = frame.assign(_rank=frame["kind"].map(KIND_RANK))
    frame = frame.sort_values(["new_row", "_rank", "score", "ref_row"], ascending=[True, True, False, True])
    return frame.drop_duplicates("new_row").drop(columns="_rank").reset_index(drop=True)
