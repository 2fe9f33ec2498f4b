"""The manifest is crash-safe, concurrency-safe and treated as untrusted input.

Every way a manifest can be wrong — not a file, not SQLite, another application's database, an unknown version,
truncated, bit-flipped, hostile paths — gives one :class:`ManifestError`; a save killed at any moment leaves the
previous manifest loadable; two processes saving at once never corrupt it.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXIF_JPG, REPO

from vdc_torch import DatasetGate, ManifestError
from vdc_torch.decision.store.manifest import (
    MANIFEST_VERSION,
    load_manifest,
    lock_path,
    resolve_sample_path,
    save_manifest,
    save_sharded_manifest,
)
from vdc_torch.fingerprints.compute import FINGERPRINT_VERSION, FingerprintTable

NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name, as os.listdir returns it


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> FingerprintTable:
    """Fingerprints of 8 real photos, one of them with a non-UTF-8 name and label."""
    root = tmp_path_factory.mktemp("reference")
    photos = [p for p in sorted(EXIF_JPG.glob("*.jpg")) if p.name != "corrupted.jpg"][:8]
    for path in photos[:-1]:
        (root / "cats").mkdir(exist_ok=True)
        shutil.copy(path, root / "cats" / path.name)
    odd = root / os.fsdecode(b"d\xf6gs")
    odd.mkdir()
    shutil.copy(photos[-1], odd / NON_UTF8_NAME)
    return DatasetGate(reference=str(root), workers=0).reference_table


def rows(table: FingerprintTable) -> list[tuple]:
    """Every value of every row, comparable with ``==``."""
    return [
        (int(table.sample_index[i]), table.paths[i], table.labels[i], int(table.width[i]), int(table.height[i]),
         table.byte_digest[i], table.pixel_digest[i], table.exif_identity[i], int(table.phash[i]),
         int(table.phash_mirror[i]), table.crop_hashes[i].tobytes(), table.thumbs[i].tobytes(), table.details[i],
         table.file_size[i], table.mtime_ns[i], table.extra_hashes[i])
        for i in range(len(table))
    ]


def saved(table: FingerprintTable, folder: Path, name: str = "reference.vdc", **meta: object) -> Path:
    return save_manifest(folder / name, table, {"reference_root": "/data/train", **meta})


# -- round trip ----------------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_value_including_non_utf8_names(table: FingerprintTable, tmp_path: Path) -> None:
    loaded, meta = load_manifest(saved(table, tmp_path))
    assert rows(loaded) == rows(table)
    assert NON_UTF8_NAME in "/".join(loaded.paths) and os.fsdecode(b"d\xf6gs") in loaded.labels
    assert meta["format_version"] == MANIFEST_VERSION and meta["samples"] == len(table)
    assert meta["reference_root"] == "/data/train"


def test_a_loaded_manifest_is_read_from_other_threads(table: FingerprintTable, tmp_path: Path) -> None:
    # feature verification runs on threads and reads details and thumbnails of a loaded reference on demand
    from concurrent.futures import ThreadPoolExecutor

    loaded, _ = load_manifest(saved(table, tmp_path))
    expected = rows(table)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: (loaded.details[i], loaded.thumbs[i].tobytes()), list(range(len(table))) * 3))
    assert got == [(row[12], row[11]) for row in expected] * 3


@pytest.mark.parametrize("gap", [None, 0])
def test_rows_read_together_are_the_rows_read_one_by_one(table: FingerprintTable, tmp_path: Path, gap: int | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # the search reads a loaded reference's details and thumbnails many rows at a time, in any order, with repeats;
    # rows near each other in the file come in one read, which may span stored parts (tiny parts here) — or, with
    # no gap allowed, only rows that touch share a read
    import vdc_torch.decision.store.manifest as manifest_module
    import vdc_torch.decision.store.stored as stored_module

    monkeypatch.setattr(manifest_module, "PART_BYTES", 5000)
    if gap is not None:
        monkeypatch.setattr(stored_module, "SPAN_GAP", gap)
    loaded, _ = load_manifest(saved(table, tmp_path))
    picked = np.random.default_rng(0).integers(0, len(table), size=5 * len(table))
    picked[:3] = [len(table) - 1, 0, len(table) - 1]
    assert loaded.details[picked] == [table.details[i] for i in picked.tolist()]
    np.testing.assert_array_equal(loaded.thumbs[picked], np.asarray(table.thumbs)[picked])
    assert loaded.details[picked[:0]] == [] and loaded.thumbs[picked[:0]].shape == (0, 32, 32, 3)


def test_an_empty_reference_round_trips(tmp_path: Path) -> None:
    loaded, meta = load_manifest(save_manifest(tmp_path / "empty.vdc", FingerprintTable.empty(), {}))
    assert len(loaded) == 0 and meta["samples"] == 0


def test_a_folder_name_with_uri_characters_and_non_utf8_bytes_works(table: FingerprintTable, tmp_path: Path) -> None:
    folder = tmp_path / os.fsdecode(b"ckpt \xe9?#%20")  # SQLite opens manifests through a file: URI
    path = save_manifest(folder / "reference.vdc", table, {})
    assert rows(load_manifest(path)[0]) == rows(table)
    with pytest.raises(ManifestError, match=r"does not exist"):
        load_manifest(folder / "other.vdc")


def test_save_leaves_only_the_manifest_and_its_lock_with_normal_permissions(table: FingerprintTable,
                                                                            tmp_path: Path) -> None:
    path = saved(table, tmp_path)
    saved(table, tmp_path)  # a second save replaces the first
    assert sorted(os.listdir(tmp_path)) == ["reference.vdc", "reference.vdc.lock"]
    assert path.stat().st_mode & 0o777 != 0o600  # not mkstemp's private mode
    with pytest.raises(ManifestError, match=r"reference.vdc.lock' is empty \(0 bytes\), not a vdc_torch manifest"):
        load_manifest(lock_path(path))


def test_save_through_a_symlink_updates_the_target(table: FingerprintTable, tmp_path: Path) -> None:
    real = saved(table, tmp_path, "v1.vdc")
    link = tmp_path / "latest.vdc"
    link.symlink_to("v1.vdc")
    save_manifest(link, table.rows([0, 1]), {})
    assert link.is_symlink() and len(load_manifest(real)[0]) == 2


def test_an_old_manifest_without_checksum_still_loads(table: FingerprintTable, tmp_path: Path) -> None:
    path = saved(table, tmp_path)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE checksum")
    assert rows(load_manifest(path)[0]) == rows(table)


# -- everything that is not a good manifest: one clear ManifestError -----------------------------------------------


def other_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (name TEXT, rating INTEGER)")
        connection.execute("INSERT INTO photos VALUES ('a.jpg', 5)")


def set_stored_path(path: Path, row: int, value: str) -> None:
    """Rewrite one stored path consistently (column bytes, offsets, part digests), as a hostile file would."""
    from vdc_torch.decision.store.stored import part_digest

    with sqlite3.connect(path) as connection:
        def column(name: str) -> bytes:
            found = connection.execute("SELECT data FROM parts WHERE name = ? ORDER BY part", (name,)).fetchall()
            return b"".join(d for (d,) in found)

        data, offsets = column("paths.data"), np.frombuffer(column("paths.offsets"), "<i8")
        items = [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        items[row] = value.encode()
        new_data = b"".join(items)
        new_offsets = np.cumsum([0] + [len(x) for x in items]).astype("<i8").tobytes()
        for name, blob in (("paths.data", new_data), ("paths.offsets", new_offsets)):
            connection.execute("DELETE FROM parts WHERE name = ?", (name,))
            connection.execute("INSERT INTO parts (name, part, data, digest) VALUES (?, 0, ?, ?)",
                               (name, blob, part_digest(blob)))
        connection.execute("UPDATE columns SET shape = ? WHERE name = 'paths.data'", (f"[{len(new_data)}]",))


def edit(path: Path, sql: str) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.executescript(sql)
    finally:
        connection.close()


BAD_FILES = {
    "missing": (lambda p: None, r"does not exist"),
    "directory": (lambda p: p.mkdir(), r"is a directory, not a manifest file"),
    "empty file": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    "text file": (lambda p: p.write_text("model: resnet50\n"), r"not an SQLite file; it starts with b'model: r'"),
    "JPEG": (lambda p: shutil.copy(EXIF_JPG / "Canon_40D.jpg", p), r"not an SQLite file; it starts with b'\\xff\\xd8"),
    "another SQLite database": (other_sqlite, r"SQLite database but not a vdc_torch manifest \(its tables: photos\)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_non_manifests_are_refused_clearly(tmp_path: Path, case: str) -> None:
    make, reason = BAD_FILES[case]
    path = tmp_path / "reference.vdc"
    make(path)
    with pytest.raises(ManifestError, match=reason):
        load_manifest(path)
    with pytest.raises(ManifestError, match=reason):
        DatasetGate.load(path)


EDITS = {
    "newer format version": ("UPDATE meta SET value = '3' WHERE key = 'format_version'",
                             r"has manifest format version 3; this vdc_torch reads versions 1 and 2 \(upgrade vdc"),
    "garbage format version": ("UPDATE meta SET value = '\"x\"' WHERE key = 'format_version'",
                               r"has manifest format version 'x'; this vdc_torch reads versions 1 and 2 \(rebuild"),
    "other fingerprint version": ("UPDATE meta SET value = '99' WHERE key = 'fingerprint_version'",
                                  rf"holds fingerprints of version 99, this vdc_torch computes version {FINGERPRINT_VERSION}"),
    "not our format": ("UPDATE meta SET value = '\"other-tool\"' WHERE key = 'format'",
                       r"an SQLite database but not a vdc_torch manifest \(format 'other-tool'\)"),
    "meta not JSON": ("UPDATE meta SET value = '{oops' WHERE key = 'reference_root'",
                      r"meta entry 'reference_root' is not valid JSON"),
    "edited sample": ("UPDATE parts SET data = zeroblob(length(data)) WHERE name = 'width'",
                      r"column 'width' does not match its checksum"),
    "deleted sample": ("DELETE FROM parts WHERE name = 'phash'", r"does not match its checksum"),
    "blob of wrong type": ("UPDATE parts SET data = 'x' WHERE name = 'thumbs'", r"does not match its checksum"),
    "unknown column": ("INSERT INTO columns VALUES ('extra', '|u1', '[0]')", r"it has columns \[.*'extra'"),
    "missing checksum": ("DELETE FROM checksum", r"its checksum is missing"),
    "parts replaced by a view": ("ALTER TABLE parts RENAME TO p2; CREATE VIEW parts AS SELECT * FROM p2",
                                 r"not a vdc_torch manifest \(its tables: checksum, columns, meta, p2, parts\)"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_edited_manifests_are_refused_clearly(table: FingerprintTable, tmp_path: Path, case: str) -> None:
    sql, reason = EDITS[case]
    path = saved(table, tmp_path)
    edit(path, sql)
    with pytest.raises(ManifestError, match=reason):
        load_manifest(path)


def test_a_consistent_but_malformed_row_is_refused_even_without_checksum(table: FingerprintTable,
                                                                         tmp_path: Path) -> None:
    path = saved(table, tmp_path)
    edit(path, "DROP TABLE checksum")
    edit(path, "UPDATE parts SET data = x'00' WHERE name = 'thumbs'")
    with pytest.raises(ManifestError, match=r"column 'thumbs' holds 1 bytes, its shape needs"):
        load_manifest(path)


def test_a_damaged_thumbnail_part_is_refused_when_read(table: FingerprintTable, tmp_path: Path) -> None:
    """Thumbnails and detail images are read on demand; each part is checked on its first read."""
    path = saved(table, tmp_path)
    edit(path, "DROP TABLE checksum")  # a part's own digest still guards it
    edit(path, "UPDATE parts SET data = zeroblob(length(data)) WHERE name = 'thumbs'")
    loaded, _ = load_manifest(path)
    with pytest.raises(ManifestError, match=r"a stored part does not match its checksum"):
        loaded.thumbs[0]
    assert rows(loaded.rows([])) == []


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.25, 0.5, 0.75, 0.999])
def test_truncated_manifests_are_refused(table: FingerprintTable, tmp_path: Path, fraction: float) -> None:
    data = saved(table, tmp_path).read_bytes()
    cut = tmp_path / "cut.vdc"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ManifestError, match=r"corrupted: (truncated|its SQLite header declares \d+ pages)"):
        load_manifest(cut)


def test_flipped_bytes_in_the_content_are_detected(table: FingerprintTable, tmp_path: Path) -> None:
    data = saved(table, tmp_path).read_bytes()
    for row in (0, 4, 7):  # a byte in the middle of a stored pixel digest
        at = data.index(table.pixel_digest[row]) + 7
        damaged = tmp_path / f"flip{row}.vdc"
        damaged.write_bytes(data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :])
        with pytest.raises(ManifestError, match=r"does not match its checksum"):
            load_manifest(damaged)


def test_random_damage_loads_the_exact_content_or_is_refused(table: FingerprintTable, tmp_path: Path) -> None:
    data = saved(table, tmp_path).read_bytes()
    rng = random.Random(11)
    damaged = tmp_path / "damaged.vdc"
    outcomes = {"refused": 0, "intact": 0}
    for _ in range(60):
        blob = bytearray(data)
        for _ in range(rng.choice((1, 4, 32))):
            blob[rng.randrange(len(blob))] ^= rng.randrange(1, 256)
        damaged.write_bytes(bytes(blob))
        try:
            loaded, _ = load_manifest(damaged)
            content = rows(loaded)  # thumbnails and details are verified when first read
        except ManifestError:
            outcomes["refused"] += 1
        else:  # only unused bytes (free page space) were hit
            assert content == rows(table)
            outcomes["intact"] += 1
    assert outcomes["refused"] > 0


# -- untrusted paths -----------------------------------------------------------------------------------------------


_OPENED: list[str] | None = None  # files opened while a test records them (see _record_opens)


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event in ("open", "sqlite3.connect") and args and args[0] is not None:
        _OPENED.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else str(args[0]))


def test_a_manifest_with_paths_leaving_the_root_is_refused_without_reading_them(table: FingerprintTable,
                                                                                tmp_path: Path) -> None:
    global _OPENED
    path = saved(table, tmp_path)
    edit(path, "DROP TABLE checksum")  # a hostile file would carry a matching checksum anyway
    set_stored_path(path, 1, "../../etc/passwd")
    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)  # sees every open() and os.open() of this process
        _audit.installed = True  # type: ignore[attr-defined]
    _OPENED = []
    try:
        with pytest.raises(ManifestError, match=r"sample path '../../etc/passwd' leaves its dataset root"):
            DatasetGate.load(path)
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert opened and all(f.startswith(str(path)) or "reference.vdc" in f for f in opened), opened


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("cat/001.jpg", "/data/train/cat/001.jpg"),
        ("001.jpg", "/data/train/001.jpg"),
        ("../../etc/passwd", None),
        ("cat/../../secret.jpg", None),
        ("/etc/passwd", None),
        ("C:\\Windows\\win.ini", None),
        ("<CIFAR10[3]>", None),
        ("cat/\x00.jpg", None),
        ("", None),
    ],
)
def test_stored_paths_resolve_only_inside_their_root(stored: str, expected: str | None) -> None:
    result = resolve_sample_path("/data/train", stored)
    assert (None if result is None else str(result)) == expected
    assert resolve_sample_path("", "cat/001.jpg") is None


# -- saving safely -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["JPEG", "another SQLite database", "text file", "directory"])
def test_save_refuses_to_overwrite_what_is_not_a_manifest(table: FingerprintTable, tmp_path: Path,
                                                          case: str) -> None:
    path = tmp_path / "reference.vdc"
    BAD_FILES[case][0](path)
    names, content = set(os.listdir(tmp_path)), (path.read_bytes() if path.is_file() else None)
    with pytest.raises(ManifestError, match=r"refusing to overwrite .*not a vdc_torch manifest|it is a directory"):
        save_manifest(path, table, {})
    assert (path.read_bytes() if path.is_file() else None) == content
    assert set(os.listdir(tmp_path)) == names  # not even a lock file beside the user's file
    with pytest.raises(ManifestError):
        save_sharded_manifest(path, table, {})
    assert set(os.listdir(tmp_path)) == names


def test_save_replaces_an_empty_or_damaged_manifest(table: FingerprintTable, tmp_path: Path) -> None:
    path = tmp_path / "reference.vdc"
    path.write_bytes(b"")
    save_manifest(path, table, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a damaged manifest: replacing it is the repair
    save_manifest(path, table, {})
    assert rows(load_manifest(path)[0]) == rows(table)


def test_a_held_lock_makes_save_wait_then_fail_clearly(table: FingerprintTable, tmp_path: Path) -> None:
    path = saved(table, tmp_path)
    with open(lock_path(path), "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # another saver, as far as save_manifest can tell
        with pytest.raises(ManifestError, match=r"another process has been saving it for more than 0.2 s"):
            save_manifest(path, table.rows([0]), {}, lock_timeout=0.2)
        assert len(load_manifest(path)[0]) == len(table)  # loading needs no lock
    save_manifest(path, table.rows([0]), {}, lock_timeout=0.2)
    assert len(load_manifest(path)[0]) == 1


def test_stale_temp_files_are_never_loaded_and_are_cleaned_by_the_next_save(table: FingerprintTable,
                                                                            tmp_path: Path) -> None:
    path = saved(table, tmp_path)
    stale = tmp_path / ".reference.vdc.k1ll3d_x.tmp"  # as mkstemp names them: 8 characters
    stale.write_bytes(path.read_bytes()[:5000])  # what a killed save leaves behind
    assert len(load_manifest(path)[0]) == len(table)
    saved(table, tmp_path)
    assert not stale.exists()


# -- crash safety and concurrency: real processes ------------------------------------------------------------------


def big_table(table: FingerprintTable, copies: int) -> FingerprintTable:
    """``table`` repeated to make a manifest that takes a while to write."""
    big = FingerprintTable.concat([table] * copies)
    big.sample_index = np.arange(len(big), dtype=np.int64)
    return big


def _save_forever(path: str, table: FingerprintTable, tag: str) -> None:
    while True:
        save_manifest(path, table, {"writer": tag})


def test_a_save_killed_at_random_moments_leaves_the_previous_manifest(table: FingerprintTable,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "reference.vdc"
    small, big = table.rows([0, 1, 2]), big_table(table, 400)  # 3 rows vs 3200 rows (about 25 MB)
    save_manifest(path, small, {"writer": "first"})
    context = multiprocessing.get_context("fork")
    rng = random.Random(5)
    interrupted = 0
    for attempt in range(12):
        child = context.Process(target=_save_forever, args=(str(path), big, f"child{attempt}"), daemon=True)
        child.start()
        time.sleep(rng.uniform(0.05, 1.5))
        if list(tmp_path.glob(".reference.vdc.*.tmp")):
            interrupted += 1  # the kill below lands in the middle of writing a temp file
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        loaded, meta = load_manifest(path)  # always a whole manifest: the first, or one the child finished
        assert meta["writer"] == "first" or meta["writer"].startswith("child")
        assert rows(loaded) == rows(small if meta["writer"] == "first" else big)
        if interrupted >= 4:
            break
    assert interrupted >= 1
    save_manifest(path, small, {"writer": "last"})  # the next save cleans what the killed ones left
    assert sorted(os.listdir(tmp_path)) == ["reference.vdc", "reference.vdc.lock"]


def _hammer_save(path: str, table: FingerprintTable, tag: str, rounds: int) -> None:
    for _ in range(rounds):
        save_manifest(path, table, {"writer": tag}, lock_timeout=120)


def test_two_processes_saving_and_one_loading_never_see_a_broken_manifest(table: FingerprintTable,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "reference.vdc"
    versions = {"a": table.rows([0, 1, 2, 3]), "b": big_table(table, 30)}
    save_manifest(path, versions["a"], {"writer": "a"})
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_hammer_save, args=(str(path), versions[t], t, 15)) for t in "ab"]
    for writer in writers:
        writer.start()
    seen = set()
    while any(w.is_alive() for w in writers) or not seen:
        loaded, meta = load_manifest(path)
        assert rows(loaded) == rows(versions[meta["writer"]])
        seen.add(meta["writer"])
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert rows(load_manifest(path)[0]) in (rows(versions["a"]), rows(versions["b"]))
    assert sorted(os.listdir(tmp_path)) == ["reference.vdc", "reference.vdc.lock"]


# -- no pickle, no unsafe torch.load -------------------------------------------------------------------------------


def test_the_package_never_unpickles() -> None:
    offenders = []
    for source in sorted((REPO / "vdc_torch").rglob("*.py")):
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(import pickle|from pickle|cPickle|dill|joblib\.load|marshal\.load|shelve)", code):
                offenders.append(f"{source.name}:{number}: {line.strip()}")
            if re.search(r"\b(np|numpy)\.load\(", code) and "allow_pickle=False" not in code:
                offenders.append(f"{source.name}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{source.name}:{number}: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True", code):
                offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert offenders == []


def test_part_checksums_crc32_now_blake2b_before(table: FingerprintTable, tmp_path: Path) -> None:
    # parts are saved with CRC-32; parts saved by earlier versions carry a bare BLAKE2b hex and still verify
    import hashlib

    from vdc_torch.decision.store.stored import part_digest, part_matches

    data = saved(table, tmp_path).read_bytes()[:100_000]
    assert part_digest(data).startswith("crc32:")
    older = hashlib.blake2b(data, digest_size=16).hexdigest()
    for expected in (part_digest(data), older):
        assert part_matches([data], expected)
        assert part_matches([data[:4096], data[4096:]], expected)  # read in chunks, as parts are verified
        damaged = bytearray(data)
        damaged[77_777] ^= 0x10
        assert not part_matches([bytes(damaged)], expected)


def test_a_manifest_replaced_at_every_read_is_read_last_under_the_savers_lock(table: FingerprintTable, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import vdc_torch.decision.store.manifest as manifest_module

    path = tmp_path / "reference.vdc"
    save_manifest(path, table, {"writer": "a"})  # leaves <manifest>.lock behind
    load_once = manifest_module._load_once
    attempts: list[bool] = []

    def replaced_unless_locked(source: Path, name: str):
        with open(lock_path(source), "rb") as probe:  # can a saver take the lock now?
            try:
                fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
                attempts.append(False)
            except BlockingIOError:
                attempts.append(True)
                return load_once(source, name)
        raise manifest_module._Replaced  # as if a saver had renamed a new file over it meanwhile

    monkeypatch.setattr(manifest_module, "_load_once", replaced_unless_locked)
    loaded, meta = load_manifest(path)
    assert attempts == [False, False, False, True] and len(loaded) == len(table) and meta["writer"] == "a"


def test_a_manifest_larger_than_2_gib_opens(table: FingerprintTable, tmp_path: Path) -> None:
    """A 1M-image reference is a ~3 GB file: opening it must not overflow SQLite's C-int length limit."""
    path = save_manifest(tmp_path / "big.vdc", table, {})
    with open(path, "r+b") as f:  # sparse: 3 GB on paper, nothing written
        f.truncate(3 << 30)
    try:
        loaded, _ = load_manifest(path)
    except ManifestError:
        pass  # a file longer than its pages may be refused, but only as a damaged manifest
    else:
        assert loaded.paths == table.paths
