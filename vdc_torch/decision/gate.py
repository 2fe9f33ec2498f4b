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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.utils.data

from vdc_torch.data.dataset import Dataset, NovelStream, Stream, is_hf_dataset, is_stream, label_value
from vdc_torch.decision.store.cache import CacheCheckpoint, FingerprintCache, fingerprint_with_cache
from vdc_torch.decision.store.manifest import load_manifest, save_manifest
from vdc_torch.errors import InsufficientEvidenceError, InvalidParameterError
from vdc_torch.fingerprints.compute import (
    FINGERPRINT_VERSION,
    FingerprintTable,
    Problem,
    fingerprint_stream,
)
from vdc_torch.search.cascade import (
    MATCH_COLUMNS,
    MATCHING_VERSION,
    FeatureCaches,
    MatchConfig,
    MatchKind,
    match_tables,
)

log = logging.getLogger(__name__)


class Action(str, Enum):
    """What to do with the new dataset."""

    SKIP = "skip"
    TRAIN = "train"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Policy:
    """When to skip training.

    Skip only when ``overlap >= skip_overlap``, there is no label conflict and the novel delta has fewer than
    ``min_delta_to_train`` samples; otherwise train on the delta. The default 0.95 means: if at least 19 of 20
    readable new samples were already trained on and what is left is smaller than a couple of batches, a training
    run cannot be worth its cost. ``similar`` matches never count toward the overlap unless ``count_similar``.
    """

    skip_overlap: float = 0.95
    min_delta_to_train: int = 64
    count_similar: bool = False
    #: No decision (``InsufficientEvidenceError``) when more than this share of a dataset's samples cannot be
    #: read: the unread samples could be anything. 0.05 = as many as the default ``skip_overlap`` tolerates novel
    #: ones, so unread samples alone can never turn a "train" into a "skip". 1.0 = decide on whatever was read.
    max_problem_share: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.skip_overlap <= 1.0:
            raise InvalidParameterError(f"skip_overlap={self.skip_overlap!r} must lie in [0, 1]")
        if not 0.0 <= self.max_problem_share <= 1.0:
            raise InvalidParameterError(f"max_problem_share={self.max_problem_share!r} must lie in [0, 1]")
        if self.min_delta_to_train < 0:
            raise InvalidParameterError(f"min_delta_to_train={self.min_delta_to_train!r} must be >= 0")

    @property
    def counted_kinds(self) -> frozenset[str]:
        """The match kinds that count as already trained on: exact and near-duplicate, and similar if
        ``count_similar``. The delta, the overlap, reports and hooks all read this one definition."""
        kinds = {MatchKind.EXACT.value, MatchKind.NEAR_DUPLICATE.value}
        return frozenset(kinds | {MatchKind.SIMILAR.value} if self.count_similar else kinds)


def check_evidence(readable: int, problems: Sequence[Problem], policy: Policy, what: str = "new dataset") -> None:
    """Raise :class:`InsufficientEvidenceError` when too little of a dataset was read to decide on it."""
    unreadable = [p for p in problems if p.fatal]
    total = readable + len(unreadable)
    share = len(unreadable) / total if total else 1.0
    if readable and share <= policy.max_problem_share:
        return
    reasons = "; ".join(dict.fromkeys(p.reason for p in unreadable[:3]))
    if readable == 0:
        head = f"the {what} has no readable sample ({len(unreadable)} unreadable)" if total else f"the {what} is empty"
    else:
        head = (f"{len(unreadable)} of the {total} samples of the {what} ({share:.1%}) could not be read, more than "
                f"Policy.max_problem_share={policy.max_problem_share:g}")
    raise InsufficientEvidenceError(
        f"no decision: {head}, so whatever it holds is unknown" + (f". First problems: {reasons}" if reasons else "")
        + ". Fix or remove the files (decision problems list them all), or raise Policy(max_problem_share=...) "
        "to decide on the readable part"
    )


def decide(
    overlap: float,
    delta_size: int,
    conflicts: int,
    readable: int,
    policy: Policy,
    *,
    unreadable: int = 0,
    no_reference: str | None = None,
) -> tuple[Action, str]:
    """The action and a one-sentence reason, from the counts alone.

    ``readable == 0`` is no evidence at all: :class:`InsufficientEvidenceError`, never a skip. ``no_reference``
    (why there is nothing to compare with, e.g. "no reference manifest exists yet at ...") means nothing has been
    trained on yet: train on every readable, deduplicated sample. ``unreadable`` samples are named in the reason.
    """
    action, reason = _action_and_reason(overlap, delta_size, conflicts, readable, policy, no_reference)
    if unreadable:
        reason += f" {unreadable} unreadable sample(s) were left out (see problems)."
    return action, reason


def _action_and_reason(overlap: float, delta_size: int, conflicts: int, readable: int, policy: Policy,
                       no_reference: str | None) -> tuple[Action, str]:
    pct = f"{overlap:.1%}"
    if readable == 0:
        raise InsufficientEvidenceError("no decision: the new dataset has no readable samples")
    if no_reference is not None:
        duplicates = readable - delta_size
        extra = f" ({duplicates} duplicate(s) inside the new data left out)" if duplicates else ""
        return Action.TRAIN, (f"Train on the delta: {no_reference}, so all {readable} readable samples are new; "
                              f"{delta_size} to train on{extra}.")
    if conflicts:
        return Action.TRAIN, (
            f"Train on the delta: {conflicts} matched sample(s) carry a different label than in the reference "
            f"(overlap {pct}, {delta_size} novel samples)."
        )
    if overlap >= policy.skip_overlap and delta_size < policy.min_delta_to_train:
        return Action.SKIP, (
            f"Skip: {pct} of the {readable} readable new samples were already trained on "
            f"(threshold {policy.skip_overlap:.0%}) and only {delta_size} novel samples remain "
            f"(fewer than {policy.min_delta_to_train})."
        )
    if overlap >= policy.skip_overlap:
        return Action.TRAIN, (
            f"Train on the delta: overlap is {pct}, but {delta_size} novel samples remain "
            f"(at least {policy.min_delta_to_train})."
        )
    return Action.TRAIN, (
        f"Train on the delta: only {pct} of the {readable} readable new samples were already trained on "
        f"(below {policy.skip_overlap:.0%}); {delta_size} novel, deduplicated samples."
    )


@dataclass
class Decision:
    """The gate's answer for one new dataset."""

    action: Action
    reason: str
    overlap: float
    #: The novel, deduplicated samples as the kind of object passed in: a ``Subset`` of a torch dataset (of
    #: exactly that object), ``ds.select(...)`` of a Hugging Face dataset, a :class:`NovelStream` of a stream.
    delta: Any
    matches: pd.DataFrame
    conflicts: pd.DataFrame
    problems: pd.DataFrame
    internal_duplicates: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    config: MatchConfig = field(default_factory=MatchConfig)
    #: Fingerprints behind the decision (for reports: thumbnails and detail images), not serialised.
    new_fingerprints: FingerprintTable | None = field(default=None, repr=False)
    reference_fingerprints: FingerprintTable | None = field(default=None, repr=False)
    new_root: str = ""
    reference_root: str = ""
    #: True when the reference was fingerprinted from its files in this process (not loaded from a manifest, whose
    #: stored paths may come from anyone): only then may a report read pictures from reference paths.
    reference_from_files: bool = False
    #: Files under the new dataset's root that are not samples (``path, reason``): nothing is dropped unseen.
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    #: Indices (in the new dataset, or positions in a stream) of the novel, deduplicated samples.
    novel_indices: list[int] = field(default_factory=list)
    #: A key per novel sample to persist the delta: its path (relative to the root), or a stream item's key.
    delta_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.reason

    @property
    def delta_indices(self) -> list[int]:
        """Indices (in the new dataset) of the novel, deduplicated samples."""
        return list(self.novel_indices)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able Python values."""
        return {
            "action": str(self.action),
            "reason": self.reason,
            "overlap": self.overlap,
            "counts": dict(self.counts),
            "delta_indices": self.delta_indices,
            "matches": _records(self.matches),
            "conflicts": _records(self.conflicts),
            "internal_duplicates": _records(self.internal_duplicates),
            "problems": _records(self.problems),
            "skipped": _records(self.skipped),
            "delta_keys": list(self.delta_keys),
            "policy": asdict(self.policy),
            "config": self.config.to_dict(),
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
    ``encoder`` (a module mapping an image batch to embeddings, best a :class:`vdc_torch.encoder.LayerEncoder`
    over an intermediate layer of the model being trained) adds nearest neighbours in the model's feature space
    as a method.

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

    # -- reference -----------------------------------------------------------------------------------------
    @property
    def reference_table(self) -> FingerprintTable:
        """Fingerprints of the reference (computed on first use)."""
        if self._table is None:
            assert self._reference is not None
            table, problems, dataset = self._fingerprint(self._reference, "reference")
            check_evidence(len(table), problems, self.policy, "reference")
            self._table, self.reference_problems = table, problems
            self.meta.setdefault("reference_root", dataset.root)
        return self._table

    @property
    def cache(self) -> FingerprintCache | None:
        """The fingerprint cache (opened on first use), or ``None`` when the gate has none."""
        if self.cache_path is None:
            return None
        if self._cache is None:
            self._cache = FingerprintCache(self.cache_path)
        return self._cache

    def _fingerprint(self, data: Dataset | Stream, desc: str) -> tuple[FingerprintTable, list[Problem], Dataset]:
        """Fingerprints and problems of ``data``, and the :class:`Dataset` describing its samples."""
        started = time.perf_counter()
        if isinstance(data, Stream):
            table, problems, dataset = self._fingerprint_stream(data, desc)
        else:
            dataset = data
            # the cache file is checkpointed while fingerprinting runs: an interrupted run loses little
            checkpoint = CacheCheckpoint(self.cache) if self.cache is not None and dataset.is_file_backed else None
            try:
                table, problems = fingerprint_with_cache(
                    dataset, cache=self.cache, on_chunk=checkpoint, workers=self.workers, progress=self.progress,
                    desc=desc,
                )
            except BaseException:  # Ctrl-C (or a failure): keep what was fingerprinted since the last checkpoint
                if checkpoint is not None:
                    try:
                        checkpoint.flush()
                    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
                        log.warning("could not checkpoint the fingerprint cache %s: %s", self.cache.path, exc)
                raise
        table.paths = _relative_paths(table.paths, dataset.root)
        fatal = sum(p.fatal for p in problems)
        if fatal:
            log.warning("%s: %d of %d samples could not be used", desc, fatal, len(dataset))
        log.info("fingerprinting %s: %d samples in %.2f s", desc, len(dataset), time.perf_counter() - started)
        return table, problems, dataset

    def _fingerprint_stream(self, stream: Stream, desc: str) -> tuple[FingerprintTable, list[Problem], Dataset]:
        seen: list[tuple[int, str, bool, Any]] = []

        def items() -> Any:
            for position, key, image, label in stream.items():
                has_key = key != str(position)
                seen.append((position, key, has_key, label_value(label)))
                yield position, f"<{stream.name}[{position}]{' ' + key if has_key else ''}>", image

        total = len(stream.original) if hasattr(stream.original, "__len__") else None
        table, problems = fingerprint_stream(items(), progress=self.progress, total=total, desc=desc)
        view = _stream_view(stream, seen)
        order = table.sample_index.tolist()
        table.paths = [view.samples[i][0] for i in order]
        table.labels = [view.label_name(view.samples[i][1]) for i in order]
        return table, problems, view

    def __len__(self) -> int:
        return len(self.reference_table)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> DatasetGate:
        """A gate whose reference is a saved manifest (the reference images are not needed)."""
        table, meta = load_manifest(path)
        gate = cls(None, **kwargs)
        gate._table = table
        gate.meta = meta
        return gate

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the reference manifest atomically to ``path``."""
        table = self.reference_table  # fingerprints first: computing them records the reference root
        meta = {k: v for k, v in self.meta.items() if k not in ("format", "format_version", "saved_at", "samples")}
        return save_manifest(path, table, meta)

    def update(self, dataset: Any) -> int:
        """Add a dataset the model has now been trained on to the reference; returns the rows added."""
        table, problems, _ = self._fingerprint(as_dataset(dataset), "update")
        base = self.reference_table
        table.sample_index = table.sample_index + (int(base.sample_index.max()) + 1 if len(base) else 0)
        self._table = FingerprintTable.concat([base, table])
        self.reference_problems.extend(problems)
        return len(table)

    # -- the check -------------------------------------------------------------------------------------------
    def check(self, new_dataset: Any) -> Decision:
        """Compare ``new_dataset`` with the reference and decide: skip, or train on the returned delta."""
        given = as_dataset(new_dataset)  # a wrong path fails before the reference is fingerprinted
        ref = self.reference_table
        new, problems, data = self._fingerprint(given, "new")
        check_evidence(len(new), problems, self.policy)
        started = time.perf_counter()
        matched, internal = self._match(new, ref)
        log.info("matching: %d new against %d reference samples in %.2f s", len(new), len(ref),
                 time.perf_counter() - started)
        started = time.perf_counter()
        decision = self._decision(new_dataset, data, new, ref, matched, internal, problems)
        log.info("decision: %s in %.2f s", decision.action, time.perf_counter() - started)
        return decision

    def _match(self, new: FingerprintTable, ref: FingerprintTable) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Cross and internal matches; reused from the cache when fingerprints and config are unchanged."""
        key = _match_key(new, ref, self.config) if self.cache is not None and self.encoder is None else None
        stored = self.cache.result(key) if self.cache is not None and key is not None else None
        if stored is not None:
            return pd.DataFrame(stored["cross"], columns=MATCH_COLUMNS), pd.DataFrame(
                stored["internal"], columns=MATCH_COLUMNS
            )
        new_emb = ref_emb = None
        if self.encoder is not None:
            from vdc_torch.fingerprints.encoder import embed_thumbs

            new_emb, ref_emb = embed_thumbs(self.encoder, new.thumbs), embed_thumbs(self.encoder, ref.thumbs)
        caches = FeatureCaches()  # the new images verified against the reference are described once for both calls
        label = "matching" if self.progress else None
        matched = match_tables(new, ref, self.config, new_embeddings=new_emb, ref_embeddings=ref_emb,
                               feature_caches=caches, progress=label)
        internal = match_tables(new, new, self.config, same_table=True, new_embeddings=new_emb, ref_embeddings=new_emb,
                                feature_caches=caches, progress=label and "internal duplicates")
        if self.cache is not None and key is not None:
            self.cache.store_result(key, {"cross": _records(matched), "internal": _records(internal)})
            self.cache.save()
        return matched, internal

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
        matches = _public_matches(matched, new, ref, prefix_new="new", prefix_ref="ref")
        seen = matches[matches["kind"].isin(list(counted_kinds))]
        internal_dups = _public_matches(internal, new, new, prefix_new="new", prefix_ref="first")
        internal_dups = internal_dups[internal_dups["kind"] != "similar"].reset_index(drop=True)
        seen_set = set(seen["new_index"].tolist())
        dup_set = set(internal_dups["new_index"].tolist())
        readable = [int(i) for i in new.sample_index]
        delta_indices = [i for i in readable if i not in seen_set and i not in dup_set]
        conflicts = seen[
            seen["new_label"].notna() & seen["ref_label"].notna() & (seen["new_label"] != seen["ref_label"])
        ].reset_index(drop=True)
        overlap = len(seen_set) / len(readable) if readable else 0.0
        problem_frame = pd.DataFrame({
            "index": pd.Series([p.index for p in problems], dtype=np.int64),
            "path": _text([p.path for p in problems]), "reason": _text([p.reason for p in problems]),
            "fatal": pd.Series([p.fatal for p in problems], dtype=bool),
        })
        skipped = int(problem_frame["fatal"].sum()) if len(problem_frame) else 0
        action, reason = decide(overlap, len(delta_indices), len(conflicts), len(readable), self.policy,
                                unreadable=skipped, no_reference=self.no_reference if not len(ref) else None)
        counts = {
            "new": len(data),
            "readable": len(readable),
            "unreadable": skipped,
            "reference": len(ref),
            "exact": int((matches["kind"] == "exact").sum()),
            "near_duplicate": int((matches["kind"] == "near_duplicate").sum()),
            "similar": int((matches["kind"] == "similar").sum()),
            "internal_duplicates": len(internal_dups),
            "delta": len(delta_indices),
            "conflicts": len(conflicts),
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
            internal_duplicates=internal_dups, counts=counts, policy=self.policy, config=self.config,
            new_fingerprints=new, reference_fingerprints=ref, new_root=data.root,
            reference_root=str(self.meta.get("reference_root", "")),
            reference_from_files=self._reference is not None,
        )


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
