"""``vdc compare`` (two folders pair by pair, the visdatcompy engine) and ``vdc info`` (a manifest, folder or image)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `vdc --help` and usage errors must not wait for numpy, pandas or torch
    import numpy as np
    import pandas as pd

from vdc_torch.faces.cli_args import EXIT_TRAIN, _compare_methods, _ensure_parent, _note

log = logging.getLogger(__name__)


# -- compare -------------------------------------------------------------------------------------------------


def _load_folder(path: str, args: argparse.Namespace) -> tuple[list[str], list[np.ndarray]]:
    """Relative names and RGB pixels (orientation applied) of every readable image of a folder."""
    from vdc_torch.data.dataset import Dataset
    from vdc_torch.data.decode import decode_file

    dataset = Dataset(path)
    names, images = [], []
    for file, _ in dataset.samples:
        try:
            decoded = decode_file(file, decode_side=None)
        except Exception as exc:  # noqa: BLE001 - one unreadable file is reported, never fatal
            _note(args, f"vdc: warning: skipped {exc}")
            continue
        names.append(os.path.relpath(file, dataset.root))
        images.append(decoded.pixels)
    return names, images


def _bgr(rgb: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(rgb[:, :, ::-1])


def compare_folders(dir1: str, dir2: str, method: str, *, threshold: float | None = None, all_pairs: bool = False,
                    args: argparse.Namespace | None = None) -> pd.DataFrame:
    """Pairs of images of ``dir1`` and ``dir2`` compared with ``method`` (a hash, a metric or a feature extractor).

    Columns ``image1, image2, method, value, similar`` (plus ``tier`` for metrics, ``inliers`` data for features).

    >>> compare_folders("data/a", "data/b", "phash").head()   # doctest: +SKIP
    """
    import numpy as np
    import pandas as pd

    from vdc_torch.errors import check_choice
    from vdc_torch.fingerprints import hashes, metrics

    args = args or argparse.Namespace(quiet=True)
    hash_methods, metric_names, extractors = _compare_methods()
    check_choice("method", method, [*hash_methods, *metric_names, *extractors])
    if method in extractors:
        return _compare_features(dir1, dir2, method, all_pairs, args)
    names1, images1 = _load_folder(dir1, args)
    names2, images2 = _load_folder(dir2, args)
    rows: list[dict[str, Any]] = []
    if method in hash_methods:
        canonical = hashes.resolve_method(method)
        limit = hashes.DEFAULT_THRESHOLDS[canonical] if threshold is None else float(threshold)
        h1 = [hashes.compute_hash(canonical, _bgr(x)) for x in images1]
        h2 = [hashes.compute_hash(canonical, _bgr(x)) for x in images2]
        matrix = hashes.distance_matrix(canonical, h1, h2) if h1 and h2 else np.empty((len(h1), len(h2)))
        for i, j in np.ndindex(matrix.shape):
            near = bool(matrix[i, j] <= limit)
            if all_pairs or near:
                rows.append({"image1": names1[i], "image2": names2[j], "method": canonical,
                             "value": float(matrix[i, j]), "similar": near})
        frame = pd.DataFrame(rows, columns=["image1", "image2", "method", "value", "similar"])
        return frame.sort_values(["image1", "value", "image2"], kind="stable").reset_index(drop=True)
    if method in metric_names:
        if method == "pix2pix":
            matrix = metrics.pix2pix_matrix(images1, images2)
        else:
            a = metrics.normalize_images([_bgr(x) for x in images1]) if images1 else np.empty((0, 64, 64), np.float32)
            b = metrics.normalize_images([_bgr(x) for x in images2]) if images2 else np.empty((0, 64, 64), np.float32)
            matrix = metrics.metric_matrix(method, a, b)
        duplicate = metrics.in_range(method, matrix, "duplicate")
        similar = metrics.in_range(method, matrix, "similar")
        for i, j in np.ndindex(matrix.shape):
            tier = "duplicate" if duplicate[i, j] else "similar" if similar[i, j] else "different"
            if all_pairs or tier != "different":
                value = matrix[i, j]
                rows.append({"image1": names1[i], "image2": names2[j], "method": method,
                             "value": bool(value) if method == "pix2pix" else float(value),
                             "similar": tier != "different", "tier": tier})
        frame = pd.DataFrame(rows, columns=["image1", "image2", "method", "value", "similar", "tier"])
        higher = metrics.METRIC_RANGES[method]["higher_is_similar"]
        if method == "pix2pix" or not len(frame):
            return frame.reset_index(drop=True)
        return frame.sort_values(["image1", "value", "image2"], ascending=[True, not higher, True],
                                 kind="stable").reset_index(drop=True)
    raise AssertionError(f"unhandled method {method!r}")  # pragma: no cover - check_choice covers every method


def _compare_features(dir1: str, dir2: str, method: str, all_pairs: bool, args: argparse.Namespace) -> pd.DataFrame:
    """Local-feature pairs exactly as the visdatcompy API's :class:`FeatureExtractor` finds them (one engine)."""
    import pandas as pd

    from vdc_torch.data.dataset import Dataset
    from vdc_torch.faces.seed import FeatureExtractor

    first, second = Dataset(dir1), Dataset(dir2)
    extractor = FeatureExtractor(first, second, method)
    pairs = extractor.find_pairs()
    for path, reason in extractor.problems.items():
        _note(args, f"vdc: warning: skipped {path}: {reason}")
    found = {(row.image1, row.image2): row for row in pairs.itertuples(index=False)}
    names1 = [os.path.relpath(p, first.root) for p, _ in first.samples]
    names2 = [os.path.relpath(p, second.root) for p, _ in second.samples]
    rows = []
    for name1 in names1:
        for name2 in names2:
            row = found.get((name1, name2))
            if all_pairs or row is not None:
                rows.append({"image1": name1, "image2": name2, "method": method,
                             "value": int(row.inliers) if row is not None else 0, "similar": row is not None,
                             "coverage": round(float(row.coverage), 3) if row is not None else 0.0})
    frame = pd.DataFrame(rows, columns=["image1", "image2", "method", "value", "similar", "coverage"])
    return frame.sort_values(["image1", "value", "image2"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)


def cmd_compare(args: argparse.Namespace) -> int:
    frame = compare_folders(args.dir1, args.dir2, args.method, threshold=args.threshold, all_pairs=args.all,
                            args=args)
    if args.csv:
        _ensure_parent(args.csv)
        frame.to_csv(args.csv, index=False)
        _note(args, f"wrote {len(frame)} pair(s) to {args.csv}")
    similar = int(frame["similar"].sum()) if len(frame) else 0
    if len(frame):
        shown = frame.head(args.limit) if args.limit else frame.iloc[0:0]
        print(shown.to_string(index=False))
        if len(frame) > len(shown):
            print(f"... {len(frame) - len(shown)} more pair(s){'' if args.csv else ' (use --csv OUT for all)'}")
    print(f"{similar} similar pair(s) by {args.method} between {args.dir1} and {args.dir2}")
    return EXIT_TRAIN


# -- info ----------------------------------------------------------------------------------------------------


def describe(path: str) -> dict[str, Any]:
    """What ``vdc info`` prints, as a dict: a manifest, an image folder or one image file.

    >>> describe("ckpt/reference.vdc")["samples"]   # doctest: +SKIP
    """
    from vdc_torch.errors import DatasetNotFoundError

    if os.path.isdir(path):
        return _describe_folder(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path!r} does not exist")
    with open(path, "rb") as handle:
        header = handle.read(64)
    if header.startswith(b"SQLite format 3\x00") or header.lstrip().startswith(b"{"):  # one file, or a sharded index
        return _describe_manifest(path)
    return _describe_image(path)


def _describe_manifest(path: str) -> dict[str, Any]:
    from collections import Counter

    from vdc_torch.decision.store.manifest import load_manifest, manifest_info
    from vdc_torch.fingerprints.table import LEGACY_DIGEST_ROWS

    table, meta = load_manifest(path)
    stored = manifest_info(path)
    labels = Counter(label for label in table.labels if label is not None)
    info: dict[str, Any] = {"kind": "manifest", "path": path, "storage": stored["kind"]}
    for key in ("format", "format_version", "fingerprint_version", "samples", "saved_at", "reference_root"):
        if key in meta:
            info[key] = meta[key]
    info.update({k: v for k, v in sorted(meta.items()) if k not in info})
    info["file_size"] = os.path.getsize(path)
    if stored["kind"] == "sharded":  # the index, and every shard it names (in <path>.shards/)
        info["shards"] = stored["shards"]
        info["bytes"] = stored["bytes"]
    info["classes"] = dict(sorted(labels.items())) if labels else {}
    if meta.get(LEGACY_DIGEST_ROWS):
        info["note"] = (f"{meta[LEGACY_DIGEST_ROWS]} samples hold pixel digests of an older fingerprint version: "
                        "an identical-pixel copy of them is matched as a near duplicate, not as exact; "
                        "`vdc index` rebuilds the manifest")
    return info


def _describe_folder(path: str) -> dict[str, Any]:
    from collections import Counter

    from vdc_torch.data.dataset import Dataset

    dataset = Dataset(path)
    per_class = Counter(dataset.classes[label] for _, label in dataset.samples if label >= 0)
    extensions = Counter(os.path.splitext(p)[1].lower() for p, _ in dataset.samples)
    return {
        "kind": "folder", "path": path, "images": len(dataset),
        "labels": "class sub-folders" if dataset.classes else "none (flat folder)",
        "classes": {name: per_class.get(name, 0) for name in dataset.classes},
        "extensions": dict(sorted(extensions.items())),
        "bytes": sum(os.path.getsize(p) for p, _ in dataset.samples if os.path.isfile(p)),
        # what the folder holds that is not a sample (loose files beside class folders, other file types, ...)
        "skipped": len(dataset.skipped),
        "skipped because": dict(Counter(f.reason for f in dataset.skipped).most_common(5)),
    }


def _describe_image(path: str) -> dict[str, Any]:
    from PIL import Image

    from vdc_torch.data.decode import decode_file, read_exif_tags

    decoded = decode_file(path)
    info: dict[str, Any] = {
        "kind": "image", "path": path, "format": decoded.format, "width": decoded.width, "height": decoded.height,
        "frames": decoded.frames, "file_size": decoded.file_size,
        "byte_digest": decoded.byte_digest.hex() if decoded.byte_digest else None,
        "exif_identity": decoded.exif_identity,
    }
    try:
        with Image.open(path) as image:
            info["mode"] = image.mode
            tags = read_exif_tags(image)
    except Exception:  # noqa: BLE001 - decode_file already vouched for the pixels; EXIF is optional
        tags = {}
    keys = ("Make", "Model", "DateTimeOriginal", "SubsecTimeOriginal", "ImageUniqueID", "BodySerialNumber",
            "Orientation", "Software")
    info["exif"] = {k: tags[k] for k in keys if k in tags}
    if decoded.warnings:
        info["warnings"] = list(decoded.warnings)
    return info


def _format_info(info: dict[str, Any]) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            if not value:
                lines.append(f"{key}: none")
                continue
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.path)
    print(json.dumps(info, indent=2, default=str) if args.json else _format_info(info))
    return EXIT_TRAIN
