"""Red team: hostile manifests and caches with *valid* checksums, each loaded in a capped child process.

A checksum is not a MAC: whoever rewrites a manifest can recompute it. Every forgery here starts from a genuine
manifest of real photos (``shared/data``), is rewritten with ``sqlite3`` and gets its checksum recomputed exactly the
way :mod:`vdc_torch.decision.store.manifest` computes it, so only the schema check, the stored-detail check and the
cache rules stand between it and the loader. Each hostile load runs in a child process under a memory cap
(``RLIMIT_AS`` 1.5 GiB) and a time cap, and must end in one :class:`ManifestError` naming the file and what is wrong.
Save hardening (lock symlinks, stale temp files, unwritable folders) is checked in-process: those never allocate.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import EXIF_JPG, REPO

from vdc_torch import DatasetGate, ManifestError
from vdc_torch.decision.store import manifest as manifest_module
from vdc_torch.decision.store.cache import CACHE_KIND, FingerprintCache
from vdc_torch.decision.store.manifest import load_manifest, lock_path, save_manifest
from vdc_torch.fingerprints.compute import FingerprintTable

#: Memory and time caps of each hostile load: address space it may add after its imports, and seconds in all.
MEMORY_CAP = 2**30
TIME_CAP_S = 30.0
LOAD_BUDGET_S = 2.0

#: Characters SQLite's ``hex(zeroblob(N))`` makes: 2 N zeros; this N makes 800 MB strings, five of them 4 GB.
BOMB = 400_000_000


# -- genuine manifests ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real camera photos in one class folder."""
    root = tmp_path_factory.mktemp("reference")
    (root / "cats").mkdir()
    for path in [p for p in sorted(EXIF_JPG.glob("*.jpg")) if p.name != "corrupted.jpg"][:6]:
        shutil.copy(path, root / "cats" / path.name)
    return root


@pytest.fixture(scope="module")
def genuine(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest saved by the library (format version 2)."""
    return DatasetGate(reference=str(reference), workers=0).save(tmp_path_factory.mktemp("genuine") / "ref.vdc")


def copy_of(genuine: Path, folder: Path, name: str = "forged.vdc") -> Path:
    target = folder / name
    shutil.copy(genuine, target)
    return target


# -- forging with valid checksums ----------------------------------------------------------------------------------


def described_parts(connection: sqlite3.Connection, data_column: str = "data") -> list[list[Any]]:
    """Every column's ``[name, dtype, shape, [[part, length, digest], ...]]``, as the loader lists them."""
    listing = []
    for name, dtype, shape in connection.execute("SELECT name, dtype, shape FROM columns").fetchall():
        parts = connection.execute(f"SELECT part, length({data_column}), digest FROM parts WHERE name = ? "
                                   "ORDER BY part", (name,)).fetchall()
        listing.append([name, dtype, json.loads(shape), [list(p) for p in parts]])
    return listing


def recompute_checksum(path: Path, meta_rows: list[tuple[str, str]] | None = None,
                       described: list[list[Any]] | None = None, bomb: tuple[str, int] | None = None) -> None:
    """Write the checksum the loader expects for ``path`` (version 2): meta rows and part listing as given, else
    read from the file. ``bomb``: ``(placeholder, n)`` — the placeholder inside a meta value stands for ``n`` zeros
    (streamed into the hash, never built in memory)."""
    with sqlite3.connect(path) as connection:
        if meta_rows is None:
            meta_rows = connection.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        if described is None:
            described = described_parts(connection)
        text = json.dumps([list(r) for r in meta_rows])
        digest = __import__("hashlib").blake2b(digest_size=16)
        if bomb is None:
            digest.update(text.encode())
        else:
            before, after = text.split(bomb[0])
            digest.update(before.encode())
            for start in range(0, bomb[1], 1 << 24):
                digest.update(b"0" * min(1 << 24, bomb[1] - start))
            digest.update(after.encode())
        digest.update(json.dumps(sorted(described)).encode())
        connection.execute("CREATE TABLE IF NOT EXISTS checksum (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("INSERT OR REPLACE INTO checksum VALUES ('content', ?)", (digest.hexdigest(),))


def forge(path: Path, script: str) -> Path:
    """Run ``script`` on ``path`` and recompute its checksum."""
    with sqlite3.connect(path) as connection:
        connection.executescript(script)
    recompute_checksum(path)
    return path


def rebuild_table(table: str, create: str, columns: str) -> str:
    """SQL replacing ``table`` by the one ``create`` makes, keeping its rows (``columns``: the ones copied)."""
    return (f"ALTER TABLE {table} RENAME TO {table}_old; {create}; "
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_old; DROP TABLE {table}_old;")


def meta_bomb(path: Path) -> Path:
    """meta.value a VIRTUAL generated column: five extra keys each evaluate to an 800 MB JSON string."""
    create = ("CREATE TABLE meta (key TEXT PRIMARY KEY, raw TEXT NOT NULL, value TEXT NOT NULL GENERATED ALWAYS AS "
              f"(CASE WHEN key LIKE 'zz%' THEN '\"' || hex(zeroblob({BOMB})) || '\"' ELSE raw END) VIRTUAL)")
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        connection.executescript(f"ALTER TABLE meta RENAME TO meta_old; {create}; INSERT INTO meta (key, raw) "
                                 "SELECT key, value FROM meta_old; DROP TABLE meta_old;")
        connection.execute("INSERT INTO meta (key, raw) VALUES ('zz0', '')")
    # one bomb key keeps the streamed checksum simple; the loader meets it before anything else
    recompute_checksum(path, meta_rows=[*rows, ("zz0", json.dumps("@BOMB@"))], bomb=("@BOMB@", 2 * BOMB))
    return path


def parts_bomb(path: Path) -> Path:
    """parts.data a VIRTUAL generated column: every part evaluates to 800 MB (its digest and checksum match)."""
    create = ("CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, part INTEGER NOT NULL, raw BLOB, "
              f"data BLOB NOT NULL GENERATED ALWAYS AS (hex(zeroblob({BOMB}))) VIRTUAL, digest TEXT NOT NULL, "
              "UNIQUE (name, part))")
    crc = 0
    for start in range(0, 2 * BOMB, 1 << 24):
        crc = zlib.crc32(b"0" * min(1 << 24, 2 * BOMB - start), crc)
    digest = f"crc32:{crc:08x}"
    with sqlite3.connect(path) as connection:
        connection.executescript(rebuild_table("parts", create, "id, name, part, digest").replace(
            "DROP TABLE parts_old;", ""))
        connection.execute("UPDATE parts SET digest = ?", (digest,))
        connection.execute("DROP TABLE parts_old")
        described = []
        for name, dtype, shape in connection.execute("SELECT name, dtype, shape FROM columns").fetchall():
            parts = connection.execute("SELECT part FROM parts WHERE name = ? ORDER BY part", (name,)).fetchall()
            described.append([name, dtype, json.loads(shape), [[p, 2 * BOMB, digest] for (p,) in parts]])
    recompute_checksum(path, described=described)
    return path


def rewrite_details(path: Path, replace: Any) -> Path:
    """Replace every stored detail image by ``replace(row, original)`` (same length: the offsets stay valid), with
    each part's digest and the checksum recomputed, so only the detail check can refuse it."""
    with sqlite3.connect(path) as connection:
        offsets = np.frombuffer(b"".join(r[0] for r in connection.execute(
            "SELECT data FROM parts WHERE name = 'details.offsets' ORDER BY part")), "<i8")
        parts = connection.execute("SELECT part, data FROM parts WHERE name = 'details.data' ORDER BY part").fetchall()
        data = bytearray(b"".join(p[1] for p in parts))
        for row in range(len(offsets) - 1):
            start, end = int(offsets[row]), int(offsets[row + 1])
            new = replace(row, bytes(data[start:end]))
            assert len(new) == end - start
            data[start:end] = new
        at = 0
        for part, old in parts:
            chunk = bytes(data[at : at + len(old)])
            at += len(old)
            connection.execute("UPDATE parts SET data = ?, digest = ? WHERE name = 'details.data' AND part = ?",
                               (chunk, manifest_module.part_digest(chunk), part))
    recompute_checksum(path)
    return path


def png_declaring(width: int, height: int, length: int) -> bytes:
    """A PNG header declaring ``width`` × ``height`` gray px, padded with a zlib stream of zeros to ``length``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    body = zlib.compress(b"\x00" * (length * 50))[: max(0, length - len(head) - 12)]
    return (head + chunk(b"IDAT", body))[:length].ljust(length, b"\x00")


def jpeg_declaring(original: bytes, width: int, height: int) -> bytes:
    """``original`` (a stored JPEG detail) with its frame header rewritten to declare ``width`` × ``height``."""
    at = original.index(b"\xff\xc0")
    return original[: at + 5] + struct.pack(">HH", height, width) + original[at + 9 :]


CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import vdc_torch, vdc_torch.decision.gate, vdc_torch.fingerprints.per_image  # imports are not the load
    size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + {cap}, size + {cap}))
    t0 = time.perf_counter()
    result = {{"error": None, "message": ""}}
    try:
        {body}
    except BaseException as exc:
        result = {{"error": type(exc).__name__, "message": str(exc)[:2000]}}
    result["seconds"] = time.perf_counter() - t0
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
""")


def in_capped_child(body: str, *args: str) -> dict[str, Any]:
    """Run ``body`` (Python; ``sys.argv[1:]`` are ``args``) in a child under the memory and time caps."""
    script = CHILD.format(cap=MEMORY_CAP, body=textwrap.indent(textwrap.dedent(body), "    ").strip())
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=TIME_CAP_S,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the child died (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])


#: Loads a manifest the way ``DatasetGate.load`` does and reads every stored value once (details included).
LOAD_AND_READ = """
from vdc_torch import DatasetGate
gate = DatasetGate.load(sys.argv[1])
table = gate.reference_table
_ = [len(table.details[i]) for i in range(len(table))] + [table.thumbs[i].sum() for i in range(len(table))]
"""


def refused(result: dict[str, Any], *words: str) -> None:
    assert result["error"] == "ManifestError", result
    for word in words:
        assert word in result["message"], result
    assert result["seconds"] < TIME_CAP_S


# -- the schema is verified before a value is read -----------------------------------------------------------------


def test_the_genuine_manifest_loads_and_reads_in_the_capped_child(genuine: Path) -> None:
    result = in_capped_child(LOAD_AND_READ, str(genuine))
    assert result["error"] is None, result


@pytest.mark.parametrize("bomb", [meta_bomb, parts_bomb], ids=["meta.value", "parts.data"])
def test_a_generated_column_bomb_is_refused_before_it_is_evaluated(bomb: Any, genuine: Path, tmp_path: Path) -> None:
    forged = bomb(copy_of(genuine, tmp_path))
    assert forged.stat().st_size < 2_000_000  # a small file that would evaluate to gigabytes
    result = in_capped_child(LOAD_AND_READ, str(forged))
    refused(result, "forged.vdc", "generated")
    assert result["seconds"] < LOAD_BUDGET_S  # evaluated, the bomb takes many seconds and gigabytes


@pytest.mark.parametrize("script, named", [
    ("CREATE TRIGGER t AFTER INSERT ON meta BEGIN SELECT 1; END;", "trigger"),
    ("CREATE VIEW v AS SELECT hex(zeroblob(100000000)) AS value;", "view"),
    ("CREATE INDEX i ON parts (digest);", "index"),
    ("CREATE TABLE notes (x TEXT);", "notes"),
    (rebuild_table("meta", "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL DEFAULT 'x')", "key, value"),
     "meta"),
    (rebuild_table("meta", "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
                   "key, value"), "meta"),
], ids=["trigger", "view", "extra index", "extra table", "default", "without rowid"])
def test_any_other_schema_object_or_definition_is_one_manifest_error(script: str, named: str, genuine: Path,
                                                                      tmp_path: Path) -> None:
    forged = forge(copy_of(genuine, tmp_path), script)
    with pytest.raises(ManifestError, match="forged.vdc") as caught:
        load_manifest(forged)
    assert named in str(caught.value)


# -- stored detail images are validated before a decoder sees them -------------------------------------------------


def test_junk_details_are_a_manifest_error_naming_the_manifest_row_and_sample(genuine: Path, tmp_path: Path) -> None:
    forged = rewrite_details(copy_of(genuine, tmp_path), lambda row, old: bytes(len(old)))
    table, _ = load_manifest(forged)  # lazily read: the table loads ...
    with pytest.raises(ManifestError, match=r"forged\.vdc.*detail image of row 0 \('cats/") as caught:
        table.details[0]  # ... and the first read of a detail refuses it
    assert "neither a raw detail nor a JPEG" in str(caught.value)


def test_a_junk_detail_read_with_its_neighbours_is_refused_by_name(genuine: Path, tmp_path: Path) -> None:
    # rows read together (one read for rows near each other) are each checked: the junk one among them is named
    forged = rewrite_details(copy_of(genuine, tmp_path), lambda row, old: bytes(len(old)) if row == 2 else old)
    table, _ = load_manifest(forged)
    assert len(table.details[np.array([0, 1])]) == 2  # its neighbours alone are fine
    with pytest.raises(ManifestError, match=r"forged\.vdc.*detail image of row 2 \('"):
        table.details[np.array([3, 0, 2, 1])]


@pytest.mark.parametrize("forgery", ["png 30000", "jpeg 30000", "jpeg 4096", "progressive"])
def test_a_detail_declaring_a_huge_picture_never_reaches_the_decoder(forgery: str, genuine: Path,
                                                                     tmp_path: Path) -> None:
    def replace(row: int, old: bytes) -> bytes:
        if forgery == "png 30000":
            return png_declaring(30000, 30000, len(old))
        if forgery == "progressive":
            return old.replace(b"\xff\xc0", b"\xff\xc2", 1)
        side = int(forgery.split()[1])
        return jpeg_declaring(old, side, side)

    forged = rewrite_details(copy_of(genuine, tmp_path), replace)
    refused(in_capped_child(LOAD_AND_READ, str(forged)), "forged.vdc", "detail image of row 0")


def test_a_forged_detail_fails_check_with_a_manifest_error_not_a_decode_error(genuine: Path, reference: Path,
                                                                               tmp_path: Path) -> None:
    """A new set of edited copies makes the cascade verify against stored details: the forgery is named then."""
    from PIL import Image, ImageOps

    forged = rewrite_details(copy_of(genuine, tmp_path), lambda row, old: jpeg_declaring(old, 30000, 30000))
    new = tmp_path / "new" / "cats"
    new.mkdir(parents=True)
    for path in sorted((reference / "cats").iterdir()):
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            w, h = image.size
            image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(new / f"{path.stem}.png")
    gate = DatasetGate.load(forged, workers=0)
    with pytest.raises(ManifestError, match=r"forged\.vdc.*detail image of row"):
        gate.check(str(new.parent))


# -- caches: one rule for every unusable file ----------------------------------------------------------------------


@pytest.mark.parametrize("results", [5, "x", [1, 2], None])
def test_a_cache_whose_results_meta_is_not_an_object_is_ignored_with_a_warning(
        results: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache_file = tmp_path / "cache.vdc"
    save_manifest(cache_file, FingerprintTable.empty(), {"kind": CACHE_KIND, "results": results})
    before = cache_file.read_bytes()
    with caplog.at_level("WARNING"):
        cache = FingerprintCache(cache_file)
    assert "ignoring the fingerprint cache" in caplog.text and "results" in caplog.text
    assert cache.writable is False and cache_file.read_bytes() == before  # never overwritten: it may be the user's


# -- saving never follows links, never deletes a user's file, and names what it cannot write -----------------------


def test_a_dangling_lock_symlink_is_refused_and_nothing_is_created_outside(genuine: Path, tmp_path: Path) -> None:
    folder, outside = tmp_path / "models", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    target = folder / "ref.vdc"
    os.symlink(outside / "planted.lock", lock_path(target))
    table, meta = load_manifest(genuine)
    with pytest.raises(ManifestError, match="symbolic link"):
        save_manifest(target, table, meta)
    assert list(outside.iterdir()) == [] and not target.exists()


def test_stale_temp_cleanup_keeps_files_the_library_did_not_make(genuine: Path, tmp_path: Path) -> None:
    table, meta = load_manifest(genuine)
    target = tmp_path / "ref.vdc"
    users = {
        ".ref.vdc.notes.tmp": b"my notes",  # not the mkstemp pattern
        ".ref.vdc.abcd1234.tmp": b"my draft, not a database",  # the pattern, but not what a save writes
    }
    for name, content in users.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "elsewhere.txt").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere.txt", tmp_path / ".ref.vdc.zzzz9999.tmp")  # a link is never followed
    killed = tmp_path / ".ref.vdc.k1ll3d_x.tmp"
    killed.write_bytes(genuine.read_bytes()[:5000])  # what a killed save leaves: removed
    save_manifest(target, table, meta)
    assert not killed.exists()
    for name, content in users.items():
        assert (tmp_path / name).read_bytes() == content
    assert (tmp_path / ".ref.vdc.zzzz9999.tmp").is_symlink() and (tmp_path / "elsewhere.txt").exists()


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Any:
    """A folder this process may not create files in: a read-only one of ours, or (as root, who writes anywhere
    else) sysfs, which refuses new files to everyone."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_a_folder_without_write_permission_is_a_manifest_error_naming_it(genuine: Path,
                                                                         unwritable_folder: Path) -> None:
    table, meta = load_manifest(genuine)
    target = unwritable_folder / "ref.vdc"
    with pytest.raises(ManifestError, match=rf"{unwritable_folder}.*ref\.vdc.*(Permission denied|Read-only)"):
        save_manifest(target, table, meta)
    assert not target.exists()


def test_a_parent_that_is_a_file_is_a_manifest_error_naming_it(genuine: Path, tmp_path: Path) -> None:
    table, meta = load_manifest(genuine)
    (tmp_path / "models").write_bytes(b"not a folder")
    with pytest.raises(ManifestError, match=r"models"):
        save_manifest(tmp_path / "models" / "ref.vdc", table, meta)
    with pytest.raises(ManifestError, match=r"models"):
        save_manifest(tmp_path / "models" / "deeper" / "ref.vdc", table, meta)
