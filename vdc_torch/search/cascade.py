"""Stage 4: the matching cascade — candidates from the indexes, verified, one best match per new sample.

Order of evidence, cheapest and surest first:

1. ``bytes``   — identical file bytes                                           -> ``exact``
2. ``pixels``  — identical decoded pixels (re-saved, renamed, EXIF stripped)    -> ``exact``
3. ``exif``    — same camera, capture time and ids, *confirmed by pixels*       -> ``near_duplicate``
4. ``phash``   — perceptual hash within ``hash_radius``, verified on thumbnails  -> ``near_duplicate``/``similar``
5. ``mirror``  — the same for the mirror image (flip augmentation)               -> policy decides
   ``quarter-turn`` — the same for the picture turned by 90, 180 and 270 degrees (EXIF orientation lost on
   export); hits that fail the thumbnail check go to local features         -> ``near_duplicate``
6. ``crop``/``features`` — crop hashes (of the picture and of its mirror image) and hash candidates that failed
   the thumbnail check, verified by local features (ratio test + RANSAC inliers + coverage) -> ``near_duplicate``
7. ``rotation`` — still unmatched samples turned back by up to ``max_rotation`` degrees, their centre crops
   looked up among the crop hashes, verified by local features                  -> ``near_duplicate``
8. ``framed`` — still unmatched samples: the rectangles a flat or smooth surround or straight edges bound (a picture
   inside a screenshot, a frame, a blurred pad; :mod:`~vdc_torch.search.frames`) looked up among the pHashes,
   verified with the reference inside the new image
                                                                                -> ``near_duplicate``

Crops and mirrors count as near-duplicates unless ``crop_is_duplicate`` / ``mirror_is_duplicate`` is False (see
:class:`MatchConfig` for what a crop is).

Each stage only looks at new samples that earlier stages left unmatched (or matched only as ``similar``).

The pieces live in their own modules of :mod:`vdc_torch.search`: :mod:`~vdc_torch.search.config` (MatchConfig, the
kinds), :mod:`~vdc_torch.search.thumbs` (thumbnail checks), :mod:`~vdc_torch.search.candidates` (candidate pairs
beyond the pHash stage), :mod:`~vdc_torch.search.verify` (local features, alignment), :mod:`~vdc_torch.search.colour`,
:mod:`~vdc_torch.search.geometry` and :mod:`~vdc_torch.search.results`; this module runs the stages in order and
re-exports the names that used to live here. A test or benchmark that patches a name of a function that moved (say
``_verify_by_alignment``) patches it on the module that defines it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd

from vdc_torch.errors import InvalidParameterError
from vdc_torch.fingerprints.compute import CROP_BOXES, FingerprintTable, phash_batch
from vdc_torch.search.candidates import (  # noqa: F401  (re-exported)
    KNN_ADD_CHUNK,
    KNN_EXACT_MAX_ROWS,
    KNN_NPROBE,
    KNN_ROWS_PER_LIST,
    KNN_TRAIN_ROWS,
    MAX_CHANCE_CANDIDATES,
    OVERLAY_BOXES,
    QUARTER_TURNS,
    ROTATED,
    WHOLE_PICTURE,
    Candidates,
    _coarse_index,
    _crop_hint_similarity,
    _frame_candidates,
    _large_enough_to_align,
    _nearest_thumbnails,
    _rotation_candidates,
    _same_crop_candidates,
    _whole_picture_candidates,
    chance_limited_radius,
    turned_thumbs,
)
from vdc_torch.search.colour import (  # noqa: F401  (re-exported)
    _aligned_colour_difference,
    _curve_residual,
    tone_mapped_colour_difference,
)
from vdc_torch.search.config import (  # noqa: F401  (re-exported)
    KIND_RANK,
    MATCH_COLUMNS,
    MATCHING_VERSION,
    MatchConfig,
    MatchKind,
)
from vdc_torch.search.geometry import (  # noqa: F401  (re-exported)
    _CENTRE_BOXES,
    _ROTATION_WORK_SIDE,
    ROTATION_STEP,
    _clean_keep,
    _homogeneous,
    _rotation_angles,
    _turn_back_matrix,
    _turned_back_crops,
    reference_share,
)
from vdc_torch.search.index import ExactIndex, HammingIndex, InvertedFileIP  # noqa: F401  (re-exported)
from vdc_torch.search.reference_index import ReferenceIndex
from vdc_torch.search.results import _best_per_query, _first_per_query, _rows
from vdc_torch.search.shards import ReferenceShard, global_rows, top_k_across_ranks
from vdc_torch.search.thumbs import (  # noqa: F401  (re-exported)
    COARSE_CHUNK,
    THUMB_BLOCK,
    ThumbVerifier,
    _block_size,
    _gaussian_blur_each,
    _map_blocks,
    _normalized_rows,
    _resized_crops,
    _threaded_map,
    chroma_thumbs,
    coarse_vectors,
    normalized_thumbs,
    table_coarse_vectors,
)
from vdc_torch.search.verify import (  # noqa: F401  (re-exported)
    PREFILTER_BLOCK,
    VERIFY_CHUNK,
    FeatureCache,
    FeatureCaches,
    _alignment_agrees,
    _FeatureJob,
    _kind,
    _measured_share,
    _verify_box,
    _verify_by_alignment,
    _verify_groups,
    _verify_pair,
    _verify_rotated,
    _verify_with_features,
)

log = logging.getLogger(__name__)

#: Embedding neighbours per sample within one table: the nearest is the sample itself and later rows are dropped,
#: so a few more than one leave an earlier copy.
ENCODER_SAME_TABLE_NEIGHBOURS = 8


def match_tables(
    new: FingerprintTable,
    ref: FingerprintTable,
    config: MatchConfig = MatchConfig(),  # noqa: B008  (frozen: one shared default is safe)
    *,
    same_table: bool = False,
    new_embeddings: np.ndarray | None = None,
    ref_embeddings: np.ndarray | None = None,
    feature_caches: FeatureCaches | None = None,
    progress: str | None = None,
    ref_index: ReferenceIndex | None = None,
    shard: ReferenceShard | None = None,
) -> pd.DataFrame:
    """Run the cascade; one row per matched new row (its best match), columns :data:`MATCH_COLUMNS`.

    With ``same_table=True`` (``new is ref``) a row is only matched to an *earlier* row, which finds the
    duplicates inside one dataset: every later copy points at its first occurrence. ``new_embeddings`` and
    ``ref_embeddings`` (unit rows from a model encoder) add a last stage: nearest neighbours in the model's
    feature space with cosine ``>= config.encoder_similarity``. ``feature_caches`` keeps the local features of
    verified images for a later call on the same tables (a fresh one per call by default). ``progress`` (a label,
    e.g. ``"matching"``) shows a bar with ETA for each verification stage; each stage's time is logged at INFO.
    ``ref_index`` is a :class:`ReferenceIndex` of ``ref`` kept between calls (one is built for this call otherwise).

    ``shard`` says that ``ref`` is this rank's part of a reference split across ``torch.distributed`` ranks
    (:class:`~vdc_torch.search.shards.ReferenceShard`; with ``same_table``, ``ref`` is a part of ``new`` and the
    shard's rows are rows of ``new``). Every rank then calls this with the same ``new`` and gets the same frame,
    the one a single process gets for the whole reference, with *global* reference rows; the call is collective.
    """
    if shard is not None and not shard.split:
        shard = None
    caches = FeatureCaches() if feature_caches is None else feature_caches
    job = _FeatureJob(new, ref, config, caches(new, config), caches(ref, config), progress)
    if ref_index is None or ref_index.ref is not ref:
        ref_index = ReferenceIndex(ref, shard=shard)
    run = _Run(job, same_table, ThumbVerifier(new.thumbs, ref.thumbs, config), ref_index,
               settled=np.zeros(len(new), dtype=bool), clock=time.perf_counter(), shard=shard)
    _exact_stages(run)
    _exif_stage(run)
    global_index = ref_index.phash()
    feature_candidates = _hash_stages(run, global_index)
    feature_candidates.append(_quarter_turn_stage(run, global_index))
    _feature_stages(run, feature_candidates, global_index)
    _alignment_stages(run, global_index)
    _encoder_stage(run, new_embeddings, ref_embeddings)
    if not run.found:
        return pd.DataFrame(columns=MATCH_COLUMNS)
    matches = _best_per_query(pd.concat(run.found, ignore_index=True))
    return _per_owner(matches, shard, lambda frame: _other_exposures_are_similar(_crops_are_similar(frame, job),
                                                                                 new, ref))


def _per_owner(matches: pd.DataFrame, shard: ReferenceShard | None, judge: Any) -> pd.DataFrame:
    """``judge(matches)`` (a per-row revision that reads the reference rows); with a split shard each rank judges
    the matches of the rows it holds and the revised rows are gathered (global rows, sorted as before)."""
    if shard is None:
        return judge(matches)
    mine, local = shard.owned(matches["ref_row"].to_numpy(np.int64))
    own = matches[mine].copy()
    own["ref_row"] = local
    judged = judge(own.reset_index(drop=True)) if len(own) else own
    gathered = shard.gather_frame(judged, MATCH_COLUMNS)
    return gathered.sort_values("new_row", kind="stable").reset_index(drop=True)


@dataclass
class _Run:
    """What the stages of one :func:`match_tables` call share: the verification job, the matches found so far and
    which new samples they settle (matched as exact or near-duplicate: later stages skip them)."""

    job: _FeatureJob
    same_table: bool
    verifier: ThumbVerifier
    index: ReferenceIndex
    settled: np.ndarray
    #: End of the previous stage (``time.perf_counter()``), for the log line of each stage.
    clock: float
    #: This rank's part of a reference split across ranks, or ``None`` (the whole reference is here).
    shard: ReferenceShard | None = None
    found: list[pd.DataFrame] = field(default_factory=list)

    @property
    def new(self) -> FingerprintTable:
        return self.job.new

    @property
    def ref(self) -> FingerprintTable:
        return self.job.ref

    @property
    def config(self) -> MatchConfig:
        return self.job.config

    @property
    def n_ref(self) -> int:
        """Rows of the whole reference (of every rank's shard together)."""
        return len(self.ref) if self.shard is None else self.shard.total

    def global_rows(self, r: np.ndarray) -> np.ndarray:
        """``r`` (rows of this rank's reference) as rows of the whole reference."""
        return global_rows(self.shard, r)

    def allowed(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Pairs whose new sample is not settled (and, within one table, whose reference is an earlier row)."""
        keep = ~self.settled[q]
        if self.same_table:
            keep &= self.global_rows(r) < q
        return keep

    def add(self, frame: pd.DataFrame, stage: str, is_global: bool = False) -> None:
        """Keep a stage's matches, settle their non-``similar`` samples, log the stage.

        With a split shard, a frame of this rank's rows is gathered and reduced to the best per new sample first
        (collective), so every rank keeps and settles the same."""
        if self.shard is not None and not is_global:
            frame = _best_per_query(self.shard.gather_frame(frame, MATCH_COLUMNS))
        if len(frame):
            self.found.append(frame)
            strong = frame.loc[frame["kind"] != "similar", "new_row"].to_numpy()
            self.settled[strong] = True
        now = time.perf_counter()
        log.info("%s, stage %s: %d match(es) in %.2f s; %d of %d samples settled",
                 "internal duplicates" if self.same_table else "matching", stage, len(frame), now - self.clock,
                 int(self.settled.sum()), len(self.new))
        self.clock = now

    def keep(self, frame: pd.DataFrame) -> None:
        """Keep matches that settle nothing (``similar``); gathered from every rank with a split shard."""
        self.found.append(frame if self.shard is None else self.shard.gather_frame(frame, MATCH_COLUMNS))

    def verify(self, candidates: list[Candidates], stage: str) -> None:
        """A verification stage: the candidates verified by :func:`_verify_with_features`, the matches added."""
        self.add(_verify_with_features(self.job, candidates, self.settled, self.same_table, self.verifier, stage,
                                       self.shard), stage, is_global=True)


def _exact_stages(run: _Run) -> None:
    """1-2. exact bytes and pixels."""
    new = run.new
    for method, new_keys, column in (
        ("bytes", new.byte_digest, "byte_digest"),
        ("pixels", new.pixel_digest, "pixel_digest"),
    ):
        pairs = np.asarray(run.index.exact(column).pairs(new_keys), dtype=np.int64).reshape(-1, 2)
        q, r = pairs[:, 0], pairs[:, 1]
        keep = run.allowed(q, r)
        run.add(_first_per_query(_rows(q[keep], r[keep], "exact", method, 1.0, f"identical {method}")), method)


def _exif_stage(run: _Run) -> None:
    """3. EXIF identity confirmed by pixels."""
    new, config = run.new, run.config
    pairs = np.asarray(run.index.exact("exif_identity").pairs(new.exif_identity), dtype=np.int64).reshape(-1, 2)
    q, r = pairs[:, 0], pairs[:, 1]
    keep = run.allowed(q, r)
    q, r = q[keep], r[keep]
    sim = run.verifier.similarity(q, r)
    ok = sim >= config.exif_min_similarity
    run.add(_best_per_query(_rows(q[ok], r[ok], "near_duplicate", "exif", sim[ok],
                                  [f"same EXIF identity, thumbnail similarity {s:.3f}" for s in sim[ok]])), "exif")


def _hash_stages(run: _Run, global_index: HammingIndex) -> list[Candidates]:
    """4-5. perceptual hash candidates (of the picture, then of its mirror image), verified on thumbnails.

    Returns the candidates that failed the near-duplicate check, for local features (stage 6).
    """
    new, config, same_table = run.new, run.config, run.same_table
    feature_candidates: list[Candidates] = []
    for mirror in (False, True):
        queries = new.phash_mirror if mirror else new.phash
        q, r, dist = global_index.search(queries, config.hash_radius)
        keep = run.allowed(q, r)
        if same_table and mirror:
            keep &= q != run.global_rows(r)
        q, r, dist = q[keep], r[keep], dist[keep]
        sim, fine = run.verifier.similarities(q, r, mirror=mirror)
        near = (sim >= config.near_duplicate_similarity) & (fine >= config.min_detail_similarity)
        similar = ~near & (sim >= config.similar_similarity)
        method = "mirror" if mirror else "phash"
        near_kind = "near_duplicate" if (config.mirror_is_duplicate or not mirror) else "similar"
        evidence = [
            f"pHash distance {d}, thumbnail similarity {s:.3f}, fine-structure similarity {f:.3f}"
            for d, s, f in zip(dist, sim, fine)
        ]
        ev = np.asarray(evidence, dtype=object)
        run.add(_best_per_query(_rows(q[near], r[near], near_kind, method, sim[near], ev[near])), method)
        run.keep(_rows(q[similar], r[similar], "similar", method, sim[similar], ev[similar]))
        feature_candidates.append(Candidates(q[~near], r[~near], dist[~near], mirror, False))
    return feature_candidates


def _quarter_turn_stage(run: _Run, global_index: HammingIndex) -> Candidates:
    """5b. copies turned by 90, 180 or 270 degrees (a phone photo whose EXIF orientation was lost on export).

    Each unsettled sample's thumbnail is turned (:func:`turned_thumbs`) and its pHash looked up, then verified on
    the turned thumbnails exactly as a pHash hit is; hits that fail but whose turned gray thumbnail still
    correlates (``feature_min_thumb_similarity``) go to local features, which are rotation invariant. The turned
    pHashes are computed :data:`QUARTER_TURN_ROWS` samples at a time and the hits' turned thumbnails read as the
    checks need them, so the stage holds 8 bytes a sample, not the turned thumbnails of the whole drop.
    """
    new, ref, config = run.new, run.ref, run.config
    empty = np.zeros(0, np.int64)
    open_rows = np.flatnonzero(~run.settled)
    if not config.quarter_turns or not len(open_rows) or not run.n_ref:
        return Candidates(empty, empty, empty, False, True)
    left_q, left_r, left_d = [], [], []
    for turns in QUARTER_TURNS:
        open_rows = open_rows[~run.settled[open_rows]]
        if not len(open_rows):
            break
        codes = np.concatenate([_turned_phashes(new.thumbs, open_rows[start : start + QUARTER_TURN_ROWS], turns)
                                for start in range(0, len(open_rows), QUARTER_TURN_ROWS)])
        local, r, dist = global_index.search(codes, config.hash_radius)
        q = open_rows[local]
        keep = run.allowed(q, r)
        local, q, r, dist = local[keep], q[keep], r[keep], dist[keep]
        verifier = ThumbVerifier(TurnedThumbs(new.thumbs, open_rows, turns), ref.thumbs, config)
        sim, fine = verifier.similarities(local, r)
        near = (sim >= config.near_duplicate_similarity) & (fine >= config.min_detail_similarity)
        evidence = np.asarray([f"the new image turned {90 * turns} degrees counter-clockwise: pHash distance {d}, "
                               f"thumbnail similarity {s:.3f}, fine-structure similarity {f:.3f}"
                               for d, s, f in zip(dist, sim, fine)], dtype=object)
        run.add(_best_per_query(_rows(q[near], r[near], "near_duplicate", "quarter-turn", sim[near], evidence[near])),
                f"quarter turn {90 * turns}")
        rest = ~near & (verifier.gray_similarity(local, r) >= config.feature_min_thumb_similarity)
        left_q.append(q[rest])
        left_r.append(r[rest])
        left_d.append(dist[rest])
    if not left_q:
        return Candidates(empty, empty, empty, False, True)
    return Candidates(*(np.concatenate(a).astype(np.int64) for a in (left_q, left_r, left_d)), False, True)


#: Samples whose thumbnails the quarter-turn stage turns and hashes at once (~10 KB of temporaries each).
QUARTER_TURN_ROWS = 4096


def _turned_phashes(thumbs: Any, rows: np.ndarray, turns: int) -> np.ndarray:
    """pHashes of the thumbnails of ``rows`` turned ``turns`` quarter turns counter-clockwise."""
    turned = turned_thumbs(thumbs, rows, turns)
    gray = cv2.cvtColor(turned.reshape(-1, turned.shape[2], 3), cv2.COLOR_RGB2GRAY).reshape(turned.shape[:3])
    return phash_batch(gray)


class TurnedThumbs:
    """The thumbnails of ``rows`` of a column, turned ``turns`` quarter turns, read (and turned) on demand: item
    ``i`` is row ``rows[i]`` turned."""

    def __init__(self, thumbs: Any, rows: np.ndarray, turns: int) -> None:
        self.thumbs, self.rows, self.turns = thumbs, rows, turns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, items: Any) -> np.ndarray:
        return turned_thumbs(self.thumbs, np.atleast_1d(self.rows[items]), self.turns)


def _feature_stages(run: _Run, feature_candidates: list[Candidates], global_index: HammingIndex) -> None:
    """6. crops (and rotations that failed the thumbnail check), verified by local features: the hash candidates
    that failed, kNN neighbours and crop-index hits, then the crop-index hits of the mirror image."""
    new, ref, config = run.new, run.ref, run.config
    if config.use_features and run.n_ref and config.knn_candidates > 0 and config.knn_min_similarity > 0:
        feature_candidates.append(_nearest_thumbnails(new, ref, ~run.settled, run.same_table, config,
                                                      run.index.coarse(), run.shard))

    if config.use_features and run.n_ref:
        plain, mirrored = _crop_index_candidates(run)
        feature_candidates.insert(0, plain)
        run.verify(feature_candidates, "local features")
        run.verify([mirrored], "mirrored crops")


def _crop_index_candidates(run: _Run) -> tuple[Candidates, Candidates]:
    """Unsettled samples whose pHash (first) or mirror pHash (second) lies near a crop hash of a reference.

    The crop index (~1 GB of MIH tables at 1M reference rows) is gone when this returns (it is not kept through
    feature verification) unless the reference index keeps its indexes (``ReferenceIndex(keep=True)``, queries).
    """
    new, config = run.new, run.config
    k = len(CROP_BOXES)
    # only rows not settled yet: _verify_with_features drops settled rows first thing, and nothing settles
    # between here and there, so the candidates of settled rows were searched for nothing (27M codes at 1M)
    open_rows = np.flatnonzero(~run.settled)
    crop_index = run.index.crops()  # code i is crop i % k of reference row i // k
    radius = chance_limited_radius(config.crop_radius, run.n_ref * k)
    q, code, dist = crop_index.search(np.asarray(new.phash)[open_rows], radius)
    q, r = open_rows[q], code // k
    plain = Candidates(q, r, dist, False, True, hint=code % k)
    # the mirror pHash too: a flipped copy that is also cropped (RandomResizedCrop + RandomHorizontalFlip),
    # verified after the rest, for the samples still unmatched then (a plain copy is preferred to a mirror)
    q, code, dist = crop_index.search(np.asarray(new.phash_mirror)[open_rows], radius)
    return plain, Candidates(open_rows[q], code // k, dist, True, True, hint=code % k)


def _alignment_stages(run: _Run, global_index: HammingIndex) -> None:
    """Samples still unmatched, large pictures: overlays (the same crop of both agrees), other border trimming
    (whole-picture pHashes), rotations on the same canvas, framed pictures (7.-8. in the module docstring)."""
    new, ref, config = run.new, run.ref, run.config
    n_ref, shard = run.n_ref, run.shard
    if config.use_alignment and n_ref and len(new) and config.overlay_boxes:
        run.verify(_same_crop_candidates(new, ref, ~run.settled, config, run.index, shard), "overlays")
    if config.use_alignment and n_ref and len(new):
        run.verify(_whole_picture_candidates(new, ref, ~run.settled, global_index, config, run.index.trimmed_whole()),
                   "alignment")
    if config.use_features and config.max_rotation > 0 and n_ref and len(new):
        run.verify(_rotation_candidates(new, ref, ~run.settled, run.same_table, config, run.index, shard),
                   "rotations")
    if config.use_alignment and config.framed and n_ref and len(new):
        run.verify(_frame_candidates(new, ref, ~run.settled, run.same_table, config, global_index, shard), "framed")


def _encoder_stage(run: _Run, new_embeddings: np.ndarray | None, ref_embeddings: np.ndarray | None) -> None:
    """Model embeddings: nearest neighbours in the feature space of the model being trained."""
    new, ref, config, same_table = run.new, run.ref, run.config, run.same_table
    if new_embeddings is None or ref_embeddings is None or not run.n_ref or not len(new):
        return
    from vdc_torch.fingerprints.encoder import nearest_neighbours

    k = ENCODER_SAME_TABLE_NEIGHBOURS if same_table else 1
    if len(ref):
        sims, ids = nearest_neighbours(new_embeddings, ref_embeddings, k=k)
    else:
        sims, ids = np.zeros((len(new), 0), np.float32), np.zeros((len(new), 0), np.int64)
    q = np.repeat(np.arange(len(new)), sims.shape[1])
    r, cos = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
    if run.shard is not None:  # the k nearest over every rank's rows, then this rank's of them
        found = r >= 0
        q, r, cos = q[found], r[found], cos[found]
        q, r, _, cos = top_k_across_ranks(run.shard, q, r, cos, k)
    if config.encoder_similarity is None:
        raise InvalidParameterError("embeddings were given but MatchConfig.encoder_similarity is None: set the cosine, "
                                    "or derive it with vdc_torch.search.encoder_threshold.encoder_threshold")
    keep = (r >= 0) & run.allowed(q, np.maximum(r, 0)) & (cos >= config.encoder_similarity)
    if same_table:
        keep &= run.global_rows(np.maximum(r, 0)) != q
    q, r, cos = q[keep], r[keep], cos[keep]
    pixel = run.verifier.similarity(q, r)
    ok = pixel >= config.encoder_min_thumb_similarity
    run.add(_best_per_query(_rows(q[ok], r[ok], "near_duplicate", "encoder", cos[ok],
                                  [f"model embedding cosine {c:.3f}, thumbnail similarity {p:.3f}"
                                   for c, p in zip(cos[ok], pixel[ok])])), "encoder")


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
