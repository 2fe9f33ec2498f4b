"""The folders a reference's rows were read from (vdc_torch.decision.roots): a reference grown by update holds rows
of several folders, and plans, reports and views read each row under its own folder — on real photos."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from vdc_torch import DatasetGate
from vdc_torch.decision.roots import PARTS_KEY, add_part, parts_of, root_of
from vdc_torch.faces.cli import main


def test_parts_are_recorded_once_per_folder_and_found_by_sample_index(tmp_path: Path) -> None:
    meta = {"reference_root": str(tmp_path / "a")}
    add_part(meta, 10, str(tmp_path / "a"))  # the same folder: nothing to record
    assert PARTS_KEY not in meta and parts_of(meta) == [(0, str(tmp_path / "a"))]
    add_part(meta, 10, str(tmp_path / "b"))
    add_part(meta, 15, "")  # a stream: no folder
    parts = parts_of(meta)
    assert parts == [(0, str(tmp_path / "a")), (10, str(tmp_path / "b")), (15, "")]
    assert [root_of(parts, i) for i in (0, 9, 10, 14, 15, 99)] == [parts[0][1]] * 2 + [parts[1][1]] * 2 + [""] * 2


@pytest.mark.parametrize("forged", [[[3, "/x"]], [[0, "/x"], [0, "/y"]], [[0, 5]], "nope", [[True, "/x"]]])
def test_forged_parts_in_a_manifest_are_ignored_with_a_warning(forged, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert parts_of({"reference_root": "/data/train", PARTS_KEY: forged}) == [(0, "/data/train")]
    assert f"ignoring the manifest's {PARTS_KEY}" in caplog.text


def test_the_plan_replays_each_row_from_its_own_folder(photos: list[Path], tmp_path: Path) -> None:
    # the reference and a drop added by update share a relative name, cat/<name>, for two different pictures
    reference, drop, new = tmp_path / "reference", tmp_path / "drop", tmp_path / "new"
    for folder in (reference, drop, new):
        (folder / "cat").mkdir(parents=True)
    for f in photos[:4]:
        shutil.copy(f, reference / "cat" / f.name)
    shutil.copy(photos[4], drop / "cat" / photos[0].name)  # the same name as a reference file, another picture
    shutil.copy(photos[5], drop / "cat" / photos[5].name)
    for f in photos[6:8]:
        shutil.copy(f, new / "cat" / f.name)
    gate = DatasetGate(reference=reference, workers=0)
    assert gate.update(drop) == 2
    manifest = gate.save(tmp_path / "ref.vdc")
    plan_path = tmp_path / "plan.json"
    assert main(["gate", "--reference", str(manifest), "--new", str(new), "--plan", str(plan_path), "--replay", "3",
                 "--workers", "0", "-q"]) == 0
    plan = json.loads(plan_path.read_text())
    files = [Path(plan["reference_root"]) / p for p in plan["replay"]]  # absolute entries stay absolute
    assert len(files) == 6 and all(f.is_file() for f in files)
    assert sorted(f.read_bytes() for f in files) == sorted(
        p.read_bytes() for p in [*(reference / "cat").iterdir(), *(drop / "cat").iterdir()])


def test_the_report_shows_a_drop_row_from_the_drop_folder(photos: list[Path], tmp_path: Path) -> None:
    # a copy of the drop's cat/<name> is matched to that row; the report must not show the reference's cat/<name>
    from vdc_torch.faces.html import _data_uri, _Pictures, _thumbnail_from_file

    reference, drop, new = tmp_path / "reference", tmp_path / "drop", tmp_path / "new"
    for folder in (reference, drop, new):
        (folder / "cat").mkdir(parents=True)
    for f in photos[:3]:
        shutil.copy(f, reference / "cat" / f.name)
    shutil.copy(photos[4], drop / "cat" / photos[0].name)  # same name, another picture
    shutil.copy(photos[4], new / "cat" / "copy.jpg")
    gate = DatasetGate(reference=reference, workers=0)
    gate.update(drop)
    decision = gate.check(new)
    row = decision.matches.iloc[0]
    assert row["ref_path"] == f"cat/{photos[0].name}" and decision.reference_from_files
    pictures = _Pictures(decision.reference_fingerprints, decision.reference_root, contained=True,
                         parts=decision.reference_parts)
    uri, source = pictures.get(int(row["ref_index"]), row["ref_path"])
    assert source == "file" and uri == _data_uri(_thumbnail_from_file(str(drop / "cat" / photos[0].name)))
