"""Calibration of the quality flags (``vdc_torch.fingerprints.quality``): what they flag on real data, and what
they catch among degraded copies of it.

    PYTHONPATH=. python benchmarks/quality_flags.py [--workers N] [--cifar-sample 60000] [--seed 0]

Real sets (nobody here picked them for this): all 60,000 CIFAR-10 JPEGs, the camera JPEGs of ``exif-samples``, the
Debian wallpapers (with their previews) and the visdatcompy cows. Every flag raised on them is a false alarm unless the gallery shows a picture that deserves it.

Degraded copies, made from 40 real photos and 400 CIFAR test images (seeded): ``blank`` (the picture's mean colour
plus sensor-like noise, σ = 1.5), ``dark`` (levels × 0.06), ``bright`` (255 − (255 − levels) × 0.06), ``blurry``
(Gaussian blur, moderate / heavy: σ = 1.5 % / 3 % of a photo's longer side, 1.5 / 2.5 px on 32 px CIFAR),
``tiny`` (shorter side 16 px for CIFAR, 24 px for photos) and ``extreme_aspect`` (a 6:1 strip). Recall is the share of copies carrying the flag their
degradation should raise.

Writes the galleries ``benchmarks/figures/quality_flagged_real.png`` (every real image flagged, up to 60) and
``benchmarks/figures/quality_missed.png`` (degraded copies that were not flagged, up to 40), and the section
"Quality flags" of ``benchmarks/results/quality_flags.md``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np
from datasets import REPO_ROOT, cifar10_files, exif_sample_files, shared_root, wallpaper_files, write_results_section
from PIL import Image, ImageFilter

FIG_DIR = REPO_ROOT / "benchmarks" / "figures"


def fingerprints(files: list[Path], workers: int):
    from vdc_torch.data.dataset import Dataset
    from vdc_torch.fingerprints.compute import compute_fingerprints

    dataset = Dataset._blank(str(Path(files[0]).parent))  # the files as they are, unlabelled
    dataset.samples = [(str(p), None) for p in files]
    table, _ = compute_fingerprints(dataset, workers=workers, distributed=False)
    return table


def degrade(image: Image.Image, kind: str, rng: random.Random, small: bool) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    nprng = np.random.default_rng(rng.randrange(2**32))
    w, h = image.size
    if kind == "blank":
        fill = np.broadcast_to(rgb.reshape(-1, 3).mean(axis=0), rgb.shape) + nprng.normal(0, 1.5, rgb.shape)
        return Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8))
    if kind == "dark":
        return Image.fromarray(np.clip(rgb * 0.06 + nprng.normal(0, 1.0, rgb.shape), 0, 255).astype(np.uint8))
    if kind == "bright":
        return Image.fromarray(np.clip(255 - (255 - rgb) * 0.06 + nprng.normal(0, 1.0, rgb.shape), 0, 255)
                               .astype(np.uint8))
    if kind.startswith("blurry"):  # moderate / heavy: 1.5 % / 3 % of a photo's longer side, 1.5 / 2.5 px on CIFAR
        heavy = kind == "blurry_heavy"
        sigma = (2.5 if heavy else 1.5) if small else (0.03 if heavy else 0.015) * max(w, h)
        return image.convert("RGB").filter(ImageFilter.GaussianBlur(sigma))
    if kind == "tiny":
        side = 16 if small else 24
        scale = side / min(w, h)
        return image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    if kind == "extreme_aspect":
        strip = max(1, w // 6)
        top = rng.randrange(0, max(1, h - strip))
        return image.convert("RGB").crop((0, top, w, top + strip))
    raise ValueError(kind)


EXPECTED = {"blank": "blank", "dark": "dark", "bright": "bright", "blurry_moderate": "blurry", "blurry_heavy": "blurry",
            "tiny": "tiny", "extreme_aspect": "extreme_aspect"}


def gallery(items: list[tuple[Path, str]], path: Path, title: str, cols: int = 10, side: int = 120) -> Path:
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    rows = max(1, math.ceil(len(items) / cols))
    sheet = Image.new("RGB", (cols * (side + 8), 24 + rows * (side + 30)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill="black", font=font)
    for k, (file, caption) in enumerate(items):
        x, y = (k % cols) * (side + 8) + 4, 24 + (k // cols) * (side + 30)
        with Image.open(file) as im:  # shown as the fingerprints see it: transparency composited on white
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert("RGB")
            im.thumbnail((side, side), Image.NEAREST if max(im.size) < side else Image.LANCZOS)
            sheet.paste(im, (x + (side - im.width) // 2, y + (side - im.height) // 2))
        draw.text((x, y + side + 2), caption[:22], fill="black", font=font)
        draw.text((x, y + side + 14), file.name[:22], fill="gray", font=font)
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cifar-sample", type=int, default=60000, help="CIFAR images among the real sets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from vdc_torch.fingerprints import quality

    rng = random.Random(args.seed)
    cifar = cifar10_files("train") + cifar10_files("test")
    if args.cifar_sample < len(cifar):
        cifar = sorted(rng.sample(cifar, args.cifar_sample))
    exif = [p for p in exif_sample_files() if p.suffix.lower() in (".jpg", ".jpeg")]
    cows = sorted((shared_root() / "visdatcompy-examples").rglob("*.png"))
    real_sets = {"CIFAR-10 (train + test)": cifar, "exif-samples JPEGs": exif,
                 "Debian wallpapers + previews": wallpaper_files(previews=True), "visdatcompy cows": cows}

    lines = ["### Real images: what gets flagged (every flag here is a false alarm unless the gallery shows it "
             "deserves it)", "", "| set | images | flagged | " + " | ".join(quality.QUALITY_FLAGS) + " | s |",
             "|---|---:|---:|" + "---:|" * len(quality.QUALITY_FLAGS) + "---:|"]
    flagged_real: list[tuple[Path, str]] = []
    for name, files in real_sets.items():
        started = time.perf_counter()
        table = fingerprints(files, args.workers)
        frame = quality.quality_of(table)
        seconds = time.perf_counter() - started
        by_flag = {f: int(frame["flags"].str.split(",").apply(lambda fl, f=f: f in fl).sum())
                   for f in quality.QUALITY_FLAGS}
        hit = frame[frame["flags"] != ""]
        flagged_real += [(Path(files[int(i)]) if not Path(p).is_absolute() else Path(p), fl)
                         for i, p, fl in zip(hit["index"], hit["path"], hit["flags"])]
        lines.append(f"| {name} | {len(table)} | {len(hit)} ({len(hit) / max(1, len(table)):.2%}) | "
                     + " | ".join(str(by_flag[f]) for f in quality.QUALITY_FLAGS) + f" | {seconds:.1f} |")
        print(lines[-1], flush=True)

    photos = sorted(rng.sample(exif, min(20, len(exif))) + rng.sample(wallpaper_files(), 20))
    tiny_sources = sorted(rng.sample(cifar10_files("test"), 400))
    missed: list[tuple[Path, str]] = []
    rows = ["", "### Degraded copies: recall of the flag each degradation should raise", "",
            "| degradation | expected flag | photos (40) | CIFAR (400) |", "|---|---|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="vdc-quality-") as tmp:
        per_kind: dict[str, list[str]] = {}
        for small, sources, label in ((False, photos, "photos"), (True, tiny_sources, "CIFAR")):
            for kind, flag in EXPECTED.items():
                out_dir = Path(tmp) / label / kind
                out_dir.mkdir(parents=True)
                written = []
                for k, src in enumerate(sources):
                    with Image.open(src) as im:
                        copy = degrade(im, kind, rng, small)
                    target = out_dir / f"{k:04d}.png"
                    copy.save(target)
                    written.append(target)
                frame = quality.quality_of(fingerprints(written, args.workers))
                caught = frame["flags"].str.split(",").apply(lambda fl, f=flag: f in fl)
                per_kind.setdefault(kind, []).append(f"{caught.mean():.2f}")
                for path, ok, fl in zip(frame["path"], caught, frame["flags"]):
                    if not ok and len(missed) < 40:
                        missed.append((Path(path) if Path(path).is_absolute() else out_dir / path,
                                       f"{label} {kind}: {fl or '-'}"))
                print(label, kind, f"{caught.mean():.2f}", flush=True)
        for kind, flag in EXPECTED.items():
            rows.append(f"| {kind} | {flag} | {per_kind[kind][0]} | {per_kind[kind][1]} |")
        if missed:
            gallery(missed, FIG_DIR / "quality_missed.png", "degraded copies left unflagged (flags found)")
    gallery(flagged_real[:60], FIG_DIR / "quality_flagged_real.png", "real images flagged (flags)")
    thresholds = ", ".join(f"`{n}` = {getattr(quality, n)}" for n in (
        "BLANK_CONTRAST", "DARK_LEVEL", "BRIGHT_LEVEL", "BLUR_RATIO", "BLUR_MIN_CONTRAST", "TINY_SIDE",
        "EXTREME_ASPECT"))
    body = "\n".join([f"Thresholds: {thresholds}.", "", *lines, *rows, "",
                      "Galleries: `benchmarks/figures/quality_flagged_real.png` (real images flagged), "
                      "`benchmarks/figures/quality_missed.png` (degraded copies left unflagged)."])
    print("\n".join(rows))
    print(write_results_section("quality_flags", "Quality flags", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
