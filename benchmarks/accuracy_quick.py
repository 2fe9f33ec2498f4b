"""The default cascade only, over many accuracy suites at once: the fast loop for tuning (13 seeds in ~70 s).

Suites are built once into ``--suites`` (``accuracy_suite.build_suite``) and reused. Prints overall precision and
recall, recall per transform class, and every miss and false match with the cascade's evidence. Writes nothing
to benchmarks/results/ (``--json`` writes the counts where asked): the recorded figures come from ``accuracy.py``,
which also runs every single method and imagededup::

    python benchmarks/accuracy_quick.py --seeds 1-13
    python benchmarks/accuracy_quick.py --seeds 11,12 --set crop_radius=10 --set use_alignment=False
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import time
from pathlib import Path

import cv2
from accuracy import POSITIVE_KINDS
from accuracy_suite import build_suite


def seeds_arg(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=seeds_arg, default=seeds_arg("1-3"), help="e.g. 1-13 or 1,2,11")
    ap.add_argument("--suites", type=Path, default=Path("/tmp/vdc-accuracy-suites"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a MatchConfig override")
    ap.add_argument("--json", type=Path, help="also write the counts per class, the misses and false matches here")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # the cascade forks verification workers
    from vdc_torch import DatasetGate
    from vdc_torch.search.cascade import MatchConfig

    fields = {f.name: f.type for f in dataclasses.fields(MatchConfig)}
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            ap.error(f"{name!r} is not a MatchConfig field")
        overrides[name] = json.loads(value.lower() if value in ("True", "False") else value)
    config = MatchConfig(**overrides)
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lines = []
    started = time.perf_counter()
    for seed in args.seeds:
        root = args.suites / f"s{seed}"
        if not (root / "truth.json").exists():
            build_suite(root, seed, log=lambda _: None)
        truth = json.loads((root / "truth.json").read_text())["truth"]
        m = DatasetGate(reference=root / "ref", config=config).check(root / "new").matches
        pred = {os.path.basename(n): (os.path.basename(r), k, e)
                for n, r, k, e in zip(m["new_path"], m["ref_path"], m["kind"], m["evidence"])}
        for t in truth:
            got = pred.get(t["new"])
            positive = got is not None and got[1] in POSITIVE_KINDS
            c = per[t["class"]]
            c["n"] += 1
            if t["ref"] is not None and positive and got[0] == t["ref"]:
                c["tp"] += 1
                continue
            if t["ref"] is not None:
                c["fn"] += 1
                lines.append(f"MISS seed {seed} {t['new']} {t['class']} {t.get('params')} -> {got}")
            if positive:
                c["fp"] += 1
                lines.append(f"FALSE seed {seed} {t['new']} {t['class']} -> {got}")
    tp, fp, fn = (sum(c[k] for c in per.values()) for k in ("tp", "fp", "fn"))
    print(f"seeds {args.seeds} {overrides or 'default'}: precision {tp / max(1, tp + fp):.4f} "
          f"recall {tp / max(1, tp + fn):.4f} (tp {tp}, fp {fp}, fn {fn}) in {time.perf_counter() - started:.0f} s")
    print(" ".join(f"{k}:{c['tp'] / max(1, c['tp'] + c['fn']):.2f}" for k, c in sorted(per.items())
                   if not k.startswith("distractor")))
    print("\n".join(lines))
    if args.json:
        import sys

        cascade = sys.modules[MatchConfig.__module__]
        args.json.write_text(json.dumps({
            "seeds": args.seeds, "overrides": overrides, "matching_version": cascade.MATCHING_VERSION,
            "package": str(Path(cascade.__file__).parent), "seconds": time.perf_counter() - started,
            "tp": tp, "fp": fp, "fn": fn, "per_class": {k: dict(c) for k, c in sorted(per.items())}, "lines": lines,
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
