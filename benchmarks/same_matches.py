"""Match tables of the cascade on realistic data, written to CSV: a refactoring must leave them byte-identical.

    python benchmarks/same_matches.py OUT_DIR [--cifar 2000] [--work /tmp/vdc-same-matches]

Builds (under ``--work``, never touching the shared data) a reference folder of exif-samples photos and a new folder
of their transformed copies (byte copies, re-saves, resized, JPEG, centre and off-centre crops, flips, flip + crop,
rotations on the same canvas, tone edits, a caption bar, a frame, grayscale) plus photos the reference lacks, and
optionally a CIFAR-10 slice (``--cifar N``: N/2 train images as reference, N/2 test images plus flipped / cropped
copies of some reference images as new). For each, ``match_tables`` runs as the gate does (new vs reference with
``MatchConfig()`` and with crops / mirrors not counted, with model-embedding stand-ins, and the ``same_table``
internal variant) and every table goes to ``OUT_DIR/<name>.csv`` (paths relative to the work folder, scores with
full float precision). Compare two runs with ``diff -r``.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vdc_torch import Dataset
from vdc_torch.fingerprints.compute import FingerprintTable, compute_fingerprints
from vdc_torch.search import cascade
from vdc_torch.search.cascade import MatchConfig, match_tables, table_coarse_vectors

DATA = Path("/work/shared/data")
EXIF_JPG = DATA / "exif-samples" / "jpg"


def photo_files() -> list[Path]:
    """The readable exif-samples camera photos (as tests/conftest.py lists them)."""
    files = sorted(EXIF_JPG.glob("*.jpg")) + sorted((EXIF_JPG / "gps").glob("*.jpg"))
    files += sorted((EXIF_JPG / "exif-org").glob("*.jpg"))
    return [f for f in files if f.name != "corrupted.jpg"]


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return Image.fromarray(cv2.warpAffine(rgb, turn, (w, h)))


def _crop(image: Image.Image, keep: float, fx: float, fy: float) -> Image.Image:
    w, h = image.size
    kw, kh = round(w * keep), round(h * keep)
    x, y = round((w - kw) * fx), round((h - kh) * fy)
    return image.crop((x, y, x + kw, y + kh))


def _caption(image: Image.Image) -> Image.Image:
    out = image.convert("RGB").copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, round(h * 0.85), w, h), fill=(0, 0, 0))
    draw.text((round(w * 0.05), round(h * 0.88)), "a caption over the picture", fill=(255, 255, 255))
    return out


def _frame(image: Image.Image) -> Image.Image:
    w, h = image.size
    return ImageOps.expand(image.convert("RGB"), border=max(4, round(min(w, h) * 0.06)), fill=(20, 20, 20))


#: name -> (transform, save format, JPEG quality or None, keep EXIF)
TRANSFORMS: dict[str, tuple[Callable[[Image.Image], Image.Image] | None, str, int | None, bool]] = {
    "bytes": (None, "copy", None, True),
    "png": (lambda im: im.convert("RGB"), "PNG", None, False),
    "half": (lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.LANCZOS), "JPEG", 90, True),
    "q40": (lambda im: im.convert("RGB"), "JPEG", 40, False),
    "crop90": (lambda im: _crop(im, 0.9, 0.5, 0.5), "JPEG", 90, False),
    "crop80off": (lambda im: _crop(im, 0.8, 0.1, 0.8), "JPEG", 90, False),
    "crop60off": (lambda im: _crop(im, 0.6, 0.9, 0.2), "JPEG", 90, False),
    "flip": (lambda im: ImageOps.mirror(im.convert("RGB")), "JPEG", 90, False),
    "flipcrop": (lambda im: ImageOps.mirror(_crop(im.convert("RGB"), 0.85, 0.3, 0.6)), "JPEG", 90, False),
    "rot5": (lambda im: _rotate(im, 5), "JPEG", 90, False),
    "rot15": (lambda im: _rotate(im, -15), "JPEG", 90, False),
    "rot30": (lambda im: _rotate(im, 30), "JPEG", 90, False),
    "tone": (lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im.convert("RGB")).enhance(1.2)).enhance(0.8),
             "JPEG", 90, False),
    "caption": (_caption, "JPEG", 90, False),
    "frame": (_frame, "JPEG", 90, False),
    "gray": (lambda im: ImageOps.grayscale(im).convert("RGB"), "JPEG", 90, False),
}


def make_transform(source: Path, target: Path, name: str) -> None:
    transform, fmt, quality, keep_exif = TRANSFORMS[name]
    if fmt == "copy":
        shutil.copyfile(source, target.with_suffix(source.suffix))
        return
    with Image.open(source) as im:
        im = ImageOps.exif_transpose(im) if not keep_exif else im
        exif = im.info.get("exif") if keep_exif else None
        out = transform(im)
        kwargs = {"quality": quality} if quality else {}
        if exif:
            kwargs["exif"] = exif
        out.save(target.with_suffix(".jpg" if fmt == "JPEG" else ".png"), fmt, **kwargs)


def build_photos(work: Path) -> tuple[Path, Path]:
    """reference/ (originals, byte copies), new/ (two transformed copies of each reference photo, novel photos)."""
    ref_dir, new_dir = work / "photos" / "ref", work / "photos" / "new"
    if ref_dir.exists() and new_dir.exists():
        return ref_dir, new_dir
    shutil.rmtree(work / "photos", ignore_errors=True)
    ref_dir.mkdir(parents=True)
    new_dir.mkdir(parents=True)
    files = photo_files()
    ref_files, novel = files[: len(files) // 2], files[len(files) // 2 :]
    names = list(TRANSFORMS)
    for i, f in enumerate(ref_files):
        shutil.copyfile(f, ref_dir / f"r{i:03d}{f.suffix}")
        for name in (names[i % len(names)], names[(i + 7) % len(names)]):
            make_transform(f, new_dir / f"c{i:03d}_{name}", name)
    for i, f in enumerate(novel):
        shutil.copyfile(f, new_dir / f"n{i:03d}{f.suffix}")
    hdr = sorted((EXIF_JPG / "hdr").glob("*.jpg"))  # HDR / non-HDR pairs: other exposures of one scene
    for i, f in enumerate(hdr):
        shutil.copyfile(f, (ref_dir if i % 2 == 0 else new_dir) / f"hdr{i:02d}{f.suffix}")
    for f in sorted((DATA / "visdatcompy-examples" / "cows").glob("*.png")):
        shutil.copyfile(f, ref_dir / f"cow_{f.name}")
    for f in sorted((DATA / "visdatcompy-examples" / "cows_duplicates").glob("*.png")):
        shutil.copyfile(f, new_dir / f"cowdup_{f.name.replace(' ', '_')}")
    return ref_dir, new_dir


def build_cifar(work: Path, n: int) -> tuple[Path, Path]:
    """n/2 train images (reference), n/2 test images and transformed copies of every 10th reference image (new)."""
    root = work / f"cifar{n}"
    ref_dir, new_dir = root / "ref", root / "new"
    if ref_dir.exists() and new_dir.exists():
        return ref_dir, new_dir
    shutil.rmtree(root, ignore_errors=True)
    per_class = max(1, n // 20)
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(DATA / "cifar10-jpg.tar.xz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            split, label, name = parts
            key = (split, label)
            if taken.get(key, 0) >= per_class:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = (ref_dir if split == "train" else new_dir) / label / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    copies = ["flip", "crop90", "flipcrop", "q40", "tone", "bytes", "png", "crop80off"]
    for i, f in enumerate(sorted(ref_dir.rglob("*.jpg"))[::10]):
        name = copies[i % len(copies)]
        target = new_dir / f.parent.name / f"copy{i:04d}_{name}"
        make_transform(f, target, name)
    return ref_dir, new_dir


def fingerprints(folder: Path) -> FingerprintTable:
    table, _ = compute_fingerprints(Dataset(folder), workers=0)
    return table


def union(work: Path, ref_dir: Path, new_dir: Path) -> Path:
    """One folder holding both (hard links), for the ``same_table`` internal-duplicate variant."""
    out = ref_dir.parent / "all"
    if out.exists():
        return out
    for side, folder in (("ref", ref_dir), ("new", new_dir)):
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            target = out / f"{side}_{'_'.join(f.relative_to(folder).parts)}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.hardlink_to(f)
    return out


def write(out: Path, name: str, matches, new: FingerprintTable, ref: FingerprintTable, work: Path) -> int:
    frame = matches.copy()
    frame.insert(0, "new_path", [str(Path(new.paths[q]).relative_to(work)) for q in frame["new_row"]])
    frame.insert(1, "ref_path", [str(Path(ref.paths[r]).relative_to(work)) for r in frame["ref_row"]])
    frame["score"] = [repr(float(s)) for s in frame["score"]]
    frame.to_csv(out / f"{name}.csv", index=False)
    return len(frame)


def run_set(out: Path, work: Path, label: str, ref_dir: Path, new_dir: Path, ivf: bool = False) -> None:
    t = time.perf_counter()
    ref, new = fingerprints(ref_dir), fingerprints(new_dir)
    both = fingerprints(union(work, ref_dir, new_dir))
    print(f"{label}: {len(ref)} reference, {len(new)} new, {len(both)} together; fingerprints "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    runs = {
        "default": lambda: match_tables(new, ref, MatchConfig()),
        "no_crops_no_mirrors": lambda: match_tables(new, ref, MatchConfig(crop_is_duplicate=False,
                                                                         mirror_is_duplicate=False)),
        "embeddings": lambda: match_tables(new, ref, MatchConfig(), new_embeddings=table_coarse_vectors(new.thumbs),
                                           ref_embeddings=table_coarse_vectors(ref.thumbs)),
        "internal_new": lambda: match_tables(new, new, MatchConfig(), same_table=True),
        "internal_all": lambda: match_tables(both, both, MatchConfig(), same_table=True),
        "internal_all_embeddings": lambda: match_tables(
            both, both, MatchConfig(), same_table=True, new_embeddings=table_coarse_vectors(both.thumbs),
            ref_embeddings=table_coarse_vectors(both.thumbs)),
    }
    tables = {"internal_new": (new, new), "internal_all": (both, both), "internal_all_embeddings": (both, both)}
    for name, fn in runs.items():
        t = time.perf_counter()
        matches = fn()
        rows = write(out, f"{label}_{name}", matches, *tables.get(name, (new, ref)), work)
        print(f"  {name}: {rows} rows in {time.perf_counter() - t:.1f} s", flush=True)
    if ivf:  # the inverted-file kNN index (above KNN_EXACT_MAX_ROWS references), forced on this small reference
        knn = sys.modules[cascade._coarse_index.__module__]  # wherever the kNN stage lives
        saved = {k: getattr(knn, k) for k in ("KNN_EXACT_MAX_ROWS", "KNN_ROWS_PER_LIST", "KNN_NPROBE")}
        try:
            knn.KNN_EXACT_MAX_ROWS, knn.KNN_ROWS_PER_LIST, knn.KNN_NPROBE = 100, 16, 4
            t = time.perf_counter()
            rows = write(out, f"{label}_ivf", match_tables(new, ref, MatchConfig()), new, ref, work)
            print(f"  ivf: {rows} rows in {time.perf_counter() - t:.1f} s", flush=True)
        finally:
            for k, v in saved.items():
                setattr(knn, k, v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cifar", type=int, default=0, help="images of the CIFAR-10 slice (0: none)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vdc-same-matches"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    # the cascade's INFO lines (one per stage: matches, samples settled) go to OUT/stages.log, times masked
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    search_log = logging.getLogger("vdc_torch.search")
    search_log.addHandler(handler)
    search_log.setLevel(logging.INFO)
    run_set(args.out, args.work, "photos", *build_photos(args.work), ivf=True)
    if args.cifar:
        run_set(args.out, args.work, f"cifar{args.cifar}", *build_cifar(args.work, args.cifar), ivf=True)
    (args.out / "stages.log").write_text(re.sub(r"in \d+\.\d+ s", "in ? s", log.getvalue()))


if __name__ == "__main__":
    main()
