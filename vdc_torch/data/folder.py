"""Folder scanning exactly as torchvision's ``ImageFolder``: sorted, recursive, class sub-folders as labels, and
every file that is not used listed with its reason (:class:`SkippedFile`), never dropped unseen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image as PILImage

from vdc_torch.data.decode import IMG_EXTENSIONS, has_image_extension, load_image, sniff_image_format

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
