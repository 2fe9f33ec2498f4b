"""Run the gate on example data built from ../shared/data and print the decision.

Reference = 24 real camera photos. New = resized, re-encoded, renamed copies of 12 of them (JPEG/PNG/WebP)
plus photos the reference does not hold. The truth is known by construction, so the output can be checked.
Usage: python examples/demo.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDC_SHARED", REPO.parent / "shared" / "data"))


def build(workdir: Path, seed: int = 0) -> tuple[Path, Path, set[str]]:
    """Create ref/ and new/ under workdir; return their paths and the names of the genuinely new files."""
    jpg = SHARED / "exif-samples" / "jpg"
    photos = sorted(jpg.glob("*.jpg")) + sorted((jpg / "gps").glob("*.jpg")) + sorted((jpg / "exif-org").glob("*.jpg"))
    photos = [p for p in photos if p.name != "corrupted.jpg"]
    if len(photos) < 30:
        sys.exit(f"error: expected the exif-samples photos under {jpg}; set VDC_SHARED to the shared data folder")
    rng = random.Random(seed)
    rng.shuffle(photos)
    ref, new = workdir / "ref", workdir / "new"
    ref.mkdir(parents=True)
    new.mkdir(parents=True)
    for p in photos[:24]:
        shutil.copy(p, ref / p.name)
    for i, p in enumerate(photos[:12]):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im = im.resize((int(im.width * 0.5), int(im.height * 0.5)))
            ext = ["jpg", "png", "webp"][i % 3]
            im.save(new / f"export_{i:02d}.{ext}", **({"quality": 60} if ext != "png" else {}))
    novel = set()
    for p in photos[24:]:
        shutil.copy(p, new / f"new_{p.name}")
        novel.add(f"new_{p.name}")
    return ref, new, novel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the example (default: a temp dir)")
    args = parser.parse_args()
    from vdc_torch import DatasetGate

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vdc-demo-"))
    ref, new, novel = build(workdir)
    print(f"reference: {ref} ({len(list(ref.iterdir()))} photos)")
    print(f"new:       {new} ({len(list(new.iterdir()))} files, {len(novel)} genuinely new)")

    gate = DatasetGate(reference=ref)
    manifest = gate.save(workdir / "ckpt" / "reference.vdc")
    decision = DatasetGate.load(manifest).check(new)  # from the manifest: no reference images needed
    print(f"\ndecision: {decision.action}  overlap: {decision.overlap:.3f}  (truth {12 / (12 + len(novel)):.3f})")
    print(decision)
    print("\nmatches:")
    print(decision.matches[["new_path", "ref_path", "kind", "method", "score"]].to_string(index=False))
    names = sorted(os.path.basename(decision.delta.dataset.samples[i][0]) for i in decision.delta.indices)
    print(f"\ndelta ({len(names)} samples to train on): {', '.join(names)}")
    print("delta is exactly the new photos:", set(names) == novel)


if __name__ == "__main__":
    main()
