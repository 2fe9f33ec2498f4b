"""`vdc index` and `vdc gate --cache` resume after an interrupt: fingerprints are checkpointed while they are computed.

The kill tests run the real command line in a process of its own, SIGKILL it once its first checkpoint is on disk
and run the same command again: it must decode only what the checkpoint lacks and end exactly as an uninterrupted
run. Decodes are counted by a small wrapper (``run_vdc.py`` below) that logs each ``decode_file`` call to a file and
slows it down, so the kill lands mid-run whatever the machine's speed (no timing is asserted).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vdc_torch.decision.store.cache as cache_module
import vdc_torch.fingerprints.compute as fingerprint_module
from vdc_torch import Dataset, DatasetGate
from vdc_torch.decision.store.cache import (
    CHECKPOINT_SAMPLES_ENV,
    CHECKPOINT_SECONDS_ENV,
    CacheCheckpoint,
    FingerprintCache,
    checkpoint_path,
)
from vdc_torch.decision.store.cache import fingerprint_with_cache as compute_fingerprints
from vdc_torch.decision.store.manifest import load_manifest
from vdc_torch.decision.store.stored import is_stored
from vdc_torch.faces.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TRAIN, main

REPO = Path(__file__).resolve().parents[1]

RUN_VDC = """\
import os, sys, time
import vdc_torch.fingerprints.compute as fingerprint

_decode = fingerprint.decode_file

def decode_file(path, **kwargs):
    with open(os.environ["VDC_TEST_DECODES"], "a") as log:
        log.write(str(path) + "\\n")
    time.sleep(float(os.environ.get("VDC_TEST_DECODE_DELAY", "0")))
    return _decode(path, **kwargs)

fingerprint.decode_file = decode_file  # set before any worker process is forked, so workers log too
from vdc_torch.faces.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def default_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHECKPOINT_SAMPLES_ENV, raising=False)
    monkeypatch.delenv(CHECKPOINT_SECONDS_ENV, raising=False)


def copy_photos(photos: list[Path], folder: Path, start: int = 0, count: int = 30) -> Path:
    folder.mkdir(parents=True)
    for photo in photos[start:start + count]:
        shutil.copy2(photo, folder / photo.name)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` (hidden ones too) with its size and mtime: what "nothing was written" means."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def columns(table) -> dict[str, list]:
    """Every column of a fingerprint table as plain Python values."""
    out = {}
    for name in table.__dataclass_fields__:
        value = getattr(table, name)
        if is_stored(value):
            value = list(value) if value.is_bytes else np.asarray(value)
        out[name] = value.tolist() if isinstance(value, np.ndarray) else [
            bytes(v) if isinstance(v, memoryview) else v for v in value
        ]
    return out


def manifest_content(path: Path) -> tuple[dict, dict]:
    table, meta = load_manifest(path)
    return columns(table), {k: v for k, v in meta.items() if k != "saved_at"}


def start_vdc(tmp_path: Path, args: list[str], decodes: Path, delay: float, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "run_vdc.py"
    script.write_text(RUN_VDC)
    environment = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "VDC_TEST_DECODES": str(decodes), "VDC_TEST_DECODE_DELAY": str(delay), **env}
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment, start_new_session=True)


def kill_after_first_checkpoint(process: subprocess.Popen[str], checkpoint: Path) -> None:
    """SIGKILL the process (and any worker it forked) as soon as ``checkpoint`` exists."""
    while not checkpoint.exists() and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before a checkpoint appeared: {process.communicate()}"
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def decoded(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_killed_index_resumes_and_writes_the_same_manifest(photos: list[Path], tmp_path: Path) -> None:
    images = copy_photos(photos, tmp_path / "images")
    before = snapshot(images)
    expected = tmp_path / "expected" / "m.vdc"
    assert main(["index", str(images), "-o", str(expected), "-q", "--workers", "0"]) == EXIT_TRAIN

    out = tmp_path / "out" / "m.vdc"
    partial = checkpoint_path(out)
    assert partial == tmp_path / "out" / "m.vdc.partial"
    args = ["index", str(images), "-o", str(out), "--workers", "1"]
    first = start_vdc(tmp_path, args, tmp_path / "decodes-1.txt", delay=0.3, **{CHECKPOINT_SAMPLES_ENV: "1"})
    kill_after_first_checkpoint(first, partial)
    assert not out.exists()
    done = set(load_manifest(partial)[0].paths)
    assert 0 < len(done) < 30

    second = start_vdc(tmp_path, args, tmp_path / "decodes-2.txt", delay=0.0)
    out_text, err_text = second.communicate(timeout=300)
    assert second.returncode == EXIT_TRAIN, err_text
    assert f"resuming: {len(done)} of 30 samples of {images} already fingerprinted in {partial}" in err_text
    again = decoded(tmp_path / "decodes-2.txt")
    assert len(again) == 30 - len(done) and done.isdisjoint(again)  # (a) only the rest was decoded
    assert manifest_content(out) == manifest_content(expected)  # (b) same paths, digests, every column
    assert sorted(os.listdir(out.parent)) == sorted(os.listdir(expected.parent)) == ["m.vdc", "m.vdc.lock"]  # (c)
    assert snapshot(images) == before


def test_killed_gate_with_cache_resumes_to_the_same_decision(scenario, tmp_path: Path) -> None:
    reference = tmp_path / "reference.vdc"
    assert main(["index", str(scenario.reference), "-o", str(reference), "-q", "--workers", "0"]) == EXIT_TRAIN
    before = snapshot(scenario.new)
    n_new = len(before)
    expected = tmp_path / "expected.json"
    expected_code = main(["gate", "--reference", str(reference), "--new", str(scenario.new), "--json", str(expected),
                          "-q", "--workers", "0"])

    run = tmp_path / "run"
    run.mkdir()
    cache, decision = run / "cache.vdc", run / "decision.json"
    args = ["gate", "--reference", str(reference), "--new", str(scenario.new), "--cache", str(cache),
            "--json", str(decision), "--workers", "1"]
    first = start_vdc(tmp_path, args, tmp_path / "decodes-1.txt", delay=0.3, **{CHECKPOINT_SAMPLES_ENV: "1"})
    kill_after_first_checkpoint(first, cache)
    assert not decision.exists()
    done = set(load_manifest(cache)[0].paths)
    assert 0 < len(done) < n_new

    second = start_vdc(tmp_path, args, tmp_path / "decodes-2.txt", delay=0.0)
    _, err_text = second.communicate(timeout=300)
    assert second.returncode == expected_code, err_text
    assert f"cache: {len(done)} of {n_new} samples of {scenario.new} already fingerprinted in {cache}" in err_text
    again = decoded(tmp_path / "decodes-2.txt")
    assert len(again) == n_new - len(done) and done.isdisjoint(again)
    assert json.loads(decision.read_text()) == json.loads(expected.read_text())
    # the match results live next to the cache, so storing one does not rewrite the fingerprints (issue 21)
    assert sorted(os.listdir(run)) == ["cache.vdc", "cache.vdc.lock", "cache.vdc.matches", "cache.vdc.matches.lock",
                                       "decision.json"]
    assert snapshot(scenario.new) == before


def test_ctrl_c_saves_what_was_fingerprinted(photos: list[Path], tmp_path: Path, count_decodes: list[str],
                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    images = copy_photos(photos, tmp_path / "images")
    counting = fingerprint_module.decode_file

    def interrupted(path, **kwargs):
        if len(count_decodes) == 10:
            raise KeyboardInterrupt
        return counting(path, **kwargs)

    monkeypatch.setattr(fingerprint_module, "decode_file", interrupted)
    out = tmp_path / "out" / "m.vdc"
    assert main(["index", str(images), "-o", str(out), "-q", "--workers", "0"]) == EXIT_INTERRUPTED
    assert not out.exists()
    # no checkpoint was due yet (defaults: thousands of samples or 30 s): this one was written on the interrupt
    done = set(load_manifest(checkpoint_path(out))[0].paths)
    assert 0 < len(done) <= 10 and done <= set(count_decodes)

    monkeypatch.setattr(fingerprint_module, "decode_file", counting)
    count_decodes.clear()
    capsys.readouterr()
    assert main(["index", str(images), "-o", str(out), "--workers", "0"]) == EXIT_TRAIN
    assert f"resuming: {len(done)} of 30 samples" in capsys.readouterr().err
    assert len(count_decodes) == 30 - len(done) and done.isdisjoint(count_decodes)
    assert not checkpoint_path(out).exists()


def test_quiet_resume_prints_no_note(photos: list[Path], tmp_path: Path, capsys) -> None:
    images = copy_photos(photos, tmp_path / "images", count=8)
    out = tmp_path / "m.vdc"
    compute_fingerprints(Dataset(str(images)), cache=FingerprintCache(checkpoint_path(out)), workers=0)
    assert main(["index", str(images), "-o", str(out), "-q", "--workers", "0"]) == EXIT_TRAIN
    captured = capsys.readouterr()
    assert "resuming" not in captured.err and captured.out.startswith("indexed 8 samples")
    assert not checkpoint_path(out).exists()


def test_checkpoint_of_another_folder_or_changed_files_is_never_reused_wrongly(
    photos: list[Path], tmp_path: Path, count_decodes: list[str], capsys
) -> None:
    folder_a = copy_photos(photos, tmp_path / "a", start=0, count=10)
    folder_b = copy_photos(photos, tmp_path / "b", start=10, count=10)
    expected = tmp_path / "expected.vdc"
    assert main(["index", str(folder_b), "-o", str(expected), "-q", "--workers", "0"]) == EXIT_TRAIN

    # a checkpoint left by an interrupted index of folder a, then the same output indexes folder b
    out = tmp_path / "out" / "m.vdc"
    compute_fingerprints(Dataset(str(folder_a)), cache=FingerprintCache(checkpoint_path(out)), workers=0)
    count_decodes.clear()
    capsys.readouterr()
    assert main(["index", str(folder_b), "-o", str(out), "--workers", "0"]) == EXIT_TRAIN
    assert "resuming" not in capsys.readouterr().err
    assert len(count_decodes) == 10
    assert manifest_content(out) == manifest_content(expected)
    assert not checkpoint_path(out).exists()

    # a checkpoint of folder b, then one file's bytes change and another is only touched
    compute_fingerprints(Dataset(str(folder_b)), cache=FingerprintCache(checkpoint_path(out)), workers=0)
    files = sorted(folder_b.iterdir())
    with open(files[0], "ab") as handle:  # new bytes (a JPEG decoder ignores data after the end marker)
        handle.write(b"\x00" * 7)
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert main(["index", str(folder_b), "-o", str(expected), "-q", "--workers", "0"]) == EXIT_TRAIN  # fresh
    count_decodes.clear()
    capsys.readouterr()
    assert main(["index", str(folder_b), "-o", str(out), "--workers", "0"]) == EXIT_TRAIN
    assert "resuming: 8 of 10 samples" in capsys.readouterr().err
    assert count_decodes == [str(files[0])]  # the touched file is read and recognised by its bytes, not decoded
    assert manifest_content(out) == manifest_content(expected)


@pytest.mark.parametrize("kind", ["not-a-manifest", "a-manifest"])
def test_a_checkpoint_that_is_not_ours_is_ignored_and_left_alone(
    photos: list[Path], tmp_path: Path, kind: str, capsys
) -> None:
    images = copy_photos(photos, tmp_path / "images", count=8)
    out = tmp_path / "m.vdc"
    foreign = checkpoint_path(out)
    if kind == "not-a-manifest":
        shutil.copy(photos[0], foreign)  # e.g. the user's own file that happens to have this name
    else:  # a manifest (not a fingerprint cache) under that name: readable, but not ours to write or delete
        assert main(["index", str(images), "-o", str(foreign), "-q", "--workers", "0"]) == EXIT_TRAIN
    content = foreign.read_bytes()
    capsys.readouterr()
    assert main(["index", str(images), "-o", str(out), "--workers", "0"]) == EXIT_TRAIN
    assert f"ignoring the fingerprint cache {foreign}" in capsys.readouterr().err
    assert foreign.read_bytes() == content
    assert len(load_manifest(out)[0]) == 8


def test_index_of_unreadable_files_writes_nothing_and_leaves_no_checkpoint(
    photos: list[Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "out" / "m.vdc"
    assert main(["index", str(broken), "-o", str(out), "--workers", "0"]) == EXIT_ERROR
    assert "no readable sample" in capsys.readouterr().err
    assert not out.parent.exists()

    # 1 readable sample of 21 (too few to index): the checkpoint this run wrote goes with the failure
    shutil.copy2(photos[0], broken / photos[0].name)
    for i in range(3, 20):
        (broken / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    monkeypatch.setenv(CHECKPOINT_SAMPLES_ENV, "1")
    assert main(["index", str(broken), "-o", str(out), "-q", "--workers", "0"]) == EXIT_ERROR
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_cache_checkpoint_saves_every_n_samples_or_t_seconds(photos: list[Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    images = copy_photos(photos, tmp_path / "images", count=12)
    table, _ = compute_fingerprints(Dataset(str(images)), workers=0)
    cache = FingerprintCache(tmp_path / "cache.vdc")
    now = [0.0]
    checkpoint = CacheCheckpoint(cache, every_samples=5, every_seconds=30, clock=lambda: now[0])
    checkpoint(table.rows([0, 1]))
    checkpoint(table.rows([2, 3]))
    assert checkpoint.checkpoints == 0 and not cache.path.exists()
    checkpoint(table.rows([4]))  # 5 samples
    assert checkpoint.checkpoints == 1 and len(load_manifest(cache.path)[0]) == 5
    checkpoint(table.rows([5]))
    now[0] = 31.0  # 30 s since the last checkpoint
    checkpoint(table.rows([6]))
    assert checkpoint.checkpoints == 2 and len(load_manifest(cache.path)[0]) == 7

    saving = cache.save

    def slow_save() -> None:  # a save taking 2 s: the next one waits at least 20 s
        saving()
        now[0] += 2.0

    monkeypatch.setattr(cache, "save", slow_save)
    checkpoint(table.rows([7, 8, 9, 10, 11]))
    assert checkpoint.checkpoints == 3
    now[0] += 5.0
    checkpoint(table.rows([0, 1, 2, 3, 4]))  # 5 samples, but only 5 s after a 2 s save
    assert checkpoint.checkpoints == 3
    now[0] += 16.0
    checkpoint(table.rows([5]))
    assert checkpoint.checkpoints == 4
    checkpoint.flush()  # nothing new: no write
    assert checkpoint.checkpoints == 4


def test_checkpoints_env_var_is_used_and_a_bad_value_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    cache = FingerprintCache(tmp_path / "cache.vdc")
    monkeypatch.setenv(CHECKPOINT_SAMPLES_ENV, "3")
    monkeypatch.setenv(CHECKPOINT_SECONDS_ENV, "0.5")
    checkpoint = CacheCheckpoint(cache)
    assert (checkpoint.every_samples, checkpoint.every_seconds) == (3, 0.5)
    monkeypatch.setenv(CHECKPOINT_SAMPLES_ENV, "many")
    assert CacheCheckpoint(cache).every_samples == 2000
    assert "ignoring VDC_CHECKPOINT_SAMPLES='many'" in caplog.text


def test_on_chunk_sees_every_new_fingerprint_once_with_its_path(photos: list[Path], tmp_path: Path) -> None:
    images = copy_photos(photos, tmp_path / "images", count=20)
    chunks = []
    table, _ = compute_fingerprints(Dataset(str(images)), workers=0, on_chunk=chunks.append)
    assert len(chunks) > 1
    seen = [(int(i), p, bytes(d)) for c in chunks for i, p, d in zip(c.sample_index, c.paths, c.pixel_digest)]
    assert sorted(seen) == [(int(i), p, bytes(d)) for i, p, d in zip(table.sample_index, table.paths,
                                                                     table.pixel_digest)]


def test_mid_run_checkpoints_keep_cached_rows_right(photos: list[Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint that replaces a changed file's entry renumbers the cache rows while fingerprinting runs."""
    images = copy_photos(photos, tmp_path / "images", count=12)
    cache_file = tmp_path / "cache.vdc"
    DatasetGate(reference=images, cache=cache_file, workers=0).reference_table  # noqa: B018 - fill the cache
    files = sorted(images.iterdir())
    with open(files[0], "ab") as handle:  # the first row of the cache is replaced by the first checkpoint
        handle.write(b"\x00" * 3)
    shutil.copy2(files[1], images / "zz-copy.jpg")
    with open(files[1], "ab") as handle:  # its old bytes now live on only in the copy (found by digest)
        handle.write(b"\x00" * 5)
    monkeypatch.setenv(CHECKPOINT_SAMPLES_ENV, "1")
    monkeypatch.setattr(cache_module, "CHECKPOINT_MIN_GAP_FACTOR", 0.0)  # a checkpoint after every batch
    table = DatasetGate(reference=images, cache=cache_file, workers=0).reference_table
    fresh = DatasetGate(reference=images, workers=0).reference_table
    assert columns(table) == columns(fresh)
