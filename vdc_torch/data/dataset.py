"""The map-style torch ``Dataset`` over an image folder, or over any existing torch dataset.

Folder scanning follows torchvision's ``ImageFolder``: sorted, recursive, and class sub-folders become labels
(``classes``, ``class_to_idx``, ``samples``, ``targets``). A flat folder (images directly under the root) has no
labels. ``Dataset.from_torch`` wraps an existing dataset whose items are ``(image, label)`` so in-memory data can
be gated too. Besides being a torch dataset, the class carries the original visdatcompy ``Dataset`` calls
(``info``, ``filenames``, ``get_image``, ``delete_image``, ``get_exif_data``), which only ever change the in-memory
view: files on disk are never touched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.utils.data
from PIL import Image as PILImage

from vdc_torch.data.decode import IMG_EXTENSIONS
from vdc_torch.data.folder import (  # noqa: F401 - re-exported where they were before the split
    UNLABELED,
    SkippedFile,
    _inside,
    _is_dir,
    _is_file,
    _log_scan_error,
    _unused_file_reason,
    find_classes,
    make_samples,
    pil_loader,
    scan_images,
)
from vdc_torch.data.sources import (  # noqa: F401
    IMAGE_KEYS,
    LABEL_KEYS,
    NovelStream,
    Stream,
    _as_label,
    _ConcatSource,
    _denormalizer,
    _hf_column,
    _hf_label_column,
    _HFSource,
    _TorchSource,
    _untransformed,
    is_hf_dataset,
    is_stream,
    label_value,
    labels_of,
    split_item,
)
from vdc_torch.errors import DatasetNotFoundError, ImageDecodeError, InvalidParameterError

log = logging.getLogger(__name__)


def one_transform(parts: Sequence[Dataset]) -> bool:
    """Whether the parts set at most one ``transform`` and one ``target_transform`` between them (the same objects,
    or none), so that one :class:`Dataset` of them all applies what each part applied."""
    return all(len({id(t) for t in (getattr(p, name) for p in parts) if t is not None}) <= 1
               for name in ("transform", "target_transform"))


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
        """One dataset of several, in order (``ConcatDataset``); class lists that differ are merged by name. The
        parts' ``transform`` (and ``target_transform``) applies to all: parts that set different ones cannot be one
        dataset (:func:`one_transform` tells)."""
        parts = list(parts)
        if not one_transform(parts):
            raise InvalidParameterError("Dataset.concat of parts with different transforms: one dataset applies one "
                                        "transform; use torch.utils.data.ConcatDataset to keep each part's own")
        same = all(p.classes == parts[0].classes for p in parts)
        classes = list(parts[0].classes) if same else sorted({c for p in parts for c in p.classes})
        roots = {p.root for p in parts}
        self = cls._blank(roots.pop() if len(roots) == 1 else "", classes)
        self.transform = next((p.transform for p in parts if p.transform is not None), None)
        self.target_transform = next((p.target_transform for p in parts if p.target_transform is not None), None)
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
