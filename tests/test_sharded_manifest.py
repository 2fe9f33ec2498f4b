"""Sharded manifests: an index plus immutable shards, so saving an updated gate costs what the drop costs.

On real photos (small sets, a few seconds): a sharded manifest gives the decisions a single file gives; an append
writes one new shard and leaves the old ones untouched; swapped, foreign, damaged or escaping shards are refused
by name; compaction merges the shards and removes only our files; a saver killed at any point leaves the previous
version loadable; two processes appending at once both land; old single-file manifests load as before.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import build_scenario, photo_files

from vdc_torch import DatasetGate, ManifestError
from vdc_torch.decision.store import sharded
from vdc_torch.decision.store.concat import ChainedRows, concat_tables
from vdc_torch.decision.store.manifest import (
    compact_manifest,
    load_manifest,
    load_manifest_origin,
    manifest_info,
    save_manifest,
    save_manifest_of_ranks,
    save_sharded_manifest,
)
from vdc_torch.faces.cli import EXIT_TRAIN, main
from vdc_torch.fingerprints.table import FingerprintTable, is_stored


def small_photos() -> list[Path]:
    """The 24 smallest real camera photos of exif-samples (fingerprinted in a few ms each)."""
    files = sorted(photo_files(), key=lambda p: (p.stat().st_size, p.name))[:24]
    assert len(files) == 24, "expected the exif-samples photos under ../shared/data"
    return files


def folder(root: Path, files: list[Path], label: str = "photos") -> Path:
    (root / label).mkdir(parents=True)
    for f in files:
        shutil.copy(f, root / label / f.name)
    return root


@pytest.fixture
def drops(tmp_path: Path) -> list[Path]:
    """Three folders of distinct real photos: the first reference, then two drops trained on later."""
    files = small_photos()
    return [folder(tmp_path / name, part) for name, part in
            (("v1", files[:8]), ("drop2", files[8:12]), ("drop3", files[12:16]))]


def rows(table: FingerprintTable) -> list[tuple]:
    """Every value of every row, comparable with ``==``."""
    return [
        (int(table.sample_index[i]), table.paths[i], table.labels[i], int(table.width[i]), int(table.height[i]),
         table.byte_digest[i], table.pixel_digest[i], table.exif_identity[i], int(table.phash[i]),
         int(table.phash_mirror[i]), table.crop_hashes[i].tobytes(), table.thumbs[i].tobytes(), table.details[i],
         table.file_size[i], table.mtime_ns[i], table.extra_hashes[i])
        for i in range(len(table))
    ]


def shard_files(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """``{name: (inode, mtime_ns, bytes)}`` of every file in the shard folder."""
    out = {}
    for f in sorted((path.parent / (path.name + ".shards")).iterdir()):
        st = f.stat()
        out[f.name] = (st.st_ino, st.st_mtime_ns, f.read_bytes())
    return out


def forge_index(path: Path, edit) -> None:
    """Rewrite the index as an attacker would: change it, then recompute its checksum."""
    data = json.loads(path.read_text())
    edit(data)
    body = {k: v for k, v in data.items() if k != "checksum"}
    data["checksum"] = sharded._digest(body)
    path.write_text(json.dumps(data))


def sharded_after_updates(drops: list[Path], path: Path) -> DatasetGate:
    """v1 saved as a sharded manifest, then each drop appended by load + update + save."""
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    for drop in drops[1:]:
        gate = DatasetGate.load(path, workers=0)
        gate.update(str(drop))
        gate.save(path)
    return DatasetGate.load(path, workers=0)


# -- what a sharded manifest holds -------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [save_manifest, save_sharded_manifest, save_manifest_of_ranks],
                         ids=["single file", "sharded", "one shard per rank"])
def test_every_save_refuses_a_meta_json_cannot_hold_and_writes_nothing(drops: list[Path], tmp_path: Path,
                                                                      save) -> None:
    table = DatasetGate(reference=str(drops[0]), workers=0).reference_table
    target = tmp_path / "out" / "reference.vdc"
    with pytest.raises(ManifestError, match=r"reference\.vdc.*not JSON-serialisable"):
        save(target, table, {"reference_root": str(drops[0]), "when": object()})
    assert not target.exists() and not (target.parent / "reference.vdc.shards").exists()


def test_sharded_round_trip_gives_the_decision_a_single_file_gives(tmp_path: Path) -> None:
    scenario = build_scenario(small_photos(), tmp_path / "scenario", n_ref=16, n_copies=8)
    ref_files = sorted(scenario.reference.iterdir())
    first, later = folder(tmp_path / "first", ref_files[:10]), folder(tmp_path / "later", ref_files[10:])
    decisions = {}
    for kind in ("single", "sharded"):
        path = tmp_path / f"{kind}.vdc"
        DatasetGate(reference=str(first), workers=0).save(path, sharded=kind == "sharded")
        gate = DatasetGate.load(path, workers=0)
        gate.update(str(later))
        gate.save(path)
        loaded = DatasetGate.load(path, workers=0)
        decisions[kind] = (loaded.check(str(scenario.new)).to_dict(), rows(loaded.reference_table))
    assert manifest_info(tmp_path / "sharded.vdc")["shards"] == 2
    assert manifest_info(tmp_path / "single.vdc") == {"kind": "single-file", "shards": 1,
                                                      "bytes": (tmp_path / "single.vdc").stat().st_size}
    single, split = decisions["single"], decisions["sharded"]
    assert split[1] == single[1]  # the same rows, in the same order, with the same sample indices
    assert split[0] == single[0]
    assert single[0]["counts"]["near_duplicate"] + single[0]["counts"]["exact"] >= 6  # the copies were found


def test_loaded_shards_stay_lazy_through_update(drops: list[Path], tmp_path: Path) -> None:
    gate = sharded_after_updates(drops, tmp_path / "m.vdc")
    table = gate.reference_table
    assert isinstance(table.thumbs, ChainedRows) and isinstance(table.details, ChainedRows)
    assert table.thumbs.coarse is not None  # the kNN stage reads the stored coarse vectors, not the thumbnails
    gate.update(str(folder(tmp_path / "drop4", small_photos()[16:18])))
    grown = gate.reference_table
    assert is_stored(grown.thumbs) and is_stored(grown.details) and grown.thumbs.coarse is not None
    assert len(grown) == 18 and np.asarray(grown.thumbs).shape == (18, 32, 32, 3)
    # the lazy columns read what the in-memory concatenation holds, row by row and by selections
    eager = FingerprintTable.concat([table, DatasetGate(reference=str(tmp_path / "drop4"),
                                                        workers=0).reference_table])
    assert np.array_equal(np.asarray(grown.thumbs), np.asarray(eager.thumbs))
    assert list(grown.details) == list(eager.details)
    picked = [17, 0, 9, 9, 12]
    assert np.array_equal(grown.thumbs[picked], np.asarray(eager.thumbs)[picked])
    assert grown.rows(picked).details[:] == [eager.details[i] for i in picked]
    from vdc_torch.search.thumbs import coarse_vectors
    assert np.allclose(grown.thumbs.coarse[:], coarse_vectors(np.asarray(eager.thumbs)), atol=1e-6)
    assert concat_tables([table]).thumbs is table.thumbs


def test_append_writes_one_new_shard_and_leaves_the_old_ones_untouched(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    before = shard_files(path)
    assert len(before) == 1
    gate = DatasetGate.load(path, workers=0)
    gate.update(str(drops[1]))
    gate.save(path)
    after = shard_files(path)
    assert len(after) == 2 and all(after[name] == before[name] for name in before)  # same inode, mtime, bytes
    (added,) = set(after) - set(before)
    new_shard = load_manifest(path.parent / (path.name + ".shards") / added)[0]  # a shard is a normal manifest
    assert len(new_shard) == 4 and new_shard.paths == load_manifest(path)[0].paths[8:]  # holding just the drop
    gate.save(path)  # nothing added since: nothing written
    assert shard_files(path) == after
    index = json.loads(path.read_text())
    assert [s["samples"] for s in index["shards"]] == [8, 4] and index["samples"] == 12
    assert [(s["first"], s["last"]) for s in index["shards"]] == [(0, 7), (8, 11)]


def test_old_single_file_manifests_load_as_before_and_convert_once(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path)
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"  # the default for a fresh path: one file, as before
    table, meta, origin = load_manifest_origin(path)
    assert not origin.sharded and meta["format"] == "vdc_torch-manifest" and meta["format_version"] == 2
    gate = DatasetGate.load(path, workers=0)
    gate.update(str(drops[1]))
    gate.save(path)
    assert path.read_bytes()[:16] == b"SQLite format 3\x00" and len(load_manifest(path)[0]) == 12  # kept its kind
    single_rows = rows(load_manifest(path)[0])
    gate = DatasetGate.load(path, workers=0)
    gate.save(path, sharded=True)  # converts: an index naming one shard of every row
    assert manifest_info(path)["shards"] == 1 and rows(load_manifest(path)[0]) == single_rows
    gate.update(str(drops[2]))
    gate.save(path)  # and from now on appends
    assert manifest_info(path)["shards"] == 2 and len(load_manifest(path)[0]) == 16
    gate.save(path, sharded=False)  # back to one file: the shards no index names are removed
    assert path.read_bytes()[:16] == b"SQLite format 3\x00" and len(load_manifest(path)[0]) == 16
    assert not (tmp_path / "m.vdc.shards").exists()


def test_a_rebuilt_reference_writes_a_fresh_index(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    sharded_after_updates(drops, path)
    lineage = json.loads(path.read_text())["lineage"]
    DatasetGate(reference=str(drops[1]), workers=0).save(path)  # another reference: replaced, not appended
    index = json.loads(path.read_text())
    assert index["lineage"] != lineage and index["samples"] == 4 and len(shard_files(path)) == 1


# -- untrusted shards and indexes ----------------------------------------------------------------------------


def test_a_swapped_or_foreign_shard_is_refused_by_name(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    sharded_after_updates(drops, path)
    other = tmp_path / "other.vdc"
    DatasetGate(reference=str(drops[2]), workers=0).save(other, sharded=True)
    index = json.loads(path.read_text())
    victim = path.parent / "m.vdc.shards" / index["shards"][1]["file"]
    (foreign,) = (tmp_path / "other.vdc.shards").iterdir()
    shutil.copy(foreign, victim)  # a valid manifest of the same kind, in place of a shard
    with pytest.raises(ManifestError, match=rf"{victim.name}.*not the one its index names"):
        load_manifest(path)
    size = victim.stat().st_size
    forge_index(path, lambda d: d["shards"][1].update(bytes=size))  # the size forged too: the checksum tells
    with pytest.raises(ManifestError, match=rf"{victim.name}.*checksum .* is not"):
        load_manifest(path)


def test_a_damaged_shard_or_index_is_refused(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    sharded_after_updates(drops, path)
    good_index = path.read_bytes()
    text = good_index.replace(b'"samples": 4', b'"samples": 5', 1)
    assert text != good_index
    path.write_bytes(text)
    with pytest.raises(ManifestError, match="does not match its checksum"):
        load_manifest(path)
    path.write_bytes(good_index[: len(good_index) // 2])
    with pytest.raises(ManifestError, match="not a valid sharded manifest index"):
        load_manifest(path)
    path.write_bytes(b'{"format": "something else"}')
    with pytest.raises(ManifestError, match="not a vdc_torch sharded manifest index"):
        load_manifest(path)
    path.write_bytes(good_index)
    shard = sorted((tmp_path / "m.vdc.shards").iterdir(), key=lambda p: p.stat().st_size)[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in a stored part
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=shard.name):
        table, _ = load_manifest(path)
        np.asarray(table.thumbs), list(table.details)  # parts are verified when first read
    shard.unlink()
    with pytest.raises(ManifestError, match=rf"incomplete: its shard .*{shard.name}.* is missing"):
        load_manifest(path)


@pytest.mark.parametrize("name", ["../outside.vdc", "/etc/passwd", "sub/0123456789abcdef0123456789abcdef.vdc",
                                  "..", "0123456789ABCDEF0123456789ABCDEF.vdc", "x" * 5000])
def test_shard_names_that_could_leave_the_shard_folder_are_refused(drops: list[Path], tmp_path: Path,
                                                                   name: str) -> None:
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    forge_index(path, lambda d: d["shards"][0].update(file=name))
    with pytest.raises(ManifestError, match="refused: shard #0 is named"):
        load_manifest(path)


def test_shards_reached_through_symbolic_links_are_refused(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    folder_path = tmp_path / "m.vdc.shards"
    (shard,) = folder_path.iterdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shard.rename(outside / shard.name)
    shard.symlink_to(outside / shard.name)  # the very shard, but outside the folder
    with pytest.raises(ManifestError, match="is a symbolic link"):
        load_manifest(path)
    shard.unlink()
    folder_path.rmdir()
    folder_path.symlink_to(outside)  # the whole folder elsewhere
    with pytest.raises(ManifestError, match="shard folder .* is a symbolic link"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="symbolic link"):
        DatasetGate(reference=str(drops[1]), workers=0).save(path)


# -- compaction, crashes, concurrency ------------------------------------------------------------------------


def test_compaction_merges_the_shards_and_removes_only_our_files(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    gate = sharded_after_updates(drops, path)
    expected = rows(gate.reference_table)
    folder_path = tmp_path / "m.vdc.shards"
    stray = folder_path / f"{'ab' * 16}.vdc"
    shutil.copy(next(folder_path.iterdir()), stray)  # a shard a killed saver wrote but never named
    temp = folder_path / f".{'cd' * 16}.vdc.abcd1234.tmp"
    temp.write_bytes(b"")  # the temp file of a killed shard write
    notes = folder_path / "notes.txt"
    notes.write_text("mine")  # a user's file
    imposter = folder_path / f"{'ef' * 16}.vdc"
    imposter.write_bytes(b"not sqlite, not ours")
    assert manifest_info(path)["shards"] == 3
    compact_manifest(path)
    assert manifest_info(path)["shards"] == 1
    assert rows(load_manifest(path)[0]) == expected
    left = sorted(p.name for p in folder_path.iterdir())
    assert len(left) == 3 and "notes.txt" in left and imposter.name in left and stray.name not in left
    assert not temp.exists()
    gate.update(str(folder(tmp_path / "drop4", small_photos()[16:18])))
    gate.save(path)  # a gate loaded before the compaction still appends (same lineage)
    assert manifest_info(path)["shards"] == 2 and len(load_manifest(path)[0]) == 18
    assert gate.compact() == path and manifest_info(path)["shards"] == 1
    assert rows(load_manifest(path)[0]) == rows(gate.reference_table)


def _save_and_die(path: str, drop: str, stage: str) -> None:
    """Load, update, save — and SIGKILL this process at ``stage`` of the save."""
    import vdc_torch.decision.store.manifest as manifest_module

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "before the index rename":  # the new shard is written and fsynced, the index not replaced
        sharded.write_index = die
    else:  # in the middle of writing the shard's temp file

        def half(tmp_name, *args, **kwargs):
            with open(tmp_name, "wb") as handle:
                handle.write(b"SQLite format 3\x00" + b"\0" * 5000)
            die()
        manifest_module._write_database = half
    gate = DatasetGate.load(path, workers=0)
    gate.update(drop)
    gate.save(path)
    os._exit(3)  # not reached


@pytest.mark.parametrize("stage", ["before the index rename", "while writing the shard"])
def test_a_saver_killed_mid_append_leaves_the_previous_version(drops: list[Path], tmp_path: Path,
                                                               stage: str) -> None:
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    previous = rows(load_manifest(path)[0])
    index = path.read_bytes()
    child = multiprocessing.get_context("fork").Process(target=_save_and_die, args=(str(path), str(drops[1]), stage))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert path.read_bytes() == index and rows(load_manifest(path)[0]) == previous
    left = sorted(p.name for p in (tmp_path / "m.vdc.shards").iterdir())
    assert len(left) == 2  # the old shard and what the killed saver left (a complete shard, or its temp file)
    gate = DatasetGate.load(path, workers=0)
    gate.update(str(drops[2]))
    gate.save(path)  # the next save appends and removes what the killed one left
    assert len(shard_files(path)) == 2 and len(load_manifest(path)[0]) == 12
    assert left[0] in shard_files(path) or left[1] in shard_files(path)


def _append(path: str, drop: str, barrier) -> None:
    gate = DatasetGate.load(path, workers=0)
    gate.update(drop)
    barrier.wait(60)  # both have loaded the same version before either saves
    gate.save(path)


def test_two_processes_appending_at_once_both_land(drops: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    writers = [context.Process(target=_append, args=(str(path), str(drop), barrier)) for drop in drops[1:]]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    table = load_manifest(path)[0]
    assert manifest_info(path)["shards"] == 3 and len(table) == 16
    assert len(set(table.sample_index.tolist())) == 16  # the later saver numbered its rows past the other's
    names = {os.path.basename(p) for p in table.paths}
    assert names == {p.name for d in drops for p in (d / "photos").iterdir()}
    singles = {p: DatasetGate(reference=str(d), workers=0).reference_table for p, d in zip("abc", drops)}
    assert sorted(table.pixel_digest) == sorted(sum((t.pixel_digest for t in singles.values()), []))


def test_a_per_rank_append_keeps_another_jobs_rows_and_numbers_past_them(drops: list[Path], tmp_path: Path) -> None:
    """save_manifest_of_ranks' append path (one rank here): the stored shards stay, another job's append since the
    load is kept, and the rows this save adds are numbered past it, on disk and in memory."""
    path = tmp_path / "m.vdc"
    DatasetGate(reference=str(drops[0]), workers=0).save(path, sharded=True)
    table, meta, origin = load_manifest_origin(path)
    other = DatasetGate.load(path, workers=0)  # another job appends drop 2 meanwhile
    other.update(str(drops[1]))
    other.save(path)
    before = shard_files(path)
    added = DatasetGate(reference=str(drops[2]), workers=0).reference_table
    added.sample_index = added.sample_index + len(table)  # numbered after what this job loaded: 8..11
    grown = concat_tables([table, added])
    saved = save_manifest_of_ranks(path, grown, {"reference_root": "r"}, append_after=(origin.lineage, origin.rows))
    assert saved.appended and saved.first_row == 8 and saved.shift == 4 and saved.shards == 3
    assert saved.origin.lineage == origin.lineage
    after = shard_files(path)
    assert all(after[name] == before[name] for name in before) and len(after) == 3
    stored = load_manifest(path)[0]
    assert len(stored) == 16 and sorted(stored.sample_index.tolist()) == list(range(16))
    assert grown.sample_index[8:].tolist() == [12, 13, 14, 15]  # in memory too
    assert rows(stored.rows(range(12, 16))) == rows(grown.rows(range(8, 12)))
    fresh = save_manifest_of_ranks(path, grown, {}, append_after=("another lineage", 8))
    assert not fresh.appended and fresh.shards == 1 and fresh.origin.lineage != origin.lineage
    assert len(load_manifest(path)[0]) == 12 and len(shard_files(path)) == 1


# -- the command line ----------------------------------------------------------------------------------------


def test_vdc_update_and_info_on_a_sharded_manifest(drops: list[Path], tmp_path: Path, capsys) -> None:
    path = tmp_path / "ckpt" / "reference.vdc"
    assert main(["index", str(drops[0]), "-o", str(path), "--quiet"]) == EXIT_TRAIN
    assert main(["update", str(path), str(drops[1]), "--sharded", "--quiet"]) == EXIT_TRAIN  # converts, appends
    assert manifest_info(path)["shards"] == 2
    before = shard_files(path)
    assert main(["update", str(path), str(drops[2]), "--quiet"]) == EXIT_TRAIN  # stays sharded: one more shard
    after = shard_files(path)
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == EXIT_TRAIN
    info = json.loads(capsys.readouterr().out)
    assert info["storage"] == "sharded" and info["shards"] == 3 and info["samples"] == 16
    assert info["format"] == "vdc_torch-sharded-manifest"
