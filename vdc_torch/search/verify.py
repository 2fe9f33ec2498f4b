"""Verification of candidate pairs: local features (ratio test, RANSAC inliers, coverage) first, dense alignment for
smooth pictures, box-to-box alignment for overlays, turned-back crops for rotations. Features are cached per table
row (:class:`FeatureCache`) and the pairs verified on threads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd

from vdc_torch.collective import all_gather_arrays
from vdc_torch.fingerprints import features as local_features
from vdc_torch.fingerprints.align import Alignment, align
from vdc_torch.fingerprints.compute import (
    CROP_BOXES,
    FingerprintTable,
    crop_windows,
    decode_detail,
    default_workers,
    single_threaded_opencv,
)
from vdc_torch.progress import progress_bar
from vdc_torch.search.candidates import ROTATED, WHOLE_PICTURE, Candidates, _crop_hint_similarity
from vdc_torch.search.colour import _aligned_colour_difference
from vdc_torch.search.config import MATCH_COLUMNS, MatchConfig
from vdc_torch.search.geometry import (
    _clean_keep,
    _homogeneous,
    _rotation_angles,
    _turn_back_matrix,
    reference_share,
)
from vdc_torch.search.results import _rows
from vdc_torch.search.shards import ReferenceShard
from vdc_torch.search.thumbs import ThumbVerifier, _threaded_map

#: Rows a :class:`FeatureCache` holds before it starts over (its memory bound).
FEATURE_CACHE_ROWS = 20_000
#: Candidate pairs per verification thread: a stage with fewer runs on fewer threads (one below this many).
VERIFY_PAIRS_PER_THREAD = 300
#: Tasks per thread at least, when that makes them smaller than :data:`VERIFY_CHUNK` queries (even finish).
VERIFY_TASKS_PER_THREAD = 8
#: Box-to-box alignments at a smaller scale than this do not count: the same box of both shows the same part.
BOX_MIN_SCALE = 0.9

class FeatureCache:
    """Local features of table rows, extracted lazily from the stored detail images, once per row.

    Shared by the verification threads and by every stage of a gate check (:class:`FeatureCaches`), so an image
    that is a candidate in several stages is decoded and described once. Entries are plain dict items (atomic
    under the GIL); two threads may rarely extract the same row at once, with the same result. Beyond
    ``max_rows`` rows the cache starts over, which bounds its memory (~15 KB a CIFAR-size row, up to ~250 KB
    for a 256 px detail with 400 SIFT descriptors).
    """

    def __init__(self, table: FingerprintTable, extractor: str, max_features: int,
                 max_rows: int = FEATURE_CACHE_ROWS) -> None:
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
    candidates: list[Candidates],
    settled: np.ndarray,
    same_table: bool,
    verifier: ThumbVerifier,
    stage: str = "local features",
    shard: ReferenceShard | None = None,
) -> pd.DataFrame:
    """Verify candidate pairs (see :class:`Candidates`); one match row per verified new sample.

    A ``box`` (an index into :data:`CROP_BOXES`) marks candidates found by that crop of *both* images: they are
    verified on that crop alone (the rest of the new image may carry a caption, logo or watermark).

    Each query's candidates are verified in one order — distance, then source (the position in ``candidates``),
    then reference row, mirror and box — at most ``max_feature_candidates`` of them, and the first that verifies
    is its match. With a ``shard`` split across ranks the order is over global rows and all ranks' candidates:
    each rank verifies its own, and the first verified in the global order wins (the answer of one process);
    the returned rows then carry global reference rows (on every rank). Collective when the shard is split.
    """
    split = shard is not None and shard.split
    # no open candidate at all (the usual case of a one-image query): no frame built
    if not split and not any(len(c.q) and not settled[np.asarray(c.q, dtype=np.int64)].all() for c in candidates):
        return pd.DataFrame(columns=MATCH_COLUMNS)
    global_rows = shard.rows if shard is not None else None
    table = _candidate_table(candidates)
    if len(table):
        table = table[~settled[table["q"].to_numpy(dtype=np.int64)]]
        if same_table:
            r_global = table["r"].to_numpy(np.int64) if global_rows is None else global_rows[table["r"].to_numpy(np.int64)]
            table = table[r_global < table["q"].to_numpy(np.int64)]
        # cheap pre-filter: hash candidates must look roughly alike (crop candidates are not aligned, so exempt)
        # (computed for the hash candidates only, in blocks: at 1M x 100k the crop search proposes ~50k random pairs,
        # whose float32 thumbnails took 1.2 GB at once for a similarity that was never used)
        table = _thumbnail_prefilter(_crop_hint_prefilter(job, table), verifier, job.config)
    table = _verification_order(table, global_rows, job.config.max_feature_candidates, split)
    results = _verify_on_threads(job, _query_groups(table), len(table), stage) if len(table) else []
    if split:
        return _first_verified_across_ranks(results, shard)
    rows = [_rows(*row[:-1]) for row in sorted(results)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=MATCH_COLUMNS)


def _verification_order(table: pd.DataFrame, global_rows: np.ndarray | None, per_query: int, split: bool
                        ) -> pd.DataFrame:
    """The candidates to verify, in verification order, with their place ``pos`` in it: sorted by query,
    distance, source, (global) reference row, mirror and box; each pair and box once (its closest); at most
    ``per_query`` per query. When ``split``, the order is over every rank's candidates (collective) and this rank's
    entries of it are returned."""
    columns = ("q", "r", "dist", "src", "mirror", "box")
    if len(table):
        q, r, dist, src, mirror, box = (table[c].to_numpy(np.int64) for c in columns)
    else:
        q = r = dist = src = mirror = box = np.zeros(0, np.int64)
    rg = r if global_rows is None else global_rows[r]
    owner = np.zeros(len(q), np.int64)
    if split:
        rank = np.full(len(q), ReferenceShard.current_rank(), np.int64)
        q, rg, dist, src, mirror, box, owner, r = all_gather_arrays(q, rg, dist, src, mirror, box, rank, r)
    order = np.lexsort((box, mirror, rg, src, dist, q))
    q, rg, dist, src, mirror, box, owner, r = (a[order] for a in (q, rg, dist, src, mirror, box, owner, r))
    # each (query, reference, mirror, box) once, at its first place; then the first per_query of each query
    first = np.zeros(len(q), bool)
    if len(q):  # copies of a key need not be adjacent (they differ in dist or src): the first place wins
        first[np.unique(np.stack([q, rg, mirror, box], axis=1), axis=0, return_index=True)[1]] = True
    q, rg, dist, mirror, box, owner, r = (a[first] for a in (q, rg, dist, mirror, box, owner, r))
    place = np.arange(len(q)) - np.searchsorted(q, q)
    capped = place < per_query
    q, dist, mirror, box, owner, r = (a[capped] for a in (q, dist, mirror, box, owner, r))
    pos = np.arange(len(q), dtype=np.int64)
    mine = owner == ReferenceShard.current_rank() if split else np.ones(len(q), bool)
    return pd.DataFrame({"q": q[mine], "r": r[mine], "dist": dist[mine], "mirror": mirror[mine].astype(bool),
                         "box": box[mine], "pos": pos[mine]})


def _first_verified_across_ranks(results: list[tuple[Any, ...]], shard: ReferenceShard) -> pd.DataFrame:
    """Each query's verified candidate of the earliest place over all ranks (rows with global reference rows)."""
    frame = pd.DataFrame([row[:-1] for row in results], columns=MATCH_COLUMNS) if results else \
        pd.DataFrame(columns=MATCH_COLUMNS)
    pos = np.asarray([row[-1] for row in results], dtype=np.int64)
    gathered = shard.gather_frame(frame, MATCH_COLUMNS)
    (all_pos,) = all_gather_arrays(pos)
    if not len(gathered):
        return pd.DataFrame(columns=MATCH_COLUMNS)
    order = np.lexsort((all_pos, gathered["new_row"].to_numpy(np.int64)))
    gathered = gathered.iloc[order]
    return gathered.drop_duplicates("new_row").reset_index(drop=True)


def _candidate_table(candidates: list[Candidates]) -> pd.DataFrame:
    """All candidate pairs as one frame: columns q, r, dist, mirror, skip_prefilter, box, hint (-1: none), src
    (the source's position in ``candidates``)."""
    frames = [
        pd.DataFrame({"q": c.q, "r": c.r, "dist": c.dist, "mirror": c.mirror, "skip_prefilter": c.skip_prefilter,
                      "box": -1 if c.box is None else c.box, "hint": -1 if c.hint is None else c.hint, "src": i})
        for i, c in enumerate(candidates)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _crop_hint_prefilter(job: _FeatureJob, table: pd.DataFrame) -> pd.DataFrame:
    """Crop-index candidates (the crop that matched is known) whose thumbnail resembles that crop of the reference."""
    if not ("hint" in table and (table["hint"] >= 0).any()):
        return table
    config = job.config
    hinted = table["hint"].to_numpy() >= 0
    similar, tiny = _crop_hint_similarity(job.new, job.ref, table["q"].to_numpy(np.int64)[hinted],
                                          table["r"].to_numpy(np.int64)[hinted], table["hint"].to_numpy()[hinted],
                                          table["mirror"].to_numpy(bool)[hinted])
    keep = np.ones(len(table), dtype=bool)
    # at CIFAR size SIFT is the only verifier left and costs as much as at 256 px (upscaled x3); there the
    # crops it can verify at all are close to the crop grid (0.6 keeps every CIFAR pair, 40 % fewer to verify)
    tiny_bound = np.where(table["mirror"].to_numpy(bool)[hinted], config.tiny_mirror_crop_min_thumb_similarity,
                          config.tiny_crop_min_thumb_similarity)
    keep[hinted] = similar >= np.where(tiny, tiny_bound, config.crop_min_thumb_similarity)
    return table[keep]


def _thumbnail_prefilter(table: pd.DataFrame, verifier: ThumbVerifier, config: MatchConfig) -> pd.DataFrame:
    """Candidates not exempt (``skip_prefilter``) whose gray thumbnails correlate enough, in blocks of
    :data:`PREFILTER_BLOCK` pairs; the exempt ones all."""
    parts = []
    for mirror, group in table.groupby("mirror"):
        keep = group["skip_prefilter"].to_numpy(dtype=bool).copy()
        check = np.flatnonzero(~keep)
        q_all, r_all = group["q"].to_numpy(np.int64), group["r"].to_numpy(np.int64)
        for start in range(0, len(check), PREFILTER_BLOCK):
            block = check[start : start + PREFILTER_BLOCK]
            gray = verifier.gray_similarity(q_all[block], r_all[block], bool(mirror))
            keep[block] = gray >= config.feature_min_thumb_similarity
        parts.append(group[keep])
    return pd.concat(parts) if parts else table


#: One query's candidates in verification order: ``(q, [(r, dist, mirror, box, place in the order), ...])``.
_QueryGroup = tuple[int, list[tuple[int, int, bool, int, int]]]


def _query_groups(table: pd.DataFrame) -> list[_QueryGroup]:
    """One group per query of a table sorted by query, its candidates in table order.

    Plain lists: a pandas groupby over ~50k queries cost seconds at 1M references.
    """
    q_col = table["q"].to_numpy(np.int64)
    cols = zip(table["r"].to_numpy(np.int64).tolist(), table["dist"].to_numpy(np.int64).tolist(),
               table["mirror"].to_numpy(bool).tolist(), table["box"].to_numpy(np.int64).tolist(),
               table["pos"].to_numpy(np.int64).tolist())
    starts = np.flatnonzero(np.r_[True, q_col[1:] != q_col[:-1]]).tolist() + [len(q_col)]
    candidates = list(cols)
    return [(int(q_col[a]), candidates[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def _verify_on_threads(job: _FeatureJob, groups: list[_QueryGroup], n_pairs: int, stage: str) -> list[tuple[Any, ...]]:
    """:func:`_verify_groups` over the groups on worker threads (a progress bar per stage); the match rows found."""
    # threads, not processes: OpenCV (SIFT, template matching, ECC) releases the GIL, which is most of the work, and
    # the feature caches stay shared by all threads and later stages (forked workers each started empty)
    workers = min(default_workers(), max(1, n_pairs // VERIFY_PAIRS_PER_THREAD))
    # small chunks handed out as threads free up: a fixed share per thread left one core idle for the last ~4 s of
    # CIFAR's 20 s (queries differ in candidates, and a thread can lose its core to other work for a while)
    size = max(1, min(VERIFY_CHUNK, len(groups) // (VERIFY_TASKS_PER_THREAD * workers)))
    chunks = [groups[i : i + size] for i in range(0, len(groups), size)]
    bar = progress_bar(len(groups), f"{job.progress}: {stage}", job.progress is not None, unit="sample")

    def verify(chunk: list[_QueryGroup]) -> list[tuple[Any, ...]]:
        verified = _verify_groups(job, chunk)
        bar.update(len(chunk))
        return verified

    try:
        with single_threaded_opencv():
            return [row for part in _threaded_map(verify, chunks, workers) for row in part]
    finally:
        bar.close()


def _verify_groups(job: _FeatureJob, groups: list[_QueryGroup]) -> list[tuple[Any, ...]]:
    """Verify each query's candidates in order and keep its first verified one, its place in the order appended
    (runs in worker threads)."""
    found = []
    for q, candidates in groups:
        for r, dist, mirror, box, pos in candidates:
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
                found.append((*row, pos))
                break
    return found


def _verify_pair(job: _FeatureJob, q: int, r: int, dist: int, mirror: bool,
                 both_ways: bool = False, use_alignment: bool = True) -> tuple[Any, ...] | None:
    """One candidate pair: local features first, then dense alignment (smooth pictures); a match row or None.

    Alignment places the new image inside the reference (a crop); ``both_ways`` also tries the reference inside
    the new image (the new one has a frame or more of the picture than the reference kept after trimming).
    ``mirror`` verifies the mirrored new image (features and alignment alike): a flipped and cropped copy.
    """
    new, config, new_cache, ref_cache = job.new, job.config, job.new_cache, job.ref_cache
    query = new_cache.get(q, mirror=mirror)
    # each of the query's keypoints matches at most once, so with fewer than min_inliers of them verification
    # cannot pass and the reference need not be described (~6 % of CIFAR images have fewer than 12; the average
    # is ~35)
    can_match = len(query) >= config.min_inliers
    result = local_features.verify(
        query, ref_cache.get(r), min_inliers=config.min_inliers, min_coverage=config.min_coverage
    ) if can_match else None
    if result is not None and result.matched:
        placed = _placement(job, new.thumbs[q], r, result.transform, query.image_shape, ref_cache.get(r).image_shape,
                            config.max_aligned_color_difference)
        if placed is not None:
            _, share, cropped = placed
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


def _verify_by_alignment(job: _FeatureJob, q: int, r: int, dist: int,
                         both_ways: bool = False, mirror: bool = False) -> tuple[Any, ...] | None:
    """One candidate pair by dense alignment of the whole pictures (see :func:`_verify_pair`); a match row or None.

    ``mirror`` aligns the mirrored new image (its thumbnail mirrored as well for the colour check)."""
    new, config = job.new, job.config
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
    placed = _placement(job, new_thumb, r, aligned.transform, new_image.shape, ref_image.shape,
                        config.max_alignment_color_difference)
    if placed is None:
        return None
    colour, share, cropped = placed
    evidence = (
        f"pHash distance {dist}, {'mirror image ' if mirror else ''}aligned at scale {aligned.scale:.2f}: "
        f"thumbnail similarity {aligned.similarity:.3f}, fine-structure similarity {aligned.detail_similarity:.3f}, "
        f"colour difference {colour:.1f}, shows {share:.0%} of the reference{', crop' if cropped else ''}"
    )
    return (q, r, _kind(config, mirror, cropped), f"alignment{'-mirror' if mirror else ''}", aligned.similarity,
            evidence)


def _placement(job: _FeatureJob, new_thumb: np.ndarray, r: int, transform: np.ndarray,
               new_shape: tuple[int, ...], ref_shape: tuple[int, ...], max_colour: float,
               box: int | None = None) -> tuple[float, float, bool] | None:
    """``(colour difference, share of the reference shown, cropped)`` of a verified placement; ``None`` when its
    colours differ by more than ``max_colour`` (the same layout in other colours is a variant) or it shows less
    than ``min_reference_share`` of the reference (a detail of it, not a copy)."""
    config = job.config
    colour = _aligned_colour_difference(new_thumb, job.ref.thumbs[r], transform, new_shape, ref_shape, box=box)
    if colour > max_colour:
        return None
    share = reference_share(transform, new_shape, ref_shape)
    if share < config.min_reference_share:
        return None
    return colour, share, share < config.crop_coverage_ratio


def _alignment_agrees(aligned: Alignment | None, config: MatchConfig) -> bool:
    """An alignment good enough for a near-duplicate: thumbnail and fine-structure similarity over their bounds."""
    return (
        aligned is not None
        and aligned.similarity >= config.aligned_similarity
        and aligned.detail_similarity >= config.min_detail_similarity
    )


def _verify_box(job: _FeatureJob, q: int, r: int, dist: int, box: int) -> tuple[Any, ...] | None:
    """A pair whose crop ``box`` agrees: align that crop of both images (an overlay elsewhere does not count)."""
    new, config = job.new, job.config
    new_image, ref_image = job.new_cache.image(q), job.ref_cache.image(r)
    new_window, ref_window = crop_windows(*new_image.shape)[box], crop_windows(*ref_image.shape)[box]
    aligned = align(new_image[new_window], ref_image[ref_window])
    if not _alignment_agrees(aligned, config) or aligned.scale < BOX_MIN_SCALE:
        return None
    # the crop's transform, in whole-image pixels: shift into the crop, map, shift back
    into_new = _homogeneous(np.array([[1.0, 0, -new_window[1].start], [0, 1.0, -new_window[0].start]]))
    out_of_ref = _homogeneous(np.array([[1.0, 0, ref_window[1].start], [0, 1.0, ref_window[0].start]]))
    transform = (out_of_ref @ _homogeneous(aligned.transform) @ into_new)[:2]
    placed = _placement(job, new.thumbs[q], r, transform, new_image.shape, ref_image.shape,
                        config.max_alignment_color_difference, box=box)
    if placed is None:
        return None
    colour, share, cropped = placed
    keep = CROP_BOXES[box][0]
    evidence = (
        f"the same {keep:.0%} crop of both agrees (pHash distance {dist}): thumbnail similarity "
        f"{aligned.similarity:.3f}, fine-structure similarity {aligned.detail_similarity:.3f}, colour difference "
        f"{colour:.1f}; the rest differs (overlay, caption or edit); shows {share:.0%} of the reference"
        f"{', crop' if cropped else ''}"
    )
    return (q, r, _kind(config, False, cropped), "crop-alignment", aligned.similarity, evidence)


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
    placed = _placement(job, job.new.thumbs[q], r, transform, new_image.shape, ref_image.shape,
                        config.max_alignment_color_difference)
    if placed is None:
        return None
    colour, share, cropped = placed
    evidence = (
        f"turned back by {degrees:+.0f} deg, its centre crop aligned at scale {aligned.scale:.2f} (crop-hash "
        f"distance {dist}): thumbnail similarity {aligned.similarity:.3f}, fine-structure similarity "
        f"{aligned.detail_similarity:.3f}, colour difference {colour:.1f}, shows {share:.0%} of the reference"
        f"{', crop' if cropped else ''}"
    )
    return (q, r, _kind(config, False, cropped), "alignment", aligned.similarity, evidence)


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
