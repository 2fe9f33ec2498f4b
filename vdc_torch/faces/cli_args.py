"""The ``vdc`` command line's words: exit codes, the argument parser (one function per sub-command), argument
types and the small helpers every command uses. Imports nothing heavy: ``vdc --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported where used: `vdc --help` and usage errors must not wait for numpy, pandas or torch
    pass

log = logging.getLogger(__name__)


EXIT_TRAIN = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DUPLICATES = 3
EXIT_SKIP = 99
EXIT_INTERRUPTED = 130
#: The reader of the output went away (``vdc ... | head``): 128 + SIGPIPE, as a Unix tool killed by it.
EXIT_BROKEN_PIPE = 141

EXIT_CODES_HELP = f"""\
exit codes of `vdc gate`:
  {EXIT_TRAIN:<3} train: the new data holds enough novel samples (or a label conflict); train on the delta
  {EXIT_SKIP:<3} skip: the model has already seen (almost) all of it; --skip-exit-code changes this value.
      99 is what Airflow's BashOperator treats as "skipped" by default.
  {EXIT_ERROR:<3} error: no decision could be made (missing folder, unreadable manifest, ...)
  {EXIT_USAGE:<3} usage error: bad command line
`vdc dedup` exits {EXIT_TRAIN} = no duplicates, {EXIT_DUPLICATES} = duplicates found (see 'vdc dedup --help').
other commands exit {EXIT_TRAIN} on success, {EXIT_ERROR} on error and {EXIT_USAGE} on a bad command line.
any command exits {EXIT_INTERRUPTED} when interrupted (Ctrl-C), {EXIT_BROKEN_PIPE} when the reader of its output stops
early (`| head`).

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


def _number(text: str, expected: str) -> float:
    """``text`` as a float; an argparse error saying it is not ``expected`` otherwise."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None


def _fraction(text: str) -> float:
    value = _number(text, "a number between 0 and 1")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not between 0 and 1")
    return value


def _open_fraction(text: str) -> float:
    value = _fraction(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not strictly between 0 and 1")
    return value


def _cosine(text: str) -> float:
    value = _number(text, "a cosine between -1 and 1")
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a cosine between -1 and 1")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
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

    _add_index(sub, common, workers)
    _add_gate(sub, common, workers)
    _add_update(sub, common, workers)
    _add_compare(sub, common, workers)
    _add_dedup(sub, common, workers)
    _add_info(sub, common, workers)
    return parser


def _add_index(sub: Any, common: argparse.ArgumentParser, workers: argparse.ArgumentParser) -> None:
    """The ``vdc index`` sub-command."""
    p = sub.add_parser("index", parents=[common, workers], help="fingerprint a reference folder into a manifest",
                       description=_wrap("Fingerprint the images of DIR (the data a model was trained on) and save them "
                                   "as a manifest file that `vdc gate --reference` reads without the images."),
                       epilog="example: vdc index data/train_v1 -o ckpt/reference.vdc",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="image folder (class sub-folders become labels, as in ImageFolder)")
    p.add_argument("-o", "--output", required=True, metavar="MANIFEST", help="manifest file to write")
    p.add_argument("--max-problem-share", type=_fraction, default=None, metavar="X",
                   help="index although up to this fraction of the images cannot be read (default 0.05)")


def _add_gate(sub: Any, common: argparse.ArgumentParser, workers: argparse.ArgumentParser) -> None:
    """The ``vdc gate`` sub-command."""
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
    p.add_argument("--plan", metavar="OUT.json",
                   help="write the training plan: the delta's files and a class-balanced replay sample of the "
                        "reference's files (against forgetting), as JSON file lists")
    p.add_argument("--replay", type=_non_negative_float, default=0.2, metavar="X",
                   help="replay X × the delta's size reference samples in the plan (default 0.2; 0 = none)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the plan's replay sample (default 0)")
    p.add_argument("--exclude-low-quality", action="store_true",
                   help="leave blank, too dark or bright, blurry, tiny and strip-shaped novel images out of the "
                        "delta (they are reported either way)")
    p.add_argument("--skip-overlap", type=_fraction, default=None, metavar="X",
                   help="skip only when at least this fraction of the new samples was already trained on "
                        "(default 0.95)")
    p.add_argument("--min-delta", type=_non_negative, default=None, metavar="N",
                   help="train whenever at least N novel samples remain (default 64)")
    p.add_argument("--count-similar", action="store_true",
                   help="let 'similar' matches count as already trained on")
    p.add_argument("--max-problem-share", type=_fraction, default=None, metavar="X",
                   help="decide although up to this fraction of the samples cannot be read (default 0.05)")
    p.add_argument("--skip-exit-code", type=_exit_code, default=EXIT_SKIP, metavar="CODE",
                   help=f"exit code for 'skip' (default {EXIT_SKIP})")
    p.add_argument("--encoder", metavar="MODULE:NAME",
                   help="add model features as a method: NAME in MODULE is a torch module mapping an image batch "
                        "to embeddings, or a function returning one (e.g. mypkg.models:gate_encoder)")
    p.add_argument("--encoder-precision", type=_open_fraction, default=None, metavar="X",
                   help="with --encoder: the precision its cosine threshold is derived from the reference at "
                        "(default 0.99; the decision's JSON gives the cosine and its estimates under 'encoder')")
    p.add_argument("--encoder-similarity", type=_cosine, default=None, metavar="COS",
                   help="with --encoder: count model embeddings at this cosine instead of deriving it")
    p.add_argument("--cache", metavar="FILE",
                   help="fingerprint cache file: unchanged files are not decoded again on the next run")


def _add_update(sub: Any, common: argparse.ArgumentParser, workers: argparse.ArgumentParser) -> None:
    """The ``vdc update`` sub-command."""
    p = sub.add_parser("update", parents=[common, workers],
                       help="after training on DIR, add its novel samples to the manifest",
                       description=_wrap("After a model was trained on DIR, add the samples of DIR that the manifest "
                                   "does not hold yet (the delta `vdc gate` reported) to MANIFEST, in place."),
                       epilog="example: vdc update ckpt/reference.vdc data/drop_07",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", metavar="MANIFEST", help="the manifest to grow (created when absent); a sharded "
                   "manifest grows by one shard of the added samples")
    p.add_argument("dir", metavar="DIR", help="the folder the model was trained on")
    p.add_argument("--max-problem-share", type=_fraction, default=None, metavar="X",
                   help="add the readable samples although up to this fraction of DIR cannot be read (default "
                        "0.05)")
    p.add_argument("--sharded", action="store_true",
                   help="make MANIFEST a sharded manifest (converting a single file once), so this and later "
                        "updates write only the added samples")


def _add_compare(sub: Any, common: argparse.ArgumentParser, workers: argparse.ArgumentParser) -> None:
    """The ``vdc compare`` sub-command."""
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


def _add_dedup(sub: Any, common: argparse.ArgumentParser, workers: argparse.ArgumentParser) -> None:
    """The ``vdc dedup`` sub-command."""
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


def _add_info(sub: Any, common: argparse.ArgumentParser, workers: argparse.ArgumentParser) -> None:
    """The ``vdc info`` sub-command."""
    p = sub.add_parser("info", parents=[common], help="describe a manifest, an image folder or an image",
                       description=_wrap("Describe PATH: a manifest (format version, samples, saved_at, roots), an image "
                                   "folder (image count, classes) or one image (size, format, EXIF identity)."),
                       epilog="example: vdc info ckpt/reference.vdc",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _note(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _ensure_parent(path: str) -> None:
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
