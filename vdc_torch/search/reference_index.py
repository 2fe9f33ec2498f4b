"""Stage 3: every index the cascade searches over one reference table, built on first use.

A check builds them for its one pass and lets each go as soon as its stage is done (``keep=False``: the crop
index alone is ~0.8 GB at 1M references). A gate that answers queries (:meth:`DatasetGate.query`) keeps them
(``keep=True``), so a query costs its own fingerprint and the index look-ups, not a pass over the reference.

Memory kept at ``keep=True`` (approximate, per reference image): pHash index 36 B, crop index 27 × 36 B, overlay
boxes 6 × 36 B, rotation centre boxes 2 × 36 B, whole-picture hashes of trimmed pictures 36 B, kNN vectors 256 B
+ 8 B, exact keys ~100 B: about 1.7 KB per image estimated, 1.46 GB measured at 1M (on top of the table itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vdc_torch.fingerprints.compute import FingerprintTable
from vdc_torch.search.candidates import _coarse_index, _large_enough_to_align
from vdc_torch.search.index import ExactIndex, HammingIndex
from vdc_torch.search.shards import ReferenceShard

#: Columns of exact keys looked up by the first stages.
EXACT_COLUMNS = ("byte_digest", "pixel_digest", "exif_identity")


class ReferenceIndex:
    """The indexes of one reference table; ``keep=True`` keeps every index built, for repeated searches.

    With ``keep=False`` only the indexes several stages of one check share (exact keys, the pHash index) are kept
    for the life of the object; the others are built for the stage that asks and dropped after it.
    """

    def __init__(self, ref: FingerprintTable, keep: bool = False, shard: ReferenceShard | None = None) -> None:
        self.ref = ref
        self.keep = keep
        #: Where ``ref`` lies in a reference split across ranks (``None``: it is the whole reference).
        self.shard = shard
        self._built: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.ref)

    def _get(self, key: Any, build: Callable[[], Any], shared: bool = False) -> Any:
        found = self._built.get(key)
        if found is not None:
            return found
        value = build()
        if self.keep or shared:
            self._built[key] = value
        return value

    def _hamming(self, codes: np.ndarray) -> HammingIndex:
        return HammingIndex(codes, persistent=self.keep)

    def exact(self, column: str) -> ExactIndex:
        """Rows by exact key of ``column`` (one of :data:`EXACT_COLUMNS`)."""
        return self._get(("exact", column), lambda: ExactIndex(getattr(self.ref, column)), shared=True)

    def phash(self) -> HammingIndex:
        """The pHash of every reference row."""
        return self._get("phash", lambda: self._hamming(self.ref.phash), shared=True)

    def crops(self) -> HammingIndex:
        """Every crop hash: code ``i`` is crop ``i % len(CROP_BOXES)`` of reference row ``i // len(CROP_BOXES)``."""
        return self._get("crops", lambda: self._hamming(np.asarray(self.ref.crop_hashes).reshape(-1)))

    def coarse(self) -> Any:
        """The kNN index over the 8×8 coarse thumbnails (exact or inverted file, see ``_coarse_index``)."""
        return self._get("coarse", lambda: _coarse_index(self.ref.thumbs, self.shard))

    def large_rows(self) -> np.ndarray:
        """Rows large enough for dense alignment (the only ones the overlay and rotation stages look at)."""
        return self._get("large", lambda: np.flatnonzero(_large_enough_to_align(self.ref)), shared=True)

    def crop_box(self, box: int) -> tuple[HammingIndex, np.ndarray]:
        """The hashes of crop ``box`` of the large rows, and those rows (index row ``i`` is reference row
        ``rows[i]``)."""

        def build() -> tuple[HammingIndex, np.ndarray]:
            rows = self.large_rows()
            codes = np.asarray(self.ref.crop_hashes[:, box])
            return self._hamming(codes if len(rows) == len(self.ref) else codes[rows]), rows

        return self._get(("box", box), build)

    def trimmed_whole(self) -> tuple[HammingIndex, np.ndarray]:
        """The whole-picture pHashes of the large rows whose border was trimmed, and those rows."""

        def build() -> tuple[HammingIndex, np.ndarray]:
            ref = self.ref
            rows = np.flatnonzero((ref.phash_whole != ref.phash) & _large_enough_to_align(ref))
            return self._hamming(ref.phash_whole[rows]), rows

        return self._get("trimmed_whole", build)
