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

import numpy as np
import torch.utils.data
from PIL import Image as PILImage

from .decode import IMG_EXTENSIONS, has_image_extension, load_image
from .errors import DatasetNotFoundError, ImageDecodeError

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


def find_classes(root: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted class sub-folder names of ``root`` and their indices (hidden folders skipped)."""
    classes = sorted(e.name for e in os.scandir(root) if _is_dir(e) and not e.name.startswith("."))
    return classes, {name: i for i, name in enumerate(classes)}


def scan_images(
    directory: str | os.PathLike[str],
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    is_valid_file: Callable[[str], bool] | None = None,
) -> list[str]:
    """All image files below ``directory``, recursively, sorted, following symlinked folders once."""
    check = is_valid_file or (lambda p: has_image_extension(p, extensions))
    found: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    top = os.path.realpath(directory)
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True, onerror=_log_scan_error):
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
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            target = os.path.realpath(os.path.join(dirpath, d))
            if _inside(here, target) or _inside(top, target):  # a link back up: a loop, or into another class
                log.warning("not following %s: it links back to %s", os.path.join(dirpath, d), target)
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if not name.startswith(".") and check(name):
                found.append(os.path.join(dirpath, name))
    return found


def make_samples(
    root: str | os.PathLike[str],
    class_to_idx: dict[str, int] | None,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    is_valid_file: Callable[[str], bool] | None = None,
) -> list[tuple[str, int]]:
    """``(path, label)`` pairs: labels from class sub-folders, or ``UNLABELED`` (-1) for a flat folder."""
    if not class_to_idx:
        return [(p, UNLABELED) for p in scan_images(root, extensions, is_valid_file)]
    samples: list[tuple[str, int]] = []
    for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
        samples.extend((p, label) for p in scan_images(os.path.join(root, name), extensions, is_valid_file))
    return samples


def pil_loader(path: str) -> PILImage.Image:
    """Open an image file as RGB exactly as the fingerprints see it; one ``ImageDecodeError`` naming the file.

    Regular files only (a FIFO named ``x.jpg`` cannot hang a DataLoader worker), decompression bombs refused,
    EXIF orientation applied, alpha composited on white, 16-bit scaled (see :func:`vdc_torch.decode.load_image`).
    """
    return load_image(path)


class Dataset(torch.utils.data.Dataset):
    """A map-style torch dataset of images, with ImageFolder-style labels when the root has class folders.

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
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader
        self.extensions = extensions
        top_images = [e for e in os.scandir(self.root) if _is_file(e) and has_image_extension(e.name, extensions)]
        classes, class_to_idx = find_classes(self.root)
        if top_images or not classes:
            classes, class_to_idx = [], {}  # flat folder: recursive scan, no labels
        self.classes: list[str] = classes
        self.class_to_idx: dict[str, int] = class_to_idx
        self.samples: list[tuple[str, int]] = make_samples(self.root, class_to_idx, extensions, is_valid_file)
        if not self.samples:
            raise DatasetNotFoundError(
                f"no image files found under {self.root!r} (extensions: {', '.join(extensions)})"
            )
        self._source: torch.utils.data.Dataset | None = None
        self._source_indices: list[int] | None = None

    # -- construction from an existing dataset -------------------------------------------------------------
    @classmethod
    def from_torch(cls, dataset: torch.utils.data.Dataset, classes: Sequence[str] | None = None) -> Dataset:
        """Wrap a dataset whose items are ``(image, label)``; file-backed datasets keep their paths.

        Works for torchvision's ``ImageFolder``/``DatasetFolder`` (paths from ``samples``), ``CIFAR10``-like
        in-memory datasets (``data`` arrays) and any dataset returning PIL images, tensors or arrays.
        """
        self = cls.__new__(cls)
        self.root = str(getattr(dataset, "root", "") or "")
        self.transform = None
        self.target_transform = None
        self.loader = pil_loader
        self.extensions = IMG_EXTENSIONS
        found_classes = classes if classes is not None else getattr(dataset, "classes", None)
        self.classes = list(found_classes) if found_classes is not None else []
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        file_samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
        if file_samples and isinstance(file_samples[0][0], (str, os.PathLike)) and len(file_samples) == len(dataset):
            self.samples = [(str(p), _as_label(t)) for p, t in file_samples]
            self._source = None
        else:
            targets = getattr(dataset, "targets", None) or getattr(dataset, "labels", None)
            n = len(dataset)  # type: ignore[arg-type]
            self.samples = [
                (f"<{type(dataset).__name__}[{i}]>", _as_label(targets[i]) if targets is not None else UNLABELED)
                for i in range(n)
            ]
            self._source = dataset
        self._source_indices = None
        return self

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
            source_index = self._source_indices[index] if self._source_indices is not None else index
            item = self._source[source_index]
            image = item[0] if isinstance(item, (tuple, list)) else item
            return image, label
        return self.loader(path), label

    @property
    def is_file_backed(self) -> bool:
        """True when every sample is a file on disk (its bytes can be digested and re-read)."""
        return self._source is None

    @property
    def source(self) -> torch.utils.data.Dataset | None:
        """The wrapped in-memory dataset, or ``None`` for a folder."""
        return self._source

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
        kind = "" if self.is_file_backed else f" wrapping {type(self._source).__name__}"
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
        from .compat import Image

        return [Image(path) for path, _ in self.samples]

    def info(self) -> str:
        """Log and return the dataset's name, image count and path."""
        text = f"Dataset information:\n  name: {self.name}\n  images: {len(self)}\n  path: {self.root}"
        log.info(text)
        print(text)
        return text

    def get_image(self, filename: str) -> Any:
        """The :class:`vdc_torch.Image` with this file name (or relative path); ``KeyError`` if absent."""
        from .compat import Image

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
        indices = list(indices)
        if self._source is not None:
            mapping = self._source_indices or list(range(len(self.samples)))
            self._source_indices = [mapping[i] for i in indices]
        self.samples = [self.samples[i] for i in indices]

    def get_exif_data(self) -> Any:
        """EXIF of every image as a ``pandas.DataFrame`` (also stored as ``exif_data``).

        One row per image, ``Filename`` (without extension) and ``FileExtension`` (without the dot) first; binary
        tags such as ``MakerNote`` are summarised as ``"<N bytes>"``. An image without EXIF, or whose EXIF cannot be
        read (logged as a warning), gets a row with only those two columns filled.
        """
        import pandas as pd

        from .compat import Image

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
