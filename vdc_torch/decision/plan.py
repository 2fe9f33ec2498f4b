"""The training plan: the delta plus a replay sample of the reference, against catastrophic forgetting.

Fine-tuning a model on new data alone makes it forget what it learnt before (McCloskey & Cohen, 1989; the
rehearsal baselines of continual learning, e.g. Rolnick et al., 2019, "Experience replay for continual
learning"): the cheap, standard guard is to mix a sample of the old training data into every new run. The gate
knows both datasets, so it draws that sample here: ``round(replay × len(delta))`` reference samples (at most the
whole reference), seeded, and by default class-balanced — the same number from every reference class, a class
with fewer samples giving all it has and the rest spread over the others — so a rare old class is rehearsed as
much as a common one. ``examples/train_with_gate.py`` measures the effect on CIFAR-10.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch.utils.data

from vdc_torch.data.dataset import Dataset, is_hf_dataset, one_transform
from vdc_torch.decision.inputs import as_dataset
from vdc_torch.errors import InvalidParameterError

log = logging.getLogger(__name__)

#: Values of ``balance``: ``"class"`` (the same count from every class) or ``None`` (uniform over the reference).
BALANCE_CHOICES = ("class", None)


def replay_count(delta_size: int, replay: float, reference_size: int) -> int:
    """How many reference samples a plan replays: ``round(replay × delta_size)``, at most the reference."""
    if isinstance(replay, bool) or not isinstance(replay, (int, float)) or not replay >= 0:
        raise InvalidParameterError(f"replay={replay!r} must be a number >= 0 (a share of the delta's size)")
    return min(int(round(float(replay) * delta_size)), reference_size)


def replay_positions(labels: Sequence[Any], count: int, balance: str | None = "class", seed: int = 0) -> list[int]:
    """Positions (sorted) of ``count`` samples drawn from a reference with these ``labels`` (``None``: unlabelled).

    ``balance="class"`` draws the same number from every labelled class (water-filling: a class with fewer samples
    gives all it has, the rest is shared by the others; a remainder goes one each to classes drawn at random); when no
    sample is labelled it draws uniformly and says so in the log. ``balance=None`` draws uniformly. The same
    labels, count and seed give the same positions.
    """
    if balance not in BALANCE_CHOICES:
        raise InvalidParameterError(f"balance={balance!r} is not one of {', '.join(map(repr, BALANCE_CHOICES))}")
    n = len(labels)
    count = max(0, min(int(count), n))
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        if label is not None:
            by_class.setdefault(str(label), []).append(position)
    if balance is None or not by_class:
        if balance is not None:
            log.info("replay: the reference has no labels, so the replay sample is drawn uniformly")
        return sorted(int(p) for p in rng.choice(n, size=count, replace=False)) if count else []
    names = sorted(by_class)
    sizes = np.array([len(by_class[name]) for name in names])
    need = min(count, int(sizes.sum()))
    level = int(sizes.max())  # the largest count every class gives up to (all it has if fewer) within ``need``
    given = 0
    for i, size in enumerate(np.sort(sizes).tolist()):
        left = len(sizes) - i
        if given + size * left > need:
            level = (need - given) // left
            break
        given += size
    quotas = np.minimum(sizes, level)
    open_classes = np.flatnonzero(sizes > level)
    quotas[rng.permutation(open_classes)[: need - int(quotas.sum())]] += 1  # the remainder, one each
    quota = dict(zip(names, quotas.tolist()))
    chosen: list[int] = []
    for name in names:
        members = np.asarray(by_class[name])
        chosen.extend(int(p) for p in members[rng.permutation(len(members))[: quota[name]]])
    return sorted(chosen)


def reference_labels(reference: Any) -> tuple[Dataset, list[str | None]]:
    """The reference as the gate reads it and the class name of each of its samples (read without decoding)."""
    data = as_dataset(reference)
    if not isinstance(data, Dataset):
        raise InvalidParameterError(
            f"the reference is an iterable dataset ({type(reference).__name__}): a replay sample needs random access; "
            "pass the map-style dataset (or folder) the model was trained on")
    return data, [data.label_name(label) for _, label in data.samples]


def combine(delta: Any, reference: Any, reference_data: Dataset, positions: list[int]) -> Any:
    """The delta followed by the reference samples at ``positions``, as the kind of object passed where possible.

    Two Hugging Face datasets with the same features give one ``datasets.Dataset``; a folder (or a
    :class:`vdc_torch.Dataset`) as reference next to a delta of one gives one :class:`vdc_torch.Dataset` whose
    classes are merged by name; anything else a ``ConcatDataset`` of the delta and a ``Subset`` of the reference,
    with a warning when both sides name their classes and give a shared name different label numbers.
    """
    if isinstance(delta, torch.utils.data.IterableDataset):  # the delta of a stream: replay after it, in one pass
        replayed = torch.utils.data.Subset(reference_data if isinstance(reference, (str, os.PathLike)) else reference,
                                           positions)
        return torch.utils.data.ChainDataset([delta, _Iterated(replayed)])
    if is_hf_dataset(reference) and is_hf_dataset(delta):
        import datasets

        replayed = reference.select(positions)
        if replayed.features == delta.features:
            return datasets.concatenate_datasets([delta, replayed])
        warnings.warn("the new and the reference Hugging Face datasets have different features; the training set is "
                      "a torch ConcatDataset of both", UserWarning, stacklevel=3)
        return torch.utils.data.ConcatDataset([delta, replayed])
    delta_inner = delta.dataset if isinstance(delta, torch.utils.data.Subset) else None
    if isinstance(delta_inner, Dataset) and isinstance(reference, (str, os.PathLike, Dataset)):
        parts = [delta_inner.view(list(delta.indices)), reference_data.view(positions)]
        if one_transform(parts):  # a folder reference takes the new data's transform: one training pipeline
            return Dataset.concat(parts)
        _warn_on_label_clash(delta_inner, reference_data)  # each part keeps its own transform
        return torch.utils.data.ConcatDataset(parts)
    if isinstance(reference, (str, os.PathLike)):
        reference = reference_data
    _warn_on_label_clash(delta_inner if delta_inner is not None else delta, reference)
    return torch.utils.data.ConcatDataset([delta, torch.utils.data.Subset(reference, positions)])


def _warn_on_label_clash(new: Any, reference: Any) -> None:
    new_map, ref_map = getattr(new, "class_to_idx", None), getattr(reference, "class_to_idx", None)
    if not isinstance(new_map, dict) or not isinstance(ref_map, dict):
        return
    clash = sorted(c for c in set(new_map) & set(ref_map) if new_map[c] != ref_map[c])
    if clash:
        shown = ", ".join(f"{c!r} ({new_map[c]} new, {ref_map[c]} reference)" for c in clash[:3])
        warnings.warn(f"the new data and the reference number their classes differently: {shown}"
                      f"{' ...' if len(clash) > 3 else ''}; build both with the same class_to_idx, or labels of the "
                      "training set will disagree", UserWarning, stacklevel=4)


class _Iterated(torch.utils.data.IterableDataset):
    """A map-style dataset read in order, as an iterable one (to chain it after a stream's delta)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __iter__(self) -> Any:
        return (self.dataset[i] for i in range(len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset)
