"""The cascade's configuration and vocabulary: match kinds (a str enum, strongest first) and their ranks, the columns
of a match table, and the version that invalidates cached matches when the results change."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from vdc_torch.errors import InvalidParameterError


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
#: 15: a verified placement must show at least min_reference_share (0.08) of the reference.
#: 16: quarter turns (a copy turned by 90, 180 or 270 degrees: EXIF orientation lost on export) are looked up.
#: 17: the thumbnail colour check allows a saturation gain of 0.3-1.5 (desaturated copies).
#: 18: framed pictures (a reference inside a screenshot, a frame or a blurred pad) are looked up.
#: 19: candidates of a verification stage are tried in one order, ties broken by reference row (not by index
#: internals), so a reference split across ranks verifies in the same order as one process.
#: 20: framed pictures are also bounded by a flat or smooth surround and looked up trimmed of uniform borders; a
#: turned-back crop is also looked up among smaller centred crops (a copy rotated, then cropped upright).
MATCHING_VERSION = 20


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
    min_reference_share: float = 0.08  # ... and one showing less than this is no copy of it: the smallest crop
    # torchvision's RandomResizedCrop makes by default (scale 0.08). Accuracy suites (seeds 1-13, 21-23): true
    # matches show >= 20 %, CIFAR-10's >= 49 %; the one false match (seed 8, mirrored alignment) showed 4 %
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
    encoder_similarity: float | None = None  # cosine of model embeddings to count; None: derived from the
    # reference at encoder_precision (search/encoder_threshold.py); the small CIFAR-10 CNN's gallery put it at 0.92
    encoder_precision: float = 0.99  # ... the precision that derived cosine keeps on the reference's own copies
    encoder_calibration_samples: int = 2000  # ... reference samples (augmented copies and nearest look-alikes)
    encoder_min_thumb_similarity: float = 0.0  # pixel sanity check of encoder candidates (gray thumbnail NCC)
    max_rotation: float = 30.0  # unmatched samples: turned back by up to this many degrees (0 disables the stage)
    rotation_min_thumb_similarity: float = 0.45  # ... gray NCC of the turned-back centre crop with the reference's
    # crop it was found by; a copy rotated and cropped upright meets a smaller crop at up to ~10 % other scale and
    # 2.5 degrees off (seed 2's at 0.50, below the former 0.6); local features then verify
    quarter_turns: bool = True  # unmatched samples: look up the pHashes of the picture turned by 90, 180 and 270
    # degrees (a phone photo whose EXIF orientation was lost on export), verified by local features
    framed: bool = True  # unmatched samples: look up the rectangles that a flat or smooth surround or straight edges
    # bound (a reference inside a screenshot, a frame or a pad of its own blurred copy), verified with the reference
    # inside the new image

    def __post_init__(self) -> None:
        if self.encoder_similarity is not None and not -1.0 <= self.encoder_similarity <= 1.0:
            raise InvalidParameterError(f"encoder_similarity={self.encoder_similarity!r} must be a cosine in "
                                        "[-1, 1], or None to derive it from the reference")
        if not 0.0 < self.encoder_precision < 1.0:
            raise InvalidParameterError(f"encoder_precision={self.encoder_precision!r} must lie in (0, 1)")
        if self.encoder_calibration_samples < 2:
            raise InvalidParameterError(
                f"encoder_calibration_samples={self.encoder_calibration_samples!r} must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
