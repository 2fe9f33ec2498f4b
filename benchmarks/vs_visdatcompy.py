"""vdc_torch's visdatcompy API against visdatcompy itself, on the same CIFAR-10 images, in one run.

Data (built under a temporary folder from the shared CIFAR-10 archive, the archive untouched):

* ``ds1`` — 100 CIFAR-10 test images (32×32 JPEG);
* ``ds2`` — 100 images: 10 exact copies of ds1 images *under the same name*, 10 exact copies renamed, 10 copies
  upsized 2× (64×64 PNG, renamed) and 70 other CIFAR-10 images. The 30 planted (ds1, ds2) pairs are the truth.

Timed calls (each on a fresh object, so decoding and hashing/extraction are included; visdatcompy's are timed
inside its own process around the same calls, see ``baselines.visdatcompy_run``):

* ``Metrics(ds1, ds2).mse()`` and ``.ssim()`` — visdatcompy's SSIM takes ~14 min at 100×100, so it is measured on
  a 20×20 subset and extrapolated quadratically (×25); ours is measured at both sizes;
* ``FeatureExtractor(ds1, ds2, "sift").find_similars()``;
* ``Hash(ds1, ds2).find_similars("p")``.

Results are compared on the planted pairs (correct pairs found / wrong pairs reported) and, for the metrics, value
against value on the same pairs (Spearman rank correlation: the two libraries normalise differently, so the values
differ in scale but should order pairs alike).

Usage: ``python benchmarks/vs_visdatcompy.py [--n 100] [--ssim-n 20] [--repeats 3] [--no-write]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from baselines import visdatcompy_run
from datasets import cifar10_subset, write_results_section

from vdc_torch import Dataset
from vdc_torch.faces.seed import FeatureExtractor, Hash, Metrics
from vdc_torch.fingerprints.metrics import in_range

TITLE = "vdc_torch vs visdatcompy (seed API, CIFAR-10)"


def build(root: Path, n: int) -> tuple[Path, Path, set[tuple[str, str]]]:
    """ds1, ds2 and the planted (ds1 name, ds2 name) pairs; 3 × n/10 copies of distinct ds1 images."""
    ds1 = cifar10_subset(n, dest=root / "ds1", seed=0, offset=0)
    k = max(1, n // 10)
    others = cifar10_subset(n - 3 * k, dest=root / "others", seed=0, offset=n)
    ds2 = root / "ds2"
    ds2.mkdir()
    names = sorted(p.name for p in ds1.iterdir())
    picked = names[:: max(1, len(names) // (3 * k))][: 3 * k]
    truth: set[tuple[str, str]] = set()
    for i, name in enumerate(picked):
        src = ds1 / name
        if i < k:  # same name: visdatcompy's Hash skips these
            target = name
            shutil.copyfile(src, ds2 / target)
        elif i < 2 * k:
            target = f"copy_{name}"
            shutil.copyfile(src, ds2 / target)
        else:
            target = f"up2_{Path(name).stem}.png"
            image = cv2.imread(str(src), cv2.IMREAD_COLOR)
            cv2.imwrite(str(ds2 / target), cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
        truth.add((name, target))
    for p in sorted(others.iterdir()):
        shutil.move(str(p), ds2 / p.name)
    return ds1, ds2, truth


def subset(root: Path, ds1: Path, ds2: Path, truth: set[tuple[str, str]], n: int) -> tuple[Path, Path, set]:
    """n×n folders (symlinks) holding the first n ds1 images with planted copies, their copies, and fillers."""
    firsts = sorted({a for a, _ in truth})[: n // 2]
    pairs = {(a, b) for a, b in truth if a in firsts}
    rest1 = [p.name for p in sorted(ds1.iterdir()) if p.name not in firsts][: n - len(firsts)]
    planted = {b for _, b in truth}
    rest2 = [p.name for p in sorted(ds2.iterdir()) if p.name not in planted][: n - len(pairs)]
    s1, s2 = root / f"sub{n}_1", root / f"sub{n}_2"
    s1.mkdir()
    s2.mkdir()
    for name in firsts + rest1:
        (s1 / name).symlink_to(ds1 / name)
    for name in [b for _, b in pairs] + rest2:
        (s2 / name).symlink_to(ds2 / name)
    return s1, s2, pairs


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``repeats`` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def score(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> str:
    right = len(found & truth)
    return f"{right}/{len(truth)} correct, {len(found - truth)} wrong"


def their_matrix(res: dict) -> np.ndarray:
    return np.array([[float(v) for v in row] for row in res["matrix"]])  # "inf"/"nan" strings parse too


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--ssim-n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave benchmarks/results/vs_visdatcompy.md alone")
    parser.add_argument("--reuse-baseline", action="store_true",
                        help="reuse visdatcompy's results from the last run (benchmarks/out) instead of rerunning it")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="vdc-vs-visdatcompy-"))
    try:
        ds1, ds2, truth = build(root, args.n)
        s1, s2, sub_truth = subset(root, ds1, ds2, truth, args.ssim_n)
        print(f"data: {ds1} ({args.n}) vs {ds2} ({args.n}), {len(truth)} planted copies", flush=True)

        load_start = os.getloadavg()[0]
        cached = BENCH / "out" / f"vs_visdatcompy_baseline_{args.n}_{args.ssim_n}.json"
        if args.reuse_baseline and cached.is_file():
            theirs, theirs_ssim = json.loads(cached.read_text())
            print(f"visdatcompy results reused from {cached}", flush=True)
        else:
            t0 = time.perf_counter()
            theirs = visdatcompy_run(ds1, ds2, what=("mse", "sift", "phash"), timeout=7200)
            theirs_ssim = visdatcompy_run(s1, s2, what=("ssim",), timeout=7200)
            print(f"visdatcompy done in {time.perf_counter() - t0:.0f}s", flush=True)
            cached.parent.mkdir(exist_ok=True)
            cached.write_text(json.dumps([theirs, theirs_ssim]))
        for r in (theirs, theirs_ssim):
            for what, res in r["results"].items():
                if "error" in res:
                    raise SystemExit(f"visdatcompy {what} failed: {res['error']}")

        d1, d2 = Dataset(ds1), Dataset(ds2)
        e1, e2 = Dataset(s1), Dataset(s2)
        ours = {
            "mse": timed(lambda: Metrics(d1, d2).mse(), args.repeats),
            "ssim": timed(lambda: Metrics(d1, d2).ssim(), args.repeats),
            "ssim_sub": timed(lambda: Metrics(e1, e2).ssim(), args.repeats),
            "sift": timed(lambda: FeatureExtractor(d1, d2, "sift").find_similars(), args.repeats),
            "phash": timed(lambda: Hash(d1, d2).find_similars("p"), args.repeats),
        }
        load_end = os.getloadavg()[0]
        tr = theirs["results"]
        ts = theirs_ssim["results"]["ssim"]
        scale = (args.n * args.n) / (args.ssim_n * args.ssim_n)

        # results
        def our_pairs(matrix, metric: str, kind: str = "duplicate") -> set[tuple[str, str]]:
            mask = in_range(metric, matrix.to_numpy(), kind)
            return {(matrix.index[i], matrix.columns[j]) for i, j in np.argwhere(mask)}

        def their_pairs(res: dict, kind: str = "duplicate") -> set[tuple[str, str]]:
            found = {tuple(p) for p in res["duplicate_pairs"]}
            return found if kind == "duplicate" else found | {tuple(p) for p in res.get("similar_pairs", [])}

        def tiers(found, truth_) -> str:
            return f"duplicate: {score(found('duplicate'), truth_)}; dup. or similar: {score(found('similar'), truth_)}"

        mse_ours = ours["mse"][2]
        ssim_sub_ours = ours["ssim_sub"][2]
        rows = [
            ("MSE matrix", f"{args.n}×{args.n}", tr["mse"]["seconds"], "measured", ours["mse"],
             tiers(lambda k: their_pairs(tr["mse"], k), truth),
             tiers(lambda k: our_pairs(mse_ours, "mse", k), truth),
             f"ρ = {spearman(their_matrix(tr['mse']), mse_ours.loc[theirs['rows'], theirs['cols']].to_numpy()):.3f}"),
            ("SSIM matrix", f"{args.n}×{args.n}", ts["seconds"] * scale,
             f"{ts['seconds']:.1f} s at {args.ssim_n}×{args.ssim_n} × {scale:g}", ours["ssim"],
             f"on {args.ssim_n}×{args.ssim_n}: " + tiers(lambda k: their_pairs(ts, k), sub_truth),
             (f"on {args.ssim_n}×{args.ssim_n}: " + tiers(lambda k: our_pairs(ssim_sub_ours, "ssim", k), sub_truth)
              + f"; on {args.n}×{args.n}: " + tiers(lambda k: our_pairs(ours["ssim"][2], "ssim", k), truth)),
             (f"ρ = {spearman(their_matrix(ts), ssim_sub_ours.loc[theirs_ssim['rows'], theirs_ssim['cols']].to_numpy()):.3f}"
              f" (on {args.ssim_n}×{args.ssim_n})")),
            ("SIFT similars", f"{args.n}×{args.n}", tr["sift"]["seconds"], "measured", ours["sift"],
             score({(a, b) for a, b in tr["sift"]["similars"] if b}, truth),
             score({(a.filename, b.filename) for a, b in ours["sift"][2].items()}, truth), ""),
            ("pHash similars", f"{args.n}×{args.n}", tr["phash"]["seconds"], "measured", ours["phash"],
             score({(a, b) for a, b in tr["phash"]["similars"]}, truth),
             score(set(zip(ours["phash"][2]["image1"], ours["phash"][2]["image2"])), truth), ""),
        ]
        lines = [
            ("| call | pairs | visdatcompy | how | vdc_torch (wall / CPU) | speed-up | visdatcompy result | "
             "vdc_torch result | values |"),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        summary = {}
        for call, pairs, their_s, how, (wall, cpu, _), their_res, our_res, values in rows:
            summary[call] = {"visdatcompy_s": their_s, "vdc_torch_s": wall, "speedup": their_s / wall}
            lines.append(
                f"| {call} | {pairs} | {their_s:.2f} s | {how} | {wall:.3f} s / {cpu:.3f} s | "
                f"**{their_s / wall:,.0f}×** | {their_res} | {our_res} | {values} |"
            )
        sw, _, _ = ours["ssim_sub"]
        found_sift = {(a.filename, b.filename) for a, b in ours["sift"][2].items()}
        missed = sorted(truth - found_sift)
        probe = FeatureExtractor(d1, d2, "sift")
        keypoints = [
            len(f) for a, b in missed for f in probe._features.get([str(ds1 / a), str(ds2 / b)]) if f is not None
        ]
        sift_note = (
            f" The {len(missed)} planted copies vdc_torch's SIFT does not report are texture-poor pictures with "
            f"{min(keypoints)}–{max(keypoints)} keypoints per image, fewer than geometric verification needs "
            f"({probe.verify_kwargs['min_inliers']} RANSAC inliers)."
            if missed and keypoints else ""
        )
        body = "\n".join(lines) + f"""

Data: ds1 = {args.n} CIFAR-10 test images (32×32 JPEG); ds2 = {len(truth) // 3} exact copies of ds1 images under the
same name, {len(truth) // 3} exact copies renamed, {len(truth) // 3} copies upsized 2× (64×64 PNG) and
{args.n - len(truth)} other CIFAR-10 images: {len(truth)} planted pairs. visdatcompy {theirs['version']} runs in its
own Python 3.12 venv; its seconds are measured in that process around the library call only (`benchmarks/baselines.py`).
vdc_torch: median of {args.repeats} runs, each on a fresh object (decoding, normalising, hashing and feature
extraction included). visdatcompy's SSIM on {args.ssim_n}×{args.ssim_n} took {ts['seconds']:.1f} s; it reads and
upsizes both images for every pair, so its cost is quadratic in the image count and ×{scale:g} gives the
{args.n}×{args.n} estimate (ours on the same {args.ssim_n}×{args.ssim_n}: {sw:.3f} s). The machine is shared: load
average {load_start:.1f} at the start of the run and {load_end:.1f} at its end, so both libraries' seconds are inflated
alike; the ratios are what to read.

Results. A "correct" pair is a planted (original, copy) pair; "wrong" is any other pair reported. visdatcompy's
metric pairs use its own ranges (`Metrics.ranges`), ours `vdc_torch.fingerprints.metrics.METRIC_RANGES`, whose "duplicate" tier is
calibrated for re-encoded copies and "similar" for resized ones (so the upsized copies are similar, not duplicates);
visdatcompy's SSIM and NMI duplicate ranges are open at the top, so an exact copy (SSIM 1) is never a duplicate. Its SIFT and pHash
give every ds1 image a "most similar" ds2 image whether or not one exists, and its pHash skips ds2 files with the
ds1 file's name, so exact copies under the same name are never found.{sift_note} Values: Spearman ρ between the two matrices over
the same pairs. They differ in scale because the libraries normalise differently: visdatcompy resizes every image to
600 px high with PIL and compares the flattened RGB arrays (its SSIM is a 1-D SSIM with a 3-sample window over that
flat array); vdc_torch compares 64×64 gray images (`cv2.INTER_AREA`) with skimage's 2-D SSIM (7×7 window), so
images of any size share one scale and the duplicate/similar ranges are calibrated on it.
"""
        print(body)
        (BENCH / "out" / "vs_visdatcompy.json").write_text(json.dumps(summary, indent=2))
        if not args.no_write:
            print(f"wrote {write_results_section('vs_visdatcompy', TITLE, body)}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
