"""Peak memory of fingerprinting many large images, before and after a change, in one run.

Builds a folder of large real photos (the EXIF samples, upscaled to ``--side`` px on their longer side and saved as
PNG, so that nothing can be DCT-scaled), then fingerprints it with ``compute_fingerprints`` in a child process for
each side (``--before`` a commit or checkout, ``--after`` default the working tree) and each worker count, sampling
the proportional resident memory (PSS) of the whole process tree (the child and its DataLoader workers, summed)
every 10 ms.

    python benchmarks/memory_fingerprint.py --before 66999da --images 64 --side 6000 --workers 0,2

Peak memory is reported above the child's baseline after its imports. The fingerprints of both sides are compared
(the same rows, or the first difference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORKER = r"""
import json, sys, time, hashlib
import numpy as np
from vdc_torch.data.dataset import Dataset
from vdc_torch.fingerprints.compute import compute_fingerprints
folder, workers, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dataset = Dataset(folder)
print("READY", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
table, problems = compute_fingerprints(dataset, workers=workers, progress=False, distributed=False)
seconds = time.perf_counter() - t0
rows = [hashlib.blake2b(repr((table.pixel_digest[i], int(table.phash[i]), bytes(np.asarray(table.thumbs[i]).data)))
        .encode(), digest_size=8).hexdigest() for i in range(len(table))]
json.dump({"seconds": seconds, "rows": rows, "problems": [str(p) for p in problems]}, open(out, "w"))
"""


def tree_rss(pid: int) -> int:
    """Proportional resident bytes (PSS: pages shared after a fork counted once) of ``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        child, parent = int(entry.name), int(fields[1])
        children.setdefault(parent, []).append(child)
        rss[child] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    for child in list(rss):
        try:
            with open(f"/proc/{child}/smaps_rollup", "rb") as handle:
                pss = next(line for line in handle if line.startswith(b"Pss:"))
            rss[child] = int(pss.split()[1]) * 1024
        except (OSError, StopIteration):
            pass
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total


def measure(path: Path, folder: Path, workers: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(path), PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(workers), str(out)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    baseline = tree_rss(proc.pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{path}: the fingerprinting child failed ({proc.returncode})")
    result = json.loads(out.read_text())
    result["peak_mb"] = (peak[0] - baseline) / 2**20
    return result


def build(folder: Path, images: int, side: int) -> None:
    import numpy as np
    from datasets import shared_root
    from PIL import Image

    sources = sorted((shared_root() / "exif-samples").rglob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        with Image.open(sources[i % len(sources)]) as image:
            image = image.convert("RGB")
            scale = side / max(image.size)
            big = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        array = np.asarray(big).copy()
        array[:8, :8] = i % 256  # every file different
        Image.fromarray(array).save(folder / f"{i:04d}.png", compress_level=1)


def main() -> int:
    from same_behaviour import resolve_side

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="commit or checkout folder")
    parser.add_argument("--after", default=str(HERE.parent), help="commit or checkout folder (default: this one)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--folder", type=Path, help="reuse (or build) the images here")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / f"vdc-memory-{args.images}x{args.side}"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != args.images:
        print(f"building {args.images} PNGs of {args.side} px in {folder} ...", flush=True)
        build(folder, args.images, args.side)
    size = sum(p.stat().st_size for p in folder.glob("*.png"))
    print(f"{args.images} PNG photos, longer side {args.side} px, {size / 2**20:.0f} MB on disk\n")
    sides = [resolve_side("before", args.before), resolve_side("after", args.after)]
    print("| side | workers | peak MB above baseline | seconds |\n|---|---:|---:|---:|")
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for workers in (int(w) for w in args.workers.split(",")):
            for side in sides:
                result = measure(side.path, folder, workers, Path(scratch) / f"{side.name}-{workers}.json")
                rows[side.name, workers] = result["rows"]
                print(f"| {side.name} ({side.label}) | {workers} | {result['peak_mb']:.0f} | "
                      f"{result['seconds']:.1f} |", flush=True)
            same = rows["before", workers] == rows["after", workers]
            print(f"|  | {workers} | fingerprints {'identical' if same else 'DIFFER'} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
