"""How much of the CIFAR-10 test set has already been seen in training? The gate on a real, published case.

    PYTHONPATH=. python benchmarks/cifar_overlap.py [--out benchmarks/out] [--workers N] [--seed 0]

Reference = the 50,000 CIFAR-10 training JPEGs (``datasets.cifar10_root() / "train"``, ImageFolder layout, so
labels come along), new = the 10,000 test JPEGs. Runs ``DatasetGate(reference=train).check(test)`` with the default
configuration — nothing is tuned to this data — and reports the share of test images the gate counts as already
seen (``exact`` or ``near_duplicate``), split by match kind and cascade stage, how often the matched pair carries the
same label, the ``similar`` pairs it did not count, and the time taken. For comparison: Barz & Denzler (2020, "Do we
train on test data? Purging CIFAR of near-duplicates") found by manual annotation of CNN-feature candidates that
about 3.3 % of the CIFAR-10 test images have an exact or near-duplicate in the training set.

Writes ``benchmarks/figures/cifar_found_pairs.png`` (a random sample of 40 counted pairs, test left, train right),
``benchmarks/figures/cifar_borderline_rejected.png`` (the 40 highest-scoring ``similar`` pairs, which were not
counted), ``<out>/cifar_overlap_matches.csv`` (every match row), ``<out>/cifar_overlap.json`` (summary) and the
section "CIFAR-10: test images already seen in training" of ``benchmarks/results/cifar_overlap.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from datasets import REPO_ROOT, cifar10_root, write_results_section

FIG_DIR = REPO_ROOT / "benchmarks" / "figures"
COUNTED = ("exact", "near_duplicate")
SECTION = "CIFAR-10: test images already seen in training"


def pair_gallery(rows, train_root: Path, test_root: Path, path: Path, title: str, cols: int = 5) -> Path:
    """Pairs side by side (test | train), each 32x32 image shown at 3x (nearest neighbour), with a caption."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
        bold = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = bold = ImageFont.load_default()
    s, pad, cap = 96, 6, 44
    cell_w, cell_h = 2 * s + pad + 18, s + cap
    n_rows = max(1, math.ceil(len(rows) / cols))
    head = 26
    sheet = Image.new("RGB", (cols * cell_w, head + n_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill="black", font=bold)
    for k, r in enumerate(rows):
        x, y = (k % cols) * cell_w, head + (k // cols) * cell_h
        for j, (root, rel) in enumerate(((test_root, r["new_path"]), (train_root, r["ref_path"]))):
            im = Image.open(root / rel).convert("RGB").resize((s, s), Image.NEAREST)
            sheet.paste(im, (x + j * (s + pad), y))
        same = r["new_label"] == r["ref_label"]
        labels = r["new_label"] if same else f"{r['new_label']} != {r['ref_label']}"
        draw.text((x, y + s + 2), f"{r['kind']}/{r['method']} {r['score']:.3f}", fill="black", font=font)
        draw.text((x, y + s + 15), labels, fill=(0, 110, 0) if same else (200, 0, 0), font=font)
        draw.text((x, y + s + 28), f"{r['new_path']} | {r['ref_path']}", fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CIFAR-10 test images already seen in training, found by the gate")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    ap.add_argument("--workers", type=int, default=None, help="fingerprinting processes (default: all cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random sample shown in the gallery")
    ap.add_argument("--sample", type=int, default=40)
    ap.add_argument("--no-benchmarks-md", action="store_true")
    args = ap.parse_args(argv)

    import cv2

    from vdc_torch import Dataset, DatasetGate

    # OpenCV's thread pool must not be live in this process: the cascade forks feature-verification workers whose
    # initializer calls cv2.setNumThreads(1), which hangs in a child forked while the parent's pool threads were
    # waiting (seen on this run's first attempt; reproduced with OpenCV 5.0). One thread means no pool.
    cv2.setNumThreads(1)

    args.out.mkdir(parents=True, exist_ok=True)
    root = cifar10_root()
    train_root, test_root = root / "train", root / "test"
    t0 = time.perf_counter()
    train, test = Dataset(train_root), Dataset(test_root)
    gate = DatasetGate(reference=train, workers=args.workers)
    t = time.perf_counter()
    _ = gate.reference_table
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    decision = gate.check(test)
    t_check = time.perf_counter() - t
    t_total = time.perf_counter() - t0
    print(f"reference fingerprints {t_ref:.1f}s, check {t_check:.1f}s; {decision.counts}", flush=True)

    m = decision.matches.copy()
    m.to_csv(args.out / "cifar_overlap_matches.csv", index=False)
    n_test = decision.counts.get("readable", len(test))
    counted = m[m["kind"].isin(COUNTED)]
    similar = m[m["kind"] == "similar"]
    rows_md = [
        "| kind | method | test images | share of test | same label as the train image |",
        "|---|---|---|---|---|",
    ]
    summary_by = []
    for (kind, method), g in counted.groupby(["kind", "method"]):
        same = float((g["new_label"] == g["ref_label"]).mean())
        rows_md.append(f"| {kind} | {method} | {len(g)} | {len(g) / n_test:.2%} | {same:.1%} |")
        summary_by.append({"kind": kind, "method": method, "n": len(g), "same_label": same})
    same_all = float((counted["new_label"] == counted["ref_label"]).mean()) if len(counted) else float("nan")
    rows_md.append(
        f"| **counted (exact + near_duplicate)** | | **{len(counted)}** | **{len(counted) / n_test:.2%}** | "
        f"{same_all:.1%} |"
    )
    same_sim = float((similar["new_label"] == similar["ref_label"]).mean()) if len(similar) else float("nan")
    rows_md.append(f"| similar (not counted) | | {len(similar)} | {len(similar) / n_test:.2%} | {same_sim:.1%} |")

    # score distribution of the similar pairs: how close to the line are they?
    sim_scores = similar["score"].to_numpy() if len(similar) else []
    near_line = int(sum(x >= 0.85 for x in sim_scores))

    # calibration data: which `similar` pairs a looser thumbnail rule would count. Pairs whose CIFAR labels differ
    # cannot be the same photo, so their number is a floor on the false matches such a rule adds.
    grid_md = ""
    ev = similar["evidence"].str.extract(r"thumbnail similarity ([0-9.]+), fine-structure similarity (-?[0-9.]+)")
    if len(similar) and ev.notna().all(axis=1).any():
        ncc, fine = ev[0].astype(float), ev[1].astype(float)
        diff = (similar["new_label"] != similar["ref_label"]).to_numpy()
        grid = [
            "| thumbnail NCC ≥ | fine-structure ≥ | extra pairs counted | of them with different labels |",
            "|---|---|---|---|",
        ]
        grid_rows = []
        for nt in (0.85, 0.87, 0.88, 0.89):
            for ft in (0.30, 0.35, 0.40, 0.45, 0.50):
                ok = ((ncc >= nt) & (fine >= ft)).to_numpy()
                grid.append(f"| {nt:.2f} | {ft:.2f} | {int(ok.sum())} | {int((ok & diff).sum())} |")
                grid_rows.append(
                    {"ncc": nt, "fine": ft, "extra": int(ok.sum()), "different_labels": int((ok & diff).sum())}
                )
        grid_md = "\n".join(grid)
    else:
        grid_rows = []

    rng = random.Random(args.seed)
    sample = counted.to_dict("records")
    rng.shuffle(sample)
    sample = sorted(sample[: args.sample], key=lambda r: (r["kind"], r["method"], -r["score"]))
    found_png = pair_gallery(
        sample,
        train_root,
        test_root,
        FIG_DIR / "cifar_found_pairs.png",
        f"CIFAR-10: {len(sample)} random pairs the gate counts as already seen "
        f"(of {len(counted)}; test left, train right; seed {args.seed})",
    )
    border = similar.sort_values("score", ascending=False).head(args.sample).to_dict("records")
    border_png = pair_gallery(
        border,
        train_root,
        test_root,
        FIG_DIR / "cifar_borderline_rejected.png",
        f"CIFAR-10: the {len(border)} highest-scoring 'similar' pairs — NOT counted as seen (test left, train right)",
    )

    internal = decision.internal_duplicates
    fps = (len(train) + len(test)) / (t_ref + t_check) if t_ref + t_check else float("nan")
    body = "\n".join(
        [
            (
                "Reference = the 50,000 CIFAR-10 training images, new = the 10,000 test images (JPEG, 32×32, from "
                "`shared/data/cifar10-jpg.tar.xz`), default `DatasetGate` settings, nothing tuned to this data. "
                f"**The gate counts {len(counted)} test images ({len(counted) / n_test:.2%}) as already seen in training** "
                "(exact or near-duplicate of a training image). For comparison, Barz & Denzler (2020) found by manual "
                "annotation of CNN-feature candidates that about 3.3 % of the CIFAR-10 test images have an exact or "
                "near-duplicate in the training set; their set and ours are found by different means, so equal shares would "
                "not mean equal images (their list uses the original CIFAR indices, which cannot be mapped to these JPEG "
                "file names without the original label order, so no pair-by-pair comparison is made here)."
            ),
            "",
            "\n".join(rows_md),
            "",
            (
                f"A matched pair whose labels differ is a label conflict for the gate (`decision.conflicts`: "
                f"{len(decision.conflicts)}); the gate's verdict: *{decision.reason}*"
            ),
            "",
            (
                f"`similar` pairs (thumbnail correlation ≥ 0.75 but not verified): {len(similar)}, of which {near_line} score "
                f"≥ 0.85. Duplicates inside the test set itself: {len(internal)} test images repeat an earlier test image."
            ),
            "",
            (
                f"Time on this machine: reference fingerprints {t_ref:.0f} s, check (test fingerprints, matching against "
                f"the reference and within the test set) {t_check:.0f} s, total {t_total:.0f} s "
                f"({fps:.0f} images/s overall)."
            ),
            "",
            (
                "What a looser thumbnail rule for pHash candidates would add (today: NCC ≥ "
                f"{decision.config.near_duplicate_similarity} and fine-structure ≥ {decision.config.min_detail_similarity}); "
                "a pair whose labels differ cannot show the same photo, so that column is a floor on the false matches "
                "such a rule would add:"
            ),
            "",
            grid_md or "(no `similar` pair carries thumbnail evidence)",
            "",
            (
                "Galleries (test image left, training image right, 3× nearest-neighbour): "
                "`benchmarks/figures/cifar_found_pairs.png` — a random sample of 40 counted pairs; "
                "`benchmarks/figures/cifar_borderline_rejected.png` — the 40 highest-scoring `similar` pairs, which were "
                "not counted. All match rows: `benchmarks/out/cifar_overlap_matches.csv`."
            ),
        ]
    )
    if not args.no_benchmarks_md:
        write_results_section("cifar_overlap", SECTION, body)
    summary = {
        "n_train": len(train),
        "n_test": n_test,
        "counted": len(counted),
        "share": len(counted) / n_test,
        "by_kind_method": summary_by,
        "same_label_counted": same_all,
        "similar": len(similar),
        "similar_ge_085": near_line,
        "same_label_similar": same_sim,
        "conflicts": len(decision.conflicts),
        "internal_test_duplicates": len(internal),
        "counts": decision.counts,
        "reason": decision.reason,
        "seconds": {"reference": t_ref, "check": t_check, "total": t_total},
        "config": decision.config.to_dict(),
        "figures": [str(found_png), str(border_png)],
        "looser_thumbnail_rule": grid_rows,
    }
    (args.out / "cifar_overlap.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "cifar_overlap.md").write_text(body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
