"""The incremental fingerprint cache: a second check on unchanged data decodes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vdc_torch.fingerprint as fingerprint_module
from vdc_torch import DatasetGate


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = fingerprint_module.decode_file

    def counting(path, **kwargs):
        calls.append(str(path))
        return original(path, **kwargs)

    monkeypatch.setattr(fingerprint_module, "decode_file", counting)
    return calls


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
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    count_decodes.clear()
    DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    assert count_decodes == [str(changed)]


def test_corrupt_cache_is_ignored_with_a_warning(scenario, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache.vdc"
    cache.write_bytes(b"this is not a cache")
    decision = DatasetGate(reference=scenario.reference, cache=cache, workers=0).check(scenario.new)
    assert abs(decision.overlap - scenario.true_overlap) <= 0.02
    assert "ignoring the fingerprint cache" in caplog.text
    assert cache.read_bytes() == b"this is not a cache"  # a file we cannot read is never overwritten
