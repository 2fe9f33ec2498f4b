"""Every input a training script passes in gives the right overlap or a clear error, never a silent wrong answer.

Each case is built from the same real photos: a reference of 12 camera JPEGs, and a new set of 6 resized copies
of reference photos followed by 8 photos the reference does not hold (true overlap 6/14).
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from vdc_torch import Dataset, DatasetGate, Policy
from vdc_torch.data.dataset import NovelStream
from vdc_torch.errors import ImageDecodeError, InsufficientEvidenceError, InvalidParameterError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_COPIES, N_NOVEL = 6, 8
TRUTH = N_COPIES / (N_COPIES + N_NOVEL)


@pytest.fixture(scope="module")
def drop(photos, tmp_path_factory) -> tuple[Path, list[Image.Image], list[int]]:
    """(reference folder, new images, their labels): copies first, novel photos after."""
    root = tmp_path_factory.mktemp("ref")
    for f in photos[:12]:
        shutil.copy(f, root / f.name)
    images = []
    for f in photos[:N_COPIES]:
        with Image.open(f) as im:
            im = im.convert("RGB")
            images.append(im.resize((im.width // 2, im.height // 2), Image.BICUBIC))
    for f in photos[12 : 12 + N_NOVEL]:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    return root, images, [i % 2 for i in range(len(images))]


@pytest.fixture(scope="module")
def gate(drop) -> DatasetGate:
    return DatasetGate(reference=str(drop[0]), workers=0)


def novel_positions() -> list[int]:
    return list(range(N_COPIES, N_COPIES + N_NOVEL))


class Photos(torch.utils.data.Dataset):
    """A torchvision-style in-memory dataset: ``transform`` attribute, ``targets`` as a tensor (MNIST-style)."""

    def __init__(self, images, labels, transform=None) -> None:
        self.images, self.transform = images, transform
        self.targets = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), int(self.targets[i]), f"extra-{i}"


class InlineNormalised(torch.utils.data.Dataset):
    """Normalises inside ``__getitem__``: the transform cannot be switched off from outside."""

    def __init__(self, images) -> None:
        self.images = images
        self.normalise = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.normalise(self.images[i]), 0


def test_normalised_transform_is_switched_off_and_the_user_object_untouched(gate, drop) -> None:
    _, images, labels = drop
    transform = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    data = Photos(images, labels, transform)
    decision = gate.check(data)
    assert decision.overlap == pytest.approx(TRUTH)
    assert data.transform is transform  # read through a copy
    assert decision.delta.dataset is data and list(decision.delta.indices) == novel_positions()
    assert decision.new_fingerprints.labels[:2] == ["0", "1"]  # a targets tensor is read, not evaluated with `or`


@pytest.mark.parametrize("targets", ["list", "tensor", "ndarray", "none"])
def test_from_torch_accepts_every_kind_of_targets(drop, targets: str) -> None:
    _, images, labels = drop
    data = Photos(images, labels)
    data.targets = {"list": list(labels), "tensor": torch.tensor(labels), "ndarray": np.array(labels),
                    "none": None}[targets]
    wrapped = Dataset.from_torch(data)
    assert wrapped.targets == (labels if targets != "none" else [-1] * len(labels))


def test_normalised_pixels_that_cannot_be_undone_are_refused_with_the_fix(gate, drop) -> None:
    with pytest.raises(InsufficientEvidenceError, match=r"no readable sample.*Normalize\(mean, std\).*denormalize"):
        gate.check(InlineNormalised(drop[1]))
    decision = gate.check(Dataset.from_torch(InlineNormalised(drop[1]), denormalize=(MEAN, STD)))
    assert decision.overlap == pytest.approx(TRUTH)


def test_float_pixels_outside_unit_range_are_an_error_naming_the_sample() -> None:
    from vdc_torch.data.decode import decode_object

    with pytest.raises(ImageDecodeError, match=r"<s>: float pixels lie in \[0.000, 255.000\]"):
        decode_object(np.linspace(0, 255, 48, dtype=np.float32).reshape(4, 4, 3), name="<s>")
    assert decode_object(torch.rand(3, 8, 8), name="<ok>").pixels.dtype == np.uint8


def hf_dataset(images, labels):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_hugging_face_dataset_directly_and_wrapped(gate, drop) -> None:
    _, images, labels = drop
    hf = hf_dataset(images, labels)
    for given in (hf, Dataset.from_torch(hf), hf.with_transform(lambda b: {"image": [T.ToTensor()(x) for x in
                                                                                  b["image"]]})):
        decision = gate.check(given)
        assert decision.overlap == pytest.approx(TRUTH), type(given)
    decision = gate.check(hf)
    assert type(decision.delta) is type(hf) and len(decision.delta) == N_NOVEL  # hf.select(indices)
    assert decision.delta["label"] == [labels[i] for i in novel_positions()]
    assert set(decision.new_fingerprints.labels) == {"cat", "dog"}  # ClassLabel names


def test_hugging_face_streaming_dataset(gate, drop) -> None:
    _, images, labels = drop
    stream = hf_dataset(images, labels).to_iterable_dataset()
    decision = gate.check(stream)
    assert decision.overlap == pytest.approx(TRUTH)
    assert isinstance(decision.delta, NovelStream) and len(decision.delta) == N_NOVEL
    assert decision.delta_keys == [str(i) for i in novel_positions()]
    yielded = list(decision.delta)
    assert [item["label"] for item in yielded] == [labels[i] for i in novel_positions()]
    # two DataLoader workers each count their share of the stream from 0: positions would pick other items
    sharded = hf_dataset(images, labels).to_iterable_dataset(num_shards=2)
    delta = gate.check(sharded).delta
    assert len(list(torch.utils.data.DataLoader(delta, batch_size=None, num_workers=1))) == N_NOVEL
    with pytest.raises(InvalidParameterError, match=r"picks its items by their position(.|\n)*num_workers=0"):
        list(torch.utils.data.DataLoader(delta, batch_size=None, num_workers=2))


def test_a_stream_delta_added_to_the_reference_keeps_its_class_names(drop) -> None:
    # the delta of an HF stream names its classes as the stream does: added to the reference, the same stream is
    # then all seen (it was stored as 0/1 against 'cat'/'dog', so every later check found label conflicts)
    _, images, labels = drop
    stream = hf_dataset(images, labels).to_iterable_dataset()
    gate = DatasetGate(reference=hf_dataset(images[:N_COPIES], labels[:N_COPIES]), workers=0)
    first = gate.check(stream)
    assert first.overlap == pytest.approx(TRUTH) and len(first.delta) == N_NOVEL
    assert gate.update(first.delta) == N_NOVEL
    assert set(gate.reference_table.labels) == {"cat", "dog"}
    again = gate.check(stream)
    assert again.overlap == 1.0 and len(again.conflicts) == 0 and again.action == "skip", again.reason
    # a reference grown from a stream with bare class indices holds names and indices: a name against an index is
    # no conflict, and the reason says how many were not compared

    class Indexed(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ((images[i], labels[i]) for i in novel_positions())

    mixed = DatasetGate(reference=hf_dataset(images[:N_COPIES], labels[:N_COPIES]), workers=0)
    assert mixed.update(Indexed()) == N_NOVEL
    decided = mixed.check(stream)
    assert len(decided.conflicts) == 0 and decided.action == "skip", decided.reason
    assert f"Labels not compared: {N_NOVEL} matched sample(s) carry a class index on one side" in decided.reason


def test_webdataset_tar_of_real_images(gate, drop, tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    _, images, labels = drop
    shard = tmp_path / "drop-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, image in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            for ext, payload in (("jpg", buffer.getvalue()), ("cls", str(labels[i]).encode())):
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    decision = gate.check(wds.WebDataset(str(shard), shardshuffle=False))
    assert decision.overlap == pytest.approx(TRUTH)
    assert decision.delta_keys == [f"sample{i:04d}" for i in novel_positions()]
    assert [item["__key__"] for item in decision.delta] == decision.delta_keys


def test_generator_backed_iterable_dataset(gate, drop) -> None:
    _, images, labels = drop

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from zip(images, labels)

    decision = gate.check(Stream())
    assert decision.overlap == pytest.approx(TRUTH)
    assert [label for _, label in decision.delta] == [labels[i] for i in novel_positions()]


def test_subset_and_concat_of_image_folders(drop, tmp_path: Path) -> None:
    ref = drop[0]
    new = tmp_path / "new"
    for i, f in enumerate(sorted(ref.iterdir())[:4]):
        (new / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, new / ("a" if i % 2 else "b") / f.name)
    folder = torchvision.datasets.ImageFolder(str(new), transform=T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]))
    gate = DatasetGate(reference=str(ref), workers=0)
    subset = torch.utils.data.Subset(folder, [0, 2])
    decision = gate.check(subset)
    assert decision.overlap == 1.0 and decision.delta.dataset is subset  # files read whatever the transform
    both = torch.utils.data.ConcatDataset([folder, torchvision.datasets.ImageFolder(str(new))])
    decision = gate.check(both)
    assert decision.counts["exact"] == len(both) and decision.delta.dataset is both


def test_folder_mixing_loose_files_and_class_folders_is_an_image_folder(photos, tmp_path: Path) -> None:
    for i, f in enumerate(photos[:9]):
        target = tmp_path / ("cats" if i % 2 else "dogs") if i < 6 else tmp_path
        target.mkdir(exist_ok=True)
        shutil.copy(f, target / f.name)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "cats" / "photo.svg").write_bytes(photos[0].read_bytes())  # a JPEG under a foreign extension
    ours, theirs = Dataset(tmp_path), torchvision.datasets.ImageFolder(str(tmp_path))
    assert ours.classes == theirs.classes == ["cats", "dogs"]
    assert ours.samples == theirs.samples
    reasons = {Path(f.path).name: f.reason for f in ours.skipped}
    assert all("ImageFolder ignores it" in reasons[f.name] for f in photos[6:9])
    assert reasons["notes.txt"] == "not an image extension (.txt)"
    assert reasons["photo.svg"].startswith("holds a JPEG image but its extension .svg")
    decision = DatasetGate(reference=str(tmp_path / "cats"), workers=0).check(ours)
    assert decision.counts["skipped_files"] == 5
    assert set(decision.skipped["path"]) == {"cats/notes.txt", "cats/photo.svg"} | {f.name for f in photos[6:9]}


@pytest.mark.parametrize("extension", [".pbm", ".pgm", ".ppm", ".tga", ".jfif"])
def test_pillow_formats_are_read(photos, tmp_path: Path, extension: str) -> None:
    fmt = {".pbm": "PPM", ".pgm": "PPM", ".ppm": "PPM", ".tga": "TGA", ".jfif": "JPEG"}[extension]
    with Image.open(photos[0]) as im:
        im = im.convert({".pbm": "1", ".pgm": "L"}.get(extension, "RGB"))
        im.save(tmp_path / f"picture{extension}", fmt)
    dataset = Dataset(tmp_path)
    assert len(dataset) == 1 and not dataset.skipped
    assert DatasetGate(None, workers=0).check(dataset).counts["readable"] == 1


def test_nothing_readable_is_no_decision_and_too_many_problems_too(photos, tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    for f in photos[:3]:
        shutil.copy(f, ref / f.name)
    (new / "broken.jpg").write_bytes(photos[0].read_bytes()[:200])
    gate = DatasetGate(reference=str(ref), workers=0)
    with pytest.raises(InsufficientEvidenceError, match="no readable sample"):
        gate.check(str(new))
    shutil.copy(photos[0], new / "copy.jpg")  # 1 of 2 unreadable: 50 % > max_problem_share
    with pytest.raises(InsufficientEvidenceError, match=r"1 of the 2 samples .* \(50.0%\) could not be read"):
        gate.check(str(new))
    relaxed = DatasetGate(reference=str(ref), workers=0, policy=Policy(max_problem_share=0.5)).check(str(new))
    assert relaxed.overlap == 1.0 and relaxed.counts["unreadable"] == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(new / "broken.jpg", bad / "broken.jpg")
    with pytest.raises(InsufficientEvidenceError, match="the reference has no readable sample"):
        DatasetGate(reference=str(bad), workers=0).check(str(ref))  # matching against nothing is no evidence



def test_vdc_gate_on_a_folder_with_nothing_readable_exits_1_not_99(photos, tmp_path: Path, capsys) -> None:
    from vdc_torch.faces.cli import main

    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    shutil.copy(photos[0], ref / photos[0].name)
    (new / "only.jpg").write_bytes(photos[0].read_bytes()[:300])
    assert main(["gate", "--reference", str(ref), "--new", str(new), "-q", "--workers", "0"]) == 1
    assert "no decision: the new dataset has no readable sample" in capsys.readouterr().err
