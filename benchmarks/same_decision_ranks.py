"""CIFAR-10 decided by 1, 2 and 4 gloo ranks, the reference and the drop split across them: the same decision JSON?

Run::

    PYTHONPATH=. python benchmarks/same_decision_ranks.py                 # train 50k x test 10k, W = 1, 2, 4
    PYTHONPATH=. python benchmarks/same_decision_ranks.py --per-class 500 --ranks 1,2 --no-write

Each W runs ``DatasetGate(reference=train, workers=0).check(test)`` under ``torchrun --nproc_per_node=W`` (W = 1
without a process group), with the default MatchConfig (every stage, local features included): each rank
fingerprints its share of both sets, keeps its share of the reference, and matches the drop in chunks against it
(``vdc_torch/search/split_drop.py``). Every rank writes its decision's JSON; the benchmark compares their SHA-256
with W = 1's and reports the time of the check and the counts. ``--per-class N`` uses the first N training and
N/5 test images of each class (copied into a temporary folder) instead of all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common_timing import md_table  # noqa: E402


def worker(reference: str, new: str, out: str) -> None:
    from vdc_torch import DatasetGate
    from vdc_torch.collective import rank_and_world

    if "RANK" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    rank, _ = rank_and_world()
    started = time.perf_counter()
    decision = DatasetGate(reference=reference, workers=0).check(new)
    seconds = time.perf_counter() - started
    text = decision.to_json()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "sha256": hashlib.sha256(text.encode()).hexdigest(), "seconds": seconds,
        "counts": json.loads(text)["counts"]}))


def subset(root: Path, per_class: int, target: Path) -> tuple[Path, Path]:
    """The first ``per_class`` training and ``per_class // 5`` test images of each class, hard-linked or copied."""
    for split, n in (("train", per_class), ("test", max(1, per_class // 5))):
        for folder in sorted((root / split).iterdir()):
            (target / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                shutil.copyfile(f, target / split / folder.name / f.name)
    return target / "train", target / "test"


def run(world: int, reference: Path, new: Path) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="vdc-ranks-") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        args = [__file__, "--worker", str(reference), str(new), out]
        command = [sys.executable, *args] if world == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"W={world} failed:\n{done.stderr[-4000:]}")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--per-class", type=int, default=0, help="images per class of train (0: all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from datasets import cifar10_root, write_results_section

    root = cifar10_root()
    with tempfile.TemporaryDirectory(prefix="vdc-cifar-subset-") as work:
        reference, new = (subset(root, args.per_class, Path(work)) if args.per_class
                          else (root / "train", root / "test"))
        runs = {}
        for world in (int(w) for w in args.ranks.split(",")):
            runs[world] = run(world, reference, new)
            print(f"W={world}: {max(r['seconds'] for r in runs[world]):.1f} s, sha {runs[world][0]['sha256'][:12]}, "
                  f"{runs[world][0]['counts']}", flush=True)
    base = runs[min(runs)][0]["sha256"]
    rows = [[str(w), f"{max(r['seconds'] for r in rs):.1f} s", rs[0]["sha256"][:16] + "…",
             "yes" if all(r["sha256"] == base for r in rs) else "**NO**"] for w, rs in runs.items()]
    counts = runs[min(runs)][0]["counts"]
    what = f"{args.per_class} training images per class" if args.per_class else "all 60,000 images"
    body = (f"`PYTHONPATH=. python benchmarks/same_decision_ranks.py --ranks {args.ranks}"
            f"{f' --per-class {args.per_class}' if args.per_class else ''}`: CIFAR-10 ({what}), "
            "`DatasetGate(reference=train, workers=0).check(test)` with the default MatchConfig under W gloo ranks on "
            "this machine's 2 cores (the reference and the drop split across them). Counts of W=1: "
            f"{counts}.\n\n"
            + md_table(["ranks W", "check (slowest rank)", "decision JSON SHA-256", "same as W=1 on every rank"],
                       rows))
    print(body)
    if not args.no_write:
        print(write_results_section("scale_ranks", "CIFAR-10 decided across ranks", body))


if __name__ == "__main__":
    main()
