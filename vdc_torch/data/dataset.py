"""The map-style torch ``Dataset`` over an image folder, or over any existing torch dataset.

Folder scanning follows torchvision's ``ImageFolder``: sorted, recursive, and class sub-folders become labels
(``classes``, ``class_to_idx``, ``samples``, ``targets``). A flat folder (images directly under the root) has no
labels. ``Dataset.from_torch`` wraps an existing dataset whose items are ``(image, label)`` so in-memory data can
be gated too. Besides being a torch dataset, the class carries the original visdatcompy ``Dataset`` calls
(``info``, ``filenames``, ``get_image``, ``delete_image``, ``get_exif_data``), which only ever change the in-memory
view: files on disk are never touched.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image as PILImage

from vdc_torch.data.decode import IMG_EXTENSIONS, has_image_extension, load_image, sniff_image_format
from vdc_torch.errors import DatasetNotFoundError, ImageDecodeError, InvalidParameterError

log = logging.getLogger(__name__)


#: The label of a sample from a flat folder (no class sub-folders), as torchvision's unlabeled STL10 split uses.
UNLABELED = -1


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, False for entries that cannot be stat'ed (a symlink loop raises ELOOP)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """``entry.is_file()``, False for entries that cannot be stat'ed."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    """True when real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _log_scan_error(error: OSError) -> None:
    log.warning("cannot scan %s: %s; its files are left out", error.filename, error.strerror or error)


@dataclass(frozen=True)
class SkippedFile:
    """A file or folder under a dataset root that is not a sample, and why (never a silent drop)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def find_classes(root: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted class sub-folder names of ``root`` and their indices, as torchvision's ``find_classes`` (hidden
    folders such as ``.ipynb_checkpoints`` are left out and reported by :class:`Dataset`, not made classes)."""
    classes = sorted(e.name for e in os.scandir(root) if _is_dir(e) and not e.name.startswith("."))
    return classes, {name: i for i, name in enumerate(classes)}


def _unused_file_reason(path: str, extensions: tuple[str, ...]) -> str:
    """Why a file found by the scan is not a sample (its content is sniffed: an image is never dropped quietly)."""
    found = sniff_image_format(path)
    ext = os.path.splitext(path)[1].lower() or "(none)"
    if found is not None:
        return (f"holds a {found} image but its extension {ext} is not one of the image extensions; rename it or "
                "pass is_valid_file=")
    return f"not an image extension ({ext})"


def scan_images(
    directory: str | os.PathLike[str],
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    is_valid_file: Callable[[str], bool] | None = None,
    skipped: list[SkippedFile] | None = None,
) -> list[str]:
    """All image files below ``directory``, recursively, sorted, following symlinked folders once.

    Every file or folder left out is appended to ``skipped`` (when given) with the reason.
    """
    check = is_valid_file or (lambda p: has_image_extension(p, extensions))
    found: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    top = os.path.realpath(directory)

    def skip(path: str, reason: str) -> None:
        if skipped is not None:
            skipped.append(SkippedFile(path, reason))

    def scan_error(error: OSError) -> None:
        _log_scan_error(error)
        skip(str(error.filename), f"folder cannot be listed ({error.strerror or error}); its files are left out")

    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True, onerror=scan_error):
        try:
            st = os.stat(dirpath)
            key = (st.st_dev, st.st_ino)
        except OSError:
            continue
        if key in seen_dirs:  # a symlink loop: walk each real folder once
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        here = os.path.realpath(dirpath)
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                skip(os.path.join(dirpath, d), "hidden folder (not scanned)")
                continue
            target = os.path.realpath(os.path.join(dirpath, d))
            if _inside(here, target) or _inside(top, target):  # a link back up: a loop, or into another class
                log.warning("not following %s: it links back to %s", os.path.join(dirpath, d), target)
                skip(os.path.join(dirpath, d), f"folder link back to {target} (a loop; not followed)")
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                skip(path, "hidden file")
            elif check(name if is_valid_file is None else path):
                found.append(path)
            elif skipped is not None:
                skip(path, _unused_file_reason(path, extensions))
    return found


def make_samples(
    root: str | os.PathLike[str],
    class_to_idx: dict[str, int] | None,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    is_valid_file: Callable[[str], bool] | None = None,
    skipped: list[SkippedFile] | None = None,
) -> list[tuple[str, int]]:
    """``(path, label)`` pairs: labels from class sub-folders, or ``UNLABELED`` (-1) for a flat folder.

    With class folders, files directly under ``root`` are not samples (torchvision's ``ImageFolder`` ignores them);
    they are appended to ``skipped``.
    """
    if not class_to_idx:
        return [(p, UNLABELED) for p in scan_images(root, extensions, is_valid_file, skipped)]
    if skipped is not None:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                skipped.append(SkippedFile(entry.path, "hidden " + ("folder" if _is_dir(entry) else "file")))
            elif not _is_dir(entry):
                skipped.append(SkippedFile(entry.path, "at the root next to class folders (ImageFolder ignores it)"))
    samples: list[tuple[str, int]] = []
    for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
        samples.extend(
            (p, label) for p in scan_images(os.path.join(root, name), extensions, is_valid_file, skipped)
        )
    return samples


def pil_loader(path: str) -> PILImage.Image:
    """Open an image file as RGB exactly as the fingerprints see it; one ``ImageDecodeError`` naming the file.

    Regular files only (a FIFO named ``x.jpg`` cannot hang a DataLoader worker), decompression bombs refused,
    EXIF orientation applied, alpha composited on white, 16-bit scaled (see :func:`vdc_torch.decode.load_image`).
    """
    return load_image(path)


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

    def __init__(self, parts: list[Dataset]) -> None:
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
    splitting), else by their position in the stream (so the stream must replay in the same order).
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
        for position, item in enumerate(self.original):
            if self.by_key and isinstance(item, dict) and "__key__" in item:
                if str(item["__key__"]) in self._key_set:
                    yield item
            elif position in self.positions:
                yield item

    def __repr__(self) -> str:
        return f"NovelStream({len(self)} of the items of {type(self.original).__name__})"


class Dataset(torch.utils.data.Dataset):
    """A map-style torch dataset of images, with ImageFolder-style labels when the root has class folders.

    With class sub-folders the scan is torchvision's ``ImageFolder``: one class per sub-folder (sorted), files
    directly under the root ignored. Without any, every image of the folder is an unlabelled sample. Every file
    that is not a sample is listed in :attr:`skipped` with the reason.

    >>> ds = Dataset("data/train", transform=torchvision.transforms.ToTensor())  # doctest: +SKIP
    >>> image, label = ds[0]; ds.classes[label]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        *,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        is_valid_file: Callable[[str], bool] | None = None,
        loader: Callable[[str], Any] = pil_loader,
    ) -> None:
        self.root = str(root)
        if not os.path.isdir(self.root):
            raise DatasetNotFoundError(f"dataset root {self.root!r} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise DatasetNotFoundError(f"dataset root {self.root!r} cannot be read (permission denied)")
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader
        self.extensions = extensions
        try:
            classes, class_to_idx = find_classes(self.root)
        except OSError as exc:
            raise DatasetNotFoundError(f"dataset root {self.root!r} cannot be read ({exc.strerror or exc})") from exc
        self.classes: list[str] = classes
        self.class_to_idx: dict[str, int] = class_to_idx
        #: Files and folders under the root that are not samples, each with the reason.
        self.skipped: list[SkippedFile] = []
        self.samples: list[tuple[str, int]] = make_samples(self.root, class_to_idx, extensions, is_valid_file,
                                                           self.skipped)
        if self.skipped:
            log.info("%s: %d file(s) or folder(s) are not samples (see Dataset.skipped)", self.root,
                     len(self.skipped))
        if not self.samples:
            listed = "; ".join(f"{os.path.relpath(f.path, self.root)}: {f.reason}" for f in self.skipped[:3])
            raise DatasetNotFoundError(
                f"no image files found under {self.root!r} (extensions: {', '.join(extensions)})"
                + (f"; not used: {listed}" + (" ..." if len(self.skipped) > 3 else "") if listed else "")
            )
        self._source: Any = None
        self._source_indices: list[int] | None = None

    @classmethod
    def _blank(cls, root: str = "", classes: Sequence[str] = ()) -> Dataset:
        self = cls.__new__(cls)
        self.root = root
        self.transform = None
        self.target_transform = None
        self.loader = pil_loader
        self.extensions = IMG_EXTENSIONS
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.skipped = []
        self.samples = []
        self._source = None
        self._source_indices = None
        return self

    # -- construction from an existing dataset -------------------------------------------------------------
    @classmethod
    def from_torch(
        cls,
        dataset: Any,
        classes: Sequence[str] | None = None,
        *,
        image_key: str | None = None,
        label_key: str | None = None,
        denormalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> Dataset:
        """Wrap an existing dataset; fingerprints always describe the stored images, not the transform's output.

        * file-backed datasets (torchvision's ``ImageFolder``/``DatasetFolder``, anything with ``samples`` of
          paths) keep their paths: the files are read, whatever ``transform`` the dataset applies;
        * ``Subset`` and ``ConcatDataset`` are unwrapped; a Hugging Face ``datasets.Dataset`` goes to
          :meth:`from_hf`;
        * in-memory datasets (``CIFAR10``-like, ``TensorDataset``, custom) are read through a copy with their
          ``transform`` switched off; items may be images, ``(image, label, *extra)`` tuples or dicts
          (``image_key``/``label_key``, else the usual names). Labels come from ``targets``/``labels`` (list,
          tensor or ndarray) when present. If the transform cannot be switched off (it is applied inside
          ``__getitem__``), pass ``denormalize=(mean, std)`` to undo a ``Normalize``; float pixels outside [0, 1]
          are refused, never fingerprinted as garbage.
        """
        if isinstance(dataset, Dataset):
            return dataset
        if is_hf_dataset(dataset):
            return cls.from_hf(dataset, image_column=image_key, label_column=label_key)
        if isinstance(dataset, torch.utils.data.Subset):
            inner = cls.from_torch(dataset.dataset, classes, image_key=image_key, label_key=label_key,
                                   denormalize=denormalize)
            return inner.view(list(dataset.indices))
        if isinstance(dataset, torch.utils.data.ConcatDataset):
            parts = [cls.from_torch(d, classes, image_key=image_key, label_key=label_key, denormalize=denormalize)
                     for d in dataset.datasets]
            return cls.concat(parts)
        if is_stream(dataset):
            raise InvalidParameterError(
                f"{type(dataset).__name__} is an iterable dataset; pass it to DatasetGate.check directly "
                "(it is fingerprinted in one pass)"
            )
        if not isinstance(dataset, torch.utils.data.Dataset) and not hasattr(dataset, "__getitem__"):
            raise InvalidParameterError(
                f"dataset of type {type(dataset).__name__} is not supported; pass a folder path, a torch Dataset, "
                "a Hugging Face datasets.Dataset or an IterableDataset"
            )
        found_classes = classes if classes is not None else getattr(dataset, "classes", None)
        self = cls._blank(str(getattr(dataset, "root", "") or ""), list(found_classes or []))
        n = len(dataset)
        file_samples = getattr(dataset, "samples", None)
        if file_samples is None:
            file_samples = getattr(dataset, "imgs", None)
        if (denormalize is None and file_samples is not None and len(file_samples) == n and n
                and isinstance(file_samples[0], (tuple, list))
                and isinstance(file_samples[0][0], (str, os.PathLike))):
            self.samples = [(os.fspath(p), _as_label(t)) for p, t, *_ in file_samples]
            return self
        targets = labels_of(dataset, n)
        label_for = targets if targets is not None else [UNLABELED] * n
        name = type(dataset).__name__
        self.samples = [(f"<{name}[{i}]>", label_for[i]) for i in range(n)]
        self._source = _TorchSource(dataset, image_key, label_key, _denormalizer(denormalize))
        return self

    @classmethod
    def from_hf(cls, dataset: Any, *, image_column: str | None = None, label_column: str | None = None) -> Dataset:
        """Wrap a Hugging Face ``datasets.Dataset``: its ``Image`` column (found, or named) read as stored bytes,
        labels and class names from its ``ClassLabel`` column (found, or named); transforms set on it are ignored.

        >>> Dataset.from_hf(load_dataset("imagefolder", data_dir="drop")["train"])  # doctest: +SKIP
        """
        import datasets

        features = dataset.features
        image_column = _hf_column(features, image_column, datasets.Image, "image_column")
        label_column = _hf_label_column(features, label_column)
        classes = []
        if label_column is not None and isinstance(features[label_column], datasets.ClassLabel):
            classes = list(features[label_column].names)
        self = cls._blank("", classes)
        n = len(dataset)
        labels = ([_as_label(v) for v in dataset.with_format(None)[label_column]] if label_column is not None
                  else [UNLABELED] * n)
        name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "hf"
        self.samples = [(f"<{name}[{i}]>", labels[i]) for i in range(n)]
        self._source = _HFSource(dataset, image_column)
        return self

    @classmethod
    def concat(cls, parts: Sequence[Dataset]) -> Dataset:
        """One dataset of several, in order (``ConcatDataset``); class lists that differ are merged by name."""
        parts = list(parts)
        same = all(p.classes == parts[0].classes for p in parts)
        classes = list(parts[0].classes) if same else sorted({c for p in parts for c in p.classes})
        roots = {p.root for p in parts}
        self = cls._blank(roots.pop() if len(roots) == 1 else "", classes)
        index = {c: i for i, c in enumerate(classes)}
        for p in parts:
            for path, label in p.samples:
                name = p.label_name(label)
                self.samples.append((path, label if same or name is None else index.get(name, UNLABELED)))
            self.skipped.extend(p.skipped)
        if not all(p.is_file_backed for p in parts):
            self._source = _ConcatSource(parts)
        return self

    def view(self, indices: Sequence[int]) -> Dataset:
        """A new dataset of the samples at ``indices`` (this one is unchanged), e.g. for a ``Subset``."""
        out = Dataset.__new__(Dataset)
        out.__dict__.update(self.__dict__)
        out.select(indices)
        return out

    # -- torch Dataset protocol -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.raw_item(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def raw_item(self, index: int) -> tuple[Any, int]:
        """The untransformed ``(image, label)``: a PIL image for files, the source's own image otherwise."""
        path, label = self.samples[index]
        if self._source is not None:
            image = self.source_image(index)
            if isinstance(image, (bytes, bytearray, dict, str, os.PathLike)):  # stored bytes: decode like a file
                from vdc_torch.data.decode import decode_sample

                image = PILImage.fromarray(decode_sample(image, name=path, decode_side=None).pixels, "RGB")
            return image, label
        return self.loader(path), label

    def source_image(self, index: int) -> Any:
        """What the dataset stores for sample ``index``: a file path, encoded bytes, or an in-memory image."""
        path, _ = self.samples[index]
        if self._source is None:
            return path
        return self._source.read(self.source_index(index), path)[0]

    @property
    def is_file_backed(self) -> bool:
        """True when every sample is a file on disk (its bytes can be digested and re-read)."""
        return self._source is None

    @property
    def source(self) -> Any:
        """The wrapped dataset (``None`` for files)."""
        if self._source is None:
            return None
        return getattr(self._source, "original", getattr(self._source, "dataset", self._source))

    def source_index(self, index: int) -> int:
        """Index of sample ``index`` in the wrapped dataset."""
        return self._source_indices[index] if self._source_indices is not None else index

    @property
    def targets(self) -> list[int]:
        """The label of every sample (``UNLABELED`` = -1 where the folder is flat)."""
        return [label for _, label in self.samples]

    def label_name(self, label: int | None) -> str | None:
        """The class name of a label index (or its string when there are no class names)."""
        if label is None or label == UNLABELED:
            return None
        if 0 <= label < len(self.classes):
            return self.classes[label]
        return str(label)

    def __repr__(self) -> str:
        labels = f", {len(self.classes)} classes" if self.classes else ", no labels"
        where = f" at {self.root!r}" if self.root else ""
        kind = "" if self.is_file_backed else f" wrapping {type(self.source).__name__}"
        return f"{type(self).__name__}({len(self)} samples{labels}{where}{kind})"

    # -- the original visdatcompy Dataset calls ------------------------------------------------------------
    @property
    def name(self) -> str:
        """The dataset's folder name."""
        return os.path.basename(os.path.normpath(self.root)) if self.root else type(self).__name__

    @property
    def filenames(self) -> list[str]:
        """File names (without folders) of all samples, in order."""
        return [os.path.basename(path) for path, _ in self.samples]

    @property
    def image_count(self) -> int:
        """Number of images (same as ``len``)."""
        return len(self.samples)

    @property
    def images(self) -> list[Any]:
        """One :class:`vdc_torch.Image` per sample (file-backed datasets)."""
        from vdc_torch.data.image import Image

        return [Image(path) for path, _ in self.samples]

    def info(self) -> str:
        """Log and return the dataset's name, image count and path."""
        text = f"Dataset information:\n  name: {self.name}\n  images: {len(self)}\n  path: {self.root}"
        log.info(text)
        print(text)
        return text

    def get_image(self, filename: str) -> Any:
        """The :class:`vdc_torch.Image` with this file name (or relative path); ``KeyError`` if absent."""
        from vdc_torch.data.image import Image

        for path, _ in self.samples:
            if os.path.basename(path) == filename or os.path.relpath(path, self.root) == filename:
                return Image(path)
        raise KeyError(f"no image named {filename!r} in dataset {self.name!r}")

    def delete_image(self, image: Any) -> None:
        """Remove an image (an ``Image``, a path or a bare file name) from this in-memory dataset; the file stays.

        ``KeyError`` when nothing matches. A bare file name removes every sample with that name.
        """
        target = os.fspath(getattr(image, "path", image))
        if os.sep in target or (os.altsep and os.altsep in target):
            key = os.path.normcase(os.path.abspath(target))
            keep = [i for i, (path, _) in enumerate(self.samples) if os.path.normcase(os.path.abspath(path)) != key]
        else:
            keep = [i for i, (path, _) in enumerate(self.samples) if os.path.basename(path) != target]
        if len(keep) == len(self.samples):
            raise KeyError(f"image {target!r} is not in dataset {self.name!r}")
        self.select(keep)

    def select(self, indices: Sequence[int]) -> None:
        """Keep only the samples at ``indices`` (in memory), preserving the source mapping."""
        indices = [int(i) for i in indices]
        if self._source is not None:
            mapping = self._source_indices if self._source_indices is not None else list(range(len(self.samples)))
            self._source_indices = [mapping[i] for i in indices]
        self.samples = [self.samples[i] for i in indices]

    def get_exif_data(self) -> Any:
        """EXIF of every image as a ``pandas.DataFrame`` (also stored as ``exif_data``).

        One row per image, ``Filename`` (without extension) and ``FileExtension`` (without the dot) first; binary
        tags such as ``MakerNote`` are summarised as ``"<N bytes>"``. An image without EXIF, or whose EXIF cannot be
        read (logged as a warning), gets a row with only those two columns filled.
        """
        import pandas as pd

        from vdc_torch.data.image import Image

        rows = []
        for path, _ in self.samples:
            try:
                tags = Image(path).get_exif_data(warn=False) or {}
            except ImageDecodeError as exc:
                log.warning("%s", exc)
                tags = {}
            stem, ext = os.path.splitext(os.path.basename(path))
            rows.append({"Filename": stem, "FileExtension": ext.lstrip("."), **tags})
        self.exif_data = pd.DataFrame(rows)
        return self.exif_data


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
