"""vdc_torch.Dataset: ImageFolder-compatible scanning, DataLoader with workers, wrapping torch datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import COWS
from torch.utils.data import DataLoader

from vdc_torch import Dataset, DatasetNotFoundError
from vdc_torch.errors import ImageDecodeError


@pytest.fixture
def class_folder(photos, tmp_path: Path) -> Path:
    for i, f in enumerate(photos[:9]):
        cls = ["birds", "cats", "dogs"][i % 3]
        (tmp_path / cls / "nested").mkdir(parents=True, exist_ok=True)
        target = tmp_path / cls / ("nested" if i % 2 else "") / f.name
        shutil.copy(f, target)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    return tmp_path


def test_class_folders_match_torchvision_imagefolder(class_folder: Path) -> None:
    ours = Dataset(class_folder)
    theirs = torchvision.datasets.ImageFolder(class_folder)
    assert ours.classes == theirs.classes == ["birds", "cats", "dogs"]
    assert ours.class_to_idx == theirs.class_to_idx
    assert sorted(ours.samples) == sorted(theirs.samples)
    assert sorted(ours.targets) == sorted(theirs.targets)
    assert "9 samples, 3 classes" in repr(ours)


def test_flat_folder_has_no_labels() -> None:
    ds = Dataset(COWS)
    assert len(ds) == 10
    assert ds.classes == []
    image, label = ds[0]
    assert label == -1  # UNLABELED
    assert image.size == (image.width, image.height) and image.mode == "RGB"


def test_dataloader_with_workers_and_transform(class_folder: Path) -> None:
    tf = torchvision.transforms.Compose([torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()])
    ds = Dataset(class_folder, transform=tf)
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.shape == (9, 3, 32, 32)
    assert labels.tolist() == ds.targets


def test_delta_subset_loads_through_a_dataloader(scenario) -> None:
    from vdc_torch import DatasetGate

    tf = torchvision.transforms.Compose([torchvision.transforms.Resize((16, 16)), torchvision.transforms.ToTensor()])
    new = Dataset(scenario.new, transform=tf)
    decision = DatasetGate(reference=scenario.reference).check(new)
    loaded = [x for batch, _ in DataLoader(decision.delta, batch_size=5, num_workers=2) for x in batch]
    assert len(loaded) == len(scenario.novel)
    assert loaded[0].shape == (3, 16, 16)


def test_from_torch_keeps_imagefolder_paths(class_folder: Path) -> None:
    folder = torchvision.datasets.ImageFolder(class_folder)
    wrapped = Dataset.from_torch(folder)
    assert wrapped.is_file_backed
    assert wrapped.samples == [(p, t) for p, t in folder.samples]
    assert wrapped.classes == folder.classes


def test_from_torch_wraps_in_memory_tensors() -> None:
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, 20, 24), torch.arange(6))
    wrapped = Dataset.from_torch(data)
    assert not wrapped.is_file_backed
    assert len(wrapped) == 6
    image, label = wrapped[2]
    assert torch.equal(image, data[2][0])
    assert wrapped.samples[2][1] == -1  # TensorDataset has no targets attribute


def test_missing_or_empty_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="is not a directory"):
        Dataset(tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="no image files found"):
        Dataset(tmp_path)


def test_unreadable_sample_raises_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = Dataset(tmp_path)
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        ds[0]


def test_delete_image_changes_only_the_in_memory_view(tmp_path: Path) -> None:
    for f in sorted(COWS.glob("*.png"))[:3]:
        shutil.copy(f, tmp_path / f.name)
    ds = Dataset(tmp_path)
    ds.delete_image("V00002.png")
    assert ds.filenames == ["V00001.png", "V00003.png"]
    assert (tmp_path / "V00002.png").exists()
    assert np.asarray(ds[1][0]).shape[2] == 3
