"""The seed API's ``Image``: one image file, read through the safe decoder, its EXIF tags and a matplotlib view.

It lives with the data (``Dataset`` hands out ``Image`` objects); the comparison classes of the visdatcompy API
(:mod:`vdc_torch.faces.seed`) build on it.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np

from vdc_torch.data.decode import decode_file, display_name, printable_exif_value, read_exif_tags, shrink_to_side
from vdc_torch.errors import ImageDecodeError

log = logging.getLogger(__name__)


class Image:
    """One image file, compared and hashed by its path (``a == b`` iff they are the same file path).

    >>> img = Image("cows/V00001.png")  # doctest: +SKIP
    >>> img.read().shape, img.width, img.height  # doctest: +SKIP
    ((200, 400, 3), 400, 200)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.filename = os.path.basename(self.path)
        self._key = os.path.normcase(os.path.abspath(self.path))
        self.width: int | None = None
        self.height: int | None = None
        self.channels: int | None = None
        self.exif_data: dict[str, Any] | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: Image) -> bool:
        return self._key < other._key

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        folder = os.path.basename(os.path.dirname(os.path.abspath(self.path)))
        return f"Image({os.path.join(folder, self.filename)!r})"

    @property
    def channel(self) -> int | None:
        """visdatcompy's name for :attr:`channels`."""
        return self.channels

    def read(self) -> np.ndarray:
        """The pixels as an (H, W, 3) BGR ``uint8`` array, as ``cv2.imread`` gives, with the EXIF orientation applied.

        Unlike ``cv2.imread`` the image stands as shot (a portrait photo stored sideways is turned upright),
        transparency is composited on white, 16-bit images are scaled to 8 bits, and an unreadable file raises
        :class:`~vdc_torch.errors.ImageDecodeError` naming the file instead of returning ``None``.
        """
        decoded = decode_file(self.path, decode_side=None)
        self.width, self.height, self.channels = decoded.width, decoded.height, 3
        return np.ascontiguousarray(decoded.pixels[:, :, ::-1])

    def info(self) -> str:
        """Log, print and return the file name and resolution ``W x H x C``."""
        if self.width is None:
            self.read()
        text = f"Image information:\n  name: {self.filename}\n  resolution: {self.width} x {self.height} x {self.channels}"
        log.info(text)
        print(text)
        return text

    def get_exif_data(self, warn: bool = True) -> dict[str, Any] | None:
        """EXIF tags as ``{tag name: value}`` (also stored in :attr:`exif_data`); ``None`` when the file has none.

        Binary values are made printable (short ASCII decoded, blobs such as ``MakerNote`` summarised as
        ``"<N bytes>"``). With ``warn=True`` a missing EXIF block is reported with ``warnings.warn``.
        """
        from PIL import Image as PILImage

        if not os.path.isfile(self.path):  # also refuses a FIFO or device named *.jpg without blocking on it
            raise ImageDecodeError(f"{display_name(self.path)}: not a regular file")
        try:
            with PILImage.open(self.path) as image:
                tags = read_exif_tags(image)
        except Exception as exc:
            raise ImageDecodeError(f"{display_name(self.path)}: cannot read EXIF ({type(exc).__name__}: {exc})") from exc
        if not tags:
            message = f"{self.filename}: no EXIF metadata"
            log.info(message)
            if warn:
                warnings.warn(message, stacklevel=2)
            self.exif_data = None
            return None
        self.exif_data = {name: printable_exif_value(value) for name, value in tags.items()}
        return self.exif_data

    def visualize(self, path: str | os.PathLike[str] | None = None, max_side: int = 600) -> Any:
        """Draw the image (max side ``max_side``) on a matplotlib ``Figure`` and return it; never opens a cv2 window.

        With ``path`` the figure is saved there; without it the figure is shown only when matplotlib has an
        interactive backend (a headless run just returns it).
        """
        pixels = shrink_to_side(self.read()[:, :, ::-1], max_side)
        fig = _new_figure((max(2.0, pixels.shape[1] / 100), max(2.0, pixels.shape[0] / 100) + 0.4))
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(pixels)
        ax.set_title(f"{self.filename} ({self.width} x {self.height})", fontsize=9)
        ax.axis("off")
        return _finish_figure(fig, path)


# -- figures (shared with the comparison classes) ------------------------------------------------------------


def _interactive_backend() -> bool:
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return backend not in {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def _new_figure(figsize: tuple[float, float]) -> Any:
    if _interactive_backend():
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _finish_figure(fig: Any, path: str | os.PathLike[str] | None, fallback: str | None = None) -> Any:
    """Save to ``path``; else show on a display; else save to ``fallback`` (if given). Returns ``fig``."""
    target = path if path is not None else (None if _interactive_backend() else fallback)
    if target is not None:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        fig.savefig(target, dpi=100, bbox_inches="tight")
        log.info("figure saved to %s", target)
    elif path is None and _interactive_backend():
        import matplotlib.pyplot as plt

        plt.show()
    return fig
