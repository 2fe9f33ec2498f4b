"""A longer, seeded fuzz run of the two untrusted-input parsers: image decoding and manifest loading.

``tests/test_fuzz.py`` runs a few hundred hypothesis examples on every CI run; this script runs tens of thousands
of mutated inputs (a few minutes on 2 cores) and writes the counts to benchmarks/results/fuzzing.md:

* **decode** — real images from ``shared/data`` (camera JPEGs with full EXIF, the malformed-EXIF and invalid
  samples, TIFFs) and synthetic ones in every format the decoder meets (PNG 8/16-bit, RGBA, palette, WebP, BMP,
  animated GIF, multi-page TIFF, CMYK JPEG), each mutated by byte flips, overwrites with boundary values,
  insertions, deletions, truncations, splices of two files and EXIF-targeted edits. Every input must give a valid
  ``DecodedImage`` (uint8 (H, W, 3) pixels) or an ``ImageDecodeError``; anything else is a **crash**.
* **manifest** — a real manifest damaged by flips, truncations, zeroed or swapped pages and insertions. Every input
  must load *exactly* the saved content or raise ``ManifestError``; loading different content is a **wrong load**,
  any other exception a **crash**.
* **forged** — the same manifest forged at the schema level (:data:`FORGERIES`: triggers, views, generated columns,
  dropped or duplicated parts, forged shapes, dtypes, meta, details, paths), with every part digest and the
  checksum recomputed as a save does; each is loaded and every stored value read. Anything but ``ManifestError`` or
  the genuine content is a crash; a forgery that loads other content is listed (a checksum is not a MAC).

Input ``i`` is derived from ``(seed, i)`` alone, so any crash is reproduced with ``--only I``; crashing inputs are
saved under ``benchmarks/out/fuzz/``. Work is spread over worker processes; a worker that dies (a crash in C code)
is counted as a crash and replaced.

Example::

    python benchmarks/fuzz.py                           # 60000 decode + 8000 manifest inputs, seed 0 (~3 min)
    python benchmarks/fuzz.py --count 2000 --manifest-count 300 --no-write   # a quick look
    python benchmarks/fuzz.py --only 1234 --seed 0      # re-run one decode input and show the traceback
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import io
import json
import multiprocessing
import os
import random
import re
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # `datasets` is our sibling module
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import REPO_ROOT, shared_root, write_results_section

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

OUT = REPO_ROOT / "benchmarks" / "out" / "fuzz"
MAX_SEED_BYTES = 1_500_000  # larger shared files make each input slow without exercising more code
BOUNDARY_VALUES = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00", b"\xff\xff\xff\x7f",
                   b"\x00\x00\x01\x00", b"\xff\xd8", b"\xff\xd9", b"\xff\xda", b"\x89PNG")


# -- seeds --------------------------------------------------------------------------------------------------------


def shared_seed_files() -> list[Path]:
    """Real files from shared/data: camera JPEGs, malformed-EXIF and invalid samples, TIFFs, a HEIC."""
    root = shared_root() / "exif-samples"
    files = sorted((root / "jpg").rglob("*.jp*g")) + sorted((root / "tiff").glob("*.tif*"))
    files += sorted((root / "heic").glob("*.heif"))
    return [f for f in files if f.stat().st_size <= MAX_SEED_BYTES]


def synthetic_seeds() -> dict[str, bytes]:
    """One small image in every format and mode the decoder has a code path for."""
    import numpy as np
    from PIL import Image

    with Image.open(shared_root() / "exif-samples" / "jpg" / "Canon_40D.jpg") as im:
        rgb = im.convert("RGB")

    def save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
        buffer = io.BytesIO()  # copies: a save may leave encoder settings on the images it wrote
        if "append_images" in kwargs:
            kwargs["append_images"] = [i.copy() for i in kwargs["append_images"]]  # type: ignore[attr-defined]
        image.copy().save(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    return {
        "png": save(rgb, "PNG"),
        "png16": save(gray16, "PNG"),
        "rgba.png": save(rgba, "PNG"),
        "palette.png": save(rgb.convert("P", palette=Image.ADAPTIVE), "PNG", transparency=3),
        "webp": save(rgb, "WEBP", quality=70),
        "bmp": save(rgb, "BMP"),
        "anim.gif": save(rgb, "GIF", save_all=True, append_images=[rgb.rotate(90), rgb.rotate(180)], duration=40),
        "pages.tiff": save(rgb, "TIFF", save_all=True, append_images=[rgba, rgb.convert("L")],
                           compression="tiff_lzw"),
        "cmyk.jpg": save(rgb.convert("CMYK"), "JPEG", quality=90),
        "progressive.jpg": save(rgb, "JPEG", quality=85, progressive=True),
    }


_SEEDS: list[tuple[str, bytes]] = []


def _load_seeds() -> None:
    if not _SEEDS:
        _SEEDS.extend((p.name, p.read_bytes()) for p in shared_seed_files())
        _SEEDS.extend(synthetic_seeds().items())


# -- mutations ----------------------------------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, other: bytes) -> tuple[bytes, str]:
    """Apply 1-8 random edits; returns the new bytes and a short description of the edits."""
    blob = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(("flip", "flip", "boundary", "insert", "delete", "truncate", "splice", "exif", "repeat"))
        at = rng.randrange(len(blob)) if blob else 0
        if kind == "flip" and blob:
            blob[at] ^= 1 << rng.randrange(8)
        elif kind == "boundary":
            value = rng.choice(BOUNDARY_VALUES)
            blob[at : at + len(value)] = value
        elif kind == "insert":
            blob[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == "delete":
            del blob[at : at + rng.randint(1, 256)]
        elif kind == "truncate":
            del blob[at:]
        elif kind == "splice" and other:
            start = rng.randrange(len(other))
            blob[at:] = other[start : start + rng.randint(16, 4096)]
        elif kind == "exif":  # aim at the EXIF block when there is one
            start = bytes(blob).find(b"Exif\x00\x00")
            if start >= 0:
                spot = min(len(blob) - 1, start + 6 + rng.randrange(512))
                blob[spot] = rng.randrange(256)
        elif kind == "repeat" and blob:
            chunk = blob[at : at + rng.randint(1, 32)]
            blob[at:at] = chunk * rng.randint(2, 200)
        done.append(kind)
    return bytes(blob), "+".join(done)


def decode_input(seed: int, index: int) -> tuple[str, bytes, str]:
    """Input ``index`` of run ``seed``: (seed file name, bytes, edits)."""
    rng = random.Random(f"decode:{seed}:{index}")
    name, data = _SEEDS[rng.randrange(len(_SEEDS))]
    other = _SEEDS[rng.randrange(len(_SEEDS))][1]
    mutated, edits = mutate(data, rng, other) if rng.random() > 0.02 else (data, "none")
    return name, mutated, edits


# -- running ------------------------------------------------------------------------------------------------------


@dataclass
class Counts:
    """Outcome counts of one fuzz target."""

    inputs: int = 0
    ok: int = 0
    clean: int = 0
    crashes: int = 0
    wrong: int = 0
    slowest_s: float = 0.0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    crash_notes: list[str] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.inputs += other.inputs
        self.ok += other.ok
        self.clean += other.clean
        self.crashes += other.crashes
        self.wrong += other.wrong
        self.slowest_s = max(self.slowest_s, other.slowest_s)
        self.reasons.update(other.reasons)
        self.crash_notes.extend(other.crash_notes)


def _reason_kind(message: str) -> str:
    """The reason of an error message without the file name and the variable details."""
    if message.startswith("fuzz: "):  # decode: "fuzz: reason (details)"
        text = re.sub(r"\s*\(.*", "", message[len("fuzz: "):])
    else:  # manifest: "'<path>' reason (details)"
        text = re.sub(r"'[^']*'", "…", message)
    return re.sub(r"\d+", "N", text).strip()[:120]


def _save_crash(target: str, seed: int, index: int, data: bytes, note: str) -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{target}-seed{seed}-{index}.bin"
    path.write_bytes(data)
    return f"{target} input {index}: {note} (saved to {path.relative_to(REPO_ROOT)})"


def run_decode_chunk(seed: int, start: int, stop: int) -> Counts:
    """Decode inputs ``start..stop-1``; never raises."""
    import numpy as np

    from vdc_torch.data.decode import DecodedImage, decode_bytes
    from vdc_torch.errors import ImageDecodeError

    _load_seeds()
    counts = Counts()
    for index in range(start, stop):
        name, data, edits = decode_input(seed, index)
        counts.inputs += 1
        began = time.perf_counter()
        try:
            decoded = decode_bytes(data, name="fuzz")
            p = decoded.pixels
            valid = (isinstance(decoded, DecodedImage) and isinstance(p, np.ndarray) and p.dtype == np.uint8
                     and p.ndim == 3 and p.shape[2] == 3 and p.size > 0)
            if valid:
                counts.ok += 1
            else:
                counts.crashes += 1
                counts.crash_notes.append(_save_crash("decode", seed, index, data, f"invalid result from {name}"))
        except ImageDecodeError as exc:
            counts.clean += 1
            counts.reasons[_reason_kind(str(exc))] += 1
        except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer is looking for
            counts.crashes += 1
            note = f"{type(exc).__name__}: {exc} (seed file {name}, edits {edits})"
            counts.crash_notes.append(_save_crash("decode", seed, index, data, note))
        counts.slowest_s = max(counts.slowest_s, time.perf_counter() - began)
    return counts


def _manifest_seed(folder: Path) -> tuple[bytes, list[tuple]]:
    from vdc_torch import DatasetGate
    from vdc_torch.decision.store.manifest import save_manifest

    reference = folder / "reference"
    reference.mkdir()
    photos = sorted((shared_root() / "exif-samples" / "jpg").glob("*.jpg"))[:6]
    for path in photos:
        (reference / path.name).write_bytes(path.read_bytes())
    table = DatasetGate(reference=str(reference), workers=0).reference_table
    path = save_manifest(folder / "seed.vdc", table, {"reference_root": str(reference)})
    return path.read_bytes(), _rows(table)


def _rows(table: object) -> list[tuple]:
    t = table
    return [(t.paths[i], t.labels[i], t.pixel_digest[i], t.byte_digest[i], t.thumbs[i].tobytes(), t.details[i],
             int(t.phash[i]), int(t.phash_mirror[i]), t.crop_hashes[i].tobytes(), int(t.width[i]),
             int(t.height[i]), t.exif_identity[i], t.file_size[i], t.mtime_ns[i], t.extra_hashes[i])
            for i in range(len(t))]


def damage(data: bytes, rng: random.Random) -> bytes:
    """Damage a manifest the ways disks, transfers and people do."""
    blob = bytearray(data)
    page = 4096
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("flip", "flip", "flips", "truncate", "zero-page", "swap-pages", "insert", "overwrite"))
        at = rng.randrange(len(blob)) if blob else 0
        if kind == "flip" and blob:
            blob[at] ^= 1 << rng.randrange(8)
        elif kind == "flips":
            for _ in range(rng.randint(2, 64)):
                if blob:
                    blob[rng.randrange(len(blob))] = rng.randrange(256)
        elif kind == "truncate":
            del blob[at:]
        elif kind == "zero-page":
            first = at - at % page
            blob[first : first + page] = bytes(len(blob[first : first + page]))
        elif kind == "swap-pages" and len(blob) >= 2 * page:
            a, b = rng.randrange(len(blob) // page), rng.randrange(len(blob) // page)
            pa, pb = bytes(blob[a * page : (a + 1) * page]), bytes(blob[b * page : (b + 1) * page])
            blob[a * page : (a + 1) * page], blob[b * page : (b + 1) * page] = pb, pa
        elif kind == "insert":
            blob[at:at] = rng.randbytes(rng.randint(1, 300))
        elif kind == "overwrite":
            chunk = rng.randbytes(rng.randint(1, 64))
            blob[at : at + len(chunk)] = chunk
    return bytes(blob)


#: Schema-level forgeries: SQL run on a genuine manifest, after which every part digest and the checksum are
#: recomputed exactly as a save computes them, so only the loader's structural checks can refuse the result.
FORGERIES: tuple[tuple[str, str], ...] = (
    ("trigger", "CREATE TRIGGER t AFTER INSERT ON meta BEGIN SELECT 1; END;"),
    ("view", "CREATE VIEW v AS SELECT hex(zeroblob(1000)) AS value;"),
    ("extra index", "CREATE INDEX i ON parts (digest);"),
    ("extra table", "CREATE TABLE notes (x TEXT);"),
    ("generated meta", "ALTER TABLE meta RENAME TO m0; CREATE TABLE meta (key TEXT PRIMARY KEY, raw TEXT NOT NULL, "
                       "value TEXT NOT NULL GENERATED ALWAYS AS (raw || hex(zeroblob(1000))) VIRTUAL); "
                       "INSERT INTO meta (key, raw) SELECT key, value FROM m0; DROP TABLE m0;"),
    ("generated parts", "ALTER TABLE parts RENAME TO p0; CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT NOT "
                        "NULL, part INTEGER NOT NULL, raw BLOB, data BLOB NOT NULL GENERATED ALWAYS AS (raw) STORED, "
                        "digest TEXT NOT NULL, UNIQUE (name, part)); INSERT INTO parts (id, name, part, raw, digest) "
                        "SELECT id, name, part, data, digest FROM p0; DROP TABLE p0;"),
    ("without rowid", "ALTER TABLE meta RENAME TO m0; CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) "
                      "WITHOUT ROWID; INSERT INTO meta SELECT * FROM m0; DROP TABLE m0;"),
    ("drop checksum", "DROP TABLE checksum;"),
    ("drop a part", "DELETE FROM parts WHERE id = (SELECT max(id) FROM parts);"),
    ("duplicate a part", "INSERT INTO parts (name, part, data, digest) SELECT name, part + 1000, data, digest FROM "
                         "parts WHERE id = 1;"),
    ("shape +1", "UPDATE columns SET shape = json_set(shape, '$[0]', json_extract(shape, '$[0]') + 1) WHERE name = "
                 "(SELECT name FROM columns ORDER BY random() LIMIT 1);"),
    ("shape huge", "UPDATE columns SET shape = '[4000000000]' WHERE name = (SELECT name FROM columns ORDER BY "
                   "random() LIMIT 1);"),
    ("dtype", "UPDATE columns SET dtype = (SELECT value FROM json_each('[\"<f8\",\"|O\",\"<u2\",\"x\",\"<i8\"]') "
              "ORDER BY random() LIMIT 1) WHERE name = (SELECT name FROM columns ORDER BY random() LIMIT 1);"),
    ("meta samples", "UPDATE meta SET value = (SELECT value FROM json_each('[\"\\\"5\\\"\",\"-1\",\"1e30\",\"null\","
                     "\"[]\"]') ORDER BY random() LIMIT 1) WHERE key = 'samples';"),
    ("meta version", "UPDATE meta SET value = '99' WHERE key = (SELECT value FROM json_each('[\"format_version\","
                     "\"fingerprint_version\"]') ORDER BY random() LIMIT 1);"),
    ("meta deep", "INSERT INTO meta VALUES ('deep', '" + "[" * 100_000 + "]" * 100_000 + "');"),
    ("part junk", "UPDATE parts SET data = randomblob(length(data)) WHERE id = (SELECT id FROM parts ORDER BY "
                  "random() LIMIT 1);"),
    ("part shorter", "UPDATE parts SET data = substr(data, 1, length(data) / 2) WHERE id = (SELECT id FROM parts "
                     "ORDER BY random() LIMIT 1);"),
    ("part text", "UPDATE parts SET data = CAST(data AS TEXT) WHERE id = (SELECT id FROM parts ORDER BY random() "
                  "LIMIT 1);"),
    ("detail junk", "UPDATE parts SET data = randomblob(length(data)) WHERE name = 'details.data';"),
    ("detail header", "UPDATE parts SET data = X'FFD8FFC0000B08FFFFFFFF0101110000' || substr(data, 17) WHERE name = "
                      "'details.data' AND part = 0;"),
    ("path escape", "UPDATE parts SET data = CAST(replace(CAST(data AS TEXT), 'reference/', '../../../') AS BLOB) "
                    "WHERE name = 'paths.data';"),
)


def forge(data: bytes, rng: random.Random, folder: Path) -> tuple[bytes, str]:
    """One to three :data:`FORGERIES` on ``data``, with part digests and the checksum recomputed (valid)."""
    import sqlite3

    from vdc_torch.decision.store.manifest import _content_digest_v2
    from vdc_torch.decision.store.stored import part_digest

    path = folder / "forging.vdc"
    path.write_bytes(data)
    names = []
    connection = sqlite3.connect(path)
    try:
        for _ in range(rng.randint(1, 3)):
            name, script = rng.choice(FORGERIES)
            names.append(name)
            try:
                connection.executescript(script)
            except sqlite3.Error:
                names[-1] += " (no-op)"  # e.g. a second schema rewrite of a table already rewritten
        connection.execute("PRAGMA writable_schema = OFF")
        has_data = "data" in [r[1] for r in connection.execute("PRAGMA table_xinfo(parts)")]
        writable = "raw" not in [r[1] for r in connection.execute("PRAGMA table_xinfo(parts)")]
        if has_data and writable:
            for part_id, blob in connection.execute("SELECT id, data FROM parts").fetchall():
                if isinstance(blob, bytes):
                    connection.execute("UPDATE parts SET digest = ? WHERE id = ?", (part_digest(blob), part_id))
        meta_rows = connection.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        described = []
        for column, dtype, shape in connection.execute("SELECT name, dtype, shape FROM columns").fetchall():
            parts = connection.execute("SELECT part, length(data), digest FROM parts WHERE name = ? ORDER BY part",
                                       (column,)).fetchall()
            try:
                described.append([column, dtype, json.loads(shape), [list(p) for p in parts]])
            except ValueError:
                described.append([column, dtype, shape, [list(p) for p in parts]])
        connection.execute("CREATE TABLE IF NOT EXISTS checksum (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("INSERT OR REPLACE INTO checksum VALUES ('content', ?)",
                           (_content_digest_v2(meta_rows, described),))
        connection.commit()
    except sqlite3.Error as exc:
        names.append(f"(checksum not recomputed: {type(exc).__name__})")
    finally:
        connection.close()
    return path.read_bytes(), ", ".join(names)


def run_manifest_chunk(seed: int, start: int, stop: int, original: bytes, expected: list[tuple],
                       forged: bool = False) -> Counts:
    """Load damaged (``forged``: forged, with valid checksums) manifests ``start..stop-1`` and read every stored
    value; never raises. A forgery that loads is counted *accepted* (``wrong``) when its content differs: valid
    checksums make some edits (a reordered part) legitimately loadable, so each is listed, never hidden."""
    from vdc_torch.decision.store.manifest import load_manifest
    from vdc_torch.errors import ManifestError

    counts = Counts()
    with tempfile.TemporaryDirectory(prefix="vdc-fuzz-") as folder:
        path = Path(folder) / "damaged.vdc"
        for index in range(start, stop):
            rng = random.Random(f"{'forged' if forged else 'manifest'}:{seed}:{index}")
            data, edits = forge(original, rng, Path(folder)) if forged else (damage(original, rng), "damage")
            path.write_bytes(data)
            counts.inputs += 1
            began = time.perf_counter()
            try:
                table, _ = load_manifest(path)
                if _rows(table) == expected:
                    counts.ok += 1
                else:
                    counts.wrong += 1
                    counts.crash_notes.append(_save_crash("manifest", seed, index, data,
                                                          f"loaded different content ({edits})"))
            except ManifestError as exc:
                counts.clean += 1
                counts.reasons[_reason_kind(str(exc))] += 1
            except BaseException as exc:  # noqa: BLE001
                counts.crashes += 1
                counts.crash_notes.append(_save_crash("manifest", seed, index, data,
                                                      f"{type(exc).__name__}: {str(exc)[:300]} ({edits})"))
            counts.slowest_s = max(counts.slowest_s, time.perf_counter() - began)
    return counts


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def run_parallel(fn: object, seed: int, total: int, workers: int, extra: tuple = (), chunk: int = 250) -> Counts:
    """Run ``fn(seed, start, stop, *extra)`` over chunks on worker processes; a dead worker counts as a crash."""
    counts = Counts()
    pending = list(chunks(total, chunk))
    while pending:
        # spawn: the main process has imported torch (threads), which forked children may inherit locked
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(fn, seed, a, b, *extra): (a, b) for a, b in pending}
            pending = []
            broken = False
            for future in concurrent.futures.as_completed(futures):
                a, b = futures[future]
                try:
                    counts.add(future.result())
                except concurrent.futures.process.BrokenProcessPool:
                    if not broken:  # the first dead chunk is the culprit; the others were collateral
                        counts.inputs += b - a
                        counts.crashes += 1
                        counts.crash_notes.append(f"worker process died in inputs {a}..{b - 1} (run --only to find it)")
                        broken = True
                    else:
                        pending.append((a, b))
        print(f"  {counts.inputs}/{total} inputs, {counts.crashes} crashes", flush=True)
    return counts


# -- report -------------------------------------------------------------------------------------------------------


def markdown(decode: Counts, manifest: Counts, forged: Counts, seed: int, seconds: float, seeds: int) -> str:
    rows = [
        "| target | inputs | valid result | clean error | crashes | wrong content loaded | slowest input |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in (("`decode_bytes` (mutated images)", decode), ("`load_manifest` (damaged manifests)", manifest),
                    ("`load_manifest` + every value read (forged schema/parts, valid checksums)", forged)):
        rows.append(f"| {name} | {c.inputs} | {c.ok} | {c.clean} | {c.crashes} | "
                    f"{c.wrong if c is not decode else '–'} | {c.slowest_s * 1000:.0f} ms |")
    real = len(shared_seed_files())
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest finished worker
    intro = (
        f"Seed {seed}; {seeds} seed images ({real} real files from shared/data and {seeds - real} synthetic, every "
        f"format and mode); {seconds:.0f} s in total; peak memory of a worker process {worker_mb:.0f} MB. "
        "A *crash* is any outcome other than a valid result or the one documented error "
        "(`ImageDecodeError`, `ManifestError`); a *wrong load* is a damaged manifest that loads with different "
        f"content. Reproduce with `python benchmarks/fuzz.py --seed {seed}` (input *i* depends only on the seed "
        "and *i*; `--only I` re-runs one decode input)."
    )
    lines = [
        intro,
        "",
        *rows,
        "",
        "### Most frequent clean decode errors",
        "",
        "| reason | inputs |",
        "|---|---:|",
        *[f"| {reason} | {n} |" for reason, n in decode.reasons.most_common(10)],
        "",
        "### Most frequent manifest refusals",
        "",
        "| reason | inputs |",
        "|---|---:|",
        *[f"| {reason} | {n} |" for reason, n in manifest.reasons.most_common(6)],
        "",
        "### Most frequent refusals of forged manifests",
        "",
        "| reason | inputs |",
        "|---|---:|",
        *[f"| {reason} | {n} |" for reason, n in forged.reasons.most_common(10)],
    ]
    notes = decode.crash_notes + manifest.crash_notes + forged.crash_notes
    if notes:
        lines += ["", "### Crashes and accepted forgeries (a forgery that loads other content)", "",
                  *[f"- {note}" for note in notes[:20]]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="run seed (input i depends only on seed and i)")
    parser.add_argument("--count", type=int, default=60000, help="mutated images to decode")
    parser.add_argument("--manifest-count", type=int, default=8000, help="damaged manifests to load")
    parser.add_argument("--forged-count", type=int, default=2000, help="forged manifests (valid checksums) to load")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="worker processes")
    parser.add_argument("--only", type=int, default=None, help="re-run one decode input and print its traceback")
    parser.add_argument("--no-write", action="store_true",
                        help="print the results, do not touch benchmarks/results/fuzzing.md")
    args = parser.parse_args(argv)
    _load_seeds()
    if args.only is not None:
        from vdc_torch.data.decode import decode_bytes

        name, data, edits = decode_input(args.seed, args.only)
        print(f"input {args.only}: seed file {name}, edits {edits}, {len(data)} bytes")
        try:
            decoded = decode_bytes(data, name="fuzz")
            print("valid:", decoded.pixels.shape, decoded.pixels.dtype, decoded.warnings)
        except Exception:  # noqa: BLE001 - show whatever it is
            traceback.print_exc()
        return 0
    began = time.perf_counter()
    print(f"decode: {args.count} inputs from {len(_SEEDS)} seeds on {args.workers} workers", flush=True)
    decode = run_parallel(run_decode_chunk, args.seed, args.count, args.workers)
    with tempfile.TemporaryDirectory(prefix="vdc-fuzz-seed-") as folder:
        original, expected = _manifest_seed(Path(folder))
    print(f"manifest: {args.manifest_count} inputs from a {len(original)}-byte manifest", flush=True)
    manifest = run_parallel(run_manifest_chunk, args.seed, args.manifest_count, args.workers, (original, expected),
                            chunk=100)
    print(f"forged: {args.forged_count} schema-level forgeries with valid checksums", flush=True)
    forged = run_parallel(run_manifest_chunk, args.seed, args.forged_count, args.workers,
                          (original, expected, True), chunk=100)
    body = markdown(decode, manifest, forged, args.seed, time.perf_counter() - began, len(_SEEDS))
    print(body)
    if not args.no_write:
        print("wrote", write_results_section("fuzzing", "Fuzzing untrusted inputs (decode and manifest)", body))
    return 1 if decode.crashes or manifest.crashes or manifest.wrong or forged.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
