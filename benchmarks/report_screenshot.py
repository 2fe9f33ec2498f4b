"""Render the HTML report of a decision made on real photos in headless Chromium and save a screenshot.

The data (built under --out from ../shared/data, never modified there): a labelled reference of camera photos
(class ``photos``) and video frames (class ``cows``); a new drop holding re-encoded and resized copies of half the
photos, exact copies of five frames, genuinely new photos, one copy filed under the wrong class (a label conflict),
one damaged file and one file whose name contains HTML (``<b>``) to check escaping.

Writes ``report.html`` and ``report.png`` (1280 px wide) to --out and prints their paths. Without Chromium
(Debian: ``apt-get install chromium``) the report is still written and the screenshot is skipped with a message.
Usage: python benchmarks/report_screenshot.py [--out DIR] [--height 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDC_SHARED", REPO.parent / "shared" / "data"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def photos() -> list[Path]:
    jpg = SHARED / "exif-samples" / "jpg"
    files = sorted(jpg.glob("*.jpg")) + sorted((jpg / "gps").glob("*.jpg")) + sorted((jpg / "exif-org").glob("*.jpg"))
    files = [f for f in files if f.name not in ("corrupted.jpg", "Canon_40D_photoshop_import.jpg")]
    if len(files) < 30:
        sys.exit(f"error: expected the exif-samples photos under {jpg}; set VDC_SHARED to the shared data folder")
    return files


def build(root: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    files = photos()
    rng.shuffle(files)
    ref, new = root / "reference", root / "new"
    for folder in (ref / "photos", ref / "cows", new / "photos", new / "cows"):
        folder.mkdir(parents=True, exist_ok=True)
    for f in files[:20]:
        shutil.copy(f, ref / "photos" / f.name)
    cows = sorted((SHARED / "visdatcompy-examples" / "cows").glob("*.png"))
    for f in cows:
        shutil.copy(f, ref / "cows" / f.name)
    for i, f in enumerate(files[:10]):  # re-exports: resized, re-encoded, renamed
        with Image.open(f) as im:
            im = im.convert("RGB")
            im = im.resize((max(8, int(im.width * rng.uniform(0.4, 0.8))), max(8, int(im.height * rng.uniform(0.4, 0.8)))))
            ext = ("jpg", "png", "webp")[i % 3]
            im.save(new / "photos" / f"export_{i:02d}.{ext}", **({} if ext == "png" else {"quality": 60}))
    for f in cows[:5]:
        shutil.copy(f, new / "cows" / f"copy_{f.name}")
    for f in files[20:34]:
        shutil.copy(f, new / "photos" / f"new_{f.name}")
    shutil.copy(files[10], new / "cows" / "mislabelled_photo.jpg")  # a reference photo filed as a cow
    shutil.copy(files[34], new / "photos" / "<b>not bold.jpg")
    (new / "photos" / "damaged.jpg").write_bytes(files[35].read_bytes()[:600])
    return ref, new


def screenshot(html: Path, png: Path, height: int) -> bool:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("screenshot skipped: no Chromium found (Debian: apt-get install chromium)")
        return False
    profile = tempfile.mkdtemp(prefix="vdc-chromium-")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size=1280,{height}", html.resolve().as_uri(),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if result.returncode != 0 or not png.is_file():
        print(f"screenshot failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--height", type=int, default=2000, help="window height of the screenshot in pixels")
    args = parser.parse_args()
    from vdc_torch import DatasetGate
    from vdc_torch.faces.report import write_html

    out = args.out or Path(tempfile.mkdtemp(prefix="vdc-report-"))
    out.mkdir(parents=True, exist_ok=True)
    ref, new = build(out / "data")
    gate = DatasetGate(reference=ref)
    print(f"reference:  {len(gate)} samples fingerprinted")  # before save(), so the manifest records the root
    manifest = gate.save(out / "reference.vdc")
    decision = DatasetGate.load(manifest).check(new)
    print(decision)
    print({k: v for k, v in decision.counts.items()})
    html = write_html(decision, out / "report.html")
    print(f"report:     {html} ({html.stat().st_size / 1e6:.2f} MB)")
    png = out / "report.png"
    if screenshot(html, png, args.height):
        with Image.open(png) as image:
            print(f"screenshot: {png} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
