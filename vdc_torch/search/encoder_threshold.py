"""The encoder stage's cosine threshold, derived from the reference itself at a named precision.

A fixed cosine means something else for every model, layer and dataset: 0.92 separates copies from look-alikes for
the small CNN of ``../shared/notes/model-encoder-on-cifar10.md``, while another model's embeddings of the same
images may all lie above 0.95. So the gate measures, on a seeded sample of the reference:

* **copies** (positives): an edited copy of each sampled reference thumbnail (a crop of up to 10 % per side resized
  back, saturation 0.7-1.2, contrast 0.9-1.1, brightness -10..10, JPEG re-encoding at quality 60-95), scored by
  its cosine to the original's embedding, and a miss when the stage's thumbnail check
  (``encoder_min_thumb_similarity``) would turn the pair down: the pair the encoder stage has to find. Not
  mirrored: the stage compares embeddings as they are, and the cascade's mirror stages find flipped copies. An
  encoder shown views at its own input size gets the same edits made of each sampled image's view, from its
  decode (:class:`~vdc_torch.fingerprints.encoder.CalibrationCopies`), not of the thumbnail;
* **look-alikes** (negatives): each sampled reference's nearest *other* reference, each pair once: the pair the
  stage would wrongly report when an unrelated new sample resembles it, below every cosine when the stage's
  thumbnail check would turn it down. Neighbours whose thumbnails correlate at near-duplicate level
  (``near_duplicate_similarity``, plain or mirrored) are skipped, being copies inside the reference.

The threshold is the lowest cosine at which the *balanced* precision (copies against as many look-alikes) is at
least ``encoder_precision`` with the share of copies above it taken at its lower and the share of look-alikes at
its upper one-sided 95 % Wilson bound (each bound at one cosine; copies of one sample count as one sample). So a
reference of a few hundred samples cannot show 0.99, and the stage stays off rather than trust a handful of
look-alikes. Balanced precision is not the precision on a drop, which depends on how many of its samples are
copies: the upper bound of the false-match rate (the share of unrelated samples whose nearest look-alike reaches
the cosine) is reported with it. All of it goes into the decision's JSON; when no cosine reaches the precision the
stage is left out and the JSON says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vdc_torch.collective import all_gather_arrays, all_gather_json
from vdc_torch.fingerprints.compute import THUMB_SIDE
from vdc_torch.fingerprints.encoder import CALIBRATION_SEED, CalibrationCopies, augment_image, calibration_plan
from vdc_torch.search.config import MatchConfig
from vdc_torch.search.shards import ReferenceShard, top_k_across_ranks, top_k_per_query
from vdc_torch.search.thumbs import ThumbVerifier

log = logging.getLogger(__name__)

#: Nearest other references searched per sampled reference for a negative that is not a copy.
NEGATIVE_NEIGHBOURS = 5
#: With a small reference, each sampled thumbnail gets this many augmented copies at most, so the positives
#: number at least ``encoder_calibration_samples`` where the reference allows.
MAX_COPIES_PER_SAMPLE = 8
#: One-sided 95 % normal quantile of the Wilson bounds on the shares of copies and look-alikes above a cosine.
CONFIDENCE_Z = 1.645

#: Maps (n, 32, 32, 3) uint8 thumbnails to (n, D) unit embeddings (the gate's encoder).
Embed = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EncoderThreshold:
    """The cosine the encoder stage counts from (``None``: the stage accepts nothing, ``note`` says why), and where
    it came from (``"calibrated"`` or ``"fixed"``)."""

    similarity: float | None
    source: str
    target_precision: float | None = None
    #: On the calibration sample at ``similarity``: the balanced precision (as many look-alikes as copies) from
    #: the two bounds, the lower 95 % bound of the share of copies found (recall) and the upper 95 % bound of the
    #: share of look-alikes reported (false-match rate of an unrelated sample).
    estimated_precision: float | None = None
    estimated_recall: float | None = None
    false_match_rate: float | None = None
    positives: int = 0
    negatives: int = 0
    #: Reference samples the positives and negatives came from.
    sample: int = 0
    note: str = ""
    #: What the encoder was shown: views at its input size from each image's decode, or the 32×32 thumbnails.
    encoder_input: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encoder_threshold(ref_thumbs: Any, ref_embeddings: np.ndarray, embed: Embed, config: MatchConfig,
                      shard: ReferenceShard | None = None, copies: CalibrationCopies | None = None
                      ) -> EncoderThreshold:
    """The encoder stage's threshold for this reference: ``config.encoder_similarity`` when set, else calibrated
    (module docstring). With a split ``shard`` (``ref_thumbs`` and ``ref_embeddings`` this rank's rows) the call
    is collective and gives every rank the threshold one process holding the whole reference gets. ``copies``
    (``of``: reference rows), made and embedded from the reference images' views while they were fingerprinted,
    are the positives instead of edited thumbnails: the calibration then sees what the stage sees."""
    if config.encoder_similarity is not None:
        return EncoderThreshold(float(config.encoder_similarity), "fixed")
    if copies is not None and shard is None:
        return _threshold_from_copies(ref_thumbs, ref_embeddings, config, copies)
    split = shard is not None and shard.split
    total = shard.total if split else len(ref_embeddings)
    if total < 2:
        return EncoderThreshold(None, "calibrated", config.encoder_precision, estimated_recall=0.0, sample=total,
                                note="a reference of fewer than 2 samples has no look-alikes to calibrate on; "
                                     "the encoder stage accepts nothing")
    rng = np.random.default_rng(CALIBRATION_SEED)  # the sample, then its edits, from one stream
    plan = calibration_plan(total, config.encoder_calibration_samples, MAX_COPIES_PER_SAMPLE, rng)
    sample = np.fromiter(plan, np.int64, len(plan))
    thumbs = _sample_thumbs(ref_thumbs, sample, shard if split else None)
    originals = np.repeat(np.arange(len(sample)), list(plan.values()))
    augmented = np.stack([augment_image(thumbs[i], rng) for i in originals])
    sample_emb = embed(thumbs)
    chosen = _threshold_of(sample, thumbs, sample_emb, originals, embed(augmented), augmented, ref_thumbs,
                           ref_embeddings, config, shard if split else None)
    if split:  # every rank computed it; an accelerator's rounding may differ per rank, so rank 0's value counts
        chosen = EncoderThreshold(**all_gather_json(chosen.to_dict())[0])
    return chosen


def _threshold_from_copies(ref_thumbs: Any, ref_embeddings: np.ndarray, config: MatchConfig,
                           copies: CalibrationCopies) -> EncoderThreshold:
    """:func:`encoder_threshold` with the positives given: each copy's cosine to its original's embedding."""
    sample, originals = np.unique(copies.of, return_inverse=True)
    if len(ref_embeddings) < 2 or not len(sample):
        return EncoderThreshold(None, "calibrated", config.encoder_precision, estimated_recall=0.0,
                                sample=len(sample), note="no reference samples to calibrate on; the encoder stage "
                                                         "accepts nothing")
    thumbs = np.asarray(ref_thumbs[sample])
    return _threshold_of(sample, thumbs, ref_embeddings[sample], originals, copies.embeddings, copies.thumbs,
                         ref_thumbs, ref_embeddings, config, None)


def _threshold_of(sample: np.ndarray, thumbs: np.ndarray, sample_emb: np.ndarray, originals: np.ndarray,
                  copy_emb: np.ndarray, copy_thumbs: np.ndarray, ref_thumbs: Any, ref_embeddings: np.ndarray,
                  config: MatchConfig, shard: ReferenceShard | None) -> EncoderThreshold:
    """The threshold from the sampled references (rows ``sample``: ``thumbs``, ``sample_emb``) and the copies of
    them (``originals``: each copy's place in ``sample``): a copy's cosine to its original is a positive unless the
    stage's thumbnail check would turn the pair down; each sample's nearest look-alike a negative."""
    positives = np.einsum("ij,ij->i", copy_emb, sample_emb[originals])
    reportable = ThumbVerifier(copy_thumbs, thumbs, config).similarity(np.arange(len(originals)), originals)
    positives = np.where(reportable >= config.encoder_min_thumb_similarity, positives, -np.inf)
    negatives = _hardest_negatives(sample, thumbs, sample_emb, ref_thumbs, ref_embeddings, config, shard)
    return choose_threshold(positives, negatives, config.encoder_precision, len(sample),
                            samples=config.encoder_calibration_samples)


def wilson_bounds(hits: np.ndarray, total: int, z: float = CONFIDENCE_Z,
                  share: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper Wilson score bounds of the proportions ``hits / total`` (or of ``share`` observed on
    ``total`` independent samples)."""
    p = np.asarray(hits, np.float64) / total if share is None else np.asarray(share, np.float64)
    centre = p + z * z / (2 * total)
    spread = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    scale = 1 + z * z / total
    return (centre - spread) / scale, (centre + spread) / scale


def choose_threshold(positives: np.ndarray, negatives: np.ndarray, target_precision: float, sample: int,
                     samples: int | None = None) -> EncoderThreshold:
    """The lowest copy's cosine at which ``positives`` (copies; ``-inf`` for a copy the stage cannot report) against
    ``negatives`` (look-alikes; ``-inf`` for none) keep ``target_precision`` (module docstring); accepting nothing
    when none does. The copies count as ``sample`` independent samples. ``samples``: the configured sample size,
    named in the note when it is what limits the precision that can be shown."""
    pos = np.sort(np.asarray(positives, np.float64))[::-1]
    neg = np.sort(np.asarray(negatives, np.float64))
    counts = dict(positives=len(pos), negatives=int(np.isfinite(neg).sum()), sample=sample,
                  target_precision=target_precision)
    if not np.isfinite(pos).any() or not len(neg):
        return EncoderThreshold(None, "calibrated", estimated_recall=0.0,
                                note="no copies or look-alikes to calibrate on; the encoder stage accepts nothing",
                                **counts)
    pos = pos[np.isfinite(pos)]
    found = np.arange(1, len(pos) + 1) / len(positives)  # share of copies at or above each copy's cosine
    recall, _ = wilson_bounds(None, min(sample, len(positives)), share=found)
    _, false_rate = wilson_bounds(len(neg) - np.searchsorted(neg, pos, side="left"), len(neg))
    precision = recall / (recall + false_rate)
    ok = np.flatnonzero(precision >= target_precision)
    if not len(ok):
        best = float(precision.max())
        limit = ("" if samples is None or sample < samples else
                 f", or raise MatchConfig.encoder_calibration_samples ({samples}) where the reference has more")
        return EncoderThreshold(
            None, "calibrated", estimated_precision=round(best, 4), estimated_recall=0.0,
            note=f"no cosine shows balanced precision {target_precision:g} on this reference (at best {best:.4f} "
                 f"from {sample} samples: too few to rule out a {1 - target_precision:.2%} false-match rate, or its "
                 "copies lie among its look-alikes), so the encoder stage accepts nothing; lower "
                 f"MatchConfig.encoder_precision or fix MatchConfig.encoder_similarity to use it{limit}",
            **counts)
    cut = int(ok[-1])
    return EncoderThreshold(float(pos[cut]), "calibrated", estimated_precision=round(float(precision[cut]), 4),
                            estimated_recall=round(float(recall[cut]), 4),
                            false_match_rate=round(float(false_rate[cut]), 5), **counts)


#: The edit a calibration copy makes (the name this module gave it before views; any picture size).
augment_thumb = augment_image


def _sample_thumbs(ref_thumbs: Any, sample: np.ndarray, shard: ReferenceShard | None) -> np.ndarray:
    """Thumbnails of the sampled global rows, in order (gathered from the ranks that hold them)."""
    if shard is None:
        return np.asarray(ref_thumbs[sample])
    mine, local = shard.owned(sample)
    side = THUMB_SIDE
    held = np.asarray(ref_thumbs[local]) if len(local) else np.zeros((0, side, side, 3), np.uint8)
    rows, thumbs = all_gather_arrays(sample[mine], held.reshape(len(held), side * side * 3))
    order = np.argsort(rows, kind="stable")
    return np.ascontiguousarray(thumbs[order].reshape(len(rows), side, side, 3))


def _hardest_negatives(sample: np.ndarray, thumbs: np.ndarray, sample_emb: np.ndarray, ref_thumbs: Any,
                       ref_embeddings: np.ndarray, config: MatchConfig, shard: ReferenceShard | None) -> np.ndarray:
    """Per sampled reference, the cosine to its nearest other reference that is not a copy of it, ``-inf`` when the
    encoder stage's thumbnail check turns that pair down (or none is among its nearest); a pair that is both
    samples' nearest counts once (over every rank's rows with a split shard)."""
    from vdc_torch.fingerprints.encoder import nearest_neighbours

    k = NEGATIVE_NEIGHBOURS + 1
    if len(ref_embeddings):
        sims, ids = nearest_neighbours(sample_emb, ref_embeddings, k=min(k, len(ref_embeddings)))
    else:
        sims, ids = np.zeros((len(sample), 0), np.float32), np.zeros((len(sample), 0), np.int64)
    q = np.repeat(np.arange(len(sample)), sims.shape[1])
    local, cos = ids.reshape(-1).astype(np.int64), sims.reshape(-1).astype(np.float32)
    found = local >= 0
    q, local, cos = q[found], local[found], cos[found]
    rows = local
    if shard is not None:  # the k nearest over every rank's rows (as one process finds them), then this rank's
        q, local, rows, cos = top_k_across_ranks(shard, q, local, cos, k)
    verifier = ThumbVerifier(thumbs, ref_thumbs, config)
    plain = verifier.similarity(q, local)
    copy = np.maximum(plain, verifier.similarity(q, local, mirror=True))
    keep = (rows != sample[q]) & (copy < config.near_duplicate_similarity)
    q, rows, cos = q[keep], rows[keep], cos[keep]
    reported = plain[keep] >= config.encoder_min_thumb_similarity
    if shard is not None:
        q, rows, cos, reported = all_gather_arrays(q, rows, cos, reported)
    # the nearest per sample (highest cosine, then lowest row), which the stage reports if its check passes; then
    # each unordered pair once
    first = top_k_per_query(q, rows, cos, 1)
    q, rows, cos = q[first], rows[first], np.where(reported[first], cos[first], -np.inf)
    pair = np.stack([np.minimum(sample[q], rows), np.maximum(sample[q], rows)], axis=1)
    _, once = np.unique(pair, axis=0, return_index=True)
    nearest = np.full(len(sample), -np.inf)
    nearest[q] = np.nan  # a pair already counted for the other sample: no observation of its own
    nearest[q[once]] = cos[once]
    return nearest[~np.isnan(nearest)]
