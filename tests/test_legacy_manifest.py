"""Manifests of fingerprint version 5 (BLAKE2b pixel digests) still load and match under version 6 (BLAKE3).

``tests/data/fingerprint-v5/`` holds what vdc_torch at commit bc406bb (fingerprint version 5) wrote for the 12
smallest camera photos of ``exif-samples`` (``photos/<name>``): a single-file manifest, a sharded one and a
fingerprint cache. They are real files of the old version, not forged ones.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import photo_files
from PIL import Image

from vdc_torch import DatasetGate
from vdc_torch.decision.store.cache import FingerprintCache
from vdc_torch.decision.store.manifest import compact_manifest, load_manifest, manifest_info
from vdc_torch.faces.cli_inspect import describe
from vdc_torch.fingerprints.table import FINGERPRINT_VERSION, LEGACY_DIGEST_ROWS

FIXTURES = Path(__file__).parent / "data" / "fingerprint-v5"


def reference_photos() -> list[Path]:
    """The 12 photos the version-5 fixtures were made of."""
    files = sorted(photo_files(), key=lambda p: (p.stat().st_size, p.name))[:12]
    assert len(files) == 12, "expected the exif-samples photos under ../shared/data"
    return files


def fixture_copy(tmp_path: Path, name: str) -> Path:
    """A writable copy of one fixture (with its shard folder), so a test may update and save it."""
    for item in FIXTURES.iterdir():
        if item.name.startswith(name):
            (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    return tmp_path / name


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    """A new drop: a byte copy, a same-pixels PNG, a half-size copy of reference photos, and an unseen photo."""
    photos = reference_photos()
    root = tmp_path / "drop" / "photos"
    root.mkdir(parents=True)
    shutil.copy(photos[0], root / "byte_copy.jpg")
    with Image.open(photos[1]) as image:
        image.convert("RGB").save(root / "same_pixels.png")  # exif-samples photos carry no rotation to apply
        image.convert("RGB").resize((image.width // 2, image.height // 2), Image.LANCZOS).save(
            root / "half_size.jpg", quality=90)
    unseen = sorted(photo_files(), key=lambda p: (p.stat().st_size, p.name))[20]
    shutil.copy(unseen, root / "unseen.jpg")
    return tmp_path / "drop"


def kinds(decision) -> dict[str, tuple[str, str, str]]:
    m = decision.matches
    return {Path(n).name: (Path(r).name, k, meth) for n, r, k, meth in
            zip(m["new_path"], m["ref_path"], m["kind"], m["method"])}


@pytest.mark.parametrize("name", ["reference.vdc", "sharded.vdc"])
def test_a_version_5_manifest_decides_as_the_rebuilt_reference_does(name: str, drop: Path, tmp_path: Path,
                                                                    caplog) -> None:
    ref = tmp_path / "ref" / "photos"
    ref.mkdir(parents=True)
    for f in reference_photos():
        shutil.copy(f, ref / f.name)
    rebuilt = DatasetGate(reference=str(ref.parent), workers=0).check(str(drop))
    with caplog.at_level(logging.WARNING, logger="vdc_torch"):
        gate = DatasetGate.load(FIXTURES / name, workers=0)
    assert "12 reference samples hold pixel digests of fingerprint version 5" in caplog.text
    legacy = gate.check(str(drop))

    photos = reference_photos()
    assert kinds(rebuilt) == {"byte_copy.jpg": (photos[0].name, "exact", "bytes"),
                              "same_pixels.png": (photos[1].name, "exact", "pixels"),
                              "half_size.jpg": (photos[1].name, "near_duplicate", kinds(rebuilt)["half_size.jpg"][2])}
    found = kinds(legacy)
    # the old BLAKE2b pixel digest never equals a BLAKE3 one: the same-pixels copy is found one stage later
    assert found["same_pixels.png"][:2] == (photos[1].name, "near_duplicate")
    assert {k: v for k, v in found.items() if k != "same_pixels.png"} == {
        k: v for k, v in kinds(rebuilt).items() if k != "same_pixels.png"}
    assert legacy.action == rebuilt.action
    assert legacy.to_dict()["counts"]["delta"] == rebuilt.to_dict()["counts"]["delta"] == 1  # the unseen photo


def test_updates_and_compaction_keep_count_of_the_old_digests(drop: Path, tmp_path: Path) -> None:
    for name in ("reference.vdc", "sharded.vdc"):
        path = fixture_copy(tmp_path, name)
        gate = DatasetGate.load(path, workers=0)
        gate.update(str(drop))
        gate.save(path)
        table, meta = load_manifest(path)
        assert len(table) == 16 and meta["fingerprint_version"] == FINGERPRINT_VERSION
        assert meta[LEGACY_DIGEST_ROWS] == 12, name  # the 12 old rows, not the 4 added
        if name == "sharded.vdc":
            assert manifest_info(path)["shards"] == 2  # the old shard kept as it was, one new shard appended
            compact_manifest(path)
            assert manifest_info(path)["shards"] == 1 and load_manifest(path)[1][LEGACY_DIGEST_ROWS] == 12
        assert "older fingerprint version" in describe(str(path))["note"]
        again = DatasetGate.load(path, workers=0).check(str(drop))
        assert set(again.matches["kind"]) == {"exact"}  # the drop's own rows now give exact matches


def test_a_version_5_fingerprint_cache_is_recomputed_and_rewritten(tmp_path: Path) -> None:
    cache_path = fixture_copy(tmp_path, "fingerprints.cache")
    ref = tmp_path / "ref" / "photos"
    ref.mkdir(parents=True)
    for f in reference_photos():
        shutil.copy(f, ref / f.name)
    cache = FingerprintCache(cache_path)
    assert cache.writable and len(cache) == 0  # ours, of the old version: used as empty, not refused
    gate = DatasetGate(reference=str(ref.parent), workers=0, cache=cache)
    assert len(gate.reference_table) == 12
    cache.save()
    table, meta = load_manifest(cache_path)
    assert meta["fingerprint_version"] == FINGERPRINT_VERSION and len(table) == 12
    assert LEGACY_DIGEST_ROWS not in meta
