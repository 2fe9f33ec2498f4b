"""DatasetGate end to end on real photos: overlap, delta, skip, manifest, conflicts, the decision table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch.utils.data
from conftest import COWS, COWS_DUPLICATES, photo_folders
from PIL import Image

from vdc_torch import Action, Dataset, DatasetGate, Policy, decide


def delta_names(decision) -> set[str]:
    base = decision.delta.dataset
    return {os.path.basename(base.samples[i][0]) for i in decision.delta.indices}


def test_half_new_dataset_trains_on_exactly_the_new_photos(scenario) -> None:
    decision = DatasetGate(reference=scenario.reference).check(scenario.new)
    assert decision.action == Action.TRAIN
    assert abs(decision.overlap - scenario.true_overlap) <= 0.02
    assert delta_names(decision) == scenario.novel
    assert set(decision.matches["new_path"]) >= scenario.copies
    matched_copies = decision.matches[decision.matches["new_path"].isin(scenario.copies)]
    assert set(matched_copies["kind"]) <= {"exact", "near_duplicate"}
    assert isinstance(decision.delta, torch.utils.data.Subset)
    assert "Train" in str(decision)


def test_saved_manifest_decides_the_same_without_reference_images(scenario, tmp_path: Path) -> None:
    gate = DatasetGate(reference=scenario.reference)
    manifest = gate.save(tmp_path / "ckpt" / "reference.vdc")
    shutil.rmtree(scenario.reference)
    decision = DatasetGate.load(manifest).check(scenario.new)
    assert abs(decision.overlap - scenario.true_overlap) <= 0.02
    assert delta_names(decision) == scenario.novel
    assert decision.action == Action.TRAIN


def test_reencoded_copy_of_the_whole_reference_is_skipped(photos, tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    for i, f in enumerate(photos[:20]):
        shutil.copy(f, ref / f.name)
        with Image.open(f) as im:
            im.convert("RGB").save(new / f"export_{i}.jpg", quality=70)
    decision = DatasetGate(reference=ref).check(new)
    assert decision.action == Action.SKIP
    assert decision.overlap == 1.0
    assert len(decision.delta) == 0


def test_exact_copies_and_internal_duplicates_of_the_original_examples() -> None:
    decision = DatasetGate(reference=COWS).check(COWS_DUPLICATES)
    assert decision.overlap == 1.0
    assert set(decision.matches["kind"]) == {"exact"}
    assert set(decision.matches["method"]) == {"bytes"}
    # "V00001 (copy).png" and "V00001.png" are the same file: one is an internal duplicate of the other
    assert len(decision.internal_duplicates) == 1


def test_duplicates_inside_the_new_dataset_leave_one_copy_in_the_delta(photos, tmp_path: Path) -> None:
    ref, new = photo_folders(tmp_path, photos[:5], photos[5:10])
    for f in photos[5:10]:
        with Image.open(f) as im:
            im.convert("RGB").resize((im.width // 2, im.height // 2)).save(new / f"half_{f.stem}.png")
    decision = DatasetGate(reference=ref).check(new)
    assert decision.overlap == 0.0
    assert len(decision.delta) == 5
    assert len(decision.internal_duplicates) == 5


def test_label_conflicts_prevent_a_skip(photos, tmp_path: Path) -> None:
    for split in ("ref", "new"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
    for i, f in enumerate(photos[:6]):
        cls = "cat" if i < 3 else "dog"
        shutil.copy(f, tmp_path / "ref" / cls / f.name)
        flipped = "dog" if i == 0 else cls  # one copy relabelled
        shutil.copy(f, tmp_path / "new" / flipped / f.name)
    decision = DatasetGate(reference=tmp_path / "ref").check(tmp_path / "new")
    assert decision.overlap == 1.0
    assert len(decision.conflicts) == 1
    row = decision.conflicts.iloc[0]
    assert (row["new_label"], row["ref_label"]) == ("dog", "cat")
    assert decision.action == Action.TRAIN
    # "train on the delta" has something to train on: the relabelled copy, under its new label
    assert len(decision.delta) == 1 and decision.counts["delta"] == 1
    image, label = decision.delta[0]
    assert decision.delta.dataset.classes[label] == "dog" and image.size == Image.open(photos[0]).size
    assert "the delta holds them with their new labels" in decision.reason


def test_update_grows_the_reference_so_the_same_data_is_then_skipped(scenario, tmp_path: Path) -> None:
    gate = DatasetGate(reference=scenario.reference)
    first = gate.check(scenario.new)
    assert first.action == Action.TRAIN
    added = gate.update(first.delta)
    assert added == len(first.delta)
    path = gate.save(tmp_path / "reference.vdc")
    second = DatasetGate.load(path).check(scenario.new)
    assert second.overlap == 1.0
    assert second.action == Action.SKIP


def test_decision_serialises_to_json(scenario, tmp_path: Path) -> None:
    decision = DatasetGate(reference=scenario.reference).check(scenario.new)
    data = json.loads(decision.to_json(tmp_path / "d.json"))
    assert data["action"] == "train"
    assert data["overlap"] == pytest.approx(decision.overlap)
    assert len(data["matches"]) == len(decision.matches)
    assert sorted(data["delta_indices"]) == sorted(decision.delta.indices)
    assert json.loads((tmp_path / "d.json").read_text())["counts"]["delta"] == len(decision.delta)


def test_gate_accepts_an_in_memory_torch_dataset(photos) -> None:
    images = [Image.open(f).convert("RGB").resize((128, 96)) for f in photos[:8]]

    class InMemory(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i], 0

    reference = InMemory(images[:4])
    new = InMemory([im.resize((100, 75)) for im in images[2:6]])
    decision = DatasetGate(reference=reference).check(new)
    assert decision.overlap == 0.5
    assert sorted(decision.delta.indices) == [2, 3]
    assert decision.delta.dataset is new


def test_decide_refuses_without_evidence() -> None:
    from vdc_torch.errors import InsufficientEvidenceError

    with pytest.raises(InsufficientEvidenceError, match="no readable samples"):
        decide(0.0, 0, 0, 0, Policy())  # nothing readable is no decision, never a skip


@pytest.mark.parametrize(
    ("overlap", "delta", "conflicts", "readable", "expected"),
    [
        (1.0, 0, 0, 100, Action.SKIP),
        (0.96, 4, 0, 100, Action.SKIP),
        (0.96, 4, 1, 100, Action.TRAIN),  # a label conflict is a reason to retrain
        (0.97, 3000, 0, 100000, Action.TRAIN),  # high overlap but a large delta
        (0.50, 50, 0, 100, Action.TRAIN),
    ],
)
def test_decide_table(overlap: float, delta: int, conflicts: int, readable: int, expected: Action) -> None:
    action, reason = decide(overlap, delta, conflicts, readable, Policy())
    assert action == expected
    assert reason.startswith(expected.value.capitalize())


def test_policy_rejects_impossible_thresholds() -> None:
    with pytest.raises(ValueError, match="skip_overlap=1.5"):
        Policy(skip_overlap=1.5)


def test_gate_works_on_a_vdc_dataset_with_dataloader(scenario) -> None:
    new = Dataset(scenario.new)
    decision = DatasetGate(reference=Dataset(scenario.reference)).check(new)
    assert decision.delta.dataset is new
    names = {os.path.basename(new.samples[i][0]) for i in decision.delta.indices}
    assert names == scenario.novel


@pytest.mark.parametrize("camera", ["canon", "iphone"])
def test_hdr_and_plain_exposure_of_one_scene_are_not_duplicates(camera: str, tmp_path: Path) -> None:
    from conftest import EXIF_JPG

    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    shutil.copy(EXIF_JPG / "hdr" / f"{camera}_hdr_NO.jpg", ref)
    shutil.copy(EXIF_JPG / "hdr" / f"{camera}_hdr_YES.jpg", new)
    with Image.open(EXIF_JPG / "hdr" / f"{camera}_hdr_NO.jpg") as im:  # a re-export keeps its capture time
        im.save(new / "reexport.jpg", quality=80, exif=im.getexif())
    decision = DatasetGate(reference=ref).check(new)
    kinds = dict(zip(decision.matches["new_path"], decision.matches["kind"]))
    assert kinds.get(f"{camera}_hdr_YES.jpg", "none") in ("similar", "none")
    assert kinds["reexport.jpg"] in ("exact", "near_duplicate")
    assert decision.overlap == 0.5


def test_class_indices_against_class_names_are_not_compared(photos, tmp_path: Path) -> None:
    # a folder reference has class names; the same images from a torch dataset without `classes` carry indices:
    # compared, every match was a label conflict and every index a new class, so a fully seen drop said "train"
    files = photos[:8]
    for i, f in enumerate(files):
        (tmp_path / "ref" / ("cat" if i < 4 else "dog")).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "ref" / ("cat" if i < 4 else "dog") / f.name)

    class Indexed(torch.utils.data.Dataset):
        targets = [int(i >= 4) for i in range(len(files))]

        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            with Image.open(files[i]) as image:
                return image.convert("RGB"), int(i >= 4)

    decision = DatasetGate(reference=tmp_path / "ref", workers=0).check(Indexed())
    assert decision.overlap == 1.0 and len(decision.conflicts) == 0
    assert decision.action == Action.SKIP, decision.reason
    assert ("Labels not compared: the new data's labels are class indices ('0', '1') and the reference's class "
            "names ('cat', 'dog')") in decision.reason
    # the same dataset told its class names compares them: the same images, the same labels, no conflict
    named = Dataset.from_torch(Indexed(), classes=["cat", "dog"])
    again = DatasetGate(reference=tmp_path / "ref", workers=0).check(named)
    assert again.action == Action.SKIP and "Labels not compared" not in again.reason and len(again.conflicts) == 0
