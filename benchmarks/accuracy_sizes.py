"""How the default cascade's accuracy depends on image size: the accuracy suites, shrunk to a maximum side.

Builds the suites of ``accuracy_suite.py`` for the given seeds, writes copies of every reference and new file
shrunk (Lanczos) to at most 32, 64, 128 and 512 px on the long side (EXIF kept, JPEG quality 90), runs
``DatasetGate`` with default settings on each, and prints and records precision, recall and per-class recall::

    python benchmarks/accuracy_sizes.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
from accuracy import POSITIVE_KINDS, score
from accuracy_suite import COPY_CLASSES, build_suite
from datasets import write_results_section
from PIL import Image

SIDES = (32, 64, 128, 512)


def shrink_folder(src: Path, dst: Path, side: int) -> None:
    """Every image of ``src`` at most ``side`` px on its long side, same name and format, EXIF kept."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        with Image.open(path) as im:
            exif = im.info.get("exif")
            im = im.convert("RGB")
            w, h = im.size
            scale = side / max(w, h)
            if scale < 1:
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
            options: dict = {"exif": exif} if exif and path.suffix.lower() in (".jpg", ".jpeg") else {}
            if path.suffix.lower() in (".jpg", ".jpeg", ".webp"):
                options["quality"] = 90
            im.save(dst / path.name, **options)


def run(folder: Path, truth: list[dict]) -> dict:
    from vdc_torch import DatasetGate

    decision = DatasetGate(reference=str(folder / "ref")).check(str(folder / "new"))
    m = decision.matches
    pred = {os.path.basename(n): os.path.basename(r) for n, r, k in zip(m["new_path"], m["ref_path"], m["kind"])
            if k in POSITIVE_KINDS}
    return score(pred, truth)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--no-benchmarks-md", action="store_true")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    totals: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vdc-accuracy-sizes-") as tmp:
        for seed in args.seeds:
            suite = build_suite(Path(tmp) / f"s{seed}", seed, log=lambda _: None)
            for side in (*SIDES, None):
                folder = suite.root if side is None else Path(tmp) / f"s{seed}-{side}"
                if side is not None:
                    shrink_folder(suite.ref_dir, folder / "ref", side)
                    shrink_folder(suite.new_dir, folder / "new", side)
                result = run(folder, suite.truth)
                agg = totals.setdefault(side or 0, {"classes": {}, "tp": 0, "fp": 0, "fn": 0})
                for key in ("tp", "fp", "fn"):
                    agg[key] += result["overall"][key]
                for cls, c in result["classes"].items():
                    a = agg["classes"].setdefault(cls, {"tp": 0, "fn": 0, "fp": 0, "n": 0})
                    for key in ("tp", "fn", "fp", "n"):
                        a[key] += c[key]
                print(f"seed {seed} side {side or 'as built (≤ 2000)'}: {json.dumps(result['overall'])}", flush=True)
    lines = [
        f"Seeds {', '.join(map(str, args.seeds))} of the accuracy suite; every file shrunk to the maximum side "
        "below (Lanczos, EXIF kept, JPEG/WebP quality 90), default `DatasetGate`. Recall per transform class, "
        "then overall; false positives are summed over all distractors.",
        "",
        "| max side | precision | recall | FP | " + " | ".join(COPY_CLASSES) + " |",
        "|---|---|---|---|" + "---|" * len(COPY_CLASSES),
    ]
    for side in (*SIDES, 0):
        agg = totals[side]
        p = agg["tp"] / max(1, agg["tp"] + agg["fp"])
        r = agg["tp"] / max(1, agg["tp"] + agg["fn"])
        cells = []
        for cls in COPY_CLASSES:
            c = agg["classes"].get(cls)
            cells.append(f"{c['tp'] / max(1, c['tp'] + c['fn']):.2f}" if c else "–")
        label = f"{side} px" if side else "as built (≤ 2000 px)"
        lines.append(f"| {label} | {p:.3f} | {r:.3f} | {agg['fp']} | " + " | ".join(cells) + " |")
    lines += ["", f"Run time {time.perf_counter() - started:.0f} s. Command: `python benchmarks/accuracy_sizes.py "
              f"--seeds {' '.join(map(str, args.seeds))}`."]
    body = "\n".join(lines)
    print(body)
    if not args.no_benchmarks_md:
        write_results_section("accuracy_sizes", "Accuracy by image size", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
