"""The incremental fingerprint cache: a second check on unchanged data decodes nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vdc_torch import Dataset, DatasetGate
from vdc_torch.decision.store.cache import FingerprintCache
from vdc_torch.decision.store.cache import fingerprint_with_cache as compute_fingerprints


def test_second_check_on_unchanged_data_decodes_nothing(scenario, tmp_path: Path, count_decodes: list[str]) -> None:
    cache = tmp_path / "cache.vdc"
    first = DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    assert len(count_decodes) == len(os.listdir(scenario.reference)) + len(os.listdir(scenario.new))
    count_decodes.clear()
    second = DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    assert count_decodes == []
    assert second.to_dict()["matches"] == first.to_dict()["matches"]
    assert second.delta.indices == first.delta.indices


def test_changed_file_is_decoded_again(scenario, tmp_path: Path, count_decodes: list[str]) -> None:
    cache = tmp_path / "cache.vdc"
    DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    changed = sorted(scenario.new.iterdir())[0]
    with open(changed, "ab") as handle:  # new bytes (a JPEG decoder ignores data after the end marker)
        handle.write(b"\x00" * 7)
    count_decodes.clear()
    DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    assert count_decodes == [str(changed)]


def _fingerprint_folder(folder: Path, cache_file: Path, workers: int = 0):
    cache = FingerprintCache(cache_file)
    table, problems = compute_fingerprints(Dataset(str(folder)), cache=cache, workers=workers)
    assert not [p for p in problems if p.fatal]
    return table, cache


def _values(table, row: int) -> tuple:
    """Everything a fingerprint says about the content (not where the file is or when it was written)."""
    fp = table.fingerprint(row)
    return (fp.width, fp.height, fp.pixel_digest, fp.byte_digest, fp.exif_identity, fp.phash, fp.phash_mirror,
            fp.crop_hashes.tobytes(), fp.thumb.tobytes(), fp.detail, fp.file_size)


def test_renamed_moved_copied_and_touched_files_are_not_decoded(
    photos: list[Path], tmp_path: Path, count_decodes: list[str]
) -> None:
    data = tmp_path / "data"
    (data / "b").mkdir(parents=True)
    for photo in photos[:6]:
        shutil.copy2(photo, data / "b" / photo.name)
    data = data / "b"  # class folder "b"; "a" receives the moved file
    cache_file = tmp_path / "cache.vdc"
    before, _ = _fingerprint_folder(data.parent, cache_file)
    by_name = {Path(p).name: row for row, p in enumerate(before.paths)}
    assert len(count_decodes) == 6
    names = [p.name for p in photos[:6]]
    (data / names[0]).rename(data / f"renamed-{names[0]}")  # renamed
    (data.parent / "a").mkdir()
    (data / names[1]).rename(data.parent / "a" / names[1])  # moved to another folder
    touched = data / names[2]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))  # touched, bytes unchanged
    shutil.copyfile(data / names[3], data / f"copy-{names[3]}")  # copied (new mtime too)
    count_decodes.clear()
    after, cache = _fingerprint_folder(data.parent, cache_file)
    assert count_decodes == []
    assert cache.digest_hits == 4  # renamed, moved, touched, copied
    assert cache.hits == 3  # names[3] itself and the two files left alone
    for row, path in enumerate(after.paths):
        name = Path(path).name.removeprefix("renamed-").removeprefix("copy-")
        assert _values(after, row) == _values(before, by_name[name]), path
    assert after.mtime_ns[after.paths.index(str(touched))] == st.st_mtime_ns + 7_000_000_000
    # re-keyed under the new paths: a third run finds every file by path, size and mtime
    again, cache = _fingerprint_folder(data.parent, cache_file)
    assert (cache.hits, cache.digest_hits) == (7, 0)
    assert count_decodes == []
    assert [_values(again, r) for r in range(len(again))] == [_values(after, r) for r in range(len(after))]


def test_digest_fallback_in_worker_processes(photos: list[Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for photo in photos[:10]:
        shutil.copy2(photo, data / photo.name)
    cache_file = tmp_path / "cache.vdc"
    before, _ = _fingerprint_folder(data, cache_file, workers=2)
    moved = tmp_path / "moved"
    data.rename(moved)
    after, cache = _fingerprint_folder(moved, cache_file, workers=2)
    assert (cache.hits, cache.digest_hits) == (0, 10)
    assert [_values(after, r) for r in range(10)] == [_values(before, r) for r in range(10)]


def test_corrupt_cache_is_ignored_with_a_warning(scenario, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache.vdc"
    cache.write_bytes(b"this is not a cache")
    decision = DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    assert abs(decision.overlap - scenario.true_overlap) <= 0.02
    assert "ignoring the fingerprint cache" in caplog.text
    assert cache.read_bytes() == b"this is not a cache"  # a file we cannot read is never overwritten


def test_fingerprinting_a_stream_never_opens_the_cache(photos: list[Path], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # a stream is read once and its fingerprints are not cached, so fingerprinting it (the reference, an update)
    # does not even open the cache file (at scale, a full manifest load)
    import torch.utils.data
    from PIL import Image

    class Stream(torch.utils.data.IterableDataset):
        def __init__(self, files: list[Path]) -> None:
            self.files = files

        def __iter__(self):
            for f in self.files:
                with Image.open(f) as image:
                    yield image.convert("RGB"), 0

    cache = tmp_path / "cache.vdc"
    cache.write_bytes(b"this is not a cache")  # opening it would warn that it is ignored
    gate = DatasetGate(reference=Stream(photos[:6]), cache=cache, workers=0)
    assert gate.update(Stream(photos[6:9])) == 3 and len(gate) == 9
    assert "ignoring the fingerprint cache" not in caplog.text
    assert cache.read_bytes() == b"this is not a cache"
