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
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `vdc --help` and usage errors must not wait for numpy, pandas or torch
    pass

from vdc_torch.faces.cli_args import (  # noqa: F401 - the exit codes and the parser are part of this module's API
    DEDUP_EXIT_CODES_HELP,
    EXIT_BROKEN_PIPE,
    EXIT_CODES_HELP,
    EXIT_DUPLICATES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_SKIP,
    EXIT_TRAIN,
    EXIT_USAGE,
    _ensure_parent,
    _note,
    _progress,
    build_parser,
)
from vdc_torch.faces.cli_inspect import cmd_compare, cmd_info, compare_folders, describe  # noqa: F401

log = logging.getLogger(__name__)

# -- commands ------------------------------------------------------------------------------------------------


def _policy(args: argparse.Namespace) -> Any:
    from vdc_torch.decision.gate import Policy

    defaults = Policy()
    return Policy(
        skip_overlap=defaults.skip_overlap if args.skip_overlap is None else args.skip_overlap,
        min_delta_to_train=defaults.min_delta_to_train if args.min_delta is None else args.min_delta,
        count_similar=bool(args.count_similar),
        exclude_low_quality=bool(getattr(args, "exclude_low_quality", False)),
        max_problem_share=(defaults.max_problem_share if getattr(args, "max_problem_share", None) is None
                           else args.max_problem_share),
    )


def _problem_policy(args: argparse.Namespace) -> Any:
    """The default policy with ``--max-problem-share`` (``vdc index`` and ``vdc update`` decide nothing else)."""
    from vdc_torch.decision.gate import Policy

    return Policy() if args.max_problem_share is None else Policy(max_problem_share=args.max_problem_share)


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
    gate = DatasetGate(reference=dataset, workers=args.workers, progress=_progress(args), cache=partial,
                       policy=_problem_policy(args))
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
    from vdc_torch.errors import DatasetNotFoundError, InvalidParameterError

    kwargs = {"policy": policy, "workers": args.workers, "progress": _progress(args)}
    encoder_settings = {name: getattr(args, name, None) for name in ("encoder_precision", "encoder_similarity")}
    encoder_settings = {name: value for name, value in encoder_settings.items() if value is not None}
    if encoder_settings and not getattr(args, "encoder", None):
        given = ", ".join("--" + name.replace("_", "-") for name in encoder_settings)
        raise InvalidParameterError(f"{given} needs --encoder (they set its threshold)")
    if getattr(args, "encoder", None):
        from vdc_torch.search.config import MatchConfig

        kwargs["encoder"] = load_encoder(args.encoder)
        kwargs["config"] = MatchConfig(**encoder_settings)
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
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # the `vdc` script does not look in the working directory, `python -m vdc_torch` does: so do the same
            if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path or "" in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
        target = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidParameterError(f"--encoder={spec!r} cannot be imported: {exc} (looked in the working "
                                    "directory and on PYTHONPATH)") from exc
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
    if c.get("low_quality"):
        left_out = "left out" if decision.policy.exclude_low_quality else "kept; --exclude-low-quality leaves them out"
        parts.append(f"Low quality: {c['low_quality']} novel sample(s) flagged ({left_out}).")
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
    paragraph_stream = _write_outputs(args, decision, report.write_html, report.write_csv)
    if args.plan:
        _ensure_parent(args.plan)
        plan = decision.plan(replay=args.replay, seed=args.seed)
        with open(args.plan, "w", encoding="utf-8") as out:
            json.dump(plan, out, indent=2)
        _note(args, f"wrote {args.plan} ({len(plan['delta'])} delta and {len(plan['replay'])} replay files)")
    print(decision_paragraph(decision), file=paragraph_stream)
    return EXIT_TRAIN if str(decision.action) == "train" else args.skip_exit_code


def _write_outputs(args: argparse.Namespace, result: Any, write_html: Any, write_csv: Any) -> Any:
    """``--json`` / ``--report`` / ``--csv`` of a decision or a dedup result; returns where its paragraph goes
    (standard error when the JSON took standard output)."""
    paragraph_stream = sys.stdout
    if args.json == "-":
        sys.stdout.write(result.to_json() + "\n")
        paragraph_stream = sys.stderr
    elif args.json:
        _ensure_parent(args.json)
        result.to_json(args.json)
        _note(args, f"wrote {args.json}")
    if args.report:
        _note(args, f"wrote {write_html(result, args.report)}")
    if args.csv:
        written = write_csv(result, args.csv)
        _note(args, f"wrote {', '.join(str(p) for p in written.values())}")
    return paragraph_stream


def cmd_update(args: argparse.Namespace) -> int:
    from vdc_torch.decision.gate import DatasetGate
    from vdc_torch.decision.store.manifest import is_index_file
    from vdc_torch.faces.hooks import commit_training, pretrain_gate

    if args.sharded and os.path.exists(args.manifest) and not is_index_file(args.manifest):
        DatasetGate.load(args.manifest, workers=args.workers).save(args.manifest, sharded=True)  # converts once
        _note(args, f"converted {args.manifest} to a sharded manifest ({args.manifest}.shards/)")
    created = not os.path.exists(args.manifest)
    decision = pretrain_gate(args.dir, args.manifest, workers=args.workers, progress=_progress(args),
                             policy=_problem_policy(args))
    added = commit_training(decision, args.manifest, force=True, workers=args.workers, progress=_progress(args))
    if args.sharded and created and os.path.exists(args.manifest) and not is_index_file(args.manifest):
        DatasetGate.load(args.manifest, workers=args.workers).save(args.manifest, sharded=True)
    print(f"added {added} novel sample(s) of {args.dir} to {args.manifest} "
          f"({decision.counts.get('readable', 0) - added} were already in it or duplicates)")
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
    paragraph_stream = _write_outputs(args, found, report.write_duplicates_html, report.write_duplicates_csv)
    if args.list_removable:
        for path in found.removable_paths:
            sys.stdout.write(path + "\n")
        paragraph_stream = sys.stderr
    print(found.summary(), file=paragraph_stream)
    return args.duplicates_exit_code if found.counts.get("removable") else EXIT_TRAIN


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
    except BrokenPipeError:  # `vdc ... | head` stopped reading: nothing to report, as for any Unix tool
        with contextlib.suppress(OSError):  # and no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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
