"""Where a sample's stored image comes from: torch datasets (transforms switched off), Hugging Face datasets,
concatenations, and one-pass streams (``IterableDataset``) with the delta as a :class:`NovelStream`.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch.utils.data

from vdc_torch.data.folder import UNLABELED
from vdc_torch.errors import ImageDecodeError, InvalidParameterError

log = logging.getLogger(__name__)


#: Keys of a dict item that hold the image (first found wins): HF datasets, WebDataset, common conventions.
IMAGE_KEYS: tuple[str, ...] = ("image", "img", "pixel_values", "jpg", "jpeg", "png", "webp", "ppm", "bmp",
                               "tif", "tiff", "pil", "picture", "photo", "input")
#: Keys of a dict item that hold the label.
LABEL_KEYS: tuple[str, ...] = ("label", "labels", "target", "targets", "cls", "class", "class_id", "y")


def split_item(item: Any, image_key: str | None = None, label_key: str | None = None, name: str = "item"
               ) -> tuple[Any, Any]:
    """``(image, label)`` of one dataset item: an image, an ``(image, label, *extra)`` tuple or a dict.

    Dict items take ``image_key``/``label_key`` when given, else the first of :data:`IMAGE_KEYS` /
    :data:`LABEL_KEYS` present; the label is ``None`` when the item has none.
    """
    if isinstance(item, dict):
        key = image_key or next((k for k in IMAGE_KEYS if k in item), None)
        if key is None or key not in item:
            raise ImageDecodeError(
                f"{name}: no image in a dict item with keys {', '.join(map(str, item))}; expected one of "
                f"{', '.join(IMAGE_KEYS)} or pass image_key="
            )
        lkey = label_key or next((k for k in LABEL_KEYS if k in item), None)
        return item[key], (item.get(lkey) if lkey is not None else None)
    if isinstance(item, (tuple, list)):
        if not item:
            raise ImageDecodeError(f"{name}: empty item")
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def label_value(value: Any) -> int | str | None:
    """A label as an ``int`` (class index) or ``str`` (class name); ``None`` when there is none.

    Accepts Python and numpy integers, 0-d tensors/arrays, strings and WebDataset's ``b"3"`` bytes.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.lstrip("-").isdigit() else (text or None)
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # not a single value
            return None
    if isinstance(value, (bool, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def labels_of(dataset: Any, n: int) -> list[int] | None:
    """The dataset's ``targets`` (or ``labels``) as ints — a list, tensor or ndarray; ``None`` when absent.

    A ``targets`` tensor must not be tested with ``or`` (its truth value is ambiguous), so each is checked
    for ``None`` explicitly.
    """
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is None or isinstance(values, (str, bytes)):
            continue
        try:
            if len(values) != n:
                continue
            return [_as_label(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
        except TypeError:
            continue
    return None


def _untransformed(dataset: Any) -> Any:
    """A shallow copy of ``dataset`` with its torchvision-style ``transform``/``transforms`` switched off.

    The copy shares the data (no images are copied); the user's object is never modified.
    """
    names = [n for n in ("transform", "transforms", "target_transform") if getattr(dataset, n, None) is not None]
    if not names:
        return dataset
    try:
        view = copy.copy(dataset)
        for n in names:
            setattr(view, n, None)
    except Exception:  # noqa: BLE001 - an object that refuses copies or attributes is read as it is
        log.warning("cannot switch off the transform of %s; fingerprinting its transformed samples",
                    type(dataset).__name__)
        return dataset
    log.info("reading %s without its transform (%s): fingerprints describe the stored images",
             type(dataset).__name__, ", ".join(names))
    return view


def _denormalizer(denormalize: tuple[Sequence[float], Sequence[float]] | None) -> Callable[[Any], Any] | None:
    """``x * std + mean`` per channel for (C, H, W) tensors/arrays, from ``denormalize=(mean, std)``."""
    if denormalize is None:
        return None
    try:
        mean, std = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in denormalize)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"denormalize={denormalize!r} must be (mean, std), two sequences of floats") from exc
    if mean.shape != std.shape or mean.shape[0] not in (1, 3):
        raise InvalidParameterError(f"denormalize={denormalize!r}: mean and std need 1 or 3 values each")

    def undo(image: Any) -> Any:
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] in (1, 3):
            return torch.from_numpy(np.clip(image.astype(np.float32) * std + mean, 0.0, 1.0))  # (C, H, W)
        return image

    return undo


class _TorchSource:
    """Internal: the untransformed images (and item labels) of an in-memory map-style dataset."""

    def __init__(self, dataset: Any, image_key: str | None, label_key: str | None,
                 denormalize: Callable[[Any], Any] | None) -> None:
        self.original = dataset
        self.dataset = dataset if denormalize is not None else _untransformed(dataset)
        self.image_key, self.label_key, self.denormalize = image_key, label_key, denormalize

    def read(self, index: int, name: str) -> tuple[Any, Any]:
        image, label = split_item(self.dataset[index], self.image_key, self.label_key, name)
        if self.denormalize is not None:
            image = self.denormalize(image)
        return image, label


class _HFSource:
    """Internal: a Hugging Face ``datasets.Dataset`` read as stored: the image column's encoded bytes."""

    def __init__(self, dataset: Any, image_column: str) -> None:
        import datasets

        plain = dataset.with_format(None)  # drops set_transform/with_format: the stored values
        if isinstance(plain.features.get(image_column), datasets.Image):
            plain = plain.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = plain.select_columns([image_column])
        self.column = image_column

    def read(self, index: int, name: str) -> tuple[Any, Any]:
        return self.dataset[int(index)][self.column], None


class _ConcatSource:
    """Internal: the parts of a ``ConcatDataset``, each a :class:`Dataset` view."""

    def __init__(self, parts: list[Any]) -> None:  # vdc_torch.Dataset views
        self.parts = parts
        self.starts = list(itertools.accumulate([0] + [len(p) for p in parts]))

    def read(self, index: int, name: str) -> tuple[Any, Any]:
        part = bisect.bisect_right(self.starts, index) - 1
        return self.parts[part].source_image(index - self.starts[part]), None


def is_hf_dataset(data: Any) -> bool:
    """True for a Hugging Face ``datasets.Dataset`` (map-style), checked without importing ``datasets``."""
    return type(data).__module__.startswith("datasets.") and type(data).__name__ == "Dataset"


def is_stream(data: Any) -> bool:
    """True for an iterable dataset: ``torch.utils.data.IterableDataset`` (WebDataset, HF streaming, generators)."""
    if isinstance(data, torch.utils.data.IterableDataset):
        return True
    return type(data).__module__.startswith("datasets.") and type(data).__name__ == "IterableDataset"


class Stream:
    """An iterable dataset (WebDataset, HF streaming, a generator-backed ``IterableDataset``) read in one pass.

    :meth:`items` yields ``(position, key, image, label)``: the key is WebDataset's ``__key__`` where items carry
    one, else the position in the stream. A Hugging Face ``IterableDataset`` is read as stored (encoded bytes,
    its format/transform ignored) and its ``ClassLabel`` names become the classes.
    """

    def __init__(self, dataset: Any, *, image_key: str | None = None, label_key: str | None = None) -> None:
        self.original = dataset
        self.image_key, self.label_key = image_key, label_key
        self.classes: list[str] = []
        self.plain = dataset
        if type(dataset).__module__.startswith("datasets."):
            import datasets

            plain = dataset.with_format(None)
            features = getattr(plain, "features", None) or {}
            for column, feature in features.items():
                if isinstance(feature, datasets.Image):
                    plain = plain.cast_column(column, datasets.Image(decode=False))
                elif isinstance(feature, datasets.ClassLabel) and (label_key in (None, column)) and not self.classes:
                    self.classes = list(feature.names)
            self.plain = plain
        elif isinstance(dataset, NovelStream):  # a stream's delta names its classes as the stream did
            self.classes = Stream(dataset.original, image_key=image_key, label_key=label_key).classes
        self.name = type(dataset).__name__

    def items(self) -> Iterator[tuple[int, str, Any, Any]]:
        """Every item once, in stream order: ``(position, key, image, label)``."""
        for position, item in enumerate(self.plain):
            key = item.get("__key__") if isinstance(item, dict) else None
            name = f"<{self.name}[{position}]{' ' + str(key) if key is not None else ''}>"
            try:
                image, label = split_item(item, self.image_key, self.label_key, name)
            except ImageDecodeError as exc:
                yield position, str(key if key is not None else position), exc, None
                continue
            yield position, str(key if key is not None else position), image, label


class NovelStream(torch.utils.data.IterableDataset):
    """The delta of an iterable dataset: the original stream, yielding only the novel items, in their order.

    Items are recognised by their WebDataset ``__key__`` where they carry one (robust to worker and node
    splitting), else by their position in the stream (so the stream must replay in the same order, in one
    process: read by several DataLoader workers, it is an :class:`InvalidParameterError`, never other items).
    ``keys`` lists them, so a pipeline can persist the delta.
    """

    def __init__(self, original: Any, positions: Sequence[int], keys: Sequence[str], by_key: bool) -> None:
        self.original = original
        self.positions = frozenset(int(p) for p in positions)
        self.keys = list(keys)
        self.by_key = by_key
        self._key_set = frozenset(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Any]:
        worker = torch.utils.data.get_worker_info()
        split = worker is not None and worker.num_workers > 1
        for position, item in enumerate(self.original):
            if self.by_key and isinstance(item, dict) and "__key__" in item:
                if str(item["__key__"]) in self._key_set:
                    yield item
                continue
            if split:  # each worker counts its own share from 0: positions would pick other items, silently
                raise InvalidParameterError(
                    f"the delta of this {type(self.original).__name__} picks its items by their position in the "
                    f"stream (they carry no __key__), and each of the DataLoader's {worker.num_workers} workers "
                    "numbers its own share of the stream from 0; read the delta with num_workers=0 (or 1), or "
                    "give every item a unique __key__")
            if position in self.positions:
                yield item

    def __repr__(self) -> str:
        return f"NovelStream({len(self)} of the items of {type(self.original).__name__})"


def _as_label(value: Any) -> int:
    if value is None:
        return UNLABELED
    if isinstance(value, np.ndarray) or hasattr(value, "item"):
        value = value.item()
    try:
        return int(value)
    except (TypeError, ValueError):
        return UNLABELED


def _hf_column(features: Any, wanted: str | None, kind: type, parameter: str) -> str:
    """The column of ``features`` of type ``kind`` (or the one named ``wanted``); a clear error otherwise."""
    if wanted is not None:
        if wanted not in features:
            raise InvalidParameterError(f"{parameter}={wanted!r} is not a column; columns: {', '.join(features)}")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) == 1:
        return found[0]
    named = [k for k in IMAGE_KEYS if k in features]
    if not found and named:
        return named[0]
    what = "no" if not found else f"{len(found)} ({', '.join(found)})"
    raise InvalidParameterError(
        f"the dataset has {what} {kind.__name__} columns; name the image column with {parameter}= "
        f"(columns: {', '.join(features)})"
    )


def _hf_label_column(features: Any, wanted: str | None) -> str | None:
    import datasets

    if wanted is not None:
        if wanted not in features:
            raise InvalidParameterError(f"label_column={wanted!r} is not a column; columns: {', '.join(features)}")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(found) == 1:
        return found[0]
    if found:
        raise InvalidParameterError(f"several ClassLabel columns ({', '.join(found)}); name one with label_column=")
    for name in LABEL_KEYS:
        feature = features.get(name)
        if isinstance(feature, datasets.Value) and "int" in str(feature.dtype):
            return name
    return None
