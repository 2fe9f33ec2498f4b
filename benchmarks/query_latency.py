"""Latency of ``gate.query`` (one image, and batches of 32) against large loaded references.

Run::

    PYTHONPATH=. python benchmarks/query_latency.py                   # 100k and 1M references (~10 min)
    PYTHONPATH=. python benchmarks/query_latency.py --sizes 100000 --no-write

The reference is a synthetic fingerprint table shaped like a real one (``speed_matching.make_tables``: random
pHashes, crop hashes and thumbnails) with 20 real camera photos (exif-samples) planted in it, saved as a manifest
and loaded with ``DatasetGate.load`` (thumbnails and details stay on disk until read). The queries are files:
re-encoded, resized copies of the 20 planted photos (must be seen, with the right reference) and 20 other photos
(must be new). Timed per call, decode and fingerprint included, after the first call (which builds the kept
indexes; its time is reported apart). Baseline in the same run: the same one-image query matched the way a
check matches, building the reference's indexes for the call (``ReferenceIndex(keep=False)``).
Targets (issue 18): one image against 1M references p50 <= 50 ms, p99 <= 200 ms.
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common_timing import current_rss_mb, md_table  # noqa: E402
from datasets import exif_sample_files, write_results_section  # noqa: E402
from speed_matching import make_tables  # noqa: E402

from vdc_torch import DatasetGate  # noqa: E402
from vdc_torch.decision.query import query_reference  # noqa: E402
from vdc_torch.decision.store.manifest import save_manifest  # noqa: E402
from vdc_torch.fingerprints.compute import FingerprintTable, fingerprint_stream  # noqa: E402
from vdc_torch.fingerprints.per_image import encode_detail  # noqa: E402
from vdc_torch.search.reference_index import ReferenceIndex  # noqa: E402

PLANTED = 20
BATCH = 32


def photos() -> list[Path]:
    files = []
    for f in exif_sample_files():
        try:
            with Image.open(f) as im:
                im.convert("RGB").load()
            files.append(f)
        except Exception:  # noqa: BLE001 - damaged samples are not queries
            continue
    if len(files) < 2 * PLANTED:
        raise SystemExit(f"need {2 * PLANTED} readable exif-samples photos, found {len(files)}")
    return files[: 2 * PLANTED]


def planted_table(files: list[Path], first_index: int) -> FingerprintTable:
    table, problems = fingerprint_stream((i, str(f), str(f)) for i, f in enumerate(files))
    assert not [p for p in problems if p.fatal], problems
    table.paths = [f"planted/{files[i].name}" for i in table.sample_index.tolist()]
    table.labels = [None] * len(table)
    table.sample_index = table.sample_index + first_index
    return table


def query_files(files: list[Path], out: Path) -> tuple[list[Path], dict[str, str]]:
    """Copies of the planted photos (resized to 60 %, JPEG 75) and the other photos as they are."""
    queries, expected = [], {}
    for i, f in enumerate(files[:PLANTED]):
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        rgb = rgb.resize((max(8, rgb.width * 3 // 5), max(8, rgb.height * 3 // 5)), Image.BICUBIC)
        target = out / f"copy_{i:02d}.jpg"
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=75)
        target.write_bytes(buf.getvalue())
        queries.append(target)
        expected[str(target)] = f"planted/{f.name}"
    queries += files[PLANTED:]
    return queries, expected


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def bench(n_ref: int, files: list[Path], work: Path, rounds: int, baseline_reps: int) -> dict:
    _, ref, _ = make_tables(n_ref, 0, seed=1)
    # a detail image of the stored format (make_tables' 8x8 PNG is refused by the detail check of a manifest)
    ref.details = [encode_detail(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))] * n_ref
    ref = FingerprintTable.concat([ref, planted_table(files[:PLANTED], n_ref)])
    manifest = work / f"ref_{n_ref}.vdc"
    save_manifest(manifest, ref, {})
    del ref
    gc.collect()
    started = time.perf_counter()
    gate = DatasetGate.load(manifest)
    load_s = time.perf_counter() - started
    rss_loaded = current_rss_mb()
    queries, expected = query_files(files, work)

    started = time.perf_counter()
    first = gate.query(queries[0])
    first_s = time.perf_counter() - started
    # warm every kept index (the first call builds only those its stages reached)
    gate.query(queries)
    rss_kept = current_rss_mb()

    wrong = 0
    singles: list[float] = []
    for _ in range(rounds):
        for q in queries:
            t = time.perf_counter()
            answer = gate.query(q)
            singles.append(time.perf_counter() - t)
            want = expected.get(str(q))
            got = answer["ref_path"].iloc[0] if bool(answer["seen"].iloc[0]) else None
            wrong += got != want
    rng = np.random.default_rng(0)
    batches: list[float] = []
    for _ in range(rounds * 5):
        pick = [queries[i] for i in rng.choice(len(queries), size=BATCH, replace=True)]
        t = time.perf_counter()
        gate.query(pick)
        batches.append(time.perf_counter() - t)

    decode: list[float] = []  # the query's own decode + fingerprint, the floor under its latency
    for q in queries:
        t = time.perf_counter()
        fingerprint_stream([(0, str(q), str(q))])
        decode.append(time.perf_counter() - t)
    baseline: list[float] = []
    table = gate.reference_table
    for q in queries[:baseline_reps]:
        t = time.perf_counter()
        query_reference(ReferenceIndex(table), q, gate.config, gate.policy.counted_kinds)
        baseline.append(time.perf_counter() - t)
    return {"n_ref": n_ref, "load_s": load_s, "first_s": first_s, "first_seen": bool(first["seen"].iloc[0]),
            "singles": singles, "batches": batches, "baseline": baseline, "decode": decode, "wrong": wrong,
            "queries": len(queries) * rounds, "kept_mb": rss_kept - rss_loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-reps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    files = photos()
    rows = []
    wall = time.perf_counter()
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="vdc-query-") as tmp:
            r = bench(n, files, Path(tmp), args.rounds, args.baseline_reps)
        p50, p99 = percentiles(r["singles"])
        b50, b99 = percentiles(r["batches"])
        base = float(np.median(r["baseline"]))
        rows.append([f"{n + PLANTED:,}", f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} ms",
                     f"{float(np.median(r['decode'])) * 1e3:.1f} ms", f"{b50 * 1e3:.0f} / {b99 * 1e3:.0f} ms",
                     f"{b50 / BATCH * 1e3:.1f} ms", f"{base * 1e3:,.0f} ms (**{base / p50:,.0f}×**)",
                     f"{r['first_s']:.1f} s", f"{r['kept_mb']:,.0f} MB", f"{r['load_s']:.1f} s",
                     f"{r['wrong']} of {r['queries']}"])
        print(rows[-1], flush=True)
        gc.collect()
    header = ["reference rows", "1 image p50 / p99", "its decode + fingerprint (median)", f"{BATCH} images p50 / p99", "per image in a batch",
              "baseline: 1 image, indexes built per call (median)", "first query (builds indexes)",
              "kept indexes (RSS)", "load", "wrong answers"]
    body = (f"`PYTHONPATH=. python benchmarks/query_latency.py --sizes {args.sizes} --rounds {args.rounds}` "
            f"({time.perf_counter() - wall:.0f} s wall). Reference: synthetic fingerprints + {PLANTED} planted camera "
            f"photos, loaded from a manifest. Queries: {PLANTED} resized JPEG copies of the planted photos and "
            f"{PLANTED} other photos (exif-samples, up to 3,000 px), each timed with its decode and fingerprint; "
            f"{args.rounds} rounds of the 40 single queries, {args.rounds * 5} batches of {BATCH}. A wrong answer is "
            f"a copy not found (or found with another reference) or a new photo called seen.\n\n"
            + md_table(header, rows))
    print(body)
    if not args.no_write:
        print(write_results_section("query_latency", "Query latency against a loaded reference", body))


if __name__ == "__main__":
    main()
