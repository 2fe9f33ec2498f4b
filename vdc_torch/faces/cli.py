"""The ``vdc`` command line: gate a training run from a shell, CI job, Airflow task or DVC stage.

    vdc index data/train_v1 -o ckpt/reference.vdc
    vdc gate --reference ckpt/reference.vdc --new data/drop_07 --json decision.json --report decision.html
    vdc update ckpt/reference.vdc data/drop_07        # after training on it
    vdc compare data/a data/b --method phash --csv pairs.csv
    vdc dedup data/drop_07 --keep largest --json dups.json --report dups.html
    vdc info ckpt/reference.vdc

``vdc gate`` exits 0 for "train", 99 for "skip" (Airflow's BashOperator marks a task *skipped* on exit code 99 by
default), 1 when it could not decide and 2 for a bad command line. ``vdc dedup`` exits 0 when the folder holds no
duplicates and 3 when it does. The library never configures logging; this
module does, for the command line only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported where used: `vdc --help` and usage errors must not wait for numpy, pandas or torch
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

EXIT_TRAIN = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DUPLICATES = 3
EXIT_SKIP = 99
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = f"""\
exit codes of `vdc gate`:
  {EXIT_TRAIN:<3} train: the new data holds enough novel samples (or a label conflict); train on the delta
  {EXIT_SKIP:<3} skip: the model has already seen (almost) all of it; --skip-exit-code changes this value.
      99 is what Airflow's BashOperator treats as "skipped" by default.
  {EXIT_ERROR:<3} error: no decision could be made (missing folder, unreadable manifest, ...)
  {EXIT_USAGE:<3} usage error: bad command line
`vdc dedup` exits {EXIT_TRAIN} = no duplicates, {EXIT_DUPLICATES} = duplicates found (see 'vdc dedup --help').
other commands exit {EXIT_TRAIN} on success, {EXIT_ERROR} on error and {EXIT_USAGE} on a bad command line.

shell:   vdc gate --reference ref.vdc --new drop/ --quiet; case $? in 0) train;; 99) echo skipped;; *) exit 1;; esac
"""

DEDUP_EXIT_CODES_HELP = f"""\
exit codes of `vdc dedup`:
  {EXIT_TRAIN:<3} no duplicates: every readable image is unique
  {EXIT_DUPLICATES:<3} duplicates found: the output lists them; --duplicates-exit-code changes this value
      (0 = exit 0 either way)
  {EXIT_ERROR:<3} error: no answer (missing folder, no readable image, more than --max-problem-share
      of the images unreadable, ...)
  {EXIT_USAGE:<3} usage error: bad command line

duplicates are the exact and near_duplicate matches; 'similar' pictures (alike, not verified as
the same picture) are listed but only counted with --count-similar. Nothing under DIR is ever
written, moved or deleted.

shell:   vdc dedup data/drop_07 -q --list-removable > removable.txt
         case $? in 0) echo clean;; 3) xargs -d '\\n' rm -- < removable.txt;; *) exit 1;; esac
"""

class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``vdc: error: ...`` (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(EXIT_USAGE, f"vdc: error: {where}{message} (see '{self.prog} --help')\n")


# -- argument types ------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not between 0 and 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative")
    return value


def _exit_code(text: str) -> int:
    value = _non_negative(text)
    if value > 255 or value in (EXIT_ERROR, EXIT_USAGE, EXIT_TRAIN):
        raise argparse.ArgumentTypeError(f"{value!r} must lie in 3..255 (0, 1 and 2 mean train, error and usage)")
    return value


def _dedup_exit_code(text: str) -> int:
    value = _non_negative(text)
    if value > 255 or value in (EXIT_ERROR, EXIT_USAGE):
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 or lie in 3..255 (1 and 2 mean error and usage)")
    return value


def _wrap(text: str) -> str:
    """Fill each paragraph of a help text to 79 columns (the raw formatter keeps our line breaks)."""
    lines = []
    for line in text.split("\n"):
        label = re.match(r"^[a-z ]+:\s{2,}", line)  # "hash methods:   a, b, c" keeps its column
        lines.append(textwrap.fill(line, 79, subsequent_indent=" " * (label.end() if label else 0)))
    return "\n".join(lines)


# -- the parser ----------------------------------------------------------------------------------------------


def _compare_methods() -> tuple[list[str], list[str], list[str]]:
    from vdc_torch.names import (  # static names: no OpenCV import for --help
        EXTRACTORS,
        HASH_ALIASES,
        HASH_METHODS,
        METRICS,
    )

    return [*HASH_METHODS, *HASH_ALIASES], list(METRICS), list(EXTRACTORS)


def build_parser() -> argparse.ArgumentParser:
    """The ``vdc`` argument parser (exposed for documentation tools and tests)."""
    from vdc_torch import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or notes; print only the result and errors")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what the library does (INFO level)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error and DEBUG logs")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=_non_negative, default=None, metavar="N",
                         help="fingerprinting processes (default: every core; 0 = in this process)")

    parser = _Parser(
        prog="vdc",
        description=_wrap("Should this model be retrained on this new image data, and if so on what?"),
        epilog=EXIT_CODES_HELP + "\nRun 'vdc COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"vdc_torch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("index", parents=[common, workers], help="fingerprint a reference folder into a manifest",
                       description=_wrap("Fingerprint the images of DIR (the data a model was trained on) and save them "
                                   "as a manifest file that `vdc gate --reference` reads without the images."),
                       epilog="example: vdc index data/train_v1 -o ckpt/reference.vdc",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="image folder (class sub-folders become labels, as in ImageFolder)")
    p.add_argument("-o", "--output", required=True, metavar="MANIFEST", help="manifest file to write")

    p = sub.add_parser("gate", parents=[common, workers], help="decide: train on the new data, or skip",
                       description=_wrap("Match a new image folder against the reference and decide whether to train on "
                                   "it (and on which samples) or to skip it. Prints one paragraph; the exit code "
                                   "carries the decision."),
                       epilog=EXIT_CODES_HELP + "\nexample: vdc gate --reference ckpt/reference.vdc --new "
                              "data/drop_07 --json decision.json --report decision.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, metavar="MANIFEST_OR_DIR",
                   help="a manifest written by `vdc index`, or the reference image folder itself")
    p.add_argument("--new", required=True, metavar="DIR", help="the new image folder")
    p.add_argument("--json", metavar="OUT", help="write the full decision as JSON ('-' = standard output, and the "
                                                 "paragraph then goes to standard error)")
    p.add_argument("--report", metavar="OUT.html", help="write a self-contained HTML report")
    p.add_argument("--csv", metavar="DIR", help="write matches.csv, conflicts.csv, problems.csv and "
                                                "internal_duplicates.csv into DIR")
    p.add_argument("--save-manifest", metavar="MANIFEST", help="when --reference is a folder, also save its manifest")
    p.add_argument("--skip-overlap", type=_fraction, default=None, metavar="X",
                   help="skip only when at least this fraction of the new samples was already trained on "
                        "(default 0.95)")
    p.add_argument("--min-delta", type=_non_negative, default=None, metavar="N",
                   help="train whenever at least N novel samples remain (default 64)")
    p.add_argument("--count-similar", action="store_true",
                   help="let 'similar' matches count as already trained on")
    p.add_argument("--skip-exit-code", type=_exit_code, default=EXIT_SKIP, metavar="CODE",
                   help=f"exit code for 'skip' (default {EXIT_SKIP})")
    p.add_argument("--encoder", metavar="MODULE:NAME",
                   help="add model features as a method: NAME in MODULE is a torch module mapping an image batch "
                        "to embeddings, or a function returning one (e.g. mypkg.models:gate_encoder)")
    p.add_argument("--cache", metavar="FILE",
                   help="fingerprint cache file: unchanged files are not decoded again on the next run")

    p = sub.add_parser("update", parents=[common, workers],
                       help="after training on DIR, add its novel samples to the manifest",
                       description=_wrap("After a model was trained on DIR, add the samples of DIR that the manifest "
                                   "does not hold yet (the delta `vdc gate` reported) to MANIFEST, in place."),
                       epilog="example: vdc update ckpt/reference.vdc data/drop_07",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", metavar="MANIFEST", help="the manifest to grow (created when absent)")
    p.add_argument("dir", metavar="DIR", help="the folder the model was trained on")

    hashes, metrics, extractors = _compare_methods()
    p = sub.add_parser("compare", parents=[common], help="compare two folders pair by pair (visdatcompy style)",
                       description=_wrap("Compare every image of DIR1 with every image of DIR2 with one method and print "
                                   "the pairs found similar.\n\n"
                                   f"hash methods:   {', '.join(hashes)}  (distance <= threshold)\n"
                                   f"metrics:        {', '.join(metrics)}  (on 64x64 gray copies; metric tiers)\n"
                                   f"local features: {', '.join(extractors)}  (RANSAC-verified matches)"),
                       epilog="example: vdc compare data/a data/b --method phash --csv pairs.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir1", metavar="DIR1")
    p.add_argument("dir2", metavar="DIR2")
    p.add_argument("--method", required=True, choices=[*hashes, *metrics, *extractors], metavar="METHOD",
                   help="one of: " + ", ".join([*hashes, *metrics, *extractors]))
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="hash methods: largest distance that counts as similar (default: the method's calibrated "
                        "threshold)")
    p.add_argument("--all", action="store_true", help="list every pair, not only the similar ones")
    p.add_argument("--csv", metavar="OUT", help="write the pairs to a CSV file")
    p.add_argument("--limit", type=_non_negative, default=50, metavar="N",
                   help="print at most N pairs (default 50; the CSV always holds all)")

    from vdc_torch.names import KEEP_RULES

    p = sub.add_parser("dedup", parents=[common, workers], help="list the duplicate images inside one folder",
                       description=_wrap("Find the duplicates inside DIR with the cascade `vdc gate` uses for "
                                   "duplicates inside the new data (exact copies, resized, re-encoded, flipped, "
                                   "cropped, ... copies), group them, keep one file per group (--keep) and list "
                                   "the others as removable. Prints one paragraph; the exit code says whether "
                                   "there were duplicates. Only reports: no file is changed."),
                       epilog=DEDUP_EXIT_CODES_HELP + "\nexample: vdc dedup data/drop_07 --keep largest "
                              "--json dups.json --csv dups/ --report dups.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="image folder (read like ImageFolder: sorted, recursive)")
    p.add_argument("--keep", choices=KEEP_RULES, default="first",
                   help="which file of each group is kept: 'first' in the folder's sorted order (default; the "
                        "one `vdc gate` keeps in the delta) or 'largest' (most pixels, then largest file, then "
                        "first)")
    p.add_argument("--count-similar", action="store_true",
                   help="let 'similar' pairs count as duplicates (default: listed, not counted)")
    p.add_argument("--max-problem-share", type=_fraction, default=None, metavar="X",
                   help="give no answer (exit 1) when more than this share of the images cannot be read "
                        "(default 0.05)")
    p.add_argument("--duplicates-exit-code", type=_dedup_exit_code, default=EXIT_DUPLICATES, metavar="CODE",
                   help=f"exit code when duplicates were found (default {EXIT_DUPLICATES})")
    p.add_argument("--json", metavar="OUT", help="write the groups as JSON ('-' = standard output, and the "
                                                 "paragraph then goes to standard error)")
    p.add_argument("--list-removable", action="store_true",
                   help="print the removable files, one path per line, on standard output (the paragraph then "
                        "goes to standard error); not with --json -")
    p.add_argument("--csv", metavar="DIR_OR_OUT.csv",
                   help="write duplicates.csv (one row per file of a group), similar.csv and problems.csv into "
                        "DIR, or only the duplicates to OUT.csv")
    p.add_argument("--report", metavar="OUT.html", help="write a self-contained HTML report")
    p.add_argument("--cache", metavar="FILE",
                   help="fingerprint cache file: unchanged files are not decoded again on the next run")

    p = sub.add_parser("info", parents=[common], help="describe a manifest, an image folder or an image",
                       description=_wrap("Describe PATH: a manifest (format version, samples, saved_at, roots), an image "
                                   "folder (image count, classes) or one image (size, format, EXIF identity)."),
                       epilog="example: vdc info ckpt/reference.vdc",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    return parser


# -- commands ------------------------------------------------------------------------------------------------


def _note(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _policy(args: argparse.Namespace) -> Any:
    from vdc_torch.decision.gate import Policy

    defaults = Policy()
    return Policy(
        skip_overlap=defaults.skip_overlap if args.skip_overlap is None else args.skip_overlap,
        min_delta_to_train=defaults.min_delta_to_train if args.min_delta is None else args.min_delta,
        count_similar=bool(args.count_similar),
    )


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _note_known(args: argparse.Namespace, cache: Any, dataset: Any, head: str) -> None:
    """Say how many samples of ``dataset`` ``cache`` already holds (they are not decoded again)."""
    known = cache.count_known(path for path, _ in dataset.samples) if len(cache) else 0
    if known:
        _note(args, f"{head}{known} of {len(dataset)} samples of {dataset.root} already fingerprinted in "
                    f"{cache.path}")


def cmd_index(args: argparse.Namespace) -> int:
    from vdc_torch.data.dataset import Dataset
    from vdc_torch.decision.gate import DatasetGate
    from vdc_torch.decision.store.cache import FingerprintCache, checkpoint_path
    from vdc_torch.errors import InsufficientEvidenceError

    dataset = Dataset(os.path.abspath(args.dir))
    # fingerprints are checkpointed into <MANIFEST>.partial while they are computed: the same command run again
    # after an interrupt decodes only the rest; the checkpoint goes once the manifest is written
    partial = FingerprintCache(checkpoint_path(args.output), strict=True)
    resumed = partial.path.exists()
    _note_known(args, partial, dataset, "resuming: ")
    gate = DatasetGate(reference=dataset, workers=args.workers, progress=_progress(args), cache=partial)
    try:
        samples = len(gate)  # fingerprints now, so the manifest records the reference root
    except InsufficientEvidenceError:
        if not resumed:  # too little to index: no manifest, and no checkpoint of this run either
            partial.discard()
        raise
    path = gate.save(args.output)
    partial.discard()
    unusable = sum(1 for p in gate.reference_problems if p.fatal)
    extra = f" ({unusable} unreadable file(s) left out)" if unusable else ""
    print(f"indexed {samples} samples of {args.dir} into {path}{extra}")
    for problem in gate.reference_problems:
        if problem.fatal:
            _note(args, f"vdc: warning: {problem.reason}")
    return EXIT_TRAIN


def _open_gate(reference: str, args: argparse.Namespace, policy: Any) -> Any:
    from vdc_torch.decision.gate import DatasetGate
    from vdc_torch.errors import DatasetNotFoundError

    kwargs = {"policy": policy, "workers": args.workers, "progress": _progress(args)}
    if getattr(args, "encoder", None):
        kwargs["encoder"] = load_encoder(args.encoder)
    if getattr(args, "cache", None):
        kwargs["cache"] = args.cache
    if os.path.isfile(reference):
        return DatasetGate.load(reference, **kwargs)
    if os.path.isdir(reference):  # absolute, so a saved manifest and reports find the images from anywhere
        from vdc_torch.data.dataset import Dataset

        dataset = Dataset(os.path.abspath(reference))
        gate = DatasetGate(reference=dataset, **kwargs)
        if gate.cache is not None:
            _note_known(args, gate.cache, dataset, "cache: ")
        return gate
    raise DatasetNotFoundError(f"reference {reference!r} is neither a manifest file nor an image folder")


def load_encoder(spec: str) -> Any:
    """Import ``MODULE:NAME``; NAME is a torch module or a zero-argument function returning one."""
    import importlib

    import torch

    from vdc_torch.errors import InvalidParameterError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidParameterError(f"--encoder={spec!r} is not of the form MODULE:NAME (e.g. mypkg.models:encoder)")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidParameterError(f"--encoder={spec!r} cannot be imported: {exc}") from exc
    encoder = target if isinstance(target, torch.nn.Module) else target() if callable(target) else target
    if not isinstance(encoder, torch.nn.Module):
        raise InvalidParameterError(f"--encoder={spec!r} gave {type(encoder).__name__}, not a torch.nn.Module")
    return encoder


def decision_paragraph(decision: Any) -> str:
    """The one-paragraph summary ``vdc gate`` prints."""
    c = decision.counts
    parts = [
        f"{str(decision.action).upper()}: {decision.reason}",
        (f"New data: {c.get('new', 0)} samples ({c.get('readable', 0)} readable); reference: "
         f"{c.get('reference', 0)} samples."),
        (f"Matched: {c.get('exact', 0)} exact, {c.get('near_duplicate', 0)} near-duplicate, "
         f"{c.get('similar', 0)} similar; {c.get('internal_duplicates', 0)} duplicate(s) inside the new data; "
         f"{c.get('conflicts', 0)} label conflict(s). Overlap {decision.overlap:.1%}; "
         f"delta: {c.get('delta', 0)} novel sample(s)."),
    ]
    return " ".join(parts)


def cmd_gate(args: argparse.Namespace) -> int:
    from vdc_torch.decision.gate import as_dataset
    from vdc_torch.faces import report

    policy = _policy(args)
    gate = _open_gate(args.reference, args, policy)
    new = as_dataset(args.new)
    if gate.cache is not None:
        _note_known(args, gate.cache, new, "cache: ")
    decision = gate.check(new)
    if args.save_manifest:
        if os.path.isdir(args.reference):
            _note(args, f"saved the reference manifest to {gate.save(args.save_manifest)}")
        else:
            _note(args, "vdc: note: --save-manifest ignored: --reference is already a manifest")
    paragraph_stream = sys.stdout
    if args.json == "-":
        sys.stdout.write(decision.to_json() + "\n")
        paragraph_stream = sys.stderr
    elif args.json:
        _ensure_parent(args.json)
        decision.to_json(args.json)
        _note(args, f"wrote {args.json}")
    if args.report:
        _note(args, f"wrote {report.write_html(decision, args.report)}")
    if args.csv:
        written = report.write_csv(decision, args.csv)
        _note(args, f"wrote {', '.join(str(p) for p in written.values())}")
    print(decision_paragraph(decision), file=paragraph_stream)
    return EXIT_TRAIN if str(decision.action) == "train" else args.skip_exit_code


def cmd_update(args: argparse.Namespace) -> int:
    from vdc_torch.faces.hooks import commit_training, pretrain_gate

    decision = pretrain_gate(args.dir, args.manifest, workers=args.workers, progress=_progress(args))
    added = commit_training(decision, args.manifest, force=True, workers=args.workers, progress=_progress(args))
    print(f"added {added} novel sample(s) of {args.dir} to {args.manifest} "
          f"({decision.counts.get('readable', 0) - added} were already in it or duplicates)")
    return EXIT_TRAIN


def _ensure_parent(path: str) -> None:
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)


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


# -- dedup ---------------------------------------------------------------------------------------------------


def cmd_dedup(args: argparse.Namespace) -> int:
    from vdc_torch.decision.dedup import find_duplicates
    from vdc_torch.decision.gate import Policy
    from vdc_torch.faces import report

    if args.json == "-" and args.list_removable:
        print("vdc: error: dedup: --json - and --list-removable both write to standard output; choose one "
              "(see 'vdc dedup --help')", file=sys.stderr)
        return EXIT_USAGE
    defaults = Policy()
    share = defaults.max_problem_share if args.max_problem_share is None else args.max_problem_share
    policy = Policy(count_similar=bool(args.count_similar), max_problem_share=share)
    found = find_duplicates(args.dir, keep=args.keep, policy=policy, workers=args.workers,
                            progress=_progress(args), cache=args.cache)
    paragraph_stream = sys.stdout
    if args.json == "-":
        sys.stdout.write(found.to_json() + "\n")
        paragraph_stream = sys.stderr
    elif args.json:
        _ensure_parent(args.json)
        found.to_json(args.json)
        _note(args, f"wrote {args.json}")
    if args.report:
        _note(args, f"wrote {report.write_duplicates_html(found, args.report)}")
    if args.csv:
        written = report.write_duplicates_csv(found, args.csv)
        _note(args, f"wrote {', '.join(str(p) for p in written.values())}")
    if args.list_removable:
        for path in found.removable_paths:
            sys.stdout.write(path + "\n")
        paragraph_stream = sys.stderr
    print(found.summary(), file=paragraph_stream)
    return args.duplicates_exit_code if found.counts.get("removable") else EXIT_TRAIN


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
        header = handle.read(16)
    if header == b"SQLite format 3\x00":
        return _describe_manifest(path)
    return _describe_image(path)


def _describe_manifest(path: str) -> dict[str, Any]:
    from collections import Counter

    from vdc_torch.decision.store.manifest import load_manifest

    table, meta = load_manifest(path)
    labels = Counter(label for label in table.labels if label is not None)
    info: dict[str, Any] = {"kind": "manifest", "path": path}
    for key in ("format", "format_version", "fingerprint_version", "samples", "saved_at", "reference_root"):
        if key in meta:
            info[key] = meta[key]
    info.update({k: v for k, v in sorted(meta.items()) if k not in info})
    info["file_size"] = os.path.getsize(path)
    info["classes"] = dict(sorted(labels.items())) if labels else {}
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


# -- entry point ---------------------------------------------------------------------------------------------

_COMMANDS = {"index": cmd_index, "gate": cmd_gate, "update": cmd_update, "compare": cmd_compare, "dedup": cmd_dedup,
             "info": cmd_info}


def _quiet_faiss(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith("faiss")


def _configure_logging(args: argparse.Namespace) -> tuple[list[logging.Handler], int]:
    """Point the root logger at stderr for this command; returns what to restore afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.INFO
    if getattr(args, "debug", False):
        level = logging.DEBUG
    if getattr(args, "quiet", False) and not getattr(args, "debug", False):
        level = logging.ERROR
    logging.basicConfig(level=level, format="vdc: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    if level > logging.DEBUG:  # faiss logs which CPU builds it failed to load, with tracebacks, at INFO
        for handler in root.handlers:
            handler.addFilter(_quiet_faiss)
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vdc`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    >>> main(["gate", "--reference", "ref.vdc", "--new", "drop/", "--quiet"])   # doctest: +SKIP
    99
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    saved_handlers, saved_level = _configure_logging(args)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("vdc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        from vdc_torch.errors import VdcError

        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, (VdcError, OSError, ValueError)) and text:
            message = text
        else:  # a bug, not a user error: say what it was and how to see more
            message = f"unexpected {type(exc).__name__}: {text} (run again with --debug for the traceback)"
        print(f"vdc: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    finally:  # main() may run inside another program (tests, notebooks): leave its logging as it was
        root = logging.getLogger()
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
