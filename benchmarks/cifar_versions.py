"""CIFAR-10 end to end with two versions of the package, interleaved in one run: what a change costs a cold check.

    git worktree add /tmp/vdc-before <rev>
    python benchmarks/cifar_versions.py --before /tmp/vdc-before [--rounds 4] [--loaded]

Each run is a fresh process doing ``DatasetGate(reference=train 50k, workers=2).check(test 10k)`` from nothing
(no cache; the page cache is warm after the first run), alternating ``--before`` and this checkout and swapping
which goes first every round. ``--loaded`` measures the flow of a saved reference instead: the train manifest is
written once by this checkout (kept beside the CIFAR-10 folder, named by the commit) and each run does
``DatasetGate.load(manifest, workers=2).check(test 10k)``, the reference's thumbnails and details read from the
file on demand. Printed and written to ``benchmarks/results/cifar_end_to_end.md``: each side's median wall time,
their ratio, and the test images each counts as seen (exact or near duplicate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common_timing import REPO_ROOT, load_line, md_table
from datasets import cifar10_root, write_results_section

RUN = r"""
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from vdc_torch import DatasetGate
started = time.perf_counter()
decision = DatasetGate(reference=sys.argv[2], workers=2).check(sys.argv[3])
seconds = time.perf_counter() - started
found = decision.matches[decision.matches["kind"].isin(["exact", "near_duplicate"])]
print(json.dumps({"seconds": seconds, "seen": int(found["new_path"].nunique())}))
"""
RUN_LOADED = RUN.replace("DatasetGate(reference=sys.argv[2], workers=2)", "DatasetGate.load(sys.argv[2], workers=2)")
SAVE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from vdc_torch import DatasetGate
DatasetGate(reference=sys.argv[2], workers=2).save(sys.argv[3])
"""


def commit_of(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or str(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a source tree of the package (git worktree)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--loaded", action="store_true", help="check against the train manifest loaded from a file")
    args = parser.parse_args()
    root = cifar10_root()
    reference, run = str(root / "train"), RUN
    if args.loaded:
        # written by this checkout, named by its commit: another checkout or fingerprint version writes its own
        reference, run = str(root.parent / f"cifar10-train-{commit_of(REPO_ROOT)}.vdc"), RUN_LOADED
        if not Path(reference).exists():
            subprocess.run([sys.executable, "-c", SAVE, str(REPO_ROOT), str(root / "train"), reference], check=True,
                           cwd="/")
    sides = {f"before ({commit_of(args.before)})": args.before.resolve(),
             f"this checkout ({commit_of(REPO_ROOT)})": REPO_ROOT.resolve()}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    load_before = load_line()
    for r in range(args.rounds):
        order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
        for name, tree in order:
            out = subprocess.run([sys.executable, "-c", run, str(tree), reference, str(root / "test")],
                                 capture_output=True, text=True, cwd="/")
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(lines[-1]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
    medians = {name: statistics.median(run["seconds"] for run in found) for name, found in runs.items()}
    before, after = medians.values()
    rows = [[name, f"{medians[name]:.1f}", ", ".join(f"{run['seconds']:.1f}" for run in runs[name]),
             ", ".join(sorted({str(run["seen"]) for run in runs[name]}))] for name in sides]
    call = "DatasetGate.load(train 50k manifest, workers=2)" if args.loaded else \
        "DatasetGate(reference=train 50k, workers=2)"
    body = (f"`{call}.check(test 10k)`, cold, {args.rounds} interleaved rounds "
            f"of fresh processes; {load_before} → {load_line()}.\n\n"
            + md_table(["package", "median s", "runs (s)", "test images seen"], rows)
            + f"\n\nThis checkout / before: **{after / before:.2f}×** wall time.\n")
    print(body)
    title = "Two versions, one run, the reference loaded from a manifest" if args.loaded else "Two versions, one run"
    write_results_section("cifar_end_to_end", title, body)


if __name__ == "__main__":
    main()
