"""A reference split across 1, 2 and 4 gloo ranks on this machine: wall time, peak memory per rank, bytes exchanged,
and whether every run gives the same match table.

Run::

    PYTHONPATH=. python benchmarks/scale_ranks.py                                  # 4M reference x 100k new
    PYTHONPATH=. python benchmarks/scale_ranks.py --n-ref 400000 --n-new 20000 --no-write

Each rank builds only its own part of a synthetic reference (consecutive rows, generated block by block from seeded
generators, so any rank can build any block; shaped like ``speed_matching.make_tables``: random pHashes, mirror
and crop hashes, digests; CIFAR-sized pictures, so the alignment stages do not run) and the new table (1 % exact
copies, 3 % near-duplicates, 0.5 % mirror images of reference rows spread over the whole reference), of which it
keeps its share, rows ``rank, rank + W, ...`` — what a rank holds after fingerprinting its share of a drop. It then
runs the distributed check's cross matching, ``match_split_drop(drop, part, shard, MatchConfig(use_features=False),
internal=False)`` (the drop gathered 16,384 rows at a time, each chunk matched against the rank's part; the
configuration of the 1M x 100k matching benchmark), under ``torchrun --nproc_per_node=W``; W = 1 runs
``match_tables(new, part, ...)`` on the whole table, as one process does. Thumbnails of the reference are generated
on demand (a column that makes a row's thumbnail from its seed), since 4M stored thumbnails would be 12 GB: the
cascade only reads the thumbnails of candidate pairs. Peak memory is ``VmHWM`` restarted after the part is built,
so it is the matching's, with the part and the rank's share of the drop held; bytes are what each rank sent and
received through the collectives (the drop's chunks among them). The match table's SHA-256 must be the same for
every W.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common_timing import current_rss_mb, md_table, peak_rss_mb, reset_peak_rss  # noqa: E402

BLOCK = 65_536  # reference rows per generated block


class GeneratedThumbs:
    """Reference thumbnails made on demand: row ``i``'s is drawn from a generator seeded with ``(seed, i)``."""

    def __init__(self, rows: np.ndarray, seed: int) -> None:
        self.global_rows = np.asarray(rows, np.int64)
        self.seed = seed
        self.shape = (len(self.global_rows), 32, 32, 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.global_rows)

    def __getitem__(self, rows: Any) -> np.ndarray:
        picked = self.global_rows[rows]
        if np.ndim(picked) == 0:
            return thumb_of(int(picked), self.seed)
        return np.stack([thumb_of(int(r), self.seed) for r in picked]) if len(picked) else \
            np.zeros((0, 32, 32, 3), np.uint8)

    def take(self, rows: np.ndarray) -> GeneratedThumbs:
        return GeneratedThumbs(self.global_rows[rows], self.seed)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[np.arange(len(self))]


def thumb_of(row: int, seed: int) -> np.ndarray:
    return np.random.default_rng((seed, 7, row)).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def reference_block(block: int, n_ref: int, seed: int) -> dict[str, Any]:
    """Columns of reference rows ``block * BLOCK ...`` (the same on any rank)."""
    start, stop = block * BLOCK, min(n_ref, (block + 1) * BLOCK)
    rng = np.random.default_rng((seed, 1, block))
    n = stop - start
    from vdc_torch.fingerprints.compute import CROP_BOXES

    return {
        "phash": rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True),
        "phash_mirror": rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True),
        "crop_hashes": rng.integers(0, 2**64 - 1, size=(n, len(CROP_BOXES)), dtype=np.uint64, endpoint=True),
        "byte_digest": [bytes(rng.bytes(16)) for _ in range(n)],
        "pixel_digest": [bytes(rng.bytes(16)) for _ in range(n)],
    }


def table_of(columns: dict[str, Any], rows: np.ndarray, thumbs: Any, prefix: str) -> Any:
    from vdc_torch.fingerprints.compute import FingerprintTable
    from vdc_torch.fingerprints.per_image import encode_detail

    n = len(rows)
    detail = encode_detail(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))
    values = {
        "sample_index": np.asarray(rows, np.int64), "paths": [f"{prefix}/{i:08d}.jpg" for i in rows.tolist()],
        "labels": [None] * n, "width": np.full(n, 32, np.int32), "height": np.full(n, 32, np.int32),
        "exif_identity": [None] * n, "phash_whole": columns["phash"], "thumbs": thumbs, "details": [detail] * n,
        "file_size": [None] * n, "mtime_ns": [None] * n, "extra_hashes": [{}] * n, **columns,
    }
    import dataclasses

    return FingerprintTable(**{f.name: values[f.name] for f in dataclasses.fields(FingerprintTable)
                               if f.name in values})


def flip_bits(codes: np.ndarray, rng: np.random.Generator, most: int) -> np.ndarray:
    out = codes.copy()
    for i in range(len(out)):
        for bit in rng.choice(64, size=int(rng.integers(0, most + 1)), replace=False).tolist():
            out[i] ^= np.uint64(1) << np.uint64(bit)
    return out


def new_table(n_ref: int, n_new: int, seed: int) -> Any:
    """The new table (the same on every rank): random rows, and copies of reference rows."""
    rng = np.random.default_rng((seed, 2))
    columns = {
        "phash": rng.integers(0, 2**64 - 1, size=n_new, dtype=np.uint64, endpoint=True),
        "phash_mirror": rng.integers(0, 2**64 - 1, size=n_new, dtype=np.uint64, endpoint=True),
        "crop_hashes": rng.integers(0, 2**64 - 1, size=(n_new, 27), dtype=np.uint64, endpoint=True),
        "byte_digest": [bytes(rng.bytes(16)) for _ in range(n_new)],
        "pixel_digest": [bytes(rng.bytes(16)) for _ in range(n_new)],
    }
    thumbs = rng.integers(0, 256, (n_new, 32, 32, 3), dtype=np.uint8)
    n_exact, n_near, n_mirror = int(n_new * 0.01), int(n_new * 0.03), int(n_new * 0.005)
    rows = rng.permutation(n_new)[: n_exact + n_near + n_mirror]
    sources = rng.integers(0, n_ref, size=len(rows))
    kinds = np.arange(len(rows))  # 0..n_exact-1 exact, then near-duplicates, then mirrors
    by_block = np.argsort(sources // BLOCK, kind="stable")  # each reference block generated once
    block_id, block = -1, {}
    for i in by_block.tolist():
        row, src = int(rows[i]), int(sources[i])
        if src // BLOCK != block_id:
            block_id = src // BLOCK
            block = reference_block(block_id, n_ref, seed)
        at = src % BLOCK
        i = int(kinds[i])
        ref_thumb = thumb_of(src, seed)
        if i < n_exact:
            for key in ("phash", "phash_mirror", "byte_digest", "pixel_digest"):
                columns[key][row] = block[key][at]
            thumbs[row] = ref_thumb
        elif i < n_exact + n_near:
            columns["phash"][row] = flip_bits(block["phash"][at : at + 1], rng, 8)[0]
            thumbs[row] = np.clip(ref_thumb.astype(np.float32) + rng.normal(0, 4, ref_thumb.shape), 0, 255)
        else:
            columns["phash_mirror"][row] = flip_bits(block["phash"][at : at + 1], rng, 8)[0]
            thumbs[row] = ref_thumb[:, ::-1]
    return table_of(columns, np.arange(n_new), thumbs, "new"), {"exact": n_exact, "near": n_near,
                                                                 "mirror": n_mirror}


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from vdc_torch import collective
    from vdc_torch.fingerprints.compute import FingerprintTable
    from vdc_torch.search.cascade import MatchConfig, match_tables
    from vdc_torch.search.shards import ReferenceShard
    from vdc_torch.search.split_drop import SplitDrop, match_split_drop

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # the program before any data: torch, the process group, vdc_torch's matching code and the compiled Hamming
    # loop loaded (one tiny search); the same on every rank whatever the reference size
    from vdc_torch.search.mih import MultiIndexHashing

    MultiIndexHashing(np.arange(64, dtype=np.uint64)).search(np.arange(4, dtype=np.uint64), 4, engine="numba")
    base_mb = current_rss_mb()
    started = time.perf_counter()
    lo, hi = rank * args.n_ref // world, (rank + 1) * args.n_ref // world
    parts = []
    for block in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
        columns = reference_block(block, args.n_ref, args.seed)
        first = block * BLOCK
        keep = slice(max(lo, first) - first, min(hi, first + BLOCK) - first)
        columns = {k: (v[keep] if isinstance(v, np.ndarray) else v[keep]) for k, v in columns.items()}
        rows = np.arange(max(lo, first), min(hi, first + BLOCK))
        parts.append(table_of(columns, rows, np.zeros((0,)), "ref"))
    part = FingerprintTable.concat([p for p in parts]) if parts else None
    part.thumbs = GeneratedThumbs(np.arange(lo, hi), args.seed)
    new, truth = new_table(args.n_ref, args.n_new, args.seed)
    if world > 1:  # a rank keeps its share of the drop, as after fingerprinting it (the check gathers it in chunks)
        own_rows = np.arange(rank, args.n_new, world)
        drop = SplitDrop(new.rows(own_rows), own_rows, args.n_new)
        del new
    build_s = time.perf_counter() - started
    dist.barrier()
    reset_peak_rss()
    held_mb = current_rss_mb()
    sent0, received0 = collective.traffic["sent"], collective.traffic["received"]
    started = time.perf_counter()
    shard = ReferenceShard.across_ranks(np.arange(lo, hi), part)
    config = MatchConfig(use_features=False)
    if world > 1:
        matches, _ = match_split_drop(drop, part, shard, config, internal=False)
    else:
        matches = match_tables(new, part, config)
    match_s = time.perf_counter() - started
    match_peak_mb = peak_rss_mb()
    dist.barrier()
    gather_peak_mb = match_peak_mb
    if world > 1:  # what the check does next: the drop gathered whole for the decision, matching's memory gone
        reset_peak_rss()
        packed = drop.packed()
        del drop
        whole = packed.whole()
        gather_peak_mb = peak_rss_mb()
        del whole
    dist.barrier()
    text = matches.to_json(orient="split", double_precision=15)
    result = {"rank": rank, "world": world, "rows": hi - lo, "build_s": build_s, "match_s": match_s,
              "base_mb": base_mb, "held_mb": held_mb, "peak_mb": max(match_peak_mb, gather_peak_mb),
              "match_peak_mb": match_peak_mb, "gather_peak_mb": gather_peak_mb, "sent": collective.traffic["sent"] - sent0,
              "received": collective.traffic["received"] - received0, "matches": len(matches),
              "kinds": matches["kind"].value_counts().to_dict() if len(matches) else {},
              "sha256": hashlib.sha256(text.encode()).hexdigest(), "truth": truth}
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="vdc-scale-") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={world}", __file__, "--worker", "--out", out,
                               "--n-ref", str(args.n_ref), "--n-new", str(args.n_new), "--seed", str(args.seed)],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"W={world} failed:\n{done.stderr[-4000:]}")
        results = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    for r in results:
        r["wall_s"] = wall
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ref", type=int, default=4_000_000)
    parser.add_argument("--n-new", type=int, default=100_000)
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs = {}
    for world in (int(w) for w in args.ranks.split(",")):
        runs[world] = run(world, args)
        r = runs[world]
        print(f"W={world}: match {max(x['match_s'] for x in r):.1f} s, peak per rank "
              f"{max(x['peak_mb'] for x in r):,.0f} MB (program {max(x['base_mb'] for x in r):,.0f} MB), sent {max(x['sent'] for x in r) / 2**20:.1f} MB, "
              f"{r[0]['matches']} matches {r[0]['kinds']}, sha {r[0]['sha256'][:12]}", flush=True)
    base = runs[min(runs)]
    single_peak = max(x["peak_mb"] for x in base)
    single_data = max(x["peak_mb"] - x["base_mb"] for x in base)
    rows = []
    for world, r in runs.items():
        peak = max(x["peak_mb"] for x in r)
        data = max(x["peak_mb"] - x["base_mb"] for x in r)
        rows.append([str(world), f"{max(x['rows'] for x in r):,}", f"{max(x['match_s'] for x in r):.1f} s",
                     f"{max(x['match_peak_mb'] for x in r):,.0f} MB",
                     f"{max(x['gather_peak_mb'] for x in r):,.0f} MB" if world > 1 else "–",
                     f"{peak:,.0f} MB", f"{single_peak / world + 300:,.0f} MB",
                     f"{max(x['base_mb'] for x in r):,.0f} MB", f"{data:,.0f} MB",
                     f"{single_data / world + 300:,.0f} MB" + ("" if data <= single_data / world + 300 else " (missed)"),
                     f"{max(x['held_mb'] for x in r):,.0f} MB",
                     f"{sum(x['sent'] for x in r) / 2**20:,.1f} MB", f"{max(x['received'] for x in r) / 2**20:,.1f} MB",
                     "yes" if all(x["sha256"] == base[0]["sha256"] for x in r) else "**NO**"])
    truth = base[0]["truth"]
    body = (f"`PYTHONPATH=. python benchmarks/scale_ranks.py --n-ref {args.n_ref} --n-new {args.n_new} --ranks "
            f"{args.ranks}`: a {args.n_ref:,}-row synthetic reference split across W gloo ranks on this machine's "
            f"2 cores, {args.n_new:,} new rows ({truth['exact']:,} exact copies, {truth['near']:,} near-duplicates, "
            f"{truth['mirror']:,} mirror images of reference rows), `MatchConfig(use_features=False)`. Match time "
            "is the slowest rank's matching call (`match_split_drop`: the drop gathered in chunks; W=1: `match_tables`); "
            "peak is `VmHWM` over the call (the part and the rank's share of the new table held; the column *held* "
            "is the RSS before it), and then over what the check does next with W > 1, gathering the whole drop for "
            "the decision (`SplitDrop.packed().whole()`, matching's working memory gone); *peak per rank* is the larger of the "
            "two. *Program* is a rank's RSS before it builds any data "
            "(torch, the process group, vdc_torch's matching code and its compiled Hamming loop loaded), and *data* "
            "is the peak above it, the memory that grows with the reference and the drop. Sent is the sum over "
            "ranks, received the largest (the drop's chunks for matching and for the decision among them). "
            f"Every run found {base[0]['matches']:,} matches ({base[0]['kinds']}).\n\n"
            + md_table(["ranks W", "reference rows per rank", "match time", "peak matching",
                        "peak gathering the drop", "peak per rank",
                        "1/W of W=1 + 300 MB", "program", "data (peak above program)",
                        "target on data (1/W of W=1 + 300 MB)", "held before matching", "bytes sent (all ranks)",
                        "bytes received (per rank)", "same match table as W=1"], rows)
            + "\n\nWith more ranks than cores the ranks share the 2 cores, so time does not fall past W=2 here; "
            "what the split buys on one machine is memory per rank, and on N machines both.")
    print(body)
    if not args.no_write:
        from datasets import write_results_section

        print(write_results_section("scale_ranks", "A reference split across ranks", body))


if __name__ == "__main__":
    main()
