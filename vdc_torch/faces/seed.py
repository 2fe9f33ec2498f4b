"""The visdatcompy API (``Image``, ``Metrics``, ``Hash``, ``FeatureExtractor``, ``VisDatCompare``) on the vdc_torch engine.

``Dataset`` is :class:`vdc_torch.Dataset` itself (the torch dataset carries the visdatcompy calls). Everything here
is a thin layer over the engine modules: one safe decode per image (:func:`vdc_torch.decode.decode_file`), the
vectorised metrics (:mod:`vdc_torch.metrics`), the hash registry (:mod:`vdc_torch.hashes`), the gate's Hamming index
(:class:`vdc_torch.index.HammingIndex`) and its local-feature verification (:mod:`vdc_torch.features`).

Each comparison object decodes every image once and keeps only the representation it needs, by path:

* :class:`Metrics` — the digest of the full-resolution pixels (``pix2pix``) and a 64×64 gray normalised image;
* :class:`Hash` — a BGR work image of max side 512 (no OpenCV hash looks at more than 512×512 pixels) and, per
  method, its hash;
* :class:`FeatureExtractor` — the keypoints and descriptors of a gray image of max side 512 (shorter side at
  least 128, small images upscaled).

Results are labelled pandas objects and genuine pairs only; an image never matches itself, and when both datasets
hold the same images only the later copy of a pair is reported (so clearing keeps the first occurrence). Nothing
here prints colour codes, opens windows or touches files on disk except the CSV/PNG outputs asked for.

>>> from vdc_torch import Dataset, Metrics  # doctest: +SKIP
>>> Metrics(Dataset("cows"), Dataset("cows_duplicates")).pix2pix().sum().sum()  # doctest: +SKIP
5
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import pandas as pd

from vdc_torch.cores import available_cores
from vdc_torch.data.dataset import Dataset
from vdc_torch.data.decode import decode_file, display_name, shrink_to_side
from vdc_torch.data.image import Image, _finish_figure, _new_figure
from vdc_torch.errors import ImageDecodeError, InvalidTypeError, check_choice
from vdc_torch.fingerprints import features as local_features
from vdc_torch.fingerprints import hashes as hash_lib
from vdc_torch.fingerprints import metrics as metric_lib
from vdc_torch.search.index import ExactIndex, HammingIndex

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_MIN_INLIER_RATIO",
    "FEATURE_MIN_SIDE",
    "FEATURE_SIDE",
    "HASH_SIDE",
    "METRIC_SIZE",
    "Dataset",
    "DuplicatesFinder",
    "FeatureExtractor",
    "Hash",
    "Image",
    "Metrics",
    "SimilarsFinder",
    "VisDatCompare",
]

#: Common size (height, width) every image is normalised to for the metric matrices (the size the
#: :data:`vdc_torch.metrics.METRIC_RANGES` tiers were calibrated at).
METRIC_SIZE: tuple[int, int] = (64, 64)
#: Max side of the BGR image the hashes are computed from (OpenCV's hashers resize to at most 512×512).
HASH_SIDE = 512
#: Max side of the gray image local features are extracted from.
FEATURE_SIDE = 512
#: Images with a shorter side below this are upscaled to it (bicubic) before feature detection: a 32×32 CIFAR image
#: gives ~40 SIFT keypoints at 96 px and ~50 at 128, enough to verify copies of texture-poor pictures.
FEATURE_MIN_SIDE = 128
#: Inliers / ratio-test matches a feature pair needs to count as the same picture. Copies (resized, re-encoded,
#: cropped to 60 %, rotated 5°) of 40 photos and 30 CIFAR images keep >= 0.8 with SIFT and ORB; different frames of
#: one static-camera scene (the visdatcompy cows video) reach at most 0.69, so they are not reported.
FEATURE_MIN_INLIER_RATIO = 0.75

_EXIF_IGNORED = frozenset({"Filename", "FileExtension", "DateTimeDigitized"})
_EXIF_IDENTIFYING = ("DateTimeOriginal", "DateTime", "ImageUniqueID")


# -- shared machinery -------------------------------------------------------------------------------------------


def _workers() -> int:
    """Threads of the comparison classes: every core, at most 8 (their work is short per image)."""
    return min(8, available_cores())


def _paths(dataset: Dataset) -> list[str]:
    if not dataset.is_file_backed:
        raise InvalidTypeError(f"{dataset!r} wraps in-memory samples; the visdatcompy API compares image files")
    return [path for path, _ in dataset.samples]


def _labels(dataset: Dataset) -> list[str]:
    """Row/column labels: paths relative to the dataset root (the file name for a flat folder)."""
    root = dataset.root
    return [os.path.relpath(path, root) if root else path for path, _ in dataset.samples]


def _norm(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def _pair_mask(paths1: Sequence[str], paths2: Sequence[str]) -> np.ndarray:
    """Bool (n, m): pairs a finder may report.

    An image never pairs with itself, and when both images of a pair are in both datasets (``ds1 is ds2``, or
    overlapping folders) only the orientation whose ds2 image is the later one is kept, so clearing ds2 removes
    later copies and keeps the first occurrence.
    """
    k1 = np.array([_norm(p) for p in paths1], dtype=object)
    k2 = np.array([_norm(p) for p in paths2], dtype=object)
    mask = k1[:, None] != k2[None, :]
    set1, set2 = set(k1.tolist()), set(k2.tolist())
    in2 = np.array([k in set2 for k in k1], dtype=bool)
    in1 = np.array([k in set1 for k in k2], dtype=bool)
    if in2.any() and in1.any():
        both = in2[:, None] & in1[None, :]
        mask &= ~both | (k1[:, None] < k2[None, :])
    return mask


class _Cache:
    """Per comparison object: each path prepared (decoded once, reduced to a representation) at most once."""

    def __init__(self, prepare: Callable[[str], Any], what: str) -> None:
        self.prepare = prepare
        self.what = what
        self.items: dict[str, Any] = {}
        self.problems: dict[str, str] = {}

    def get(self, paths: Sequence[str]) -> list[Any]:
        """Representations of ``paths`` in order; ``None`` for files that could not be used (logged once)."""
        todo = list(dict.fromkeys(p for p in paths if p not in self.items and p not in self.problems))
        if todo:
            def run(path: str) -> tuple[str, Any, str | None]:
                try:
                    return path, self.prepare(path), None
                except ImageDecodeError as exc:
                    return path, None, str(exc)
                except Exception as exc:  # noqa: BLE001 - one bad file must not end the comparison
                    return path, None, f"{display_name(path)}: {type(exc).__name__}: {exc}"

            workers = min(_workers(), len(todo))
            if workers > 1:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    results = list(pool.map(run, todo))
            else:
                results = [run(p) for p in todo]
            for path, item, problem in results:
                if problem is None:
                    self.items[path] = item
                else:
                    self.problems[path] = problem
                    log.warning("%s: left out of the %s comparison: %s", display_name(path), self.what, problem)
        return [self.items.get(p) for p in paths]


_fit = shrink_to_side


def _write_csv(frame: pd.DataFrame, results_path: str, name: str, index: bool = True) -> str:
    folder = results_path or "."
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"{name}.csv")
    frame.to_csv(target, index=index, encoding="utf-8")
    log.info("wrote %s", target)
    return target


def _say(echo: bool, text: str) -> None:
    log.info(text)
    if echo:
        print(text)


# -- Metrics ----------------------------------------------------------------------------------------------------


class Metrics:
    """The seven visdatcompy metrics as labelled |ds1|×|ds2| matrices (rows: ds1 files, columns: ds2 files).

    Every image is decoded once per ``Metrics`` object and normalised to one common size (:data:`METRIC_SIZE`,
    gray, ``cv2.INTER_AREA``), so images of different sizes are comparable; ``pix2pix`` compares the full decoded
    pixels. The duplicate/similar tiers of each metric are :attr:`ranges` (closed intervals, from
    :data:`vdc_torch.metrics.METRIC_RANGES`); an exact copy is always inside both.

    >>> m = Metrics(Dataset("cows"), Dataset("cows_duplicates"), "results")  # doctest: +SKIP
    >>> m.mse(to_csv=True).loc["V00001.png", "V00001 (copy).png"]  # doctest: +SKIP
    0.0
    """

    def __init__(self, dataset1: Dataset, dataset2: Dataset, results_path: str = "", *,
                 size: tuple[int, int] = METRIC_SIZE) -> None:
        self.dataset1 = dataset1
        self.dataset2 = dataset2
        self.results_path = str(results_path)
        self.size = (int(size[0]), int(size[1]))
        self.methods: dict[str, Callable[..., pd.DataFrame]] = {m: getattr(self, m) for m in metric_lib.METRICS}
        self.ranges: dict[str, dict[str, tuple[Any, Any]]] = {
            m: {"duplicate": r["duplicate"], "similar": r["similar"]} for m, r in metric_lib.METRIC_RANGES.items()
        }
        self._cache = _Cache(self._prepare, "metrics")

    def _prepare(self, path: str) -> tuple[bytes, np.ndarray]:
        decoded = decode_file(path, decode_side=None)
        digest = metric_lib.image_digest(decoded.pixels)
        gray = metric_lib.normalize_images([decoded.pixels[:, :, ::-1]], self.size)[0].astype(np.uint8)
        return digest, gray

    @property
    def problems(self) -> dict[str, str]:
        """Files left out (their rows/columns are NaN, ``False`` for pix2pix), with the reason."""
        return dict(self._cache.problems)

    def matrix(self, metric: str, *, echo: bool = False, to_csv: bool = False) -> pd.DataFrame:
        """The ``metric`` value of every (ds1, ds2) pair as a labelled DataFrame (``.attrs["metric"]`` names it)."""
        check_choice("metric", metric, metric_lib.METRICS)
        p1, p2 = _paths(self.dataset1), _paths(self.dataset2)
        r1, r2 = self._cache.get(p1), self._cache.get(p2)
        ok1 = np.array([r is not None for r in r1], dtype=bool)
        ok2 = np.array([r is not None for r in r2], dtype=bool)
        if metric == "pix2pix":
            ids: dict[bytes, int] = {}
            a = np.array([ids.setdefault(r[0], len(ids)) if r else -1 for r in r1], dtype=np.int64)
            b = np.array([ids.setdefault(r[0], len(ids)) if r else -2 for r in r2], dtype=np.int64)
            values = a[:, None] == b[None, :]
        else:
            values = np.full((len(p1), len(p2)), np.nan)
            if ok1.any() and ok2.any():
                sa = np.stack([r[1] for r in r1 if r is not None]).astype(np.float32)
                sb = np.stack([r[1] for r in r2 if r is not None]).astype(np.float32)
                with np.errstate(divide="ignore", invalid="ignore"):
                    values[np.ix_(ok1, ok2)] = metric_lib.metric_matrix(metric, sa, sb)
        frame = pd.DataFrame(values, index=pd.Index(_labels(self.dataset1), name=self.dataset1.name),
                             columns=pd.Index(_labels(self.dataset2), name=self.dataset2.name))
        frame.attrs["metric"] = metric
        _say(echo, self._summary(metric, frame))
        if to_csv:
            _write_csv(frame, self.results_path, metric)
        return frame

    def _summary(self, metric: str, frame: pd.DataFrame) -> str:
        values = frame.to_numpy()
        mask = _pair_mask(_paths(self.dataset1), _paths(self.dataset2))
        dup = int((metric_lib.in_range(metric, values, "duplicate") & mask).sum())
        sim = int((metric_lib.in_range(metric, values, "similar") & mask).sum())
        head = f"{metric}: {values.shape[0]} x {values.shape[1]} matrix of {self.dataset1.name} vs {self.dataset2.name}"
        if metric != "pix2pix" and np.isfinite(values).any():
            finite = values[np.isfinite(values)]
            head += f", values {finite.min():.4g} .. {finite.max():.4g}"
        lo, hi = self.ranges[metric]["duplicate"]
        slo, shi = self.ranges[metric]["similar"]
        return (f"{head}; {dup} pairs in the duplicate range [{lo}, {hi}], "
                f"{sim} in the similar range [{slo}, {shi}]")

    def pix2pix(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """True where two files decode to identical pixels (same size, same values). ``resize_images`` is ignored."""
        return self.matrix("pix2pix", echo=echo, to_csv=to_csv)

    def mse(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """Mean squared error on the normalised images (0 = identical)."""
        return self.matrix("mse", echo=echo, to_csv=to_csv)

    def nrmse(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """Normalised root MSE, ``||x - y|| / ||x||`` with the ds1 image as reference (0 = identical)."""
        return self.matrix("nrmse", echo=echo, to_csv=to_csv)

    def ssim(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """Structural similarity (skimage defaults, 7×7 window; 1 = identical)."""
        return self.matrix("ssim", echo=echo, to_csv=to_csv)

    def psnr(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """Peak signal-to-noise ratio in dB (``inf`` = identical)."""
        return self.matrix("psnr", echo=echo, to_csv=to_csv)

    def mae(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """Mean absolute error on the normalised images (0 = identical)."""
        return self.matrix("mae", echo=echo, to_csv=to_csv)

    def nmi(self, echo: bool = False, to_csv: bool = False, resize_images: bool | None = None) -> pd.DataFrame:
        """Normalised mutual information, 1..2 (2 = identical)."""
        return self.matrix("nmi", echo=echo, to_csv=to_csv)

    def in_range(self, matrix: pd.DataFrame, kind: str = "duplicate", metric: str | None = None) -> pd.DataFrame:
        """Boolean frame: the values of ``matrix`` inside its metric's ``"duplicate"`` or ``"similar"`` range."""
        metric = metric or matrix.attrs.get("metric")
        check_choice("metric", str(metric), metric_lib.METRICS)
        mask = metric_lib.in_range(str(metric), matrix.to_numpy(), kind)
        return pd.DataFrame(mask, index=matrix.index, columns=matrix.columns)

    def show(self, matrix: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> Any:
        """Heat map of a metric matrix; returns the matplotlib ``Figure``.

        Saved to ``path`` when given; otherwise shown when there is a display, and saved to
        ``<results_path>/<metric>_heatmap.png`` when there is none.
        """
        metric = str(matrix.attrs.get("metric", "metric"))
        values = matrix.to_numpy(dtype=np.float64)
        n, m = values.shape
        fig = _new_figure((min(16.0, 2.5 + 0.35 * m), min(16.0, 2.0 + 0.3 * n)))
        ax = fig.add_subplot(1, 1, 1)
        shown = np.where(np.isfinite(values), values, np.nan)
        image = ax.imshow(shown, cmap="viridis", interpolation="nearest", aspect="auto")
        fig.colorbar(image, ax=ax)
        if n <= 40 and m <= 40:
            ax.set_xticks(range(m), [str(c) for c in matrix.columns], rotation=90, fontsize=7)
            ax.set_yticks(range(n), [str(r) for r in matrix.index], fontsize=7)
        ax.set_xlabel(str(matrix.columns.name or "dataset 2"))
        ax.set_ylabel(str(matrix.index.name or "dataset 1"))
        ax.set_title(metric)
        fallback = os.path.join(self.results_path or ".", f"{metric}_heatmap.png")
        return _finish_figure(fig, path, fallback)


# -- Hash -------------------------------------------------------------------------------------------------------


class Hash:
    """Perceptual-hash comparison of two datasets with the six OpenCV ``img_hash`` methods.

    Each image is decoded once per ``Hash`` object (to a BGR image of max side :data:`HASH_SIDE`) and hashed once
    per method. ``find_similars`` returns genuine pairs only (distance within the method's threshold,
    :data:`vdc_torch.hashes.DEFAULT_THRESHOLDS`); the 64-bit methods (``average``, ``p``) search the gate's
    :class:`~vdc_torch.index.HammingIndex`.

    >>> Hash(Dataset("cows"), Dataset("cows_duplicates")).find_similars("p")  # doctest: +SKIP
    """

    def __init__(self, dataset1: Dataset, dataset2: Dataset, results_path: str = "") -> None:
        self.dataset1 = dataset1
        self.dataset2 = dataset2
        self.results_path = str(results_path)
        self.methods: tuple[str, ...] = hash_lib.HASH_METHODS
        self.thresholds: dict[str, float] = dict(hash_lib.DEFAULT_THRESHOLDS)
        self._images = _Cache(self._prepare, "hash")
        self._hashes: dict[str, dict[str, hash_lib.ImageHash]] = {}

    @staticmethod
    def _prepare(path: str) -> np.ndarray:
        decoded = decode_file(path, decode_side=HASH_SIDE)
        return np.ascontiguousarray(_fit(decoded.pixels, HASH_SIDE)[:, :, ::-1])

    @property
    def problems(self) -> dict[str, str]:
        """Files left out of every result, with the reason."""
        return dict(self._images.problems)

    def hashes(self, method: str, dataset: Dataset) -> list[hash_lib.ImageHash | None]:
        """The ``method`` hash of every image of ``dataset`` (``None`` for unusable files), computed once each."""
        method = hash_lib.resolve_method(method)
        paths = _paths(dataset)
        store = self._hashes.setdefault(method, {})
        missing = list(dict.fromkeys(p for p in paths if p not in store))
        if missing:
            images = self._images.get(missing)
            todo = [(p, im) for p, im in zip(missing, images) if im is not None]

            def run(item: tuple[str, np.ndarray]) -> tuple[str, hash_lib.ImageHash]:
                return item[0], hash_lib.compute_hash(method, item[1])

            workers = min(_workers(), len(todo))
            if workers > 1 and method not in ("average", "p"):  # the 64-bit hashes are too cheap to thread
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    store.update(pool.map(run, todo))
            else:
                store.update(run(item) for item in todo)
        return [store.get(p) for p in paths]

    def _distances(self, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h1, h2 = self.hashes(method, self.dataset1), self.hashes(method, self.dataset2)
        ok1 = np.array([h is not None for h in h1], dtype=bool)
        ok2 = np.array([h is not None for h in h2], dtype=bool)
        values = np.full((len(h1), len(h2)), np.nan)
        if ok1.any() and ok2.any():
            values[np.ix_(ok1, ok2)] = hash_lib.distance_matrix(
                method, [h for h in h1 if h is not None], [h for h in h2 if h is not None]
            )
        return values, ok1, ok2

    def matrix(self, method: str = "average", to_csv: bool = False, echo: bool = False,
               return_df: bool = True) -> pd.DataFrame:
        """Hash distance of every (ds1, ds2) pair (smaller = more similar) as a labelled DataFrame."""
        method = hash_lib.resolve_method(method)
        values, _, _ = self._distances(method)
        frame = pd.DataFrame(values, index=pd.Index(_labels(self.dataset1), name=self.dataset1.name),
                             columns=pd.Index(_labels(self.dataset2), name=self.dataset2.name))
        frame.attrs["method"] = method
        _say(echo, f"{method} hash: {values.shape[0]} x {values.shape[1]} distance matrix of "
                   f"{self.dataset1.name} vs {self.dataset2.name}")
        if to_csv:
            _write_csv(frame, self.results_path, f"{method}_matrix")
        return frame

    def find_similars(self, compare_method: str = "average", to_csv: bool = False, echo: bool = False,
                      threshold: float | None = None, return_df: bool = True) -> pd.DataFrame:
        """Pairs ``(image1, image2, distance)`` whose hash distance is ``<= threshold``, nearest first per image1.

        ``threshold=None`` uses the method's default; images named alike are compared like any other (an exact
        copy with the same name is found), an image is never paired with itself. Columns ``image1``/``image2``
        are labels (paths relative to each dataset's root), ``path1``/``path2`` the files.
        """
        method = hash_lib.resolve_method(compare_method)
        limit = float(self.thresholds[method] if threshold is None else threshold)
        p1, p2 = _paths(self.dataset1), _paths(self.dataset2)
        if method in ("average", "p"):
            rows, cols, dist = self._hamming_pairs(method, p1, p2, limit)
        else:
            values, _, _ = self._distances(method)
            with np.errstate(invalid="ignore"):
                rows, cols = np.nonzero(values <= limit)
            dist = values[rows, cols]
        keep = _pair_mask(p1, p2)[rows, cols]
        rows, cols, dist = rows[keep], cols[keep], np.asarray(dist, dtype=np.float64)[keep]
        order = np.lexsort((cols, dist, rows))
        rows, cols, dist = rows[order], cols[order], dist[order]
        l1, l2 = _labels(self.dataset1), _labels(self.dataset2)
        frame = pd.DataFrame({
            "image1": [l1[i] for i in rows], "image2": [l2[j] for j in cols], "distance": dist,
            "path1": [p1[i] for i in rows], "path2": [p2[j] for j in cols],
        })
        frame.attrs.update(method=method, threshold=limit)
        _say(echo, f"{method} hash: {len(frame)} similar pairs (distance <= {limit:g}) between "
                   f"{self.dataset1.name} ({len(p1)} images) and {self.dataset2.name} ({len(p2)} images)")
        if to_csv:
            _write_csv(frame, self.results_path, method, index=False)
        return frame if return_df else True  # type: ignore[return-value]

    def _hamming_pairs(self, method: str, p1: list[str], p2: list[str],
                       limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h1, h2 = self.hashes(method, self.dataset1), self.hashes(method, self.dataset2)
        rows1 = np.array([i for i, h in enumerate(h1) if h is not None], dtype=np.int64)
        rows2 = np.array([j for j, h in enumerate(h2) if h is not None], dtype=np.int64)
        empty = np.zeros(0, np.int64)
        if len(rows1) == 0 or len(rows2) == 0 or limit < 0:
            return empty, empty, np.zeros(0)
        codes1 = hash_lib.hashes_to_uint64([h1[i] for i in rows1])
        codes2 = hash_lib.hashes_to_uint64([h2[j] for j in rows2])
        q, owner, dist = HammingIndex(codes2, rows2).search(codes1, int(np.floor(limit)))
        return rows1[q], owner, dist.astype(np.float64)


# -- FeatureExtractor ---------------------------------------------------------------------------------------------


def _good_match_counts(query: Sequence[local_features.LocalFeatures], ref: Sequence[local_features.LocalFeatures],
                       ratio: float, allowed: np.ndarray) -> np.ndarray:
    """(len(query), len(ref)): an upper bound of the ratio-test matches :func:`features.match` finds per pair.

    One vectorised pass over all descriptors (matmuls for SIFT, XOR-popcount for ORB/FAST) instead of a matcher
    per pair; pairs under ``min_inliers`` here cannot pass :func:`features.verify`, so only the rest are verified.
    Reference images are processed in groups of similar keypoint counts, padded to the group's largest.
    ``allowed`` (len(query),) skips queries that may not pair with anything.
    """
    n, m = len(query), len(ref)
    counts = np.zeros((n, m), np.int32)
    sizes = np.array([len(f) for f in ref], dtype=np.int64)
    lens = np.array([len(f) if allowed[i] else 0 for i, f in enumerate(query)], dtype=np.int64)
    if n == 0 or m == 0 or sizes.max(initial=0) < 2 or lens.sum() == 0:
        return counts
    binary = ref[0].extractor != "sift"
    queries = np.concatenate([f.descriptors for i, f in enumerate(query) if lens[i]])
    owner = np.repeat(np.arange(n), lens)
    if binary:
        words_q = np.ascontiguousarray(queries).view(np.uint64)
    else:
        qf = np.ascontiguousarray(queries, dtype=np.float32)
        norms_q = np.einsum("ij,ij->i", qf, qf)
    order = [j for j in np.argsort(sizes, kind="stable").tolist() if sizes[j] >= 2]  # < 2: match() finds nothing
    for g in range(0, len(order), 16):
        group = order[g : g + 16]
        k = int(sizes[group].max())
        d = ref[group[0]].descriptors.shape[1]
        pool = np.zeros((len(group), k, d), dtype=np.uint8 if binary else np.float32)
        valid = np.zeros((len(group), k), dtype=bool)
        for i, j in enumerate(group):
            pool[i, : sizes[j]] = ref[j].descriptors
            valid[i, : sizes[j]] = True
        flat = pool.reshape(len(group) * k, d)
        if binary:  # Hamming distance: 64-bit XOR + popcount, word by word, in uint16
            words_r = np.ascontiguousarray(np.ascontiguousarray(flat).view(np.uint64).T)
            step = max(1, (4 << 20) // (8 * flat.shape[0]))
        else:  # squared L2 by matmul
            norms_r = np.einsum("ij,ij->i", flat, flat)
            step = max(1, (16 << 20) // (4 * flat.shape[0]))
        for s in range(0, len(queries), step):
            e = min(len(queries), s + step)
            if binary:
                dist = np.bitwise_count(words_q[s:e, 0, None] ^ words_r[0][None, :]).astype(np.float32)
                for w in range(1, words_q.shape[1]):
                    part = words_q[s:e, w, None] ^ words_r[w][None, :]
                    dist += np.bitwise_count(part, out=part)
                factor = ratio
            else:
                dist = qf[s:e] @ flat.T
                dist *= -2.0
                dist += norms_q[s:e, None]
                dist += norms_r[None, :]
                np.maximum(dist, 0.0, out=dist)
                factor = ratio * ratio * 1.001  # squared distances; the slack keeps the bound under rounding
            dist = dist.reshape(e - s, len(group), k)
            dist[:, ~valid] = np.inf
            two = np.partition(dist, 1, axis=2)
            good = (two[:, :, 0] < factor * two[:, :, 1] + 1e-6).astype(np.int32)
            rows, starts = np.unique(owner[s:e], return_index=True)  # owner is sorted: one block per query image
            counts[np.ix_(rows, group)] += np.add.reduceat(good, starts, axis=0)
    return counts


class FeatureExtractor:
    """Find the pictures of ds1 that reappear in ds2 with local features (``"sift"``, ``"orb"`` or ``"fast"``).

    Features are extracted once per image from a gray image of max side :data:`FEATURE_SIDE`; images whose shorter
    side is under :data:`FEATURE_MIN_SIDE` are upscaled to it first (visdatcompy upscaled everything to 512 px). A pair is reported only when it is verified
    by the gate's code (:func:`vdc_torch.features.best_matches`: ratio test, RANSAC inliers, plausible transform,
    coverage) with an inlier ratio of at least :data:`FEATURE_MIN_INLIER_RATIO`.

    >>> fext = FeatureExtractor(Dataset("cows"), Dataset("cows_duplicates"), "sift")  # doctest: +SKIP
    >>> fext.find_similars(); fext.sift_similars  # doctest: +SKIP
    """

    def __init__(self, dataset1: Dataset, dataset2: Dataset, extractor: str = "sift", *, max_features: int = 500,
                 min_inliers: int = local_features.MIN_INLIERS,
                 min_inlier_ratio: float = FEATURE_MIN_INLIER_RATIO, ratio: float = 0.75) -> None:
        self.extractor_name = check_choice("extractor", extractor, local_features.EXTRACTORS)
        self.dataset1 = dataset1
        self.dataset2 = dataset2
        self.max_features = int(max_features)
        self.verify_kwargs: dict[str, Any] = {
            "ratio": ratio, "min_inliers": int(min_inliers), "min_inlier_ratio": float(min_inlier_ratio),
        }
        self._features = _Cache(self._prepare, f"{extractor} features")
        self.pairs: pd.DataFrame = pd.DataFrame(columns=["image1", "image2", "inliers", "inlier_ratio", "coverage"])
        setattr(self, f"{self.extractor_name}_similars", {})

    def _prepare(self, path: str) -> local_features.LocalFeatures:
        decoded = decode_file(path, decode_side=FEATURE_SIDE)
        gray = cv2.cvtColor(_fit(decoded.pixels, FEATURE_SIDE), cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        if min(h, w) < FEATURE_MIN_SIDE:
            factor = min(FEATURE_MIN_SIDE / min(h, w), FEATURE_SIDE / max(h, w))
            if factor > 1.0:
                gray = cv2.resize(gray, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)
        return local_features.extract(gray, self.extractor_name, self.max_features)

    @property
    def problems(self) -> dict[str, str]:
        """Files left out, with the reason."""
        return dict(self._features.problems)

    def _candidates(self) -> tuple[list[str], list[str], list[Any], list[Any], np.ndarray]:
        p1, p2 = _paths(self.dataset1), _paths(self.dataset2)
        f1, f2 = self._features.get(p1), self._features.get(p2)
        empty = local_features.LocalFeatures(
            self.extractor_name, np.zeros((0, 2), np.float32),
            np.zeros((0, 128 if self.extractor_name == "sift" else 32),
                     np.float32 if self.extractor_name == "sift" else np.uint8), (0, 0))
        f1 = [f if f is not None else empty for f in f1]
        f2 = [f if f is not None else empty for f in f2]
        allowed = _pair_mask(p1, p2)
        counts = _good_match_counts(f1, f2, self.verify_kwargs["ratio"], allowed.any(axis=1))
        candidates = np.argwhere(allowed & (counts >= self.verify_kwargs["min_inliers"]))
        log.debug("%s: %d of %d pairs sent to verification", self.extractor_name, len(candidates), allowed.size)
        return p1, p2, f1, f2, candidates

    def find_similars(self, echo: bool = False) -> dict[Image, Image]:
        """``{ds1 image: its best verified ds2 match}`` for the ds1 images that reappear in ds2 (others are absent).

        Also stored as ``.<extractor>_similars``; every verified pair (a ds1 image may have several copies in ds2)
        is in :meth:`find_pairs`.
        """
        p1, p2, f1, f2, candidates = self._candidates()
        best = local_features.best_matches(f1, f2, candidates.astype(np.int64), **self.verify_kwargs)
        similars = {Image(p1[q]): Image(p2[r]) for q, r, _ in best}
        setattr(self, f"{self.extractor_name}_similars", similars)
        _say(echo, f"{self.extractor_name}: {len(similars)} of {len(p1)} images of {self.dataset1.name} "
                   f"reappear in {self.dataset2.name} ({len(candidates)} candidate pairs verified)")
        return similars

    def find_pairs(self, echo: bool = False) -> pd.DataFrame:
        """Every verified (ds1, ds2) pair with its ``inliers``, ``inlier_ratio`` and ``coverage``; also ``.pairs``."""
        p1, p2, f1, f2, candidates = self._candidates()
        l1, l2 = _labels(self.dataset1), _labels(self.dataset2)
        rows = []
        for q, r in candidates.tolist():
            v = local_features.verify(f1[q], f2[r], **self.verify_kwargs)
            if v.matched:
                rows.append({"image1": l1[q], "image2": l2[r], "inliers": v.inliers,
                             "inlier_ratio": v.inlier_ratio, "coverage": v.coverage, "path1": p1[q], "path2": p2[r]})
        self.pairs = pd.DataFrame(rows, columns=["image1", "image2", "inliers", "inlier_ratio", "coverage",
                                                 "path1", "path2"])
        _say(echo, f"{self.extractor_name}: {len(self.pairs)} verified pairs between {self.dataset1.name} and "
                   f"{self.dataset2.name}")
        return self.pairs


# -- VisDatCompare ----------------------------------------------------------------------------------------------


def _group(pairs: Sequence[tuple[str, str]]) -> dict[Image, list[Image]]:
    out: dict[Image, list[Image]] = {}
    for a, b in pairs:
        out.setdefault(Image(a), [])
        if Image(b) not in out[Image(a)]:
            out[Image(a)].append(Image(b))
    return out


def _remove(dataset: Dataset, found: Sequence[dict[Image, list[Image]]]) -> list[Image]:
    """Drop every image listed in ``found`` from ``dataset`` (in memory, one ``select``); return those removed."""
    doomed = {_norm(image.path) for mapping in found for images in mapping.values() for image in images}
    keep, removed = [], []
    for i, (path, _) in enumerate(dataset.samples):
        if _norm(path) in doomed:
            removed.append(Image(path))
        else:
            keep.append(i)
    if removed:
        dataset.select(keep)
    log.info("removed %d images from the in-memory dataset %s (files untouched)", len(removed), dataset.name)
    return removed


class _Engines:
    """The comparison objects one ``VisDatCompare`` shares between its finders (each image decoded once each)."""

    def __init__(self, dataset1: Dataset, dataset2: Dataset) -> None:
        self.dataset1, self.dataset2 = dataset1, dataset2
        self.metrics = Metrics(dataset1, dataset2)
        self.hash = Hash(dataset1, dataset2)
        self.extractors: dict[str, FeatureExtractor] = {}
        self.exif: dict[str, dict[str, Any] | None] = {}

    def features(self, extractor: str) -> FeatureExtractor:
        check_choice("extractor", extractor, local_features.EXTRACTORS)
        if extractor not in self.extractors:
            self.extractors[extractor] = FeatureExtractor(self.dataset1, self.dataset2, extractor)
        return self.extractors[extractor]

    def metric_pairs(self, metric: str, kind: str) -> list[tuple[str, str]]:
        matrix = self.metrics.matrix(metric)
        mask = metric_lib.in_range(metric, matrix.to_numpy(), kind)
        p1, p2 = _paths(self.dataset1), _paths(self.dataset2)
        mask &= _pair_mask(p1, p2)
        return [(p1[i], p2[j]) for i, j in np.argwhere(mask).tolist()]

    def exif_key(self, path: str) -> str | None:
        if path not in self.exif:
            try:
                self.exif[path] = Image(path).get_exif_data(warn=False)
            except ImageDecodeError as exc:
                log.warning("%s", exc)
                self.exif[path] = None
        tags = self.exif[path]
        if not tags or not any(tags.get(name) for name in _EXIF_IDENTIFYING):
            return None
        return repr(sorted((k, repr(v)) for k, v in tags.items() if k not in _EXIF_IGNORED))


class DuplicatesFinder:
    """Duplicates of ds1 images in ds2 by EXIF or by a metric's ``duplicate`` range; results ``{ds1: [ds2, ...]}``."""

    def __init__(self, engines: _Engines) -> None:
        self._engines = engines
        self.exif_duplicates: dict[Image, list[Image]] = {}
        self.metrics_duplicates: dict[Image, list[Image]] = {}

    @property
    def dataset1(self) -> Dataset:
        return self._engines.dataset1

    @property
    def dataset2(self) -> Dataset:
        return self._engines.dataset2

    def find_exif_duplicates(self) -> dict[Image, list[Image]]:
        """ds2 images whose EXIF tags all equal a ds1 image's (file name, extension and DateTimeDigitized aside).

        Only images with an identifying tag (DateTimeOriginal, DateTime or ImageUniqueID) take part: images
        without EXIF, or with only generic tags, never match. Equal EXIF is strong evidence, not proof (burst shots
        may share every tag); confirm with :meth:`find_metrics_duplicates` when it matters.
        """
        p1, p2 = _paths(self.dataset1), _paths(self.dataset2)
        index = ExactIndex([self._engines.exif_key(p) for p in p2])
        mask = _pair_mask(p1, p2)
        pairs = [(p1[q], p2[r]) for q, r in index.pairs([self._engines.exif_key(p) for p in p1]) if mask[q, r]]
        self.exif_duplicates = _group(pairs)
        log.info("exif: %d duplicates of %d images found", len(pairs), len(self.exif_duplicates))
        return self.exif_duplicates

    def find_metrics_duplicates(self, metric_name: str = "pix2pix", echo: bool = False, *,
                                metric: str | None = None) -> dict[Image, list[Image]]:
        """ds2 images inside the ``duplicate`` range of the metric against a ds1 image (pix2pix: identical pixels).

        ``metric`` is an alias of visdatcompy's ``metric_name``.
        """
        metric_name = metric or metric_name
        check_choice("metric_name", metric_name, metric_lib.METRICS)
        pairs = self._engines.metric_pairs(metric_name, "duplicate")
        self.metrics_duplicates = _group(pairs)
        _say(echo, f"{metric_name}: {len(pairs)} duplicate pairs, {len(self.metrics_duplicates)} originals")
        return self.metrics_duplicates

    def clear_duplicates(self) -> list[Image]:
        """Remove every found duplicate from the in-memory ds2 (files are never touched); return the removed images."""
        return _remove(self.dataset2, [self.metrics_duplicates, self.exif_duplicates])


class SimilarsFinder:
    """Similar images of ds1 in ds2 by hash, local features or a metric's ``similar`` range; ``{ds1: [ds2, ...]}``."""

    def __init__(self, engines: _Engines) -> None:
        self._engines = engines
        self.hash_similars: dict[Image, list[Image]] = {}
        self.features_similars: dict[Image, list[Image]] = {}
        self.metrics_similars: dict[Image, list[Image]] = {}

    @property
    def dataset1(self) -> Dataset:
        return self._engines.dataset1

    @property
    def dataset2(self) -> Dataset:
        return self._engines.dataset2

    def find_hash_similars(self, method: str = "average", echo: bool = False) -> dict[Image, list[Image]]:
        """ds2 images within the hash threshold of a ds1 image, nearest first."""
        frame = self._engines.hash.find_similars(method, echo=echo)
        self.hash_similars = _group(list(zip(frame["path1"], frame["path2"])))
        return self.hash_similars

    def find_features_similars(self, extractor_name: str = "sift", echo: bool = False, *,
                               extractor: str | None = None) -> dict[Image, list[Image]]:
        """ds2 images verified by local features as showing a ds1 image's picture (every copy, most inliers first).

        ``extractor`` is an alias of visdatcompy's ``extractor_name``.
        """
        frame = self._engines.features(extractor or extractor_name).find_pairs(echo=echo)
        frame = frame.sort_values(["path1", "inliers"], ascending=[True, False], kind="stable")
        self.features_similars = _group(list(zip(frame["path1"], frame["path2"])))
        return self.features_similars

    def find_metrics_similars(self, metric_name: str = "mse", echo: bool = False, *,
                              metric: str | None = None) -> dict[Image, list[Image]]:
        """ds2 images inside the ``similar`` range of the metric against a ds1 image (``metric`` aliases ``metric_name``)."""
        metric_name = metric or metric_name
        check_choice("metric_name", metric_name, metric_lib.METRICS)
        pairs = self._engines.metric_pairs(metric_name, "similar")
        self.metrics_similars = _group(pairs)
        _say(echo, f"{metric_name}: {len(pairs)} similar pairs, {len(self.metrics_similars)} ds1 images")
        return self.metrics_similars

    def clear_similars(self) -> list[Image]:
        """Remove every found similar image from the in-memory ds2 (files are never touched); return them."""
        return _remove(self.dataset2, [self.hash_similars, self.features_similars, self.metrics_similars])


class VisDatCompare:
    """Duplicates and similars of ``dataset1`` in ``dataset2``, and their removal from the in-memory ``dataset2``.

    ``dataset2`` stays a usable torch :class:`~vdc_torch.Dataset` after ``clear_*``; the files stay on disk. With
    ``dataset1 is dataset2`` (or two datasets over the same folder) an image never matches itself and only later
    copies are reported, so clearing keeps one image of each group. Finders may be called any number of times;
    each call replaces that finder's result.

    >>> compy = VisDatCompare(Dataset("cows"), Dataset("cows_duplicates"))  # doctest: +SKIP
    >>> compy.duplicates_finder.find_metrics_duplicates("pix2pix"); compy.duplicates_finder.clear_duplicates()  # doctest: +SKIP
    """

    DuplicatesFinder = DuplicatesFinder
    SimilarsFinder = SimilarsFinder

    def __init__(self, dataset1: Dataset, dataset2: Dataset) -> None:
        self.dataset1 = dataset1
        self.dataset2 = dataset2
        engines = _Engines(dataset1, dataset2)
        self.duplicates_finder = DuplicatesFinder(engines)
        self.similars_finder = SimilarsFinder(engines)
