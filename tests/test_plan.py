"""The training plan (issue 19): the delta plus a seeded, class-balanced replay sample of the reference, as the kind
of object passed, and the CLI's ``--plan`` file lists, on real camera photos."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from vdc_torch import Dataset as VdcDataset
from vdc_torch import DatasetGate, InvalidParameterError
from vdc_torch.decision.plan import replay_positions
from vdc_torch.faces.cli import main

#: reference classes and how many photos each holds (unbalanced on purpose: "birds" is rare)
REFERENCE = {"birds": 2, "cats": 12, "dogs": 6}
NOVEL = 10


@pytest.fixture
def folders(photos: list[Path], tmp_path: Path) -> tuple[Path, Path]:
    """Reference: 20 photos in 3 unbalanced classes. New: 10 photos never seen, in "cats"."""
    files = iter(photos)
    reference = tmp_path / "reference"
    for name, count in REFERENCE.items():
        (reference / name).mkdir(parents=True)
        for _ in range(count):
            src = next(files)
            shutil.copy(src, reference / name / src.name)
    new = tmp_path / "new" / "cats"
    new.mkdir(parents=True)
    for _ in range(NOVEL):
        src = next(files)
        shutil.copy(src, new / src.name)
    return reference, new.parent


def test_replay_is_a_fifth_of_the_delta_class_balanced_and_reproducible(folders: tuple[Path, Path]) -> None:
    reference, new = folders
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    assert decision.counts["delta"] == NOVEL
    ref = torchvision.datasets.ImageFolder(str(reference))
    picked = decision.replay_indices(ref, replay=0.5, seed=0)
    assert len(picked) == 5  # round(0.5 * 10)
    per_class = Counter(ref.classes[ref.targets[i]] for i in picked)
    assert set(per_class) == set(REFERENCE) and max(per_class.values()) - min(per_class.values()) <= 1
    assert decision.replay_indices(ref, replay=0.5, seed=0) == picked
    assert any(decision.replay_indices(ref, replay=0.5, seed=s) != picked for s in range(1, 6))
    # a fifth of the delta by default; the rare class is drawn from as much as the others can be
    assert len(decision.replay_indices(ref)) == 2
    everything = Counter(ref.classes[ref.targets[i]] for i in decision.replay_indices(ref, replay=1.4))
    assert everything == {"birds": 2, "cats": 6, "dogs": 6}  # 14: birds give their 2, the rest share 12


def test_training_set_of_image_folders_is_a_concat_of_delta_and_replay(folders: tuple[Path, Path]) -> None:
    reference, new = folders
    transform = torchvision.transforms.Compose([torchvision.transforms.Resize((32, 32)),
                                                torchvision.transforms.ToTensor()])
    new_folder = torchvision.datasets.ImageFolder(str(new), transform=transform)
    ref_folder = torchvision.datasets.ImageFolder(str(reference), transform=transform)
    decision = DatasetGate(reference=ref_folder, workers=0).check(new_folder)
    with pytest.warns(UserWarning, match="number their classes differently: 'cats' \\(0 new, 1 reference\\)"):
        train_on = decision.training_set(ref_folder, replay=0.5, seed=3)
    assert isinstance(train_on, torch.utils.data.ConcatDataset) and len(train_on) == NOVEL + 5
    image, label = train_on[NOVEL]  # the first replayed sample, through the reference's own transform
    assert image.shape == (3, 32, 32) and 0 <= label < len(REFERENCE)
    replayed = train_on.datasets[1]
    assert list(replayed.indices) == decision.replay_indices(ref_folder, replay=0.5, seed=3)
    with pytest.warns(UserWarning):
        assert len(decision.training_set(ref_folder, replay=0)) == NOVEL


def test_training_set_of_folders_is_one_dataset_with_classes_merged_by_name(folders: tuple[Path, Path]) -> None:
    reference, new = folders
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    train_on = decision.training_set(str(reference), replay=1.0, seed=0)
    assert isinstance(train_on, VdcDataset) and len(train_on) == 2 * NOVEL
    assert train_on.classes == sorted(REFERENCE)
    names = Counter(train_on.classes[label] for _, label in train_on.samples)
    assert names["cats"] == NOVEL + 4 and names["birds"] == 2 and names["dogs"] == 4
    image, _ = train_on[0]
    assert isinstance(image, Image.Image)


def test_training_set_of_vdc_datasets_keeps_their_transform(folders: tuple[Path, Path]) -> None:
    # one vdc_torch.Dataset applies one transform: the one the new data or the reference set, to every sample
    reference, new = folders
    to_tensor = torchvision.transforms.Compose([torchvision.transforms.Resize((32, 32)),
                                                torchvision.transforms.ToTensor()])
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    train_on = decision.training_set(VdcDataset(str(reference), transform=to_tensor), replay=0.5)
    assert isinstance(train_on, VdcDataset) and train_on.transform is to_tensor
    assert all(train_on[i][0].shape == (3, 32, 32) for i in (0, len(train_on) - 1))  # a new and a replayed one
    batch, _ = next(iter(torch.utils.data.DataLoader(train_on, batch_size=4)))
    assert batch.shape == (4, 3, 32, 32)
    # the new data's transform when the reference is a folder: one training pipeline
    decision = DatasetGate(reference=str(reference), workers=0).check(VdcDataset(str(new), transform=to_tensor))
    assert decision.training_set(str(reference), replay=0.5)[NOVEL][0].shape == (3, 32, 32)
    # two different transforms: each part keeps its own (and their class numbers are not merged: said)
    gray = torchvision.transforms.Compose([torchvision.transforms.Grayscale(), to_tensor])
    with pytest.warns(UserWarning, match="number their classes differently"):
        both = decision.training_set(VdcDataset(str(reference), transform=gray), replay=0.5)
    assert isinstance(both, torch.utils.data.ConcatDataset)
    assert both[0][0].shape == (3, 32, 32) and both[NOVEL][0].shape == (1, 32, 32)


def test_training_set_of_hugging_face_datasets_is_one_hf_dataset(folders: tuple[Path, Path]) -> None:
    datasets = pytest.importorskip("datasets")
    reference, new = folders
    names = sorted(REFERENCE)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def hf(root: Path) -> object:
        files = sorted(root.glob("*/*.jpg"))
        return datasets.Dataset.from_dict({"image": [str(f) for f in files],
                                           "label": [names.index(f.parent.name) for f in files]}, features=features)

    ref_hf = hf(reference)
    decision = DatasetGate(reference=ref_hf, workers=0).check(hf(new))
    train_on = decision.training_set(ref_hf, replay=0.5, seed=0)
    assert isinstance(train_on, datasets.Dataset) and len(train_on) == NOVEL + 5
    assert Counter(train_on["label"][NOVEL:]).keys() == {0, 1, 2}


def test_bad_arguments_name_the_value_and_the_choices(folders: tuple[Path, Path]) -> None:
    reference, new = folders
    decision = DatasetGate(reference=str(reference), workers=0).check(str(new))
    with pytest.raises(InvalidParameterError, match="balance='classes' is not one of 'class', None"):
        decision.training_set(str(reference), balance="classes")
    with pytest.raises(InvalidParameterError, match="replay=-0.1 must be a number >= 0"):
        decision.training_set(str(reference), replay=-0.1)


def test_water_filling_gives_a_rare_class_all_it_has() -> None:
    labels = ["a"] * 100 + ["b"] * 3 + ["c"] * 50 + [None] * 5
    picked = replay_positions(labels, 60, seed=1)
    counts = Counter(labels[i] for i in picked)
    assert counts["b"] == 3 and {counts["a"], counts["c"]} == {28, 29} and None not in counts
    uniform = replay_positions(labels, 60, balance=None, seed=1)
    assert len(set(uniform)) == 60 and replay_positions(labels, 60, balance=None, seed=1) == uniform


def test_cli_writes_the_plan_as_file_lists(folders: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    reference, new = folders
    plan_path = tmp_path / "out" / "plan.json"
    code = main(["gate", "--reference", str(reference), "--new", str(new), "--plan", str(plan_path),
                 "--replay", "0.5", "--seed", "2", "--workers", "0", "-q"])
    assert code == 0
    plan = json.loads(plan_path.read_text())
    assert plan["format"] == "vdc_torch.plan" and plan["version"] == 1
    assert sorted(plan["delta"]) == sorted(f"cats/{p.name}" for p in (new / "cats").iterdir())
    assert len(plan["replay"]) == 5 and all((reference / p).is_file() for p in plan["replay"])
    assert set(plan["replay_per_class"]) == set(REFERENCE)
    again = tmp_path / "again.json"
    main(["gate", "--reference", str(reference), "--new", str(new), "--plan", str(again), "--replay", "0.5",
          "--seed", "2", "--workers", "0", "-q"])
    assert json.loads(again.read_text())["replay"] == plan["replay"]


def test_the_plan_names_its_roots_absolutely(folders: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    # folders given relative to the working directory: the plan is read elsewhere, so its roots are absolute
    reference, new = folders
    monkeypatch.chdir(reference.parent)
    plan_path = tmp_path / "plan.json"
    assert main(["gate", "--reference", reference.name, "--new", new.name, "--plan", str(plan_path), "--workers", "0",
                 "-q"]) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["new_root"] == str(new) and plan["reference_root"] == str(reference)
    assert all((Path(plan["new_root"]) / p).is_file() for p in plan["delta"])


def test_a_reference_given_relative_is_saved_with_its_absolute_root(folders: tuple[Path, Path], tmp_path: Path,
                                                                     monkeypatch) -> None:
    # saved from one working directory, read from another: the manifest's root still names the folder
    reference, new = folders
    monkeypatch.chdir(reference.parent)
    DatasetGate(reference=reference.name, workers=0).save(tmp_path / "ref.vdc")
    monkeypatch.chdir(tmp_path)
    assert DatasetGate.load(tmp_path / "ref.vdc").meta["reference_root"] == str(reference)
