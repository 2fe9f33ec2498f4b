"""Stage 5: DatasetGate, its Policy and the Decision it returns.

The decision itself is one pure function, :func:`decide`, of the counts and the policy, so it is easy to read and
to test with a table of cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.utils.data

from vdc_torch.collective import all_gather_arrays, all_gather_bytes, all_gather_json, rank_and_world
from vdc_torch.data.dataset import Dataset, Stream, label_value
from vdc_torch.decision.display import decision_html
from vdc_torch.decision.inputs import _stream_view, _StreamView, as_dataset, delta_of  # noqa: F401 - re-exported
from vdc_torch.decision.plan import combine, reference_labels, replay_count, replay_positions
from vdc_torch.decision.policy import Action, Policy, _action_and_reason, check_evidence, decide  # noqa: F401
from vdc_torch.decision.roots import add_part, parts_of, root_of
from vdc_torch.decision.store.cache import CacheCheckpoint, FingerprintCache, fingerprint_with_cache
from vdc_torch.decision.store.concat import concat_tables
from vdc_torch.decision.views import MANY_RANKS, GateViews, ReadableRows, TableViews, shown, view_embedder
from vdc_torch.decision.store.manifest import (
    ManifestOrigin,
    compact_manifest,
    is_index_file,
    load_manifest_origin,
    save_manifest,
    save_manifest_of_ranks,
    save_sharded_manifest,
)
from vdc_torch.fingerprints.compute import (
    FINGERPRINT_VERSION,
    FingerprintTable,
    Problem,
    fingerprint_stream,
    table_from_bytes,
    table_to_bytes,
)
from vdc_torch.fingerprints.encoder import CalibrationCopies, embed_thumbs, encoder_identity, view_size
from vdc_torch.fingerprints.quality import QUALITY_COLUMNS, quality_of
from vdc_torch.fingerprints.table import LEGACY_DIGEST_ROWS, LEGACY_FINGERPRINT_VERSIONS
from vdc_torch.search.cascade import (
    MATCH_COLUMNS,
    MATCHING_VERSION,
    FeatureCaches,
    MatchConfig,
    match_tables,
)
from vdc_torch.search.encoder_threshold import EncoderThreshold, encoder_threshold
from vdc_torch.search.reference_index import ReferenceIndex
from vdc_torch.search.shards import ReferenceShard
from vdc_torch.search.split_drop import SplitDrop, match_split_drop

log = logging.getLogger(__name__)

#: Version of the decision's JSON (``vdc_torch/decision/decision.schema.json``, a JSON Schema): bumped when a field
#: is removed, renamed or changes meaning; fields may be added within a version.
DECISION_SCHEMA_VERSION = 1
#: The JSON Schema of :meth:`Decision.to_json`.
DECISION_SCHEMA_PATH = Path(__file__).with_name("decision.schema.json")


@dataclass
class Decision:
    """The gate's answer for one new dataset."""

    action: Action
    reason: str
    overlap: float
    #: The samples to train on — the novel, deduplicated ones and any relabelled copy (see ``conflicts``) — as the
    #: kind of object passed in: a ``Subset`` of a torch dataset (of exactly that object), ``ds.select(...)`` of a
    #: Hugging Face dataset, a :class:`NovelStream` of a stream.
    delta: Any
    matches: pd.DataFrame
    conflicts: pd.DataFrame
    problems: pd.DataFrame
    internal_duplicates: pd.DataFrame
    #: Per-class coverage (:data:`CLASS_COLUMNS`), one row per label of either side; empty when the new data is
    #: unlabelled. ``in_reference`` False marks a class the reference has never seen.
    classes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CLASS_COLUMNS)))
    #: Novel samples with a quality flag (:data:`~vdc_torch.fingerprints.quality.QUALITY_COLUMNS`: index, path,
    #: flags such as ``"dark,blurry"``, and the measurements behind them), read from their fingerprints. Left out
    #: of the delta when ``Policy(exclude_low_quality=True)``.
    quality: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(QUALITY_COLUMNS)))
    counts: dict[str, int] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    config: MatchConfig = field(default_factory=MatchConfig)
    #: Fingerprints behind the decision (for reports: thumbnails and detail images), not serialised. With the
    #: reference split across ranks, ``reference_fingerprints`` holds only the matched reference rows.
    new_fingerprints: FingerprintTable | None = field(default=None, repr=False)
    reference_fingerprints: FingerprintTable | None = field(default=None, repr=False)
    new_root: str = ""
    reference_root: str = ""
    #: ``(first sample index, folder)`` of each part of the reference (:mod:`vdc_torch.decision.roots`): a row's
    #: path is relative to its own part's folder (rows added by ``update`` came from the drop's folder).
    reference_parts: list[tuple[int, str]] = field(default_factory=list)
    #: True when the reference was fingerprinted from its files in this process (not loaded from a manifest, whose
    #: stored paths may come from anyone): only then may a report read pictures from reference paths.
    reference_from_files: bool = False
    #: Files under the new dataset's root that are not samples (``path, reason``): nothing is dropped unseen.
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    #: Indices (in the new dataset, or positions in a stream) of the novel, deduplicated samples.
    novel_indices: list[int] = field(default_factory=list)
    #: A key per sample of the delta to persist it: its path (relative to the root), or a stream item's key.
    delta_keys: list[str] = field(default_factory=list)
    #: With an encoder: the cosine its stage counted from, derived from the reference at
    #: ``MatchConfig.encoder_precision`` unless ``encoder_similarity`` was set, with the estimated precision and
    #: recall behind it (:class:`~vdc_torch.search.encoder_threshold.EncoderThreshold`); ``None`` without one.
    encoder: EncoderThreshold | None = None

    def __str__(self) -> str:
        return self.reason

    def _repr_html_(self) -> str:
        """The decision in a notebook cell: verdict, reason, counts, per-class table and a few matched pairs."""
        return decision_html(self)

    @property
    def delta_indices(self) -> list[int]:
        """Indices (in the new dataset) of the samples to train on: the novel, deduplicated ones and the relabelled
        copies."""
        return list(self.novel_indices)

    def replay_indices(self, reference: Any, replay: float = 0.2, balance: str | None = "class",
                       seed: int = 0) -> list[int]:
        """Indices in ``reference`` of the replay sample :meth:`training_set` adds (see :mod:`~.plan`)."""
        _, labels = reference_labels(reference)
        count = replay_count(len(self.novel_indices), replay, len(labels))
        return replay_positions(labels, count, balance, seed)

    def training_set(self, reference: Any, replay: float = 0.2, balance: str | None = "class",
                     seed: int = 0) -> Any:
        """What to fine-tune on: the delta plus ``round(replay × len(delta))`` samples of ``reference`` (the
        dataset or folder the model was trained on), seeded and by default class-balanced, so the run does not
        forget the old data (rehearsal; :mod:`vdc_torch.decision.plan` says why and how they are drawn).

        The same kind of object as passed where possible — one ``datasets.Dataset`` for Hugging Face datasets,
        one :class:`vdc_torch.Dataset` for folders — else a ``ConcatDataset`` of the delta and a ``Subset`` of the
        reference (a ``ChainDataset`` after a stream's delta). ``replay=0`` is the delta alone.

        >>> train_on = decision.training_set(train_v1, replay=0.2)  # doctest: +SKIP
        """
        data, labels = reference_labels(reference)
        positions = replay_positions(labels, replay_count(len(self.novel_indices), replay, len(labels)), balance,
                                     seed)
        return combine(self.delta, reference, data, positions)

    def plan(self, replay: float = 0.2, balance: str | None = "class", seed: int = 0) -> dict[str, Any]:
        """The training plan as file lists (what ``vdc gate --plan`` writes): the delta's keys (paths relative
        to ``new_root``) and the replay sample's reference paths (relative to ``reference_root``), drawn as
        :meth:`training_set` draws them from the reference's fingerprints."""
        ref = self.reference_fingerprints if self.reference_fingerprints is not None else FingerprintTable.empty()
        if len(ref) != self.counts.get("reference", len(ref)) and replay > 0:
            raise ValueError(f"plan(replay={replay:g}) draws from the whole reference, but this decision was made "
                             f"with the reference split across ranks and holds {len(ref)} of its "
                             f"{self.counts['reference']} rows (the matched ones): use training_set(reference, "
                             "replay) or plan(replay=0)")
        labels = [None if v is None else str(v) for v in ref.labels]
        positions = replay_positions(labels, replay_count(len(self.novel_indices), replay, len(ref)), balance, seed)
        per_class = Counter(labels[p] for p in positions if labels[p] is not None)
        return {
            "format": "vdc_torch.plan", "version": 1, "action": str(self.action),
            "replay_fraction": replay, "balance": balance, "seed": seed,
            # absolute: the plan is read by other processes, from other working directories
            "new_root": self.new_root and os.path.abspath(self.new_root),
            "reference_root": self.reference_root and os.path.abspath(self.reference_root),
            "delta": list(self.delta_keys),
            "replay": [self._replayed_path(ref, p) for p in positions],
            "replay_per_class": dict(sorted(per_class.items())),
        }

    def _replayed_path(self, ref: FingerprintTable, row: int) -> str:
        """A reference row's path for the plan: relative to ``reference_root`` where it came from there, else the
        path under its own part's folder (a drop ``update`` added), absolute."""
        path = ref.paths[row]
        root = root_of(self.reference_parts, int(ref.sample_index[row])) if self.reference_parts else ""
        if not root or path.startswith("<") or os.path.isabs(path):
            return path
        if self.reference_root and os.path.abspath(root) == os.path.abspath(self.reference_root):
            return path
        return os.path.join(os.path.abspath(root), path)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able Python values."""
        return {
            "format": "vdc_torch.decision",
            "schema_version": DECISION_SCHEMA_VERSION,
            "action": str(self.action),
            "reason": self.reason,
            "overlap": self.overlap,
            "counts": dict(self.counts),
            "delta_indices": self.delta_indices,
            "matches": _records(self.matches),
            "conflicts": _records(self.conflicts),
            "internal_duplicates": _records(self.internal_duplicates),
            "classes": _records(self.classes),
            "quality": _records(self.quality),
            "problems": _records(self.problems),
            "skipped": _records(self.skipped),
            "delta_keys": list(self.delta_keys),
            "policy": asdict(self.policy),
            "config": self.config.to_dict(),
            "encoder": None if self.encoder is None else self.encoder.to_dict(),
            "new_root": self.new_root,
            "reference_root": self.reference_root,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """The decision as JSON text (also written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=indent, default=_json_default)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-able dicts; NaN becomes None and non-UTF-8 file names survive (pandas.to_json rejects them)."""
    if not len(frame):
        return []
    plain = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return json.loads(json.dumps(plain, default=_json_default))


def _match_key(new: FingerprintTable, ref: FingerprintTable, config: MatchConfig) -> str:
    """A digest of every column the cascade reads, with the fingerprint and cascade versions and the config.

    Thumbnails and detail images are functions of the pixels (given the fingerprint version), so the pixel digest
    stands for them; byte digests, EXIF identity, sizes and hashes are hashed themselves: a lossless re-save keeps
    the pixels but not the bytes, and must not be reported as "identical bytes" from a stale result.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([FINGERPRINT_VERSION, MATCHING_VERSION, config.to_dict()], sort_keys=True).encode())
    for table in (ref, new):
        h.update(len(table).to_bytes(8, "little"))
        h.update(b"".join(table.pixel_digest))
        for digest in table.byte_digest:
            h.update(b"\0" if digest is None else b"\1" + digest)
        h.update(json.dumps(list(table.exif_identity)).encode())
        for column in (table.width, table.height, table.phash, table.phash_mirror, table.phash_whole,
                       table.crop_hashes):
            h.update(np.ascontiguousarray(column).tobytes())
    return "matches:" + h.hexdigest()


def _relative_paths(paths: list[str], root: str) -> list[str]:
    """:func:`_relative` of every path; paths directly under ``root`` as spelled are cut by a prefix (60k paths:
    0.6 s of ``os.path.relpath`` saved in a cached re-run), anything else goes through ``_relative``."""
    prefix = root.rstrip(os.sep) + os.sep if root else ""
    out = []
    for path in paths:
        rest = path[len(prefix):] if prefix and path.startswith(prefix) else ""
        if rest and os.path.normpath(rest) == rest and not rest.startswith(("..", os.sep)):
            out.append(rest)
        else:
            out.append(_relative(path, root))
    return out


def _relative(path: str, root: str) -> str:
    if root and not path.startswith("<"):
        try:
            rel = os.path.relpath(path, root)
            if not rel.startswith(".."):
                return rel
        except ValueError:
            pass
    return path


class DatasetGate:
    """Decides whether a new dataset is worth training on, against the reference the model was trained on.

    ``reference`` is a folder, a :class:`Dataset` or any torch dataset of ``(image, label)`` (or ``None`` with
    :meth:`load`). ``workers`` processes fingerprint in parallel (default: all cores); ``cache`` names a
    fingerprint cache file (or is a :class:`FingerprintCache`) so unchanged files are not decoded again on the next
    run; it is checkpointed while fingerprinting runs, so an interrupted run resumes where it stopped.
    ``encoder`` (a module mapping an image batch to embeddings, best a
    :class:`vdc_torch.fingerprints.encoder.LayerEncoder` over an intermediate layer of the model being trained)
    adds nearest neighbours in the model's feature space as a method. With an ``input_size`` larger than 32, it is
    shown each image at that size, from the image's one decode, while the images are fingerprinted
    (:mod:`vdc_torch.decision.views`; a loaded reference is read again from its folder, a grown one part by part);
    where the images cannot be read again (gone, changed, or read once from a stream) and under several ranks it
    is shown the stored 32×32 thumbnails (of both sides), with a warning; :meth:`query` shows it the queried
    images as the reference's were shown.

    >>> gate = DatasetGate(reference="data/train_v1")            # doctest: +SKIP
    >>> decision = gate.check("data/train_v2"); decision.action   # doctest: +SKIP
    >>> gate.save("ckpt/reference.vdc")                           # doctest: +SKIP
    """

    def __init__(
        self,
        reference: Any = None,
        *,
        policy: Policy | None = None,
        config: MatchConfig | None = None,
        workers: int | None = None,
        progress: bool = False,
        cache: str | os.PathLike[str] | FingerprintCache | None = None,
        encoder: torch.nn.Module | None = None,
        split_reference: bool = True,
    ) -> None:
        self.policy = policy or Policy()
        self.config = config or MatchConfig()
        self.workers = workers
        self.progress = progress
        self.cache_path = cache
        self.encoder = encoder
        self._cache: FingerprintCache | None = cache if isinstance(cache, FingerprintCache) else None
        self._reference = as_dataset(reference) if reference is not None else None
        self._table: FingerprintTable | None = None if reference is not None else FingerprintTable.empty()
        self.reference_problems: list[Problem] = []
        self.meta: dict[str, Any] = {}
        #: Why the reference is empty, when that means nothing was trained on yet (set by ``pretrain_gate``):
        #: then every readable, deduplicated sample is to be trained on, and the reason says why (see :func:`decide`).
        self.no_reference: str | None = None
        self._query_index: ReferenceIndex | None = None  # kept by query() for the reference table it was built on
        self._query_embeddings: Any = None
        #: The encoder stage's threshold of the last check or query, and what it was derived from (the reference
        #: table, the encoder, the config; see :meth:`_encoder_config`).
        self._encoder_threshold: tuple[tuple[Any, ...], EncoderThreshold] | None = None
        #: Under a ``torch.distributed`` process group of several ranks, each rank holds only its part of the
        #: reference (``split_reference``; see :meth:`check`): where it lies, else ``None``.
        self.split_reference = split_reference
        self._shard: ReferenceShard | None = None
        #: What the encoder is shown and where the reference's images can be read again (:class:`GateViews`).
        self._views = GateViews(lambda: self.cache)

    # -- reference -----------------------------------------------------------------------------------------
    @property
    def reference_table(self) -> FingerprintTable:
        """Fingerprints of the reference (computed on first use)."""
        if self._table is None:
            assert self._reference is not None
            split = self.split_reference and rank_and_world()[1] > 1 and not isinstance(self._reference, Stream)
            table, problems, dataset = self._fingerprint(self._reference, "reference", gather=not split,
                                                         calibrate=True)
            views = self._views.taken(table)
            self._views.reference = None if views is None else (encoder_identity(self.encoder), views)
            part = ReadableRows(0, len(table), dataset) if isinstance(self._reference, Dataset) else \
                ReadableRows(0, len(table))
            self._views.readable = (table, [part])
            if split:  # this rank keeps the rows it fingerprinted; their global rows: places in the sorted whole
                (every_index,) = all_gather_arrays(np.asarray(table.sample_index, np.int64))
                rows = np.searchsorted(np.sort(every_index), table.sample_index)
                self._shard = ReferenceShard.across_ranks(rows, table)
            check_evidence(len(table) if self._shard is None else self._shard.total, problems, self.policy,
                           "reference")
            self._table, self.reference_problems = table, problems
            # absolute: a manifest is read from other working directories (plans, views, reports resolve under it)
            self.meta.setdefault("reference_root", os.path.abspath(dataset.root) if dataset.root else dataset.root)
        return self._table

    @property
    def cache(self) -> FingerprintCache | None:
        """The fingerprint cache (opened on first use), or ``None`` when the gate has none."""
        if self.cache_path is None:
            return None
        if self._cache is None:
            self._cache = FingerprintCache(self.cache_path)
        return self._cache

    def _fingerprint(self, data: Dataset | Stream, desc: str, gather: bool = True, calibrate: bool = False,
                     ) -> tuple[FingerprintTable, list[Problem], Dataset]:
        """Fingerprints and problems of ``data``, and the :class:`Dataset` describing its samples. With an encoder
        shown views, their embeddings are kept until taken (:meth:`GateViews.taken`; ``calibrate``: with
        calibration copies)."""
        started = time.perf_counter()
        embedder = view_embedder(self.encoder, data, self.config, calibrate)
        view_options = {} if embedder is None else {"view_size": embedder.size, "on_views": embedder}
        if isinstance(data, Stream):
            table, problems, dataset = self._fingerprint_stream(data, desc, view_options)
        else:
            dataset = data
            # the cache file is checkpointed while fingerprinting runs: an interrupted run loses little
            checkpoint = CacheCheckpoint(self.cache) if self.cache is not None and dataset.is_file_backed else None
            try:
                table, problems = fingerprint_with_cache(
                    dataset, cache=self.cache, on_chunk=checkpoint, workers=self.workers, progress=self.progress,
                    desc=desc, gather=gather, **view_options,
                )
            except BaseException:  # Ctrl-C (or a failure): keep what was fingerprinted since the last checkpoint
                if checkpoint is not None:
                    try:
                        checkpoint.flush()
                    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
                        log.warning("could not checkpoint the fingerprint cache %s: %s", self.cache.path, exc)
                raise
        self._views.collect(embedder, table, data, desc, self.encoder, workers=self.workers, progress=self.progress)
        table.paths = _relative_paths(table.paths, dataset.root)
        fatal = sum(p.fatal for p in problems)
        if fatal:
            log.warning("%s: %d of %d samples could not be used", desc, fatal, len(dataset))
        log.info("fingerprinting %s: %d samples in %.2f s", desc, len(dataset), time.perf_counter() - started)
        return table, problems, dataset

    def _fingerprint_stream(self, stream: Stream, desc: str, view_options: dict[str, Any],
                            ) -> tuple[FingerprintTable, list[Problem], Dataset]:
        seen: list[tuple[int, str, bool, Any]] = []

        def items() -> Any:
            for position, key, image, label in stream.items():
                has_key = key != str(position)
                seen.append((position, key, has_key, label_value(label)))
                yield position, f"<{stream.name}[{position}]{' ' + key if has_key else ''}>", image

        total = len(stream.original) if hasattr(stream.original, "__len__") else None
        table, problems = fingerprint_stream(items(), progress=self.progress, total=total, desc=desc, **view_options)
        view = _stream_view(stream, seen)
        order = table.sample_index.tolist()
        table.paths = [view.samples[i][0] for i in order]
        table.labels = [view.label_name(view.samples[i][1]) for i in order]
        return table, problems, view

    def __len__(self) -> int:
        table = self.reference_table
        return len(table) if self._shard is None else self._shard.total

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> DatasetGate:
        """A gate whose reference is a saved manifest, single-file or sharded (the reference images are not needed).

        Under a ``torch.distributed`` process group of several ranks (and ``split_reference=True``, the default),
        each rank loads only its share of a sharded manifest's shards (collective; see :meth:`check`). A
        single-file manifest is loaded whole on every rank.
        """
        rank, world = rank_and_world()
        split = kwargs.get("split_reference", True) and world > 1
        table, meta, origin = load_manifest_origin(path, part=(rank, world) if split else None)
        gate = cls(None, **kwargs)
        if split and origin.total_rows is not None:
            gate._shard = ReferenceShard.across_ranks(origin.first_row + np.arange(len(table)), table)
        gate._table = table
        gate.meta = meta
        gate._stored_at, gate._stored_table = origin, table  # what save() may append to
        gate._views.readable = (table, _stored_parts(table, meta))
        legacy = int(meta.get(LEGACY_DIGEST_ROWS, 0) or 0)
        if legacy and rank == 0:
            log.warning("%s: %d reference samples hold pixel digests of fingerprint version %s (BLAKE2b); they load "
                        "and match, but a copy with the same pixels and other file bytes is found as a near "
                        "duplicate instead of an exact one; rebuild the manifest (`vdc index`) to digest them "
                        "again", path, legacy, "/".join(map(str, LEGACY_FINGERPRINT_VERSIONS)))
        return gate

    def save(self, path: str | os.PathLike[str], *, sharded: bool | None = None) -> Path:
        """Write the reference manifest atomically to ``path``.

        ``sharded=True`` writes a sharded manifest: a small index at ``path`` naming immutable shard files in
        ``<path>.shards/``. Saving a gate loaded from (or last saved to) the sharded manifest at ``path``, whose
        reference has only grown by :meth:`update` since, writes just one new shard of the added rows and replaces
        the index — time and bytes in proportion to the drop, and another job's appends since are kept. Otherwise
        it writes a fresh index with one shard of every row (converting a single-file manifest once).
        ``sharded=False`` writes one SQLite file (as before). ``None`` (default) keeps the kind of what is at
        ``path`` (a sharded manifest stays sharded), and for a new path the kind the gate was loaded from or last
        saved as — one file for a gate built from images.

        A reference split across ranks (see :meth:`check`) is saved by every rank together (collective): one
        shard per rank, written side by side, and a fresh index naming them in rank order.
        """
        table = self.reference_table  # fingerprints first: computing them records the reference root
        meta = {k: v for k, v in self.meta.items() if k not in ("format", "format_version", "saved_at", "samples")}
        target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
        origin: ManifestOrigin | None = getattr(self, "_stored_at", None)
        if self._shard is not None:  # split across ranks: one shard per rank, one index (collective)
            if sharded is False:
                raise ValueError("save(sharded=False) of a reference split across ranks: a single file would need "
                                 "every rank's rows in one process; save it sharded (one shard per rank), or build "
                                 "the gate with split_reference=False")
            grown = (origin is not None and origin.sharded and origin.lineage is not None
                     and getattr(self, "_stored_table", None) is table and origin.path == os.path.realpath(target))
            saved = save_manifest_of_ranks(target, table, meta,
                                           append_after=(origin.lineage, origin.rows) if grown else None)  # type: ignore
            self._stored_at, self._stored_table = saved.origin, table
            return Path(saved.origin.path)
        if sharded is None:
            sharded = is_index_file(target) or (
                not target.exists() and origin is not None and origin.sharded)
        if not sharded:
            saved = save_manifest(target, table, meta)
            self._stored_at = ManifestOrigin(os.path.realpath(saved), False, None, len(table))
            self._stored_table = table
            return saved
        grown = (origin is not None and origin.sharded and origin.lineage is not None
                 and getattr(self, "_stored_table", None) is table and origin.path == os.path.realpath(target))
        result = save_sharded_manifest(target, table, meta,
                                       append_after=(origin.lineage, origin.rows) if grown else None)  # type: ignore
        if result.shift:  # another job appended meanwhile: our rows are stored past its rows
            table.sample_index[result.first_row:] += result.shift
        self._stored_at, self._stored_table = result.origin, table
        return Path(result.origin.path)

    def compact(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Save to the sharded manifest at ``path`` (default: the one the gate was loaded from or saved to), then
        merge its shards into one (:func:`~vdc_torch.decision.store.manifest.compact_manifest`: atomic; shard files
        no index names are removed). Returns the path."""
        origin: ManifestOrigin | None = getattr(self, "_stored_at", None)
        if path is None:
            if origin is None:
                raise ValueError("compact(): give the manifest path (this gate was not loaded from or saved to one)")
            path = origin.path
        target = self.save(path, sharded=True)
        compact_manifest(target)
        return target

    def update(self, dataset: Any) -> int:
        """Add a dataset the model has now been trained on to the reference; returns the rows added.

        Rows stored in a manifest stay there (read on demand), so updating a loaded 1M-image reference does not
        read its thumbnails; :meth:`save` to a sharded manifest then writes only the added rows.

        With the reference split across ``torch.distributed`` ranks the call is collective: the ranks fingerprint
        the drop together, each keeps one consecutive block of its rows (the reference's rows stay in the order one
        process would give them; no rank holds the whole drop), and a :meth:`save` to the sharded manifest the gate was loaded from (or saved to)
        then writes one new shard per rank of its added rows and leaves the stored shards as they are.
        """
        base = self.reference_table
        part: ReadableRows | None = None  # where the added rows' images can be read again (one process only)
        if self._shard is None:
            source = as_dataset(dataset)
            table, problems, _ = self._fingerprint(source, "update")
            added_views = self._views.taken(table)
            added = len(table)
            offset = int(base.sample_index.max()) + 1 if len(base) else 0
            table.sample_index = table.sample_index + offset
            part = ReadableRows(len(base), len(base) + added, source if isinstance(source, Dataset) else None, offset)
            if added:  # its rows' paths are relative to the drop's folder, not the reference's
                add_part(self.meta, offset, source.root if isinstance(source, Dataset) else "")
        else:  # the ranks fingerprint their shares; rank r then keeps block r of the drop (gathered block by block)
            shard = self._shard
            drop, problems, data = self._split_drop(as_dataset(dataset), "update")
            added = drop.total
            bounds = [r * added // shard.world for r in range(shard.world + 1)]
            for r in range(shard.world):
                rows = drop.rows(bounds[r], bounds[r + 1])
                if r == shard.rank:
                    table = rows
            block = np.arange(bounds[shard.rank], bounds[shard.rank + 1])
            (last,) = all_gather_arrays(np.asarray([int(base.sample_index.max()) if len(base) else -1], np.int64))
            table.sample_index = table.sample_index + int(last.max()) + 1
            if added:
                add_part(self.meta, int(last.max()) + 1, data.root)
        grown_only = getattr(self, "_stored_table", None) is base
        self._table = concat_tables([base, table])
        self._views.grow(self.encoder, self.config, base, self._table, part,
                         added_views if self._shard is None else None)
        if self._shard is not None:
            self._shard = ReferenceShard.across_ranks(np.concatenate([self._shard.rows, self._shard.total + block]),
                                                      self._table)
        if grown_only:  # only grown since it was loaded or saved: save() may append
            self._stored_table = self._table
        self.reference_problems.extend(problems)
        self._query_index = None
        return added

    # -- the check -------------------------------------------------------------------------------------------
    def check(self, new_dataset: Any) -> Decision:
        """Compare ``new_dataset`` with the reference and decide: skip, or train on the returned delta."""
        given = as_dataset(new_dataset)  # a wrong path fails before the reference is fingerprinted
        ref = self.reference_table
        if self._shard is not None:  # each rank keeps its share of the drop while matching, then gathers it
            drop, problems, data = self._split_drop(given, "new")
            check_evidence(drop.total, problems, self.policy)
            started = time.perf_counter()
            matched, internal = self._match_split(drop, ref, self._shard)
            packed = drop.packed()
            del drop  # its rows are in the pieces now: the rank's share is not held twice while the drop gathers
            new = packed.whole()
        else:
            new, problems, data = self._fingerprint(given, "new")
            new_views = self._views.taken(new)
            check_evidence(len(new), problems, self.policy)
            started = time.perf_counter()
            matched, internal = self._match(new, ref, new_views)
        log.info("matching: %d new against %d reference samples in %.2f s", len(new), len(ref),
                 time.perf_counter() - started)
        started = time.perf_counter()
        decision = self._decision(new_dataset, data, new, ref, matched, internal, problems)
        log.info("decision: %s in %.2f s", decision.action, time.perf_counter() - started)
        return decision

    def _match(self, new: FingerprintTable, ref: FingerprintTable, new_views: TableViews | None = None,
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Cross and internal matches; reused from the cache when fingerprints and config are unchanged."""
        key = _match_key(new, ref, self.config) if self.cache is not None and self.encoder is None else None
        stored = self.cache.result(key) if self.cache is not None and key is not None else None
        if stored is not None:
            return pd.DataFrame(stored["cross"], columns=MATCH_COLUMNS), pd.DataFrame(
                stored["internal"], columns=MATCH_COLUMNS
            )
        new_emb = ref_emb = None
        config = self.config
        if self.encoder is not None:
            ref_views = self._reference_views(ref)
            if ref_views is not None and new_views is not None:
                ref_emb, copies, seen = ref_views.embeddings, ref_views.copies, shown(self.encoder, True)
                config = self._encoder_config(ref, ref_emb, reuse=False, copies=copies, seen=seen)
                new_emb = new_views.embeddings if config.encoder_similarity is not None else None
            else:
                seen = shown(self.encoder, False, self._views.why_thumbnails(self.encoder, ref_views, new_views))
                ref_emb = self._embed(ref.thumbs)
                config = self._encoder_config(ref, ref_emb, reuse=False, seen=seen)
                new_emb = self._embed(new.thumbs) if config.encoder_similarity is not None else None
        caches = FeatureCaches()  # the new images verified against the reference are described once for both calls
        label = "matching" if self.progress else None
        matched = match_tables(new, ref, config, new_embeddings=new_emb, ref_embeddings=ref_emb,
                               feature_caches=caches, progress=label)
        internal = match_tables(new, new, config, same_table=True, new_embeddings=new_emb, ref_embeddings=new_emb,
                                feature_caches=caches, progress=label and "internal duplicates")
        if self.cache is not None and key is not None:
            self.cache.store_result(key, {"cross": _records(matched), "internal": _records(internal)})
            self.cache.save()
        return matched, internal

    def _split_drop(self, given: Dataset | Stream, desc: str) -> tuple[SplitDrop, list[Problem], Dataset]:
        """A drop fingerprinted by the ranks together, this rank keeping its own rows (a stream, which every rank
        reads whole, is shared out after); its problems (every rank's) and dataset. Collective."""
        if isinstance(given, Stream):
            whole, problems, data = self._fingerprint(given, desc)
            return SplitDrop.of_whole(whole), problems, data
        own, problems, data = self._fingerprint(given, desc, gather=False)
        return SplitDrop.from_own(own), problems, data

    def _match_split(self, drop: SplitDrop, ref: FingerprintTable, shard: ReferenceShard,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Cross and internal matches with the reference split across ranks (and the drop too, gathered a chunk at
        a time: :func:`~vdc_torch.search.split_drop.match_split_drop`); the cascade's reductions make both frames
        those of one process (global rows)."""
        embed, ref_emb, config = None, None, self.config
        if self.encoder is not None:
            ref_emb = self._embed(ref.thumbs)
            why = "the reference is split across ranks" if view_size(self.encoder) is not None else ""
            config = self._encoder_config(ref, ref_emb, reuse=False, seen=shown(self.encoder, False, why))
            embed = self._embed if config.encoder_similarity is not None else None
        label = "matching" if self.progress and shard.rank == 0 else None
        return match_split_drop(drop, ref, shard, config, embed=embed, ref_embeddings=ref_emb, progress=label)

    def _embed(self, thumbs: Any) -> Any:
        """Unit embeddings of (n, h, w, 3) thumbnails or views by the gate's encoder."""
        return embed_thumbs(self.encoder, thumbs)

    def _reference_views(self, ref: FingerprintTable) -> TableViews | None:
        """The reference's embeddings from its views (:meth:`GateViews.of_reference`), ``None`` where the encoder
        is shown thumbnails."""
        return self._views.of_reference(self.encoder, ref, self.config, workers=self.workers, progress=self.progress)

    def _encoder_config(self, ref: FingerprintTable, ref_emb: Any, reuse: bool,
                        copies: CalibrationCopies | None = None, seen: str = "") -> MatchConfig:
        """The config with the encoder stage's cosine: ``encoder_similarity`` when set, else derived from the
        reference's own copies and look-alikes (:func:`encoder_threshold`; collective with the reference split
        across ranks). A check derives it afresh, as it embeds the reference afresh (the model may have trained
        since); ``reuse`` (queries, whose reference embeddings are kept) keeps it while the reference table, the
        encoder object and the config are the same. ``None`` in it means the stage accepts nothing."""
        key = (id(ref), id(self.encoder), self.config, seen)
        if not reuse or self._encoder_threshold is None or self._encoder_threshold[0] != key:
            started = time.perf_counter()
            threshold = encoder_threshold(ref.thumbs, ref_emb, self._embed, self.config, self._shard, copies)
            threshold = replace(threshold, encoder_input=seen)
            self._encoder_threshold = (key, threshold)
            if threshold.source == "calibrated":
                log.info("encoder threshold: cosine %s (balanced precision >= %s, recall >= %s, false-match rate "
                         "<= %s on %d copies and %d look-alikes of %d reference samples) in %.2f s", threshold.similarity,
                         threshold.estimated_precision, threshold.estimated_recall, threshold.false_match_rate,
                         threshold.positives, threshold.negatives, threshold.sample, time.perf_counter() - started)
            if threshold.similarity is None:
                log.warning("encoder stage off: %s", threshold.note)
        return replace(self.config, encoder_similarity=self._encoder_threshold[1].similarity)

    @property
    def encoder_threshold(self) -> EncoderThreshold | None:
        """The encoder stage's threshold of the last check or query (``None`` before one, or without an encoder)."""
        return None if self._encoder_threshold is None else self._encoder_threshold[1]

    # -- queries ---------------------------------------------------------------------------------------------
    def query(self, images: Any) -> pd.DataFrame:
        """Has the model already seen these images? One row per image, in order (columns ``QUERY_COLUMNS``).

        ``images`` is one image or a list: paths, encoded bytes, PIL images, arrays or tensors (HWC or CHW). Each
        row names the best reference match (``kind``, ``method``, ``score``, ``evidence``, ``ref_path``...) and
        whether it counts as seen under the policy; ``kind`` is ``"new"`` when nothing matches and
        ``"unreadable"`` (with the reason in ``evidence``) for an image that could not be decoded. The first call
        builds the reference's indexes and keeps them (about 1.5 KB per reference image); later calls cost their
        images' fingerprints and the index look-ups. No dataset is built and no worker process started. With an
        encoder, the reference's embeddings and the stage's threshold are kept too, until ``gate.encoder`` or
        ``gate.config`` is replaced: after training the model in place, assign the encoder again to re-embed.

        With the reference split across ``torch.distributed`` ranks (see :meth:`check`) the call is collective:
        every rank passes the same images and gets the same frame, the one a single process holding the whole
        reference returns; each rank keeps the indexes of its own part only.
        """
        from vdc_torch.decision.query import query_reference

        ref = self.reference_table
        if self._query_index is None or self._query_index.ref is not ref:
            self._query_index = ReferenceIndex(ref, keep=True, shard=self._shard)
            self._query_embeddings = None
        embed, config, size = None, self.config, None
        if self.encoder is not None:  # the reference's embeddings are kept for this reference and encoder object
            key = (id(ref), id(self.encoder))
            if self._query_embeddings is None or self._query_embeddings[0] != key:
                views = self._reference_views(ref) if self._shard is None else None
                if views is not None:  # the queries' views are embedded too
                    kept = views.embeddings, views.copies, shown(self.encoder, True), view_size(self.encoder)
                else:
                    why = self._views.why_thumbnails(self.encoder, None, None) if self._shard is None else MANY_RANKS
                    kept = self._embed(ref.thumbs), None, shown(self.encoder, False, why), None
                self._query_embeddings = (key, kept)
                self._encoder_threshold = None
            ref_emb, copies, seen, size = self._query_embeddings[1]
            config = self._encoder_config(ref, ref_emb, reuse=True, copies=copies, seen=seen)

            def embed(thumbs: Any, views: Any) -> tuple[Any, Any]:
                return self._embed(thumbs if views is None else views), ref_emb

            if config.encoder_similarity is None:
                embed = None
        return query_reference(self._query_index, images, config, self.policy.counted_kinds, embed, size)

    def _decision(
        self,
        original: Any,
        data: Dataset,
        new: FingerprintTable,
        ref: FingerprintTable,
        matched: pd.DataFrame,
        internal: pd.DataFrame,
        problems: list[Problem],
    ) -> Decision:
        counted_kinds = self.policy.counted_kinds
        ref_size, ref_counts = len(ref), None
        if self._shard is not None:  # the matched reference rows from the ranks that hold them, renumbered
            ref_size = self._shard.total
            matched, ref = _matched_rows_of_ranks(matched, ref, self._shard)
            ref_counts = Counter()
            for part in all_gather_json(dict(Counter(str(v) for v in self.reference_table.labels if v is not None))):
                ref_counts.update(part)
        matches = _public_matches(matched, new, ref, prefix_new="new", prefix_ref="ref")
        seen = matches[matches["kind"].isin(list(counted_kinds))]
        internal_dups = _public_matches(internal, new, new, prefix_new="new", prefix_ref="first")
        internal_dups = internal_dups[internal_dups["kind"] != "similar"].reset_index(drop=True)
        seen_set = set(seen["new_index"].tolist())
        dup_set = set(internal_dups["new_index"].tolist())
        readable = [int(i) for i in new.sample_index]
        novel_rows = [row for row, i in enumerate(readable) if i not in seen_set and i not in dup_set]
        quality = quality_of(new, novel_rows)
        quality = quality[quality["flags"] != ""].reset_index(drop=True)
        excluded = set(quality["index"].tolist()) if self.policy.exclude_low_quality else set()
        novel = [readable[row] for row in novel_rows if readable[row] not in excluded]
        ref_labels = list(ref_counts) if ref_counts is not None else [v for v in ref.labels if v is not None]
        apart = sides_apart = _label_spaces_apart([v for v in new.labels if v is not None], ref_labels)
        # a class index on one side and a class name on the other say nothing about each other: not a conflict
        labelled = seen["new_label"].notna() & seen["ref_label"].notna()
        same_kind = _is_index(seen["new_label"]) == _is_index(seen["ref_label"])
        conflicts = seen[labelled & same_kind & (seen["new_label"] != seen["ref_label"])].reset_index(drop=True)
        if apart is None and (labelled & ~same_kind).any():
            apart = (f"{int((labelled & ~same_kind).sum())} matched sample(s) carry a class index on one side and a "
                     "class name on the other")
        # relabelled samples are new information (a conflict means train): the delta holds them with their new label
        relabelled = set(conflicts["new_index"].astype(np.int64).tolist()) - dup_set
        delta_indices = sorted(set(novel) | relabelled)
        overlap = len(seen_set) / len(readable) if readable else 0.0
        problem_frame = pd.DataFrame({
            "index": pd.Series([p.index for p in problems], dtype=np.int64),
            "path": _text([p.path for p in problems]), "reason": _text([p.reason for p in problems]),
            "fatal": pd.Series([p.fatal for p in problems], dtype=bool),
        })
        skipped = int(problem_frame["fatal"].sum()) if len(problem_frame) else 0
        classes = class_coverage(new, ref, seen_set, {readable[row] for row in novel_rows}, dup_set, conflicts,
                                 ref_counts=ref_counts, ref_size=ref_size)
        new_classes = classes.loc[~classes["in_reference"], "class"].tolist() if len(classes) and not sides_apart \
            else []
        action, reason = decide(overlap, len(novel), len(conflicts), len(readable), self.policy,
                                unreadable=skipped, no_reference=self.no_reference if not ref_size else None,
                                new_classes=new_classes, low_quality=len(quality))
        if apart is not None:
            log.warning("labels not compared: %s", apart)
            reason += f" Labels not compared: {apart}."
        counts = {
            "new": len(data),
            "readable": len(readable),
            "unreadable": skipped,
            "reference": ref_size,
            "exact": int((matches["kind"] == "exact").sum()),
            "near_duplicate": int((matches["kind"] == "near_duplicate").sum()),
            "similar": int((matches["kind"] == "similar").sum()),
            "internal_duplicates": len(internal_dups),
            "delta": len(delta_indices),
            "conflicts": len(conflicts),
            "new_classes": len(new_classes),
            "low_quality": len(quality),
        }
        keys = getattr(data, "keys_by_position", None)
        delta_keys = ([keys[i] for i in delta_indices] if keys is not None
                      else _relative_paths([data.samples[i][0] for i in delta_indices], data.root))
        unused = getattr(data, "skipped", [])
        skipped = pd.DataFrame({"path": _text(_relative_paths([f.path for f in unused], data.root)),
                                "reason": _text([f.reason for f in unused])})
        if unused:
            counts["skipped_files"] = len(unused)
        return Decision(
            action=action, reason=reason, overlap=overlap,
            delta=delta_of(original, data, delta_indices),
            skipped=skipped, novel_indices=delta_indices, delta_keys=delta_keys,
            matches=matches.reset_index(drop=True), conflicts=conflicts, problems=problem_frame,
            internal_duplicates=internal_dups, classes=classes, quality=quality, counts=counts, policy=self.policy,
            config=self.config, encoder=self.encoder_threshold if self.encoder is not None else None,
            new_fingerprints=new, reference_fingerprints=ref, new_root=data.root,
            reference_root=str(self.meta.get("reference_root", "")), reference_parts=parts_of(self.meta),
            reference_from_files=self._reference is not None,
        )


#: Columns of :attr:`Decision.classes`: the label, its samples in the reference and in the readable new data, how
#: many new ones were seen (counted matches), are novel (in the delta), duplicate another new sample, or carry
#: another label than their reference match; and whether the reference has the class at all.
CLASS_COLUMNS = ("class", "reference", "new", "seen", "novel", "internal_duplicates", "conflicts", "in_reference")


def class_coverage(new: FingerprintTable, ref: FingerprintTable, seen: set[int], novel: set[int],
                   duplicates: set[int], conflicts: pd.DataFrame, ref_counts: Counter[str] | None = None,
                   ref_size: int | None = None) -> pd.DataFrame:
    """Per-class coverage of the new data by the reference (:data:`CLASS_COLUMNS`), sorted by class name.

    Only labelled samples count; an unlabelled new dataset gives an empty frame. A reference without any label says
    nothing about classes, so then no class is marked as missing from it. ``ref_counts`` / ``ref_size`` (the
    reference's samples per label and in all) stand in for ``ref``'s when it holds only part of the reference.
    """
    new_labels = [None if v is None else str(v) for v in new.labels]
    if not any(v is not None for v in new_labels):
        return pd.DataFrame(columns=list(CLASS_COLUMNS))
    if ref_counts is None:
        ref_counts = Counter(str(v) for v in ref.labels if v is not None)
    ref_size = len(ref) if ref_size is None else ref_size
    rows: dict[str, list[int]] = {}
    for sample, label in zip(new.sample_index.tolist(), new_labels):
        if label is None:
            continue
        row = rows.setdefault(label, [0, 0, 0, 0])
        row[0] += 1
        row[1] += sample in seen
        row[2] += sample in novel
        row[3] += sample in duplicates
    conflict_counts = Counter(str(v) for v in conflicts["new_label"]) if len(conflicts) else Counter()
    labelled_reference = bool(ref_counts) or not ref_size
    names = sorted(set(rows) | set(ref_counts))
    new_counts = np.array([rows.get(c, [0, 0, 0, 0]) for c in names], dtype=np.int64).reshape(len(names), 4)
    return pd.DataFrame({
        "class": _text(names),
        "reference": pd.Series([ref_counts.get(c, 0) for c in names], dtype=np.int64),
        **{column: pd.Series(new_counts[:, i], dtype=np.int64)
           for i, column in enumerate(("new", "seen", "novel", "internal_duplicates"))},
        "conflicts": pd.Series([conflict_counts.get(c, 0) for c in names], dtype=np.int64),
        "in_reference": pd.Series([ref_counts.get(c, 0) > 0 or not labelled_reference for c in names], dtype=bool),
    }, columns=list(CLASS_COLUMNS))


def _stored_parts(table: FingerprintTable, meta: dict[str, Any]) -> list[ReadableRows]:
    """Where a loaded reference's rows can be read again: each part's rows under its folder (the reference root, and
    the folder of each drop ``update`` added; :mod:`vdc_torch.decision.roots`)."""
    parts = parts_of(meta)
    index = np.asarray(table.sample_index, np.int64)
    if len(parts) == 1 or (len(index) > 1 and np.any(np.diff(index) <= 0)):  # one part, or rows out of order
        return [ReadableRows(0, len(table), root=parts[0][1])]
    starts = [int(np.searchsorted(index, first)) for first, _ in parts] + [len(table)]
    return [ReadableRows(a, b, root=folder or None) for (_, folder), a, b in zip(parts, starts, starts[1:]) if b > a]


def _is_index(labels: pd.Series) -> pd.Series:
    """Which labels are class indices (0, 1, ...) rather than class names."""
    return labels.astype(str).str.strip().str.lstrip("-").str.isdigit()


def _label_spaces_apart(new_labels: list[Any], ref_labels: list[Any]) -> str | None:
    """Why the two sides' labels cannot be compared — one side's are all class indices (0, 1, ...: a torch
    dataset without ``classes``, a stream's ``cls``) and the other's all class names (a folder) — or ``None``.
    Compared anyway, every match would be a label conflict and every index a class the reference never saw."""
    new_kind, ref_kind = (set(_is_index(pd.Series(labels, dtype=object)).tolist()) for labels in (new_labels,
                                                                                              ref_labels))
    if len(new_kind) != 1 or len(ref_kind) != 1 or new_kind == ref_kind:
        return None

    def listed(labels: list[Any]) -> str:
        names = sorted({str(v) for v in labels}, key=lambda v: (len(v), v))
        return ", ".join(repr(v) for v in names[:3]) + (", ..." if len(names) > 3 else "")

    which = ("the new data's", "the reference's") if new_kind == {True} else ("the reference's", "the new data's")
    numbered, named = (new_labels, ref_labels) if new_kind == {True} else (ref_labels, new_labels)
    return (f"{which[0]} labels are class indices ({listed(numbered)}) and {which[1]} class names "
            f"({listed(named)}); give both sides class names (a dataset with `classes`, or "
            f"Dataset.from_torch(dataset, classes=[...])) to compare them")


def _matched_rows_of_ranks(matched: pd.DataFrame, ref: FingerprintTable, shard: ReferenceShard,
                           ) -> tuple[pd.DataFrame, FingerprintTable]:
    """The reference rows ``matched`` names (global rows; held by various ranks) as one small table on every
    rank, in global row order, and ``matched`` with its ``ref_row`` renumbered into it (collective)."""
    wanted = np.unique(matched["ref_row"].to_numpy(np.int64)) if len(matched) else np.zeros(0, np.int64)
    mine, local = shard.owned(wanted)
    parts = [table_from_bytes(blob) for blob in all_gather_bytes(table_to_bytes(ref.rows(local)))]
    (order_rows,) = all_gather_arrays(wanted[mine])
    table = FingerprintTable.concat(parts) if parts else FingerprintTable.empty()
    order = np.argsort(order_rows, kind="stable")
    table = table.rows(order)
    renumbered = matched.copy()
    if len(renumbered):
        renumbered["ref_row"] = np.searchsorted(order_rows[order], renumbered["ref_row"].to_numpy(np.int64))
    return renumbered, table


def _text(values: list[Any]) -> pd.Series:
    """A column of file names or labels as Python objects: pandas' Arrow strings refuse non-UTF-8 file names."""
    return pd.Series(values, dtype=object)


def _public_matches(
    frame: pd.DataFrame, new: FingerprintTable, ref: FingerprintTable, prefix_new: str, prefix_ref: str
) -> pd.DataFrame:
    """Translate table rows into dataset indices, paths and labels."""
    columns = [f"{prefix_new}_index", f"{prefix_new}_path", f"{prefix_ref}_index", f"{prefix_ref}_path",
               "kind", "method", "score", "evidence", f"{prefix_new}_label", f"{prefix_ref}_label"]
    if not len(frame):
        return pd.DataFrame(columns=columns)
    q = frame["new_row"].to_numpy(dtype=np.int64)
    r = frame["ref_row"].to_numpy(dtype=np.int64)
    out = pd.DataFrame({
        f"{prefix_new}_index": new.sample_index[q],
        f"{prefix_new}_path": _text([new.paths[i] for i in q]),
        f"{prefix_ref}_index": ref.sample_index[r],
        f"{prefix_ref}_path": _text([ref.paths[i] for i in r]),
        "kind": frame["kind"].to_numpy(),
        "method": frame["method"].to_numpy(),
        "score": frame["score"].to_numpy(dtype=np.float64).round(4),
        "evidence": frame["evidence"].to_numpy(),
        f"{prefix_new}_label": _text([new.labels[i] for i in q]),
        f"{prefix_ref}_label": _text([ref.labels[i] for i in r]),
    })
    return out.sort_values(f"{prefix_new}_index").reset_index(drop=True)[columns]
