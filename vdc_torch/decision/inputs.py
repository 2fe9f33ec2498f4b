"""What users pass, as the gate reads it (``as_dataset``), and the delta as the kind of object they passed (``delta_of``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch.utils.data

from vdc_torch.data.dataset import Dataset, NovelStream, Stream, is_hf_dataset, is_stream
from vdc_torch.errors import InvalidParameterError

log = logging.getLogger(__name__)


def as_dataset(data: Any) -> Dataset | Stream:
    """A :class:`Dataset` view of a folder path, a ``Dataset``, any torch map-style dataset or a Hugging Face
    ``datasets.Dataset``; a :class:`Stream` of an iterable dataset."""
    if isinstance(data, (Dataset, Stream)):
        return data
    if isinstance(data, (str, os.PathLike)):
        return Dataset(data)
    if is_stream(data):
        return Stream(data)
    if is_hf_dataset(data) or isinstance(data, torch.utils.data.Dataset):
        return Dataset.from_torch(data)
    raise InvalidParameterError(
        f"dataset of type {type(data).__name__} is not supported; pass a folder path, a vdc_torch.Dataset, a torch "
        "Dataset (map-style or IterableDataset) or a Hugging Face datasets.Dataset / IterableDataset"
    )


def delta_of(original: Any, data: Dataset, indices: list[int]) -> Any:
    """The novel samples ``indices`` as the kind of object the user passed (see :attr:`Decision.delta`)."""
    if isinstance(data, _StreamView):
        keyed = all(k is not None for k in data.keys)
        return NovelStream(data.stream.original, indices, [data.keys_by_position[i] for i in indices], keyed)
    if is_hf_dataset(original):
        return original.select(indices)
    if isinstance(original, torch.utils.data.Dataset):
        return torch.utils.data.Subset(original, indices)
    return torch.utils.data.Subset(data, indices)


class _StreamView(Dataset):
    """Internal: what one pass over a :class:`Stream` saw, as a dataset of names and labels (not re-readable)."""

    stream: Stream
    keys: list[str | None]
    keys_by_position: dict[int, str]

    def source_image(self, index: int) -> Any:
        raise InvalidParameterError("a stream sample cannot be read again by index; iterate decision.delta")


def _stream_view(stream: Stream, seen: list[tuple[int, str, bool, Any]]) -> _StreamView:
    """The :class:`_StreamView` of ``(position, key, has_key, label)`` records."""
    names = [label for *_, label in seen if isinstance(label, str)]
    classes = list(stream.classes) or sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    view = _StreamView._blank("", classes)
    view.stream = stream
    view.keys = [key if has_key else None for _, key, has_key, _ in seen]
    view.keys_by_position = {position: key for position, key, _, _ in seen}
    view.samples = [
        (f"<{stream.name}[{position}]{' ' + key if has_key else ''}>",
         index.get(label, -1) if isinstance(label, str) else (label if label is not None else -1))
        for position, key, has_key, label in seen
    ]
    return view
