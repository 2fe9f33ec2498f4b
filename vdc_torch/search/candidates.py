"""Candidate pairs for verification beyond the pHash stage: the chance-limited radius of the crop hashes, same-crop
(overlay), whole-picture (border trimming), rotation and nearest-thumbnail (kNN) candidates, and the crop-hint
pre-check of crop-index candidates."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vdc_torch.collective import all_gather_arrays
from vdc_torch.fingerprints.align import MIN_SIDE as ALIGN_MIN_SIDE
from vdc_torch.fingerprints.compute import (
    CROP_BOXES,
    FingerprintTable,
    decode_detail,
    default_workers,
    phash_batch,
)
from vdc_torch.fingerprints.table import values_at
from vdc_torch.search.config import MatchConfig
from vdc_torch.search.geometry import (
    _CENTRE_BOXES,
    _rotation_angles,
    _turned_back_crops,
)
from vdc_torch.search.frames import FRAME_RECTANGLES, framed_picture, framed_rectangles
from vdc_torch.search.index import HammingIndex, InvertedFileIP
from vdc_torch.search.shards import (  # noqa: F401
    ReferenceShard,
    _large_enough_to_align,
    global_rows,
    top_k_across_ranks,
    top_k_per_query,
)
from vdc_torch.search.thumbs import (
    COARSE_CHUNK,
    COARSE_DIM,
    _map_blocks,
    _normalized_rows,
    _resized_crops,
    _threaded_map,
    coarse_vectors,
    normalized_thumbs,
    table_coarse_vectors,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Candidates:
    """Candidate pairs of one source for :func:`~vdc_torch.search.verify._verify_with_features`.

    ``q``, ``r`` and ``dist`` are arrays of equal length (new row, reference row, pHash distance or another rank:
    a query's candidates are verified lowest first); ``mirror`` and ``skip_prefilter`` hold for all of them.
    """

    q: np.ndarray
    r: np.ndarray
    dist: np.ndarray
    #: Verify the mirror image of the new sample (a flipped copy).
    mirror: bool
    #: Exempt from the thumbnail pre-filter: pairs that are not aligned (crops, rotations, kNN neighbours).
    skip_prefilter: bool
    #: Per pair: the index into ``CROP_BOXES`` of the crop both images agree on, :data:`WHOLE_PICTURE`,
    #: ``ROTATED - i`` (rotation stage) or -1; ``None`` = -1 for every pair (the whole pictures).
    box: np.ndarray | None = None
    #: Per pair: the crop of the reference whose hash matched (crop-index candidates), else ``None``.
    hint: np.ndarray | None = None


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


#: ``keep`` of the corner crops compared box to box (one of the four misses any overlay of under 1 - keep).
OVERLAY_CORNER_KEEP = 0.7
#: ``keep`` of the centred crops compared box to box (they leave out the corners of a slightly rotated copy).
OVERLAY_CENTRE_KEEPS = (0.7, 0.8)
#: Offsets (share of the side, rounded as below) of a corner crop: at either edge.
_CORNER_OFFSETS = (0.0, round(1 - OVERLAY_CORNER_KEEP, 6))
#: Crops compared box to box: the four 70 % corner crops (one of them misses any caption bar, logo or
#: watermark that covers less than 30 % of the picture's width or height at a side or corner) and the 70 and
#: 80 % centre crops (they leave out the black corners of a copy rotated by a few degrees).
OVERLAY_BOXES: tuple[int, ...] = tuple(
    i for i, (keep, top, left) in enumerate(CROP_BOXES)
    if (keep == OVERLAY_CORNER_KEEP and round(top, 6) in _CORNER_OFFSETS and round(left, 6) in _CORNER_OFFSETS)
    or (keep in OVERLAY_CENTRE_KEEPS and round(top, 6) == round(left, 6) == round((1 - keep) / 2, 6))
)


def _same_crop_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, config: MatchConfig,
    ref_index: Any = None, shard: ReferenceShard | None = None,
) -> list[Candidates]:
    """Unmatched samples whose corner crop hashes agree with the same crop of a reference (overlays).

    Only pictures large enough for dense alignment, which verifies these pairs: below ``align.MIN_SIDE`` (CIFAR
    size) it cannot, and the stage proposed 49k such pairs on CIFAR-10 (test vs train and test vs itself) for none.
    """
    rows = np.flatnonzero(open_rows & _large_enough_to_align(new))
    ref_rows = ref_index.large_rows() if ref_index is not None else np.flatnonzero(_large_enough_to_align(ref))
    found = []
    n_ref = len(ref) if shard is None else shard.total  # the whole reference's chance, on every rank
    radius = chance_limited_radius(config.crop_radius, n_ref * len(OVERLAY_BOXES))  # chance over every box
    for box in OVERLAY_BOXES:
        if not len(rows) or not len(ref_rows):
            break
        index, ref_rows = ref_index.crop_box(box) if ref_index is not None else _box_index(ref, ref_rows, box)
        q, r, dist = index.search(new.crop_hashes[rows, box], radius)
        found.append(Candidates(rows[q], ref_rows[r], dist, False, True, np.full(len(q), box)))
    return found


def _box_index(ref: FingerprintTable, ref_rows: np.ndarray, box: int) -> tuple[HammingIndex, np.ndarray]:
    """A Hamming index over crop ``box`` of the reference rows ``ref_rows``, and those rows."""
    codes = np.asarray(ref.crop_hashes[:, box])
    return HammingIndex(codes if len(ref_rows) == len(ref) else codes[ref_rows]), ref_rows


#: ``box`` value of candidates from :func:`_whole_picture_candidates`: verified in both directions.
WHOLE_PICTURE = -2


def _whole_picture_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, ref_index: HammingIndex,
    config: MatchConfig, trimmed_index: tuple[HammingIndex, np.ndarray] | None = None,
) -> list[Candidates]:
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
    if trimmed_index is None:
        ref_trimmed = np.flatnonzero((ref.phash_whole != ref.phash) & ref_large)
    else:
        ref_trimmed = trimmed_index[1]
    found = []
    if len(new_trimmed):  # trimmed new sample vs the trimmed hashes of every reference
        q, r, dist = ref_index.search(new.phash_whole[new_trimmed], config.hash_radius)
        keep = ref_large[r]
        found.append((new_trimmed[q[keep]], r[keep], dist[keep]))
    if len(ref_trimmed) and len(rows):  # any new sample vs the whole pictures of trimmed references
        index = trimmed_index[0] if trimmed_index is not None else HammingIndex(ref.phash_whole[ref_trimmed])
        for queries in (rows, new_trimmed):
            if len(queries):
                code = new.phash[queries] if queries is rows else new.phash_whole[queries]
                q, r, dist = index.search(code, config.hash_radius)
                found.append((queries[q], ref_trimmed[r], dist))
    return [Candidates(q, r, d, False, True, np.full(len(q), WHOLE_PICTURE)) for q, r, d in found]


#: Samples per task of the threads that turn samples back (decode and 12 warps each).
ROTATION_CHUNK = 64
#: ``box`` values of candidates from :func:`_rotation_candidates`: ``ROTATED - i`` for the ``i``-th of
#: :func:`_rotation_angles` (the angle that turned the sample back onto its candidate).
ROTATED = -3


def _rotation_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, same_table: bool, config: MatchConfig,
    ref_index: Any = None, shard: ReferenceShard | None = None,
) -> list[Candidates]:
    """Unmatched samples that may be rotated copies on the same canvas (black or smeared corners, size unchanged).

    Each is turned back by ``±ROTATION_STEP, ±2·ROTATION_STEP, ... ±max_rotation`` degrees; the centre crop of each
    (:func:`_turned_back_crops`) is pHashed and looked up among the references' hashes of the same crop box and of
    the smaller centred ones (a copy rotated, then cropped upright, shows a smaller centre of the reference). Hits
    whose crops correlate (gray NCC >= ``rotation_min_thumb_similarity``) go to local features, which verify any
    rotation. Only pictures large enough for dense alignment (not CIFAR size: at 32 px a turned-back crop keeps too
    little to hash) and only samples every earlier stage left unmatched pay for it.
    """
    rows = np.flatnonzero(open_rows & _large_enough_to_align(new))
    ref_rows = ref_index.large_rows() if ref_index is not None else np.flatnonzero(_large_enough_to_align(ref))
    angles = _rotation_angles(config)
    if not len(rows) or not len(ref_rows) or not len(angles):
        return []

    def turned(part: list[int]) -> tuple[np.ndarray, np.ndarray]:
        crops = [_turned_back_crops(decode_detail(new.details[row]), angles) for row in part]
        return np.concatenate([c for c, _ in crops]), np.concatenate([b for _, b in crops])

    def hashed(part: list[int]) -> tuple[np.ndarray, np.ndarray]:
        crops, boxes = turned(part)
        return phash_batch(crops), boxes  # only the codes are kept: 49 KB of crops per sample were 4.7 GB at 100k

    chunks = [rows[i : i + ROTATION_CHUNK].tolist() for i in range(0, len(rows), ROTATION_CHUNK)]
    parts = _threaded_map(hashed, chunks, default_workers())
    codes = np.concatenate([c for c, _ in parts])
    boxes = np.concatenate([b for _, b in parts])
    query_rows = np.repeat(rows, len(angles))
    n_large = len(ref_rows) if shard is None else shard.large_total
    # a turned-back crop is looked up among the references' crops of its own box and of every smaller centred box:
    # a copy rotated and then cropped to an upright rectangle shows less of the reference than its own canvas,
    # so its turned-back crop shows the centre of the reference at a smaller box
    keep_of = {box: keep for keep, box in _CENTRE_BOXES}
    looked_up = {ref_box: np.isin(boxes, [box for box, keep in keep_of.items() if keep >= keep_of[ref_box] - 1e-6])
                 for ref_box in keep_of}  # reference box -> which turned-back crops are looked up there
    # each sample's radius from its own lookups (its angles' boxes decide how many), so a pair is found or not
    # whatever else is in the batch
    per_sample = sum(m.astype(np.int64) for m in looked_up.values()).reshape(len(rows), len(angles)).sum(axis=1)
    radius_of = {n: chance_limited_radius(config.crop_radius, n_large * n) for n in np.unique(per_sample).tolist()}
    code_radius = np.repeat([radius_of[n] for n in per_sample.tolist()], len(angles))
    found_q, found_r, found_d, found_box = [], [], [], []
    for _, ref_box in _CENTRE_BOXES:
        if not looked_up[ref_box].any():
            continue
        index, _ = ref_index.crop_box(ref_box) if ref_index is not None else _box_index(ref, ref_rows, ref_box)
        for radius in np.unique(code_radius[looked_up[ref_box]]).tolist():
            which = np.flatnonzero(looked_up[ref_box] & (code_radius == radius))
            q, r, dist = index.search(codes[which], radius)
            q, r = which[q], ref_rows[r]
            keep = query_rows[q] != global_rows(shard, r) if same_table else np.ones(len(q), dtype=bool)
            found_q.append(q[keep]), found_r.append(r[keep]), found_d.append(dist[keep])
            found_box.append(np.full(int(keep.sum()), ref_box))
    q, r, dist = np.concatenate(found_q), np.concatenate(found_r), np.concatenate(found_d)
    ref_boxes = np.concatenate(found_box)
    if same_table:
        keep = global_rows(shard, r) < query_rows[q]
        q, r, dist, ref_boxes = q[keep], r[keep], dist[keep], ref_boxes[keep]
    if not len(q):
        return []
    # the turned-back crop against the reference's crop it was found by (a cheap check before local features);
    # the crops of the samples with a hash hit are turned back again (the same arithmetic), the others never kept
    hit_positions, hit_of = np.unique(q // len(angles), return_inverse=True)
    again, _ = turned(rows[hit_positions].tolist())
    new_crops = again[hit_of * len(angles) + q % len(angles)]
    ref_ids, which = np.unique(r, return_inverse=True)
    details = [decode_detail(detail) for detail in values_at(ref.details, ref_ids)]
    ref_crops = _resized_crops(details, which, ref_boxes).astype(np.float32)
    similarity = np.einsum("ij,ij->i", _normalized_rows(new_crops), _normalized_rows(ref_crops))
    ok = similarity >= config.rotation_min_thumb_similarity
    log.debug("rotation stage: %d samples x %d angles, %d hash hits, %d to verify", len(rows), len(angles), len(q),
              int(ok.sum()))
    q, r, dist, ref_boxes = q[ok], r[ok], dist[ok], ref_boxes[ok]
    if not len(q):
        return []
    # one angle per pair, the closest hash (verified once)
    order = np.lexsort((dist, r, query_rows[q]))
    q, r, dist = q[order], r[order], dist[order]
    first = np.r_[True, (query_rows[q][1:] != query_rows[q][:-1]) | (r[1:] != r[:-1])]
    q, r, dist = q[first], r[first], dist[first]
    return [Candidates(query_rows[q], r, dist, False, True, ROTATED - q % len(angles))]


def _frame_candidates(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, same_table: bool, config: MatchConfig,
    ref_index: HammingIndex, shard: ReferenceShard | None = None,
) -> list[Candidates]:
    """Unmatched samples that may show a reference inside a larger picture: a screenshot of an image viewer, a
    frame, a pad filled with a blurred copy of the picture.

    Every other source looks up the new image's own hashes, which describe the whole screenshot. Here the
    rectangles of the new detail image that may hold a framed picture (:func:`framed_rectangles`) are cut out,
    trimmed of uniform borders as every pHash is (:func:`framed_picture`), pHashed
    and looked up among the references' pHashes; hits are verified both ways (the reference inside the new image).
    Only pictures large enough for dense alignment.
    """
    rows = np.flatnonzero(open_rows & _large_enough_to_align(new))
    if not len(rows) or not len(ref):
        return []
    n_ref = len(ref) if shard is None else shard.total

    def hashed(part: list[int]) -> tuple[np.ndarray, np.ndarray]:
        codes, owners = [], []
        for row in part:
            detail = decode_detail(new.details[row])
            for box in framed_rectangles(detail):
                codes.append(cv2.resize(framed_picture(detail, box), (32, 32), interpolation=cv2.INTER_AREA))
                owners.append(row)
        if not codes:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return phash_batch(np.stack(codes)), np.asarray(owners, np.int64)

    chunks = [rows[i : i + ROTATION_CHUNK].tolist() for i in range(0, len(rows), ROTATION_CHUNK)]
    parts = _threaded_map(hashed, chunks, default_workers())
    codes = np.concatenate([c for c, _ in parts])
    owners = np.concatenate([o for _, o in parts])
    radius = chance_limited_radius(config.hash_radius, n_ref * FRAME_RECTANGLES)
    found, r, dist = ref_index.search(codes, radius)
    q = owners[found]
    keep = global_rows(shard, r) < q if same_table else np.ones(len(q), dtype=bool)
    q, r, dist = q[keep], r[keep], dist[keep]
    if not len(q):
        return []
    order = np.lexsort((dist, r, q))  # each pair once, at its closest rectangle
    q, r, dist = q[order], r[order], dist[order]
    first = np.r_[True, (q[1:] != q[:-1]) | (r[1:] != r[:-1])]
    q, r, dist = q[first], r[first], dist[first]
    order = np.lexsort((r, dist, q))
    return [Candidates(q[order], r[order], dist[order], False, True, np.full(len(q), WHOLE_PICTURE))]


#: Inverted lists of the approximate index: about ``KNN_ROWS_PER_LIST`` reference rows each, at most
#: ``KNN_MAX_LISTS``.
KNN_ROWS_PER_LIST = 1024
KNN_MAX_LISTS = 4096


#: Lists probed per query (of ~1000 at 1M rows) and rows the lists are trained on (k-means, fixed seed).
KNN_NPROBE = 16


#: Reference rows up to which the kNN stage searches exhaustively (faiss ``IndexFlatIP``, exact); above, the
#: inverted file (see :func:`_coarse_index`). The bound is what a query reads there anyway (``KNN_NPROBE`` lists
#: of ``KNN_ROWS_PER_LIST`` rows): an exact search costs ``queries x rows``, so at the former bound of 200k it
#: grew to 42 s for 100k queries x 100k rows, more than the whole 1M x 100k match spends on the inverted file.
KNN_EXACT_MAX_ROWS = KNN_NPROBE * KNN_ROWS_PER_LIST


KNN_TRAIN_ROWS = 65_536
#: Seeds of the training sample (numpy) and of faiss k-means: the same lists, run after run.
KNN_SAMPLE_SEED = 0
KNN_KMEANS_SEED = 1234
#: The kNN candidates' ``dist``: (1 - correlation) in hundredths, rounded (the best verified first).
KNN_RANK_SCALE = 100


#: Reference rows added to the index per step (bounds the float32 copy read from a manifest).
KNN_ADD_CHUNK = COARSE_CHUNK


def _coarse_index(ref_thumbs: Any, shard: ReferenceShard | None = None) -> Any:
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

    total = n if shard is None else shard.total  # the whole reference decides, on every rank alike
    if total <= KNN_EXACT_MAX_ROWS:
        index = faiss.IndexFlatIP(COARSE_DIM)
        for start in range(0, n, KNN_ADD_CHUNK):
            index.add(np.ascontiguousarray(read(slice(start, start + KNN_ADD_CHUNK))))
        return index
    nlist = int(min(KNN_MAX_LISTS, max(1, total // KNN_ROWS_PER_LIST)))
    trainer = faiss.IndexIVFFlat(faiss.IndexFlatIP(COARSE_DIM), COARSE_DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(KNN_SAMPLE_SEED).choice(total, size=min(total, KNN_TRAIN_ROWS),
                                                                   replace=False))
    if shard is None or not shard.split:
        training = read(sample)
    else:  # the same global sample on every rank: each rank reads the rows it holds, all of them are gathered
        mine, local = shard.owned(sample)
        vectors = read(local) if len(local) else np.zeros((0, COARSE_DIM), np.float32)
        ids, training = all_gather_arrays(sample[mine], np.asarray(vectors, np.float32).reshape(-1, COARSE_DIM))
        training = training[np.argsort(ids, kind="stable")]
    trainer.cp.seed = KNN_KMEANS_SEED
    trainer.train(np.ascontiguousarray(training))  # k-means: the lists' centroids
    index = InvertedFileIP(trainer.quantizer.reconstruct_n(0, nlist), KNN_NPROBE)
    index.build(n, COARSE_DIM, lambda start, stop: read(slice(start, stop)))
    return index


#: Quarter turns looked up by the cascade's quarter-turn stage (``np.rot90``'s ``k``: 90, 180, 270 degrees).
QUARTER_TURNS = (1, 2, 3)


def turned_thumbs(thumbs: Any, rows: np.ndarray, turns: int) -> np.ndarray:
    """The RGB thumbnails of ``rows`` turned by ``turns`` quarter turns counter-clockwise (``np.rot90``).

    Trimming and resizing commute with a quarter turn, so this is the thumbnail of the turned picture, and the
    pHash of its gray version is the turned picture's pHash.
    """
    rgb = np.asarray(thumbs[rows]) if len(rows) else np.zeros((0, 32, 32, 3), np.uint8)
    return np.ascontiguousarray(np.rot90(rgb, turns, axes=(1, 2)))


def _nearest_thumbnails(
    new: FingerprintTable, ref: FingerprintTable, open_rows: np.ndarray, same_table: bool, config: MatchConfig,
    index: Any = None, shard: ReferenceShard | None = None,
) -> Candidates:
    """Candidates the hashes missed (rotations, overlays, off-centre crops): nearest 8x8 thumbnails (faiss).

    Exact below :data:`KNN_EXACT_MAX_ROWS` reference rows, an inverted-file index above (:func:`_coarse_index`).
    With a split ``shard`` these are this rank's rows among every rank's ``k`` nearest (collective).
    """
    rows = np.flatnonzero(open_rows)
    empty = np.zeros(0, np.int64)
    if not len(rows):
        return Candidates(empty, empty, empty, False, True)
    index = _coarse_index(ref.thumbs, shard) if index is None else index
    n_ref = len(ref) if shard is None else shard.total
    k = min(n_ref, config.knn_candidates + (1 if same_table else 0))
    queries = table_coarse_vectors(new.thumbs, rows)
    if isinstance(index, InvertedFileIP):
        found, r, sim = index.search_above(queries, k, config.knn_min_similarity)
        q = rows[found]
    else:
        sims, ids = index.search(queries, min(k, len(ref))) if len(ref) else (np.zeros((len(rows), 0)),) * 2
        q = np.repeat(rows, sims.shape[1])
        r, sim = ids.reshape(-1).astype(np.int64), sims.reshape(-1)
    del index
    keep = (r >= 0) & (sim >= config.knn_min_similarity)
    q, r, sim = q[keep], r[keep], sim[keep]
    if shard is not None and shard.split:  # the k nearest over every rank's rows, then this rank's of them
        q, r, _, sim = top_k_across_ranks(shard, q, r, sim, k)
    keep = np.ones(len(q), dtype=bool)
    if same_table:
        keep &= global_rows(shard, r) < q
    # distance column: rank by similarity (0 = most similar) so the best candidates are verified first
    return Candidates(q[keep], r[keep], np.round((1.0 - sim[keep]) * KNN_RANK_SCALE).astype(np.int64), False,
                      True)


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
        details = [decode_detail(detail) for detail in values_at(ref.details, rows)]  # once per block
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
