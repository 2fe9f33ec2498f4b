"""What the gate's encoder is shown: each image's view at the encoder's input size, from the image's one decode.

A model encoder with an ``input_size`` larger than the 32×32 thumbnails is handed each image's view while the
image is fingerprinted (:class:`~vdc_torch.fingerprints.encoder.ViewEmbedder`); this module turns what it collected
into embeddings aligned with a fingerprint table's rows (:class:`TableViews`), decoding again only the rows whose
fingerprints came from the cache (their images were not decoded this run) or, for a reference loaded from a
manifest, its images where they still are (:func:`stored_reference_views`), and says what the encoder saw. With a
fingerprint cache, what was embedded is kept next to it (:mod:`vdc_torch.decision.store.embeddings`) and taken from
there before anything is decoded again. :class:`GateViews` is what one gate holds of all this between calls.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from vdc_torch.collective import rank_and_world
from vdc_torch.data.dataset import Dataset, Stream
from vdc_torch.decision.store.embeddings import EmbeddingStore, embeddings_path
from vdc_torch.fingerprints.compute import FingerprintTable, compute_fingerprints
from vdc_torch.fingerprints.encoder import (
    CalibrationCopies,
    ViewEmbedder,
    calibration_plan,
    embed_thumbs,
    encoder_identity,
    view_size,
)
from vdc_torch.fingerprints.table import FINGERPRINT_VERSION
from vdc_torch.search.config import MatchConfig
from vdc_torch.search.encoder_threshold import MAX_COPIES_PER_SAMPLE

if TYPE_CHECKING:
    from vdc_torch.decision.store.cache import FingerprintCache

log = logging.getLogger(__name__)


#: Why an encoder is shown thumbnails under several ``torch.distributed`` ranks.
MANY_RANKS = "each of several torch.distributed ranks fingerprints only part of the images"


@dataclass(frozen=True, eq=False)
class TableViews:
    """The embeddings of ``table``'s views, row by row, and the calibration copies made of its rows (``of``: rows)."""

    table: FingerprintTable
    embeddings: np.ndarray
    copies: CalibrationCopies | None
    #: Rows decoded a second time for their views (their fingerprints came from the cache).
    decoded_again: int = 0


def view_embedder(encoder: nn.Module | None, data: Dataset | Stream, config: MatchConfig,
                  calibrate: bool) -> ViewEmbedder | None:
    """A collector of ``data``'s views for ``encoder``, or ``None`` where the encoder is shown thumbnails (none, an
    input no larger than 32×32, or several ``torch.distributed`` ranks, each of which sees only its own rows).
    ``calibrate``: also embed edited copies of the seeded calibration sample (a reference, with the threshold to be
    derived), so the calibration sees what the encoder stage sees."""
    if encoder is None or view_size(encoder) is None or rank_and_world()[1] > 1:
        return None
    plan: dict[int, int] = {}
    if calibrate and config.encoder_similarity is None:
        if isinstance(data, Stream):  # a stream of unknown length: its first samples
            total = len(data.original) if hasattr(data.original, "__len__") else config.encoder_calibration_samples
        else:
            total = len(data)
        plan = calibration_plan(total, config.encoder_calibration_samples, MAX_COPIES_PER_SAMPLE)
    return ViewEmbedder(encoder, plan)


#: Where embeddings are kept between runs, and the identity of the encoder they are of.
Kept = tuple[EmbeddingStore, str]


def _take_kept(embedder: ViewEmbedder, kept: Kept | None, indices: list[int], digests: list[bytes | None]) -> None:
    """Fill ``embedder`` with what ``kept`` holds of these samples (their content digests alongside)."""
    if kept is None or not indices:
        return
    store, identity = kept
    found = store.get(identity, [d for d in digests if d is not None])
    embedder.prefill({i: found[d] for i, d in zip(indices, digests) if d is not None and d in found})


def _keep(embedder: ViewEmbedder, kept: Kept | None, indices: list[int], digests: list[bytes | None]) -> None:
    """Store what ``embedder`` made of these samples (those with a content digest) in ``kept``."""
    if kept is None:
        return
    digest_of = dict(zip(indices, digests))
    by_digest: dict[bytes, Any] = {}
    for index, value in embedder.made(indices).items():
        digest = digest_of.get(index)
        # two files of the same bytes: keep the one with calibration copies
        if digest is not None and (digest not in by_digest or len(value[1]) > len(by_digest[digest][1])):
            by_digest[digest] = value
    kept[0].put(kept[1], by_digest)


#: Bumped when what a view is changes (how it is cut from the decode), so embeddings kept of older views go unused.
VIEW_VERSION = 1


def store_key(encoder: nn.Module, identity: str) -> str:
    """The key of ``encoder``'s kept embeddings: its identity (class, settings, weights), the versions of the
    fingerprints and of the views, and a digest of its embedding of a fixed picture — code changed without the
    weights (another pooling, say) then embeds that picture otherwise and finds nothing kept."""
    size = view_size(encoder)
    assert size is not None
    rows = np.linspace(0, 255, size[0], dtype=np.float32)[:, None, None]
    cols = np.linspace(255, 0, size[1], dtype=np.float32)[None, :, None]
    noise = np.random.default_rng(20261208).integers(0, 64, (size[0], size[1], 3)).astype(np.float32)
    probe = np.clip(rows * 0.5 + cols * 0.3 + noise, 0, 255).astype(np.uint8)[None]
    embedded = np.round(embed_thumbs(encoder, probe)[0].astype(np.float64), 3).tobytes()
    probe_digest = hashlib.blake2b(embedded, digest_size=8).hexdigest()
    return f"{identity}:f{FINGERPRINT_VERSION}:v{VIEW_VERSION}:{probe_digest}"


def _decode_again(embedder: ViewEmbedder, data: Dataset, missing: list[int], digest_of: dict[int, bytes | None],
                  **options: Any) -> int:
    """Decode these samples of ``data`` again for their views (into ``embedder``); how many of those read are no
    longer the images their rows were fingerprinted from (their bytes changed)."""
    fresh, _ = compute_fingerprints(data, indices=missing, view_size=embedder.size, on_views=embedder,
                                    distributed=False, **options)
    return sum(digest_of[i] != found for i, found in zip(fresh.sample_index.tolist(), fresh.byte_digest))


def table_views(embedder: ViewEmbedder, table: FingerprintTable, data: Dataset | Stream, kept: Kept | None = None,
                **options: Any) -> tuple[TableViews | None, str]:
    """``table``'s rows' embeddings from ``embedder``; rows it has none of (fingerprints taken from the cache, or
    every row for a new encoder) are taken from ``kept`` where it holds them, else decoded again for their views
    (``options``: ``workers``, ``progress``...); what was made is kept. ``(None, why)`` when some row still has
    none (a stream cannot be read twice, a file is gone) or a file read again is no longer the one its row was
    fingerprinted from (its bytes changed)."""
    indices, digests = table.sample_index.tolist(), list(table.byte_digest)
    unmade = embedder.missing(table.sample_index)
    _take_kept(embedder, kept, unmade, [digests[r] for r in np.searchsorted(table.sample_index, unmade).tolist()])
    missing = embedder.missing(table.sample_index)
    changed = 0
    if missing and isinstance(data, Dataset):
        changed = _decode_again(embedder, data, missing, dict(zip(indices, digests)), **options)
    embeddings = embedder.embeddings(table.sample_index)
    if embeddings is None or changed:
        unread = len(embedder.missing(table.sample_index))
        why = [f"{unread} of its {len(table)} images could not be read again"] if unread else []
        why += [f"{changed} of its images changed since they were fingerprinted"] if changed else []
        return None, " and ".join(why)
    _keep(embedder, kept, indices, digests)
    copies = embedder.copies()
    if copies is not None:  # sample indices -> this table's rows (sorted by sample index); copies of dropped rows go
        rows = np.searchsorted(table.sample_index, copies.of)
        placed = rows < len(table)
        placed[placed] = table.sample_index[rows[placed]] == copies.of[placed]
        copies = CalibrationCopies(rows[placed], copies.embeddings[placed], copies.thumbs[placed])
    return TableViews(table, embeddings, copies, len(missing)), ""


def stored_reference_views(encoder: nn.Module, table: FingerprintTable, root: str, config: MatchConfig,
                           calibrate: bool = True, kept: Kept | None = None, **options: Any,
                           ) -> tuple[TableViews | None, str]:
    """The views of a reference loaded from a manifest (one process, an encoder shown views: see
    :func:`reference_views`), with calibration copies: taken from ``kept`` where it holds them, else its images read
    again under ``root`` (row ``i`` is ``root/table.paths[i]``); ``(None, why)`` when such an image is gone or is no
    longer the one fingerprinted (its bytes changed), so that the encoder is shown the stored thumbnails instead."""
    if not len(table):
        return None, "no views to show"
    data = Dataset._blank(root)
    data.samples = [(os.path.join(root, p), 0) for p in table.paths]
    embedder = view_embedder(encoder, data, config, calibrate=calibrate)
    assert embedder is not None
    rows, digests = list(range(len(table))), list(table.byte_digest)
    _take_kept(embedder, kept, rows, digests)
    missing = embedder.missing(np.arange(len(table)))
    gone = sum(not os.path.isfile(data.samples[i][0]) for i in missing)
    if missing and (not root or gone):
        return None, (f"{gone} of the stored reference's {len(table)} images are not under {root!r}" if root else
                      "the manifest names no reference folder")
    changed = 0
    if missing:
        log.info("encoder: reading %d stored reference images under %s again for their views", len(missing), root)
        changed = _decode_again(embedder, data, missing, dict(enumerate(digests)), **options)
        changed += len(embedder.missing(np.arange(len(table))))  # present, yet unreadable now
    embeddings = embedder.embeddings(np.arange(len(table)))
    if changed or embeddings is None:
        return None, f"{changed} of the stored reference's images under {root!r} changed since it was saved"
    _keep(embedder, kept, rows, digests)
    return TableViews(table, embeddings, embedder.copies(), len(missing)), ""


@dataclass(frozen=True, eq=False)
class ReadableRows:
    """Rows ``start:stop`` of a reference table and where their images can be read again: from ``dataset`` (a row's
    sample index minus ``offset`` is its index there), or under ``root`` by the rows' stored paths (a reference
    loaded from a manifest); neither: they cannot (a stream), ``source`` says what they came from."""

    start: int
    stop: int
    dataset: Dataset | None = None
    offset: int = 0
    root: str | None = None
    source: str = "a stream"


def reference_views(encoder: nn.Module, table: FingerprintTable, parts: list[ReadableRows], config: MatchConfig,
                    kept: Kept | None = None, **options: Any) -> tuple[TableViews | None, str]:
    """The views of a reference whose rows ``parts`` say where to read again (their images decoded again for a new
    encoder), with calibration copies of the first part; ``(None, why)`` as soon as a part cannot be read."""
    if view_size(encoder) is None or rank_and_world()[1] > 1:
        return None, MANY_RANKS if rank_and_world()[1] > 1 else "no views to show"
    if not parts or parts[0].start != 0 or parts[-1].stop != len(table) or any(
            a.stop != b.start for a, b in zip(parts, parts[1:])):
        return None, "the reference's rows do not all come from images this gate can read again"
    embeddings, copies, again = [], None, 0
    for number, part in enumerate(parts):
        rows = table.rows(np.arange(part.start, part.stop))
        if part.dataset is not None:
            rows.sample_index = rows.sample_index - part.offset
            embedder = view_embedder(encoder, part.dataset, config, calibrate=number == 0)
            assert embedder is not None  # one rank, an encoder shown views
            views, why = table_views(embedder, rows, part.dataset, kept, **options)
        elif part.root is not None:
            views, why = stored_reference_views(encoder, rows, part.root, config, calibrate=number == 0, kept=kept,
                                                **options)
        else:
            views, why = None, f"its rows {part.start}-{part.stop - 1} came from {part.source}, read once"
        if views is None:
            return None, why if part.root is not None else f"the reference: {why}"
        embeddings.append(views.embeddings)
        copies = views.copies if number == 0 else copies
        again += views.decoded_again
    return TableViews(table, np.concatenate(embeddings) if len(embeddings) > 1 else embeddings[0], copies, again), ""


def grown(base: TableViews | None, added: TableViews | None, table: FingerprintTable) -> TableViews | None:
    """The views of ``table``, the base's rows followed by the added ones (``None`` unless both have views)."""
    if base is None or added is None:
        return None
    if not len(added.table):  # a drop of which nothing could be used
        return replace(base, table=table)
    return replace(base, table=table, embeddings=np.concatenate([base.embeddings, added.embeddings]))


def shown(encoder: nn.Module, views: bool, why: str = "") -> str:
    """What the encoder was shown, in words for the decision's evidence."""
    size = view_size(encoder)
    if views and size is not None:
        return f"{size[0]}x{size[1]} views, each from its image's one decode"
    if size is None:
        return "32x32 thumbnails"
    return f"32x32 thumbnails resized to {size[0]}x{size[1]}" + (f" ({why})" if why else "")


class GateViews:
    """What one :class:`~vdc_torch.decision.gate.DatasetGate` holds of its encoder's views between calls.

    The reference's views and the identity of the encoder that made them (:func:`encoder_identity`: a model trained
    since makes others); the views the last fingerprinting collected, until the gate takes them for its table;
    where the reference table's images can be read again for a new encoder's views (its parts: the reference, each
    update, or the folder of a loaded manifest); the store the embeddings are kept in between runs; and why the
    encoder was last shown thumbnails instead of views (a reference whose images could not all be read again is
    not tried twice with one encoder).
    """

    def __init__(self, cache: Callable[[], FingerprintCache | None]) -> None:
        #: The gate's fingerprint cache, opened only when embeddings are to be kept next to it.
        self._cache = cache
        self.reference: tuple[str, TableViews] | None = None
        self.readable: tuple[FingerprintTable, list[ReadableRows]] | None = None
        self._last: TableViews | None = None
        self._last_because = ""
        self._store: EmbeddingStore | None = None
        self._store_key: tuple[str, str] | None = None  # (encoder identity, the key of its kept embeddings)
        self._failed: tuple[str, FingerprintTable] | None = None
        self._thumbnails_because = ""

    def kept(self, encoder: nn.Module | None, identity: str | None = None) -> Kept | None:
        """Where the encoder's embeddings are kept between runs — next to the fingerprint cache
        (``<cache>.embeddings``), so only with a usable ``cache=`` — and their key (:func:`store_key`); ``None``
        without one."""
        if encoder is None or view_size(encoder) is None:
            return None
        cache = self._cache()
        if cache is None or not cache.writable:
            return None
        if self._store is None or self._store.path != embeddings_path(cache.path):
            self._store = EmbeddingStore(embeddings_path(cache.path))
        identity = identity or encoder_identity(encoder)
        if self._store_key is None or self._store_key[0] != identity:
            self._store_key = (identity, store_key(encoder, identity))
        return self._store, self._store_key[1]

    def collect(self, embedder: ViewEmbedder | None, table: FingerprintTable, data: Dataset | Stream, desc: str,
                encoder: nn.Module | None, **options: Any) -> None:
        """Keep the views ``embedder`` collected while ``table`` was fingerprinted (rows it has none of taken from
        the kept embeddings or decoded again, :func:`table_views`) until :meth:`taken`; ``None`` embedder: none."""
        self._last, self._last_because = None, ""
        if embedder is not None:
            self._last, why = table_views(embedder, table, data, self.kept(encoder),
                                          desc=f"{desc}: views for the encoder", **options)
            self._last_because = why and f"the {desc} images: {why}"

    def taken(self, table: FingerprintTable) -> TableViews | None:
        """The views :meth:`collect` kept for ``table`` (once), ``None`` when it kept none."""
        views, self._last = self._last, None
        return views if views is not None and views.table is table else None

    def of_reference(self, encoder: nn.Module | None, ref: FingerprintTable, config: MatchConfig,
                     decode: bool = True, **options: Any) -> TableViews | None:
        """The reference's views, while they are those of ``ref`` and of ``encoder`` as it is now (with calibration
        copies when the threshold is to be derived); else, where ``ref`` was fingerprinted from images that can be
        read again (``decode``), made anew from them (a new or retrained encoder), once per encoder and table;
        else ``None``, and :meth:`why_thumbnails` says why."""
        if encoder is None or view_size(encoder) is None:
            return None
        identity = encoder_identity(encoder)
        held = self.reference
        if held is not None and held[0] == identity and held[1].table is ref and (
                held[1].copies is not None or config.encoder_similarity is not None):
            return held[1]
        failed = self._failed
        if not decode or (failed is not None and failed[0] == identity and failed[1] is ref):
            return None
        views, why = None, "the reference's images cannot be read again"
        if rank_and_world()[1] > 1:
            why = MANY_RANKS
        elif self.readable is not None and self.readable[0] is ref:
            views, why = reference_views(encoder, ref, self.readable[1], config, self.kept(encoder, identity),
                                         desc="reference: views for the encoder", **options)
        self.reference = None if views is None else (identity, views)
        self._failed = None if views is not None else (identity, ref)
        self._thumbnails_because = "" if views is not None else why
        return views

    def grow(self, encoder: nn.Module | None, config: MatchConfig, base: FingerprintTable, table: FingerprintTable,
             part: ReadableRows | None, added: TableViews | None) -> None:
        """``table`` is ``base`` with rows added (readable again as ``part``, with views ``added``): the reference's
        views and readable parts grow with it where both sides have them."""
        readable = self.readable is not None and self.readable[0] is base and part is not None
        self.readable = (table, self.readable[1] + [part]) if readable else None  # type: ignore[index, list-item]
        more = grown(self.of_reference(encoder, base, config, decode=False), added, table)
        self.reference = None if more is None else (self.reference[0], more)  # type: ignore[index]

    def why_thumbnails(self, encoder: nn.Module | None, ref_views: TableViews | None,
                       new_views: TableViews | None) -> str:
        """Why an encoder with a larger input is shown thumbnails (logged once per check); ``""`` for one
        without."""
        if view_size(encoder) is None:
            return ""
        if ref_views is None:
            why = self._thumbnails_because or "the reference's images cannot be read again"
        else:
            why = self._last_because or "the new images' views could not all be read"
        log.warning("encoder: %s, so it is shown the stored 32x32 thumbnails of the reference and the new images",
                    why)
        return why
