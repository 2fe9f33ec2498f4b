"""What saving an updated reference costs: today's full rewrite against a sharded append, in the same run.

Run::

    PYTHONPATH=. python benchmarks/update_cost.py                      # 1M reference + 10k new (~5 min, ~7 GB disk)
    PYTHONPATH=. python benchmarks/update_cost.py --n-ref 100000 --no-write

The reference is a synthetic fingerprint table shaped like a real one (``speed_matching.make_tables``: random
pHashes, crop hashes and 32×32×3 thumbnails; one 8×8 raw detail image per row, as ``query_latency.py`` uses), saved once as a single-file manifest
and once as a sharded one (setup, timed apart). Each is loaded (thumbnails and details stay on disk) and grown by
the same ``--n-new`` rows as ``DatasetGate.update`` grows it (:func:`concat_tables`, lazy columns kept lazy), then
saved:

(a) **full rewrite** — ``save_manifest`` writes every row into a new file and renames it over the old one (what
    ``gate.save`` does for a single-file manifest);
(b) **sharded append** — ``save_sharded_manifest(..., append_after=...)`` writes one shard of the added rows and
    replaces the small index (what ``gate.save`` does for a gate loaded from a sharded manifest).

Time is wall-clock of the save call (fsyncs included); bytes are what the process passed to ``write`` (``wchar`` of
``/proc/self/io``) and what reached the block layer (``write_bytes``), both as deltas over the call. Appends are
repeated ``--rounds`` times (the index is put back between rounds, the extra shard removed; median reported).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common_timing import current_rss_mb, md_table  # noqa: E402
from datasets import write_results_section  # noqa: E402
from speed_matching import make_tables  # noqa: E402

from vdc_torch.decision.store.concat import concat_tables  # noqa: E402
from vdc_torch.decision.store.manifest import (  # noqa: E402
    load_manifest_origin,
    manifest_info,
    save_manifest,
    save_sharded_manifest,
)
from vdc_torch.fingerprints.per_image import encode_detail  # noqa: E402

META = {"reference_root": "/data/ref"}


def io_counters() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def measured(fn: Any) -> tuple[Any, float, int, int]:
    """``fn()``'s result, seconds, bytes written (wchar) and bytes sent to storage (write_bytes)."""
    gc.collect()
    before = io_counters()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    after = io_counters()
    return result, seconds, after["wchar"] - before["wchar"], after["write_bytes"] - before["write_bytes"]


def grown(path: Path, new: Any) -> tuple[Any, Any]:
    """The manifest at ``path`` loaded and grown by ``new`` as ``DatasetGate.update`` grows it."""
    table, meta, origin = load_manifest_origin(path)
    added = new.rows(range(len(new)))
    added.sample_index = added.sample_index + int(table.sample_index.max()) + 1
    return concat_tables([table, added]), origin


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def bench(n_ref: int, n_new: int, folder: Path, rounds: int) -> dict[str, Any]:
    started = time.perf_counter()
    new, ref, _ = make_tables(n_ref, n_new, seed=0)
    detail = encode_detail(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))  # as query_latency
    ref.details, new.details = [detail] * n_ref, [detail] * n_new  # (make_tables' PNG is not a stored detail)
    build_s = time.perf_counter() - started
    single, split = folder / "single.vdc", folder / "sharded.vdc"
    _, single_setup_s, _, _ = measured(partial(save_manifest, single, ref, META))
    _, sharded_setup_s, _, _ = measured(partial(save_sharded_manifest, split, ref, META))
    file_bytes = single.stat().st_size
    del ref
    gc.collect()
    print(f"built {n_ref:,} + {n_new:,} rows in {build_s:.0f} s; saved single {single_setup_s:.1f} s, sharded "
          f"{sharded_setup_s:.1f} s; {mb(single.stat().st_size)} on disk, RSS {current_rss_mb():,.0f} MB", flush=True)

    appends = []
    for _ in range(rounds):
        index_before = split.read_bytes()
        shards_before = set(os.listdir(folder / "sharded.vdc.shards"))
        table, origin = grown(split, new)
        result, seconds, wchar, to_disk = measured(partial(
            save_sharded_manifest, split, table, META, append_after=(origin.lineage, origin.rows)))
        assert result.appended and result.shards == 2 and manifest_info(split)["shards"] == 2
        assert len(load_manifest_origin(split)[0]) == n_ref + n_new
        appends.append((seconds, wchar, to_disk, result.bytes_written))
        print(f"sharded append: {seconds:.3f} s, {mb(wchar)} written", flush=True)
        del table
        split.write_bytes(index_before)  # back to one shard for the next round
        for extra in set(os.listdir(folder / "sharded.vdc.shards")) - shards_before:
            os.unlink(folder / "sharded.vdc.shards" / extra)

    table, _ = grown(single, new)
    _, rewrite_s, rewrite_wchar, rewrite_disk = measured(partial(save_manifest, single, table, META))
    del table
    assert len(load_manifest_origin(single)[0]) == n_ref + n_new
    print(f"full rewrite: {rewrite_s:.1f} s, {mb(rewrite_wchar)} written", flush=True)
    append_s = statistics.median(a[0] for a in appends)
    append_wchar = statistics.median(a[1] for a in appends)
    append_disk = statistics.median(a[2] for a in appends)
    return {"build_s": build_s, "single_setup_s": single_setup_s, "sharded_setup_s": sharded_setup_s,
            "file_bytes": file_bytes, "rewrite_s": rewrite_s, "rewrite_wchar": rewrite_wchar,
            "rewrite_disk": rewrite_disk, "append_s": append_s, "append_wchar": append_wchar,
            "append_disk": append_disk, "append_files": statistics.median(a[3] for a in appends),
            "append_all_s": [a[0] for a in appends]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ref", type=int, default=1_000_000)
    parser.add_argument("--n-new", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the manifests go (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vdc-update-", dir=args.dir) as tmp:
        r = bench(args.n_ref, args.n_new, Path(tmp), args.rounds)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        ["(a) full rewrite (`save_manifest`)", f"{r['rewrite_s']:.2f} s", mb(r["rewrite_wchar"]),
         mb(r["rewrite_disk"])],
        ["(b) sharded append (one new shard + index)", f"{r['append_s']:.3f} s", mb(r["append_wchar"]),
         mb(r["append_disk"])],
        ["**(a) / (b)**", f"**{r['rewrite_s'] / r['append_s']:,.0f}×**",
         f"**{r['rewrite_wchar'] / max(r['append_wchar'], 1):,.0f}×**",
         f"**{r['rewrite_disk'] / max(r['append_disk'], 1):,.0f}×**"],
    ]
    body = (f"`PYTHONPATH=. python benchmarks/update_cost.py --n-ref {args.n_ref} --n-new {args.n_new} "
            f"--rounds {args.rounds}` ({time.perf_counter() - wall:.0f} s wall). A {args.n_ref:,}-row synthetic "
            f"reference (`make_tables`; single-file manifest {mb(r['file_bytes'])}) loaded and grown by "
            f"{args.n_new:,} rows as `gate.update` grows it, then saved. Time: the save call, fsyncs included "
            f"(append: median of {args.rounds}: {', '.join(f'{s:.3f}' for s in r['append_all_s'])} s). Bytes: "
            "`wchar` (passed to write) and `write_bytes` (sent to storage) of `/proc/self/io` over the call. Target "
            "(issue 18): at least 20× less time and bytes.\n\n"
            + md_table(["save after update", "time", "bytes written", "bytes to storage"], rows)
            + f"\n\nSetup, not part of the comparison: building the tables {r['build_s']:.0f} s, the first save "
            f"{r['single_setup_s']:.0f} s (single file) and {r['sharded_setup_s']:.0f} s (sharded, one shard). "
            f"The append's new shard and index hold {mb(r['append_files'])}.")
    print(body)
    if not args.no_write:
        print(write_results_section("update_cost", "Saving an updated reference: full rewrite vs sharded append",
                                    body))


if __name__ == "__main__":
    main()
