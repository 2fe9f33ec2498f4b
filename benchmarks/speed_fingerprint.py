"""Fingerprinting throughput against decode-only baselines and imagededup, on the same files and cores.

Run::

    PYTHONPATH=. python benchmarks/speed_fingerprint.py              # wallpapers + 10,000 CIFAR-10 files
    PYTHONPATH=. python benchmarks/speed_fingerprint.py --no-write   # print only
    PYTHONPATH=. python benchmarks/speed_fingerprint.py --repeats 5 --cifar 10000

Contenders, each timed on the same file list, interleaved round-robin (A B C D, B C D A, ...) so that
a busy phase of the shared machine does not always hit the same one; medians of the rounds:

- ``fingerprint``: ``vdc_torch.fingerprints.compute.compute_fingerprints(Dataset(files), workers=2)``, the whole stage
  (DataLoader worker start-up included). Note that it runs in-process (``workers=0``) below 256 samples.
- ``decode full``: Pillow ``Image.open(path).load()`` of each file at full size on a
  ``multiprocessing.Pool(2)`` -- the decode-only baseline (what any tool must at least pay without DCT scaling).
- ``decode draft``: the same with ``Image.draft`` as ``vdc_torch.data.decode`` does it (JPEG DCT scaling so the
  shorter side stays >= 256 px; PNG cannot be drafted and decodes at full size) -- the decode floor of vdc_torch.
- ``decode native``: the fastest decoders here, on the same pool: torchvision's libjpeg-turbo for small JPEGs,
  OpenCV ``imdecode`` for the rest (JPEGs DCT-scaled to the draft's scale, PNGs at full size). The *decode floor*
  of a set is the fastest of the three decode-only contenders, named in the verdict.
- ``imagededup PHash``: ``PHash().encode_images(dir, num_enc_workers=2)`` then ``find_duplicates`` in its own
  venv (``benchmarks/baselines.py``); times measured inside the child around the library calls.

Also reported: CPU seconds per image (user + system of the process and its reaped workers), robust to other
load, and a single-process split of where one fingerprint's time goes (read, decode, digests, hashes, detail).

The wallpaper set has 73 files (< 256), so ``compute_fingerprints`` uses one process there and imagededup,
which hands out files in chunks of 100, also uses one; the "×4" rows list every wallpaper 4 times (292
samples, warm page cache) so that both start their two workers.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common_timing import fmt_rate, fmt_s, interleaved, load_line, md_table, median  # noqa: E402

WORKERS = 2


# -- decode-only baselines (module level so a Pool can pickle them) --------------------------------------


def _decode_full(path: str) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size[0] * im.size[1]


def _decode_draft(path: str, side: int = 256) -> int:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if im.format == "JPEG" and min(w, h) > 2 * side:
            scale = min(w, h) / side
            im.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
        im.load()
        return im.size[0] * im.size[1]


def _decode_native(path: str, side: int = 256) -> int:
    """The fastest decoder here for the file: libjpeg-turbo through torchvision for small JPEGs, OpenCV's
    DCT-scaled ``IMREAD_REDUCED_COLOR_*`` (the same scale as Pillow's draft) for large ones, OpenCV for PNG."""
    import cv2
    import numpy as np
    from PIL import Image

    data = Path(path).read_bytes()
    if data[:3] == b"\xff\xd8\xff":
        if len(data) < 64 * 1024:
            import torch
            from torchvision.io import decode_jpeg

            image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return image.shape[1] * image.shape[2]
        with Image.open(io.BytesIO(data)) as im:  # header only: the scale Pillow's draft would pick
            ratio = min(im.size) // side
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}.get(
            min(8, 1 << (max(ratio, 1).bit_length() - 1)) if ratio >= 2 else 1, cv2.IMREAD_COLOR)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return image.shape[0] * image.shape[1]


def _pool_init() -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def cpu_seconds() -> float:
    """User + system seconds of this process and of its reaped children (pool and DataLoader workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def pool_decode(files: list[str], fn: Any, chunksize: int) -> int:
    ctx = mp.get_context("fork")
    with ctx.Pool(WORKERS, initializer=_pool_init) as pool:
        total = sum(pool.imap_unordered(fn, files, chunksize=chunksize))
    return total


def fingerprint(dataset: Any) -> tuple[int, int]:
    from vdc_torch.fingerprints.compute import compute_fingerprints

    table, problems = compute_fingerprints(dataset, workers=WORKERS)
    return len(table), sum(p.fatal for p in problems)


def imagededup(directory: Path, recursive: bool) -> dict[str, Any]:
    from baselines import imagededup_run

    r = imagededup_run(directory, "PHash", num_enc_workers=WORKERS, num_dist_workers=WORKERS, recursive=recursive)
    r.pop("encodings", None)
    r.pop("duplicates", None)
    return r


# -- data --------------------------------------------------------------------------------------------------


def link_tree(files: list[Path], dest: Path, copies: int = 1) -> Path:
    """Symlinks to ``files`` in ``dest`` (``copies`` times, under distinct names): one flat folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for i, f in enumerate(files):
            (dest / f"c{c}_{i:05d}_{f.name}").symlink_to(f.resolve())
    return dest


def warm(files: list[str]) -> int:
    """Read every file once so all contenders start from a warm page cache."""
    return sum(len(Path(f).read_bytes()) for f in files)


def stage_split(files: list[str], limit: int) -> list[list[Any]]:
    """Single-process time per image of each part of one fingerprint, in the order vdc_torch does them.

    ``decode_file`` is replayed step by step (read, byte digest, Pillow open + draft + load, conversion to
    an RGB uint8 array with alpha composited on white, pixel digest), then ``fingerprint_decoded`` minus the
    pixel digest it computes itself. Also the whole ``decode_file`` + ``fingerprint_decoded`` for reference.
    """
    import cv2
    from PIL import Image

    from vdc_torch.data.decode import DEFAULT_DECODE_SIDE, decode_file, digest, pixel_digest, to_rgb_array
    from vdc_torch.fingerprints.compute import fingerprint_decoded

    cv2.setNumThreads(1)
    names = ("read file", "byte digest (BLAKE2b of the file)", "Pillow open + draft + load",
             "to_rgb_array (mode conversion, alpha on white)", "pixel digest (BLAKE3 of the pixels)",
             "fingerprint_decoded without its pixel digest", "total of the parts",
             "decode_file + fingerprint_decoded as shipped")
    parts: dict[str, list[float]] = {k: [] for k in names}
    for path in files[:limit]:
        t0 = time.perf_counter()
        data = Path(path).read_bytes()
        t1 = time.perf_counter()
        digest(data)
        t2 = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if im.format == "JPEG" and min(w, h) > 2 * DEFAULT_DECODE_SIDE:
                scale = min(w, h) / DEFAULT_DECODE_SIDE
                im.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
            im.load()
            t3 = time.perf_counter()
            pixels = to_rgb_array(im)
        t4 = time.perf_counter()
        pixel_digest(pixels)
        t5 = time.perf_counter()
        decoded = decode_file(path)
        t6 = time.perf_counter()
        fingerprint_decoded(decoded)
        t7 = time.perf_counter()
        fp = (t7 - t6) - (t5 - t4)
        for k, v in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, fp, t5 - t0 + fp, None)):
            if v is not None:
                parts[k].append(v)
        t8 = time.perf_counter()
        fingerprint_decoded(decode_file(path))
        parts[names[-1]].append(time.perf_counter() - t8)
    total = sum(parts["total of the parts"])
    return [[k, f"{1000 * sum(v) / len(v):.2f}", f"{100 * sum(v) / total:.0f} %"] for k, v in parts.items()]


def fingerprint_profile(files: list[str], limit: int) -> str:
    """cProfile of fingerprint_decoded on decoded images: its top functions by own time."""
    import cProfile
    import pstats

    import cv2

    from vdc_torch.data.decode import decode_file
    from vdc_torch.fingerprints.compute import fingerprint_decoded

    cv2.setNumThreads(1)
    decoded = [decode_file(f) for f in files[:limit]]
    prof = cProfile.Profile()
    prof.enable()
    for d in decoded:
        fingerprint_decoded(d)
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, callers) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]:
        where = f"{Path(fname).name}:{line}" if fname != "~" else "builtin"
        rows.append([f"`{func}`", where, nc, f"{1000 * tt / len(decoded):.3f}", f"{100 * tt / total:.0f} %"])
    return md_table(["function", "where", "calls", "own ms / image", "share"], rows)


# -- one data set ------------------------------------------------------------------------------------------


def bench_set(label: str, files: list[str], dataset: Any, ided_dir: Path, ided_recursive: bool,
              repeats: int, chunksize: int, pixels: float, with_imagededup: bool = True) -> dict[str, Any]:
    print(f"\n== {label}: {len(files):,} files, {pixels / 1e6:,.0f} MP ({load_line()}) ==", flush=True)
    warm(files)
    results: dict[str, Any] = {}
    cpu: dict[str, list[float]] = {}

    def with_cpu(name: str, fn: Any) -> Any:
        def run() -> Any:
            c0 = cpu_seconds()
            out = fn()
            cpu.setdefault(name, []).append(cpu_seconds() - c0)
            return out
        return run

    fns = {
        "fingerprint": with_cpu("fingerprint", lambda: fingerprint(dataset)),
        "decode full": with_cpu("decode full", lambda: pool_decode(files, _decode_full, chunksize)),
        "decode draft": with_cpu("decode draft", lambda: pool_decode(files, _decode_draft, chunksize)),
        "decode native": with_cpu("decode native", lambda: pool_decode(files, _decode_native, chunksize)),
    }
    ided_rounds: list[dict[str, Any]] = []
    if with_imagededup:
        fns["imagededup PHash"] = lambda: ided_rounds.append(imagededup(ided_dir, ided_recursive)) or ided_rounds[-1]
    times = interleaved(fns, repeats=repeats, results=results)
    out: dict[str, Any] = {"label": label, "n": len(files), "mp": pixels / 1e6, "times": times, "cpu": cpu}
    if with_imagededup:
        # the child's wall time includes interpreter start-up: use the figures measured inside, median of rounds
        r = dict(ided_rounds[-1])
        for key in ("encode_s", "find_s", "encode_cpu_s", "process_s"):
            r[key] = median([x[key] for x in ided_rounds if x.get(key) is not None])
        r["encode_rounds"] = [x["encode_s"] for x in ided_rounds]
        out["imagededup"] = r
    fp_n, fp_bad = results["fingerprint"]
    out["fingerprinted"] = fp_n
    out["unreadable"] = fp_bad
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cifar", type=int, default=10_000, help="CIFAR-10 files (test split, then train)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--skip-x4", action="store_true", help="skip the wallpapers x4 rows")
    args = parser.parse_args()

    from datasets import cifar10_files, wallpaper_files
    from PIL import Image

    from vdc_torch import Dataset

    start_load = load_line()
    tmp = Path(tempfile.mkdtemp(prefix="vdc-speed-fp-"))
    sets = []
    try:
        walls = wallpaper_files()
        wall_mp = 0.0
        for f in walls:
            with Image.open(f) as im:
                wall_mp += im.size[0] * im.size[1]
        wall_dir = link_tree(walls, tmp / "walls")
        wall_files = sorted(str(p) for p in wall_dir.iterdir())
        sets.append(bench_set("wallpapers", wall_files, Dataset(str(wall_dir)), wall_dir, False,
                              args.repeats, chunksize=1, pixels=wall_mp))
        if not args.skip_x4:
            x4_dir = link_tree(walls, tmp / "walls_x4", copies=4)
            x4_files = sorted(str(p) for p in x4_dir.iterdir())
            sets.append(bench_set("wallpapers ×4 (292 samples)", x4_files, Dataset(str(x4_dir)), x4_dir, False,
                                  args.repeats, chunksize=1, pixels=4 * wall_mp))
            # by format: JPEG photos can be decoded DCT-scaled, PNG always decodes every pixel
            for suffix, kind in ((".jpg", "JPEG"), (".png", "PNG")):
                subset = [f for f in walls if f.suffix.lower() == suffix]
                sub_dir = link_tree(subset, tmp / f"walls_x4{suffix}", copies=4)
                sub_files = sorted(str(p) for p in sub_dir.iterdir())
                sub_mp = 0.0
                for f in subset:
                    with Image.open(f) as im:
                        sub_mp += 4 * im.size[0] * im.size[1]
                sets.append(bench_set(f"wallpaper {kind}s ×4 ({len(sub_files)} samples)", sub_files,
                                      Dataset(str(sub_dir)), sub_dir, False, args.repeats, chunksize=1, pixels=sub_mp))
        cifar = cifar10_files("test") + cifar10_files("train")
        cifar = cifar[: args.cifar]
        cifar_dir = tmp / "cifar"
        for f in cifar:  # keep the class folder: names repeat across classes
            (cifar_dir / f.parent.name).mkdir(parents=True, exist_ok=True)
            (cifar_dir / f.parent.name / f"{f.parent.parent.name}_{f.name}").symlink_to(f)
        cifar_files = sorted(str(p) for p in cifar_dir.glob("*/*"))
        sets.append(bench_set(f"CIFAR-10 ({len(cifar_files):,} files)", cifar_files, Dataset(str(cifar_dir)),
                              cifar_dir, True, args.repeats, chunksize=64, pixels=len(cifar_files) * 1024.0))

        print("\n== single-process split of one fingerprint ==", flush=True)
        split_walls = stage_split(wall_files, len(wall_files))
        split_cifar = stage_split(cifar_files, 2000)
        prof_walls = fingerprint_profile(wall_files, len(wall_files))
        prof_cifar = fingerprint_profile(cifar_files, 2000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows, verdict = [], []
    for s in sets:
        n = s["n"]
        t = {k: median(v) for k, v in s["times"].items()}
        c = {k: median(v) for k, v in s["cpu"].items()}
        ided = s["imagededup"]
        fp_rate = n / t["fingerprint"]
        full_rate = n / t["decode full"]
        draft_rate = n / t["decode draft"]
        native_rate = n / t["decode native"]
        floor_name, floor_rate = max((("Pillow full", full_rate), ("Pillow draft", draft_rate),
                                      ("OpenCV/torchvision", native_rate)), key=lambda kv: kv[1])
        enc_rate = ided["n_images"] / ided["encode_s"]
        rows.append([
            s["label"], f"{n:,}",
            fmt_rate(fp_rate), fmt_rate(full_rate), fmt_rate(draft_rate), fmt_rate(native_rate), fmt_rate(enc_rate),
            f"**{fp_rate / floor_rate:.0%}** ({floor_name})", f"{fp_rate / full_rate:.0%}", f"{fp_rate / enc_rate:.1f}×",
            fmt_s(ided["find_s"]),
        ])
        cpu_row = [s["label"], f"{1000 * c['fingerprint'] / n:.2f}", f"{1000 * c['decode full'] / n:.2f}",
                   f"{1000 * c['decode draft'] / n:.2f}", f"{1000 * c['decode native'] / n:.2f}",
                   f"{1000 * ided.get('encode_cpu_s', float('nan')) / ided['n_images']:.2f}"]
        s["cpu_row"] = cpu_row
        s["rates"] = (fp_rate, full_rate, draft_rate, native_rate, enc_rate)
        floor_cpu = min(c["decode full"], c["decode draft"], c["decode native"])
        verdict.append(
            f"- {s['label']}: fingerprinting {fmt_rate(fp_rate)} images/s = **{fp_rate / floor_rate:.0%}** of the "
            f"decode floor ({floor_name}, {fmt_rate(floor_rate)} images/s; "
            f"{'met' if fp_rate >= 0.9 * floor_rate else 'not met'}, target ≥ 90 %), "
            f"**{fp_rate / enc_rate:.1f}×** imagededup PHash encode"
            + f"; on CPU time per image (robust to the other load): {floor_cpu / c['fingerprint']:.0%} of the "
              f"cheapest decode, {ided.get('encode_cpu_s', float('nan')) / ided['n_images'] / (c['fingerprint'] / n):.2f}× "
              "imagededup."
        )
    head = ["files", "n", "fingerprint img/s", "decode full img/s", "decode draft img/s", "decode native img/s",
            "imagededup encode img/s", "fp / decode floor", "fp / decode full", "fp / imagededup",
            "imagededup find_duplicates s"]
    table = md_table(head, rows)
    cpu_table = md_table(["files", "fingerprint", "decode full", "decode draft", "decode native", "imagededup encode"],
                         [s["cpu_row"] for s in sets])
    raw = md_table(
        ["files", "contender", "wall s per round", "CPU s per round"],
        [[s["label"], k, ", ".join(f"{x:.2f}" for x in v), ", ".join(f"{x:.1f}" for x in s["cpu"].get(k, []))]
         for s in sets for k, v in s["times"].items()],
    )
    ided_rows = [[s["label"], s["imagededup"]["n_images"],
                  ", ".join(f"{x:.2f}" for x in s["imagededup"]["encode_rounds"])
                  + f" → {s['imagededup']['encode_s']:.2f}",
                  fmt_s(s["imagededup"]["find_s"]), fmt_s(s["imagededup"].get("process_s"))] for s in sets]
    body = "\n".join([
        f"Same files, same {WORKERS} worker processes, warm page cache; medians of {args.repeats} interleaved "
        f"rounds (fingerprint, decode full, decode draft, decode native, imagededup). Machine load at start: {start_load}; "
        f"at end: {load_line()}. Run: `python benchmarks/speed_fingerprint.py`.",
        "",
        "### Verdict",
        "",
        *verdict,
        "",
        "### Throughput (wall clock)",
        "",
        table,
        "",
        "`fingerprint` = `compute_fingerprints(Dataset, workers=2)` (in-process below 256 samples, so on the "
        "73 wallpapers it used one core while the decode baselines used two); `decode full` = Pillow open + "
        "load at full size on a 2-process Pool; `decode draft` = the same with JPEG DCT scaling as "
        "`vdc_torch.data.decode` does it; `decode native` = torchvision's libjpeg-turbo for JPEGs under 64 KB, "
        "OpenCV `imdecode` for the rest (JPEGs DCT-scaled like the draft, PNGs in full); the decode floor is the "
        "fastest of the three; imagededup = `PHash().encode_images(num_enc_workers=2)`, encode time "
        "measured inside its child (imagededup hands files out in chunks of 100, so ≤ 100 files use one worker).",
        "",
        "### CPU milliseconds per image (user + system, all processes)",
        "",
        cpu_table,
        "",
        "### Where one fingerprint's time goes (single process, ms per image)",
        "",
        "Wallpapers:",
        "",
        md_table(["part", "ms / image", "share"], split_walls),
        "",
        "CIFAR-10 (2,000 files):",
        "",
        md_table(["part", "ms / image", "share"], split_cifar),
        "",
        "Top functions inside `fingerprint_decoded` (cProfile, own time), wallpapers:",
        "",
        prof_walls,
        "",
        "CIFAR-10:",
        "",
        prof_cifar,
        "",
        "### imagededup runs",
        "",
        md_table(["files", "images encoded", "encode s per round → median", "find_duplicates s (median)",
                  "child process s (median)"], ided_rows),
        "",
        "### Raw rounds",
        "",
        raw,
    ])
    print("\n" + body)
    if not args.no_write:
        from datasets import write_results_section

        print("wrote", write_results_section("fingerprint_throughput", "Fingerprinting throughput", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
