"""Per-class coverage in the decision, and the new-class rule (issue 19), on real camera photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vdc_torch import DatasetGate, Policy


def folder(root: Path, classes: dict[str, list[Path]]) -> Path:
    for name, files in classes.items():
        (root / name).mkdir(parents=True)
        for path in files:
            shutil.copy(path, root / name / path.name)
    return root


@pytest.fixture
def drop(photos: list[Path], tmp_path: Path) -> tuple[Path, Path]:
    """Reference: cats and dogs (4 photos each). New: the same 4 cats again and 1 bird (a class never seen)."""
    cats, dogs, bird = photos[:4], photos[4:8], photos[8:9]
    reference = folder(tmp_path / "reference", {"cats": cats, "dogs": dogs})
    new = folder(tmp_path / "new", {"cats": cats, "birds": bird})
    return reference, new


#: Without the new-class rule this policy skips the drop above: 80 % seen, 1 novel sample (< 5).
SKIPPING = {"skip_overlap": 0.7, "min_delta_to_train": 5}


def test_a_class_the_reference_never_saw_makes_it_train_and_is_named(drop: tuple[Path, Path]) -> None:
    reference, new = drop
    decision = DatasetGate(reference=str(reference), policy=Policy(**SKIPPING), workers=0).check(str(new))
    assert str(decision.action) == "train"
    assert "1 class(es) the reference has never seen ('birds')" in decision.reason
    by_class = decision.classes.set_index("class")
    assert by_class.loc["birds"].to_dict() == {"reference": 0, "new": 1, "seen": 0, "novel": 1,
                                               "internal_duplicates": 0, "conflicts": 0, "in_reference": False}
    assert by_class.loc["cats"].to_dict() == {"reference": 4, "new": 4, "seen": 4, "novel": 0,
                                              "internal_duplicates": 0, "conflicts": 0, "in_reference": True}
    assert by_class.loc["dogs", "new"] == 0 and bool(by_class.loc["dogs", "in_reference"])
    assert decision.counts["new_classes"] == 1
    assert json.loads(decision.to_json())["classes"] == json.loads(decision.classes.to_json(orient="records"))


def test_the_rule_can_be_switched_off_and_the_class_is_still_named(drop: tuple[Path, Path]) -> None:
    reference, new = drop
    policy = Policy(**SKIPPING, train_on_new_classes=False)
    decision = DatasetGate(reference=str(reference), policy=policy, workers=0).check(str(new))
    assert str(decision.action) == "skip"
    assert "holds 1 class(es) the reference has never seen ('birds')" in decision.reason


def test_unlabelled_data_has_no_classes_and_no_class_rule(photos: list[Path], tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    for path in photos[:4]:
        shutil.copy(path, reference / path.name)  # files at the root: no labels
    new = folder(tmp_path / "new", {"birds": photos[:4]})
    decision = DatasetGate(reference=str(reference), policy=Policy(**SKIPPING), workers=0).check(str(new))
    assert str(decision.action) == "skip"  # an unlabelled reference says nothing about classes
    assert decision.classes["in_reference"].all() and decision.counts["new_classes"] == 0
