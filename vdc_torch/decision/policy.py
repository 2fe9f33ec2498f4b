"""The decision rule: ``Policy``, the evidence check and :func:`decide`, one pure function of the counts.

Kept apart from the gate so it is easy to read and to test with a table of cases; every reason a user reads is
written here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from vdc_torch.errors import InsufficientEvidenceError, InvalidParameterError
from vdc_torch.fingerprints.table import Problem
from vdc_torch.search.cascade import MatchKind

log = logging.getLogger(__name__)


class Action(str, Enum):
    """What to do with the new dataset."""

    SKIP = "skip"
    TRAIN = "train"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Policy:
    """When to skip training.

    Skip only when ``overlap >= skip_overlap``, there is no label conflict and the novel delta has fewer than
    ``min_delta_to_train`` samples; otherwise train on the delta. The default 0.95 means: if at least 19 of 20
    readable new samples were already trained on and what is left is smaller than a couple of batches, a training
    run cannot be worth its cost. ``similar`` matches never count toward the overlap unless ``count_similar``.
    """

    skip_overlap: float = 0.95
    min_delta_to_train: int = 64
    count_similar: bool = False
    #: No decision (``InsufficientEvidenceError``) when more than this share of a dataset's samples cannot be
    #: read: the unread samples could be anything. 0.05 = as many as the default ``skip_overlap`` tolerates novel
    #: ones, so unread samples alone can never turn a "train" into a "skip". 1.0 = decide on whatever was read.
    max_problem_share: float = 0.05
    #: Train whenever the new data holds a class the reference has none of (its head must grow, and nothing the
    #: model learnt covers it), whatever the overlap. Only labelled data on both sides has classes. False: decide
    #: on the overlap alone; the classes are still reported in ``Decision.classes``.
    train_on_new_classes: bool = True
    #: Leave the novel samples that carry a quality flag (blank, dark, bright, blurry, tiny, extreme_aspect; see
    #: :mod:`vdc_torch.fingerprints.quality`) out of the delta. False (the default): they are reported in
    #: ``Decision.quality`` and stay in the delta.
    exclude_low_quality: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.skip_overlap <= 1.0:
            raise InvalidParameterError(f"skip_overlap={self.skip_overlap!r} must lie in [0, 1]")
        if not 0.0 <= self.max_problem_share <= 1.0:
            raise InvalidParameterError(f"max_problem_share={self.max_problem_share!r} must lie in [0, 1]")
        if self.min_delta_to_train < 0:
            raise InvalidParameterError(f"min_delta_to_train={self.min_delta_to_train!r} must be >= 0")

    @property
    def counted_kinds(self) -> frozenset[str]:
        """The match kinds that count as already trained on: exact and near-duplicate, and similar if
        ``count_similar``. The delta, the overlap, reports and hooks all read this one definition."""
        kinds = {MatchKind.EXACT.value, MatchKind.NEAR_DUPLICATE.value}
        return frozenset(kinds | {MatchKind.SIMILAR.value} if self.count_similar else kinds)


def check_evidence(readable: int, problems: Sequence[Problem], policy: Policy, what: str = "new dataset") -> None:
    """Raise :class:`InsufficientEvidenceError` when too little of a dataset was read to decide on it."""
    unreadable = [p for p in problems if p.fatal]
    total = readable + len(unreadable)
    share = len(unreadable) / total if total else 1.0
    if readable and share <= policy.max_problem_share:
        return
    reasons = "; ".join(dict.fromkeys(p.reason for p in unreadable[:3]))
    if readable == 0:
        head = f"the {what} has no readable sample ({len(unreadable)} unreadable)" if total else f"the {what} is empty"
    else:
        head = (f"{len(unreadable)} of the {total} samples of the {what} ({share:.1%}) could not be read, more than "
                f"Policy.max_problem_share={policy.max_problem_share:g}")
    raise InsufficientEvidenceError(
        f"no decision: {head}, so whatever it holds is unknown" + (f". First problems: {reasons}" if reasons else "")
        + ". Fix or remove the files (decision problems list them all), or raise Policy(max_problem_share=...) "
        "(vdc: --max-problem-share) to decide on the readable part"
    )


def decide(
    overlap: float,
    delta_size: int,
    conflicts: int,
    readable: int,
    policy: Policy,
    *,
    unreadable: int = 0,
    no_reference: str | None = None,
    new_classes: Sequence[str] = (),
    low_quality: int = 0,
) -> tuple[Action, str]:
    """The action and a one-sentence reason, from the counts alone.

    ``readable == 0`` is no evidence at all: :class:`InsufficientEvidenceError`, never a skip. ``no_reference``
    (why there is nothing to compare with, e.g. "no reference manifest exists yet at ...") means nothing has been
    trained on yet: train on every readable, deduplicated sample. ``unreadable`` samples are named in the reason.
    ``new_classes`` (labels of the new data the reference has none of) make it train when
    ``policy.train_on_new_classes``, and are named in the reason either way. ``low_quality`` novel samples carry a
    quality flag: left out of ``delta_size`` already when ``policy.exclude_low_quality``, and named in the reason.
    """
    action, reason = _action_and_reason(overlap, delta_size, conflicts, readable, policy, no_reference)
    if new_classes and no_reference is None:
        named = ", ".join(repr(c) for c in list(new_classes)[:5]) + (", ..." if len(new_classes) > 5 else "")
        if policy.train_on_new_classes and (action is Action.SKIP or not conflicts):
            action, reason = Action.TRAIN, (
                f"Train on the delta: {len(new_classes)} class(es) the reference has never seen ({named}); "
                f"overlap {overlap:.1%}, {delta_size} novel samples.")
        else:
            reason += f" The new data holds {len(new_classes)} class(es) the reference has never seen ({named})."
    if low_quality:
        reason += (f" {low_quality} low-quality novel sample(s) were left out of the delta (see quality)."
                   if policy.exclude_low_quality else
                   f" {low_quality} novel sample(s) look low-quality (see quality; Policy(exclude_low_quality=True) "
                   "leaves them out).")
    if unreadable:
        reason += f" {unreadable} unreadable sample(s) were left out (see problems)."
    return action, reason


def _action_and_reason(overlap: float, delta_size: int, conflicts: int, readable: int, policy: Policy,
                       no_reference: str | None) -> tuple[Action, str]:
    pct = f"{overlap:.1%}"
    if readable == 0:
        raise InsufficientEvidenceError("no decision: the new dataset has no readable samples")
    if no_reference is not None:
        duplicates = readable - delta_size
        extra = f" ({duplicates} duplicate(s) inside the new data left out)" if duplicates else ""
        return Action.TRAIN, (f"Train on the delta: {no_reference}, so all {readable} readable samples are new; "
                              f"{delta_size} to train on{extra}.")
    if conflicts:
        return Action.TRAIN, (
            f"Train on the delta: {conflicts} matched sample(s) carry a different label than in the reference "
            f"(overlap {pct}, {delta_size} novel samples); the delta holds them with their new labels."
        )
    if overlap >= policy.skip_overlap and delta_size < policy.min_delta_to_train:
        return Action.SKIP, (
            f"Skip: {pct} of the {readable} readable new samples were already trained on "
            f"(threshold {policy.skip_overlap:.0%}) and only {delta_size} novel samples remain "
            f"(fewer than {policy.min_delta_to_train})."
        )
    if overlap >= policy.skip_overlap:
        return Action.TRAIN, (
            f"Train on the delta: overlap is {pct}, but {delta_size} novel samples remain "
            f"(at least {policy.min_delta_to_train})."
        )
    return Action.TRAIN, (
        f"Train on the delta: only {pct} of the {readable} readable new samples were already trained on "
        f"(below {policy.skip_overlap:.0%}); {delta_size} novel, deduplicated samples."
    )
