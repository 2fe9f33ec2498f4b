"""The cached match result is reused only when nothing the cascade reads has changed."""

from __future__ import annotations

from pathlib import Path

from conftest import COWS
from PIL import Image

from vdc_torch import DatasetGate


def png_copies(target: Path, names: list[str], compress_level: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        with Image.open(COWS / name) as im:
            im.convert("RGB").save(target / name, compress_level=compress_level)


def test_a_lossless_resave_is_not_reported_as_identical_bytes_from_the_cache(tmp_path: Path) -> None:
    names = sorted(p.name for p in COWS.glob("*.png"))[:4]
    png_copies(tmp_path / "ref", names, compress_level=6)
    png_copies(tmp_path / "new", names, compress_level=6)  # byte-identical to the reference files
    cache = tmp_path / "cache.vdc"

    first = DatasetGate(reference=str(tmp_path / "ref"), cache=str(cache)).check(str(tmp_path / "new"))
    assert sorted(first.matches["method"]) == ["bytes"] * len(names)

    png_copies(tmp_path / "new", names, compress_level=1)  # same pixels, other bytes
    for name in names:
        assert (tmp_path / "new" / name).read_bytes() != (tmp_path / "ref" / name).read_bytes()
    second = DatasetGate(reference=str(tmp_path / "ref"), cache=str(cache)).check(str(tmp_path / "new"))
    assert sorted(second.matches["method"]) == ["pixels"] * len(names), second.matches[["new_path", "evidence"]]
    assert not second.matches["evidence"].str.contains("identical bytes").any()

    third = DatasetGate(reference=str(tmp_path / "ref"), cache=str(cache)).check(str(tmp_path / "new"))
    assert third.matches.equals(second.matches)  # unchanged inputs: the cached result again


def test_a_new_match_result_does_not_rewrite_the_cached_fingerprints(tmp_path: Path) -> None:
    from vdc_torch import MatchConfig

    names = sorted(p.name for p in COWS.glob("*.png"))[:4]
    png_copies(tmp_path / "ref", names, compress_level=6)
    png_copies(tmp_path / "new", names, compress_level=1)
    cache = tmp_path / "cache.vdc"
    first = DatasetGate(reference=str(tmp_path / "ref"), cache=str(cache)).check(str(tmp_path / "new"))
    fingerprints = (cache.read_bytes(), cache.stat().st_mtime_ns)
    results = tmp_path / "cache.vdc.matches"
    assert results.exists()

    # other settings: a new result is computed and kept, the fingerprints file stays as it was
    other = DatasetGate(reference=str(tmp_path / "ref"), cache=str(cache), config=MatchConfig(use_alignment=False))
    second = other.check(str(tmp_path / "new"))
    assert second.counts["exact"] == first.counts["exact"] == len(names)
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == fingerprints
    stored = results.stat().st_mtime_ns

    # the same check again: answered from the cache, nothing written at all
    again = DatasetGate(reference=str(tmp_path / "ref"), cache=str(cache), config=MatchConfig(use_alignment=False))
    assert again.check(str(tmp_path / "new")).matches.equals(second.matches)
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == fingerprints
    assert results.stat().st_mtime_ns == stored
    assert {p.name for p in tmp_path.iterdir()} <= {"ref", "new", "cache.vdc", "cache.vdc.lock", "cache.vdc.matches",
                                                 "cache.vdc.matches.lock"}
