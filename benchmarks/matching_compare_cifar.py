"""Matching cost of two versions of the package on the same CIFAR-10 fingerprints, interleaved in one run.

    python benchmarks/matching_compare_cifar.py --before /tmp/acc-before [--rounds 2] [--work /tmp/vdc-match-cmp]

Fingerprints CIFAR-10 train (50,000, reference) and test (10,000, new) once with this checkout's package and saves
them as manifests, then times what ``DatasetGate.check`` does after fingerprinting (``match_tables`` new x ref and
new x new with one ``FeatureCaches``, default ``MatchConfig``) in a fresh child process per run, alternating
``--before`` (a source tree of the package, e.g. ``git worktree add /tmp/acc-before <rev>``) and this checkout.
Only matching differs between the two sides, so the ratio of their medians is the cost of the matching change;
the machine's load is printed with every run, since it moves both sides alike, and CPU seconds (user + system of
the child, all its threads) are reported beside wall seconds, being less sensitive to other jobs on the cores. Prints one JSON line per run
(seconds per call, peak RSS, matches by kind and method) and a summary; writes ``--out`` (JSON) if given.
Fingerprints are computed by this checkout's code: the two sides must share the manifest format.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datasets import REPO_ROOT, cifar10_root

CHILD = r"""
import json, resource, sys, time
from collections import Counter
try:  # the layout since 0.2, else the one before (the --before tree may predate it)
    import vdc_torch.search.cascade as m
    from vdc_torch.decision.store.manifest import load_manifest
except ImportError:
    import vdc_torch.matching as m
    from vdc_torch.manifest import load_manifest
ref, _ = load_manifest(sys.argv[1] + "/ref.vdc")
new, _ = load_manifest(sys.argv[1] + "/new.vdc")
config, caches = m.MatchConfig(), m.FeatureCaches()
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
c0, t0 = cpu(), time.perf_counter()
cross = m.match_tables(new, ref, config, feature_caches=caches)
c1, t1 = cpu(), time.perf_counter()
internal = m.match_tables(new, new, config, same_table=True, feature_caches=caches)
c2, t2 = cpu(), time.perf_counter()
def kinds(f):
    return dict(Counter(f"{k}/{me}" for k, me in zip(f["kind"], f["method"])))
print(json.dumps({"package": m.__file__, "matching_version": m.MATCHING_VERSION, "cross_s": t1 - t0,
                  "internal_s": t2 - t1, "total_s": t2 - t0,
                  "cross_cpu_s": c1 - c0, "internal_cpu_s": c2 - c1, "total_cpu_s": c2 - c0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cross": kinds(cross), "internal": kinds(internal),
                  "counted": int(cross["kind"].isin(["exact", "near_duplicate"]).sum())}))
"""


def load() -> str:
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def prepare(work: Path) -> None:
    if (work / "new.vdc").exists():
        return
    from vdc_torch.decision.gate import as_dataset
    from vdc_torch.decision.store.manifest import save_manifest
    from vdc_torch.fingerprints.compute import compute_fingerprints

    work.mkdir(parents=True, exist_ok=True)
    root = cifar10_root()
    for split, name in (("train", "ref.vdc"), ("test", "new.vdc")):
        t0 = time.perf_counter()
        table, _ = compute_fingerprints(as_dataset(root / split), workers=2)
        save_manifest(work / name, table, {})
        print(f"fingerprinted {split}: {len(table)} rows in {time.perf_counter() - t0:.1f} s", flush=True)


def run(tree: Path, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, str(work)], env=env, cwd="/", capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{tree}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="source tree of the earlier package")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vdc-match-cmp"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    prepare(args.work)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for side, tree in (("before", args.before), ("after", REPO_ROOT)):
            start = load()
            r = run(tree, args.work)
            r.update(side=side, round=i + 1, load_start=start, load_end=load())
            runs[side].append(r)
            print(json.dumps(r), flush=True)
    for what in ("total_s", "total_cpu_s"):
        med = {s: statistics.median(r[what] for r in rs) for s, rs in runs.items()}
        print(f"median match_tables (cross + internal) {what}: before {med['before']:.1f} s, after "
              f"{med['after']:.1f} s, ratio {med['after'] / med['before']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
