"""Stage 2: the fingerprints of a whole dataset, in parallel (per image: :mod:`.per_image`; the table: :mod:`.table`).

A :class:`Fingerprint` holds everything later stages need, all derived from the single decode:

* ``byte_digest`` / ``pixel_digest`` — exact identity of the file and of its decoded pixels;
* ``exif_identity`` — camera make, model, capture time (with sub-seconds), unique id, body serial;
* ``phash`` / ``phash_mirror`` — 64-bit perceptual hashes of the content and of its mirror image;
* ``phash_whole`` — the pHash of the whole picture, borders included (a copy whose border trimming differs
  from its original's still finds it);
* ``crop_hashes`` — pHashes of 27 crops (:data:`CROP_BOXES`), so a cropped copy finds its original in the index;
* ``thumb`` — a 32×32 RGB thumbnail of the content for metric verification;
* ``detail`` — the content as a gray image of at most 256 px (raw up to 64×64, else JPEG) for lazy local features.

Uniform borders (letterboxing, frames) are trimmed before anything perceptual is computed, so a bordered copy
fingerprints like its original.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.utils.data
from threadpoolctl import ThreadpoolController, threadpool_limits

from vdc_torch.collective import all_gather_bytes, all_gather_json, rank_and_world
from vdc_torch.cores import available_cores
from vdc_torch.data.decode import (
    DEFAULT_DECODE_SIDE,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_file,
    decode_sample,
    digest,
    read_file,
)
from vdc_torch.data.files import file_key
from vdc_torch.errors import ImageDecodeError, InvalidParameterError
from vdc_torch.fingerprints.hashes import HASH_METHODS

# re-exported: the stage's names stay importable from here, where they were before the split
from vdc_torch.fingerprints.per_image import (  # noqa: F401
    _DCT8,
    CV_MAX_CHANNELS,
    _resize_factor,
    compact_decoded,
    content_box,
    crop_coefficients,
    crop_pixels,
    crop_windows,
    decode_detail,
    encode_detail,
    fingerprint_batch,
    fingerprint_decoded,
    phash_batch,
)
from vdc_torch.fingerprints.table import (  # noqa: F401
    CROP_BOXES,
    DETAIL_SIDE,
    FINGERPRINT_VERSION,
    THUMB_SIDE,
    Fingerprint,
    FingerprintTable,
    KnownFingerprints,
    LazyColumn,
    Problem,
    is_stored,
    table_from_bytes,
    table_to_bytes,
)
from vdc_torch.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FingerprintBatch:
    """Internal: the fingerprints of a batch as columns (rows in ``indices`` order), with each row's warnings.

    What a worker sends back: a few arrays pickle and unpickle in a fraction of the time of one
    :class:`Fingerprint` object per image (on CIFAR-size images that was ~40 us per image in the main process,
    about as much as decoding them).
    """

    indices: list[int]
    table: FingerprintTable
    warnings: list[list[str]]
    views: np.ndarray | None = None  # (n, h, w, 3) uint8: each row's view for a model encoder, when asked for


@dataclass(frozen=True)
class _KnownContent:
    """Internal: a file whose bytes the cache already holds (found by digest, not decoded)."""

    byte_digest: bytes
    file_size: int
    mtime_ns: int


class _FingerprintTask(torch.utils.data.Dataset):
    """Internal: item ``i`` is ``(i, Fingerprint | Problem | _KnownContent)`` for sample ``i`` of a vdc_torch Dataset.

    ``known`` (file sizes, byte digests) enables the cache's content-digest fallback: a file of a known size is read
    and hashed first, and is only decoded when its digest is unknown.
    """

    def __init__(self, dataset: Any, indices: Sequence[int], extra_hashes: Sequence[str], decode_side: int | None,
                 max_pixels: int, known: tuple[frozenset[int], frozenset[bytes]] | None = None,
                 view_size: tuple[int, int] | None = None) -> None:
        self.dataset = dataset
        self.view_size = view_size
        self.indices = list(indices)
        self.extra_hashes = tuple(extra_hashes)
        self.decode_side = decode_side
        self.max_pixels = max_pixels
        self.known = known

    def __len__(self) -> int:
        return len(self.indices)

    def _known_content(self, path: str) -> _KnownContent | None:
        """The file's digest when the cache holds its bytes; ``None`` otherwise (or when it cannot be read)."""
        assert self.known is not None
        sizes, digests = self.known
        try:
            if os.stat(path).st_size not in sizes:
                return None
            data, st = read_file(path)
        except (OSError, ImageDecodeError):
            return None  # decode_file reports the problem
        found = digest(data)
        if found in digests and st.st_size == len(data):
            return _KnownContent(found, len(data), st.st_mtime_ns)
        return None

    def __getitem__(self, positions: Sequence[int]) -> list[tuple[int, _FingerprintBatch | Problem | _KnownContent]]:
        """A batch: each sample read and decoded on its own, then fingerprinted together (:func:`fingerprint_batch`).

        The fingerprints come back as one :class:`_FingerprintBatch` (under the first fingerprinted sample's index),
        problems and cache hits one by one.
        """
        results: list[tuple[int, _FingerprintBatch | Problem | _KnownContent]] = []
        decoded: list[tuple[int, str, DecodedImage]] = []
        for position in positions:
            index = self.indices[position]
            path = self.dataset.samples[index][0]
            try:
                if self.known is not None and self.dataset.is_file_backed:
                    known = self._known_content(path)
                    if known is not None:
                        results.append((index, known))
                        continue
                if self.dataset.is_file_backed:
                    image = decode_file(path, decode_side=self.decode_side, max_pixels=self.max_pixels)
                else:
                    image = decode_sample(self.dataset.source_image(index), name=path,
                                          decode_side=self.decode_side, max_pixels=self.max_pixels)
                decoded.append((index, path, compact_decoded(image)))  # the batch holds no full-size pixels
            except ImageDecodeError as exc:
                results.append((index, Problem(index, path, str(exc))))
            except Exception as exc:  # noqa: BLE001 - never let one sample end the run
                results.append((index, _unexpected(index, path, exc)))
        try:
            fingerprints = fingerprint_batch([d for _, _, d in decoded], self.extra_hashes, self.view_size)
            fingerprinted = [(index, fp) for (index, _, _), fp in zip(decoded, fingerprints)]
        except Exception:  # noqa: BLE001 - find the one sample that fails, keep the others
            fingerprinted = []
            for index, path, d in decoded:
                try:
                    fingerprinted.append((index, fingerprint_decoded(d, self.extra_hashes, self.view_size)))
                except Exception as exc:  # noqa: BLE001 - one sample's failure is its problem record
                    results.append((index, _unexpected(index, path, exc)))
        if fingerprinted:  # paths and labels are set in the main process (_labelled)
            indices = [index for index, _ in fingerprinted]
            fps = [fp for _, fp in fingerprinted]
            table = FingerprintTable.from_rows(indices, [""] * len(fps), [None] * len(fps), fps)
            views = np.stack([fp.view for fp in fps]) if self.view_size is not None else None
            results.append((indices[0], _FingerprintBatch(indices, table, [fp.warnings for fp in fps], views)))
        return results


def _unexpected(index: int, path: str, exc: Exception) -> Problem:
    log.debug("unexpected failure on %s", path, exc_info=exc)
    return Problem(index, path, f"{path}: unexpected {type(exc).__name__}: {exc}")


def _collate_list(batch: list[Any]) -> list[Any]:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    threadpool_limits(1, user_api="blas")  # the batch's small matrix products: threads cost more than they give


#: Samples fingerprinted together: large enough that the hash arithmetic is done batch-wide, small enough that every
#: worker gets several batches (photos of megapixels take ~50 ms each to decode).
MAX_BATCH = 64


class single_threaded_opencv:
    """Context: OpenCV on one thread while worker processes are forked, restored afterwards.

    Calling ``cv2.setNumThreads`` inside a forked child can deadlock when the parent has used OpenCV's thread
    pool (seen after a torch backward pass); setting it in the parent before the fork is safe, and each worker
    then runs OpenCV on one thread, so workers do not oversubscribe the cores.
    """

    def __enter__(self) -> None:
        self.previous = cv2.getNumThreads()
        cv2.setNumThreads(1)

    def __exit__(self, *exc: object) -> None:
        cv2.setNumThreads(self.previous)


def default_workers() -> int:
    """Worker processes used by default: every core this process may run on."""
    return available_cores()


def compute_fingerprints(
    dataset: Any,
    *,
    indices: Iterable[int] | None = None,
    workers: int | None = None,
    extra_hashes: Sequence[str] = (),
    progress: bool = False,
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "fingerprinting",
    known: KnownFingerprints | None = None,
    distributed: bool = True,
    on_chunk: Callable[[FingerprintTable], None] | None = None,
    gather: bool = True,
    view_size: tuple[int, int] | None = None,
    on_views: Callable[[list[int], np.ndarray], None] | None = None,
) -> tuple[FingerprintTable, list[Problem]]:
    """Fingerprint the samples of a :class:`vdc_torch.Dataset` (all, or ``indices``) on ``workers`` processes.

    ``known`` (fingerprints computed before, e.g. a :class:`vdc_torch.decision.store.cache.FingerprintCache`)
    supplies the rows of unchanged files without decoding them; it is only read, never written: the caller keeps
    what is new. ``on_chunk`` is called with each batch of newly decoded fingerprints as soon as it is done (rows
    carry their sample index, path and label), e.g. to checkpoint them. ``view_size`` (height, width) makes each
    decoded sample's view for a model encoder from the same decode (:func:`~vdc_torch.fingerprints.per_image.
    encoder_view`), handed to ``on_views(sample indices, views)`` in this process a batch at a time and not kept
    (rows ``known`` supplies are not decoded, so they have none). Under an initialised ``torch.distributed``
    process group (and ``distributed=True``) each rank fingerprints its shard and every rank receives the whole
    table (``gather=False``: its own rows only, and every rank's problems).
    Returns the table of usable samples (in index order) and one :class:`Problem` per unusable sample or caveat.
    """
    for method in extra_hashes:
        if method not in HASH_METHODS:
            raise InvalidParameterError(f"extra hash {method!r} is not one of {', '.join(HASH_METHODS)}")
    todo = list(range(len(dataset))) if indices is None else list(indices)
    rank, world = _rank_and_world() if distributed else (0, 1)
    todo = todo[rank::world]
    cache = known if known is not None and dataset.is_file_backed else None
    known_content = None
    if cache is not None:
        todo, cached, known_content = _split_known(dataset, todo, cache)
    workers = default_workers() if workers is None else max(0, int(workers))
    if workers and not _worth_forking(dataset, todo):
        workers = 0  # starting processes costs more than it saves
    task = _FingerprintTask(dataset, todo, extra_hashes, decode_side, max_pixels, known_content, view_size)
    loader = _loader(task, len(todo), workers)
    batches: list[FingerprintTable] = []
    reused: dict[int, Fingerprint] = {}
    problems: list[Problem] = []
    bar = progress_bar(len(todo), desc, progress)
    with single_threaded_opencv(), threadpool_limits(1, user_api="blas"):
        for batch in loader:
            done = 0
            chunk: list[FingerprintTable] = []
            results = list(batch)
            for index, result in results:  # (grows when a known file must be decoded after all, below)
                if isinstance(result, Problem):
                    problems.append(result)
                    done += 1
                elif isinstance(result, _KnownContent):  # same bytes as a cached file: reuse, re-key, no decode
                    row = cache.lookup_digest(result.byte_digest)
                    if row is None:  # a checkpoint replaced that entry (its path changed) meanwhile: decode here
                        redo = _FingerprintTask(dataset, [index], extra_hashes, decode_side, max_pixels,
                                                view_size=view_size)
                        results.extend(redo[[0]])
                        continue
                    reused[index] = dataclasses.replace(
                        cache.table.fingerprint(row), file_size=result.file_size, mtime_ns=result.mtime_ns,
                        warnings=[],
                    )
                    done += 1
                else:
                    batches.append(result.table)
                    chunk.append(result.table)
                    for i, warnings in zip(result.indices, result.warnings):
                        problems.extend(Problem(i, dataset.samples[i][0], w, fatal=False) for w in warnings)
                    done += len(result.indices)
                    if on_views is not None and result.views is not None:
                        on_views(result.indices, result.views)
            bar.update(done)
            if on_chunk is not None and chunk:
                fresh_chunk = FingerprintTable.concat(chunk)
                on_chunk(_labelled(fresh_chunk, dataset, fresh_chunk.sample_index.tolist()))
    bar.close()
    if reused:
        order = sorted(reused)
        batches.append(FingerprintTable.from_rows(order, [""] * len(order), [None] * len(order),
                                                  [reused[i] for i in order]))
    fresh = FingerprintTable.concat(batches)  # in loader order; sorted by sample index once, at the end
    order = fresh.sample_index.tolist()
    fresh = _labelled(fresh, dataset, order)
    if cache is not None:
        fresh = FingerprintTable.concat([fresh, cached])
    if world > 1 and gather:
        fresh, problems = _all_gather(fresh, problems)
    elif world > 1:
        problems = [Problem(**record) for part in all_gather_json([p.to_dict() for p in problems]) for record in part]
    table = fresh.rows(np.argsort(fresh.sample_index, kind="stable"))
    problems.sort(key=lambda p: (p.index, not p.fatal))
    return table, problems


def _split_known(dataset: Any, todo: list[int], known: KnownFingerprints
                 ) -> tuple[list[int], FingerprintTable, tuple[frozenset[int], frozenset[bytes]] | None]:
    """``todo`` without the samples ``known`` holds unchanged; those samples' rows (labelled); and the sizes and
    digests for the content fallback (``None`` when nothing is left to check against)."""
    missing, cached_indices, cached_rows = [], [], []
    for index in todo:
        row = known.lookup_row(file_key(dataset.samples[index][0]))
        if row is None:
            missing.append(index)
        else:
            cached_indices.append(index)
            cached_rows.append(row)
    # taken now: a checkpoint (on_chunk) rebuilds the cache table and renumbers its rows
    cached = _labelled(known.table.rows(cached_rows), dataset, cached_indices)
    sizes, digests = known.known_content()
    return missing, cached, ((sizes, digests) if missing and digests else None)


def _loader(task: _FingerprintTask, n: int, workers: int) -> torch.utils.data.DataLoader:
    """Batches of ``task`` on ``workers`` forked processes (0: in this one), about 8 batches per worker."""
    batch_size = max(1, min(MAX_BATCH, n // (8 * max(1, workers))))
    return torch.utils.data.DataLoader(
        task,
        batch_size=None,  # the task takes a whole batch of positions (fingerprint_batch)
        sampler=torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(task), batch_size, drop_last=False),
        num_workers=workers,
        collate_fn=_collate_list,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        multiprocessing_context="fork" if workers and os.name == "posix" else None,
    )


def fingerprint_stream(
    items: Iterable[tuple[int, str, Any]],
    *,
    extra_hashes: Sequence[str] = (),
    progress: bool = False,
    total: int | None = None,
    decode_side: int | None = DEFAULT_DECODE_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "fingerprinting",
    view_size: tuple[int, int] | None = None,
    on_views: Callable[[list[int], np.ndarray], None] | None = None,
) -> tuple[FingerprintTable, list[Problem]]:
    """Fingerprint ``(index, name, stored image)`` items in one pass, in this process (an iterable dataset
    cannot be split between workers without changing what each sees). ``view_size`` and ``on_views``: as for
    :func:`compute_fingerprints`.

    The stored image is anything :func:`vdc_torch.decode.decode_sample` takes, or an exception (the item could
    not be read). Rows carry the item's index; paths and labels are left for the caller.
    """
    batches: list[FingerprintTable] = []
    problems: list[Problem] = []
    pending: list[tuple[int, str, DecodedImage]] = []
    bar = progress_bar(total, desc, progress)

    def flush() -> None:
        if not pending:
            return
        try:
            fps = fingerprint_batch([d for _, _, d in pending], extra_hashes, view_size)
            rows = [(i, name, fp) for (i, name, _), fp in zip(pending, fps)]
        except Exception:  # noqa: BLE001 - find the one sample that fails, keep the others
            rows = []
            for i, name, d in pending:
                try:
                    rows.append((i, name, fingerprint_decoded(d, extra_hashes, view_size)))
                except Exception as exc:  # noqa: BLE001
                    problems.append(_unexpected(i, name, exc))
        for i, name, fp in rows:
            problems.extend(Problem(i, name, w, fatal=False) for w in fp.warnings)
        if rows and on_views is not None and view_size is not None:
            on_views([i for i, _, _ in rows], np.stack([fp.view for _, _, fp in rows]))
        if rows:
            batches.append(FingerprintTable.from_rows([i for i, _, _ in rows], [""] * len(rows), [None] * len(rows),
                                                      [fp for _, _, fp in rows]))
        bar.update(len(pending))
        pending.clear()

    with _single_threaded_blas():
        for index, name, stored in items:
            try:
                if isinstance(stored, BaseException):
                    raise stored
                pending.append((index, name, compact_decoded(decode_sample(stored, name=name, decode_side=decode_side,
                                                                           max_pixels=max_pixels))))
            except ImageDecodeError as exc:
                problems.append(Problem(index, name, str(exc)))
                bar.update(1)
            except Exception as exc:  # noqa: BLE001 - one item's failure is its problem record
                problems.append(_unexpected(index, name, exc))
                bar.update(1)
            if len(pending) >= MAX_BATCH:
                flush()
        flush()
    bar.close()
    table = FingerprintTable.concat(batches) if batches else FingerprintTable.empty()
    return table, problems


_BLAS: ThreadpoolController | None = None


def _single_threaded_blas() -> Any:
    """``threadpool_limits(1, user_api="blas")`` through one controller: finding the loaded libraries costs ~4 ms,
    a one-image query's whole fingerprint costs about as much."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _worth_forking(dataset: Any, todo: Sequence[int]) -> bool:
    """Worker processes pay off for many samples, or for a few large files (megapixel photos)."""
    if len(todo) >= 256:
        return True
    if len(todo) < 8 or not dataset.is_file_backed:
        return False
    total = 0
    for index in todo:
        try:
            total += os.path.getsize(dataset.samples[index][0])
        except OSError:
            pass
    return total >= 8 * 1024 * 1024


def _labelled(table: FingerprintTable, dataset: Any, indices: Sequence[int]) -> FingerprintTable:
    """Set the sample indices, paths and labels of ``table``'s rows from ``dataset``."""
    table.sample_index = np.asarray(indices, dtype=np.int64)
    table.paths = [dataset.samples[i][0] for i in indices]
    table.labels = [dataset.label_name(dataset.samples[i][1]) for i in indices]
    return table



def _rank_and_world() -> tuple[int, int]:
    return rank_and_world()


def _all_gather(table: FingerprintTable, problems: list[Problem]) -> tuple[FingerprintTable, list[Problem]]:
    """Every rank's table and problems, concatenated, on every rank (byte tensors; works on gloo and nccl)."""
    tables = all_gather_bytes(table_to_bytes(table))
    merged = FingerprintTable.concat([table_from_bytes(b) for b in tables])
    merged_problems = [Problem(**record) for part in all_gather_json([p.to_dict() for p in problems])
                       for record in part]
    return merged, merged_problems
