"""gate.query(): one-image and small-batch queries against a kept reference, on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Scenario
from PIL import Image

from vdc_torch import DatasetGate
from vdc_torch.decision.query import QUERY_COLUMNS
from vdc_torch.errors import InvalidParameterError


@pytest.fixture
def gate(scenario: Scenario) -> DatasetGate:
    return DatasetGate(reference=scenario.reference, workers=0)


def test_query_gives_the_answer_check_gives(gate: DatasetGate, scenario: Scenario) -> None:
    files = sorted(scenario.new.iterdir())
    decision = gate.check(scenario.new)
    checked = {Path(p).name: (k, Path(r).name) for p, r, k in
               zip(decision.matches["new_path"], decision.matches["ref_path"], decision.matches["kind"])}
    answers = gate.query([str(f) for f in files])
    assert list(answers.columns) == list(QUERY_COLUMNS)
    assert answers["query"].tolist() == list(range(len(files)))
    for name, kind, ref_path, seen in zip(answers["name"], answers["kind"], answers["ref_path"], answers["seen"]):
        name = Path(name).name
        if name in checked:
            assert (kind, Path(ref_path).name) == checked[name]
        else:
            assert kind == "new" and ref_path is None and not seen
    seen = {Path(n).name for n, s in zip(answers["name"], answers["seen"]) if s}
    assert seen == scenario.copies  # every re-encoded copy, and no fresh photo


def test_one_image_as_path_pil_array_and_tensor(gate: DatasetGate, scenario: Scenario) -> None:
    copy = sorted(scenario.copies)[0]
    path = scenario.new / copy
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    array = np.asarray(rgb)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    answers = [gate.query(x) for x in (path, str(path), rgb, array, tensor, path.read_bytes())]
    refs = {a["ref_path"].iloc[0] for a in answers}
    assert all(len(a) == 1 and bool(a["seen"].iloc[0]) for a in answers)
    assert len(refs) == 1  # the same reference picture whatever the input type


def test_flipped_crop_and_quarter_turn_are_found(gate: DatasetGate, scenario: Scenario, tmp_path: Path) -> None:
    source = sorted(scenario.reference.iterdir())[0]
    with Image.open(source) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    flipped_crop = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((w // 10, h // 10, w - w // 10, h - h // 10))
    turned = rgb.transpose(Image.Transpose.ROTATE_90)
    answers = gate.query([flipped_crop, turned])
    assert answers["ref_path"].tolist() == [source.name, source.name]
    assert answers["kind"].tolist() == ["near_duplicate", "near_duplicate"]


def test_unreadable_images_are_reported_not_skipped(gate: DatasetGate, scenario: Scenario, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    missing = tmp_path / "missing.png"
    good = scenario.new / sorted(scenario.copies)[0]
    answers = gate.query([broken, good, missing])
    assert answers["kind"].tolist()[0] == "unreadable" and "broken.jpg" in answers["evidence"].iloc[0]
    assert bool(answers["seen"].iloc[1])
    assert answers["kind"].iloc[2] == "unreadable" and answers["evidence"].iloc[2]


def test_wrong_argument_type_is_a_clear_error(gate: DatasetGate) -> None:
    with pytest.raises(InvalidParameterError, match="not int"):
        gate.query(3)


def test_query_follows_update_and_a_loaded_manifest(gate: DatasetGate, scenario: Scenario, tmp_path: Path) -> None:
    fresh = sorted(scenario.novel)[0]
    assert gate.query(scenario.new / fresh)["kind"].iloc[0] == "new"
    gate.update(scenario.new)  # the reference now holds the fresh photos too: the kept index must follow
    after = gate.query(scenario.new / fresh)
    assert after["kind"].iloc[0] == "exact" and Path(after["ref_path"].iloc[0]).name == fresh
    manifest = gate.save(tmp_path / "ref.vdc")
    loaded = DatasetGate.load(manifest)
    again = loaded.query(scenario.new / fresh)
    assert again[["kind", "ref_path", "ref_index"]].equals(after[["kind", "ref_path", "ref_index"]])
