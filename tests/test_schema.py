"""The decision's JSON follows its published, versioned JSON Schema (issue 19), on a drop that fills every table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vdc_torch import DatasetGate, Policy
from vdc_torch.decision.gate import DECISION_SCHEMA_PATH, DECISION_SCHEMA_VERSION
from vdc_torch.faces.cli import main

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture
def drop(photos: list[Path], tmp_path: Path) -> tuple[Path, Path]:
    """Every table non-empty: a copy (matches), a relabelled copy (conflicts), a duplicate inside the drop, a
    class never seen, a black frame (quality), a damaged file (problems) and a stray text file (skipped)."""
    reference, new = tmp_path / "reference", tmp_path / "new"
    for name in ("cats", "dogs"):
        (reference / name).mkdir(parents=True)
    for path in photos[:3]:
        shutil.copy(path, reference / "cats" / path.name)
    shutil.copy(photos[3], reference / "dogs" / photos[3].name)
    for name in ("cats", "dogs", "birds"):
        (new / name).mkdir(parents=True)
    shutil.copy(photos[0], new / "cats" / "seen.jpg")
    shutil.copy(photos[1], new / "dogs" / "relabelled.jpg")
    shutil.copy(photos[5], new / "birds" / "a.jpg")
    shutil.copy(photos[5], new / "birds" / "a_again.jpg")
    Image.new("RGB", (320, 240), (3, 3, 3)).save(new / "birds" / "black.png")
    (new / "birds" / "damaged.jpg").write_bytes(photos[6].read_bytes()[:300])
    (new / "notes.txt").write_text("not an image")
    return reference, new


def test_every_field_of_a_full_decision_follows_the_schema(drop: tuple[Path, Path]) -> None:
    reference, new = drop
    decision = DatasetGate(reference=str(reference), policy=Policy(max_problem_share=0.5), workers=0).check(str(new))
    document = json.loads(decision.to_json())
    for table in ("matches", "conflicts", "internal_duplicates", "classes", "quality", "problems"):
        assert document[table], table  # the drop fills every table, so each item schema is exercised
    schema = json.loads(DECISION_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    assert document["format"] == "vdc_torch.decision" and document["schema_version"] == DECISION_SCHEMA_VERSION == 1


def test_a_broken_document_is_refused_by_the_schema(drop: tuple[Path, Path]) -> None:
    reference, new = drop
    decision = DatasetGate(reference=str(reference), policy=Policy(max_problem_share=0.5), workers=0).check(str(new))
    document = json.loads(decision.to_json())
    document["action"] = "maybe"
    with pytest.raises(jsonschema.ValidationError, match="'maybe' is not one of"):
        jsonschema.validate(document, json.loads(DECISION_SCHEMA_PATH.read_text()))


def test_vdc_gate_json_is_the_same_document(drop: tuple[Path, Path], tmp_path: Path) -> None:
    reference, new = drop
    out = tmp_path / "decision.json"
    assert main(["gate", "--reference", str(reference), "--new", str(new), "--json", str(out), "--workers", "0",
                 "--max-problem-share", "0.5", "-q"]) == 0
    document = json.loads(out.read_text())
    jsonschema.validate(document, json.loads(DECISION_SCHEMA_PATH.read_text()))
