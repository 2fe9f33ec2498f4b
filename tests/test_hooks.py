"""pretrain_gate / commit_training and the Lightning callback, on real photos."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler, Subset, WeightedRandomSampler

from vdc_torch import DatasetGate, ManifestError, MatchConfig, Policy
from vdc_torch.faces.hooks import commit_training, pretrain_gate, rebuild_loader

REPO = Path(__file__).resolve().parents[1]


def labelled(photos: list[Path], root: Path, files: range, prefix: str = "") -> Path:
    """An ImageFolder tree: photos[i] for i in ``files`` go to class a or b by parity."""
    for i in files:
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos[i], folder / f"{prefix}{photos[i].name}")
    return root


def manifest_size(path: Path) -> int:
    return len(DatasetGate.load(path))


# -- pretrain_gate / commit_training -------------------------------------------------------------------------


def test_without_manifest_or_reference_everything_is_new(scenario, tmp_path: Path) -> None:
    decision = pretrain_gate(scenario.new, tmp_path / "ckpt" / "reference.vdc")
    assert str(decision.action) == "train" and decision.overlap == 0.0
    assert "no reference manifest exists yet" in decision.reason
    assert len(decision.delta) == decision.counts["readable"] == len(scenario.copies) + len(scenario.novel)
    assert not (tmp_path / "ckpt").exists()  # nothing is written before training succeeded


def test_reference_builds_the_manifest_once_then_it_is_loaded(scenario, tmp_path: Path) -> None:
    manifest = tmp_path / "reference.vdc"
    first = pretrain_gate(scenario.new, manifest, reference=scenario.reference)
    assert manifest.is_file() and manifest_size(manifest) == 24
    assert abs(first.overlap - scenario.true_overlap) <= 0.02
    shutil.rmtree(scenario.reference)  # from now on the manifest alone decides
    second = pretrain_gate(scenario.new, manifest, reference=scenario.reference)
    assert second.overlap == first.overlap and second.delta_indices == first.delta_indices


def test_commit_then_the_same_drop_is_skipped(scenario, tmp_path: Path) -> None:
    manifest = tmp_path / "reference.vdc"
    decision = pretrain_gate(scenario.new, manifest, reference=scenario.reference)
    assert commit_training(decision, manifest) == len(decision.delta) == len(scenario.novel)
    assert manifest_size(manifest) == 24 + len(scenario.novel)
    again = pretrain_gate(scenario.new, manifest)
    assert str(again.action) == "skip" and again.overlap == 1.0 and len(again.delta) == 0


def test_first_commit_without_reference_creates_the_manifest(scenario, tmp_path: Path) -> None:
    manifest = tmp_path / "new" / "reference.vdc"
    decision = pretrain_gate(scenario.new, manifest)
    total = len(scenario.copies) + len(scenario.novel)
    assert commit_training(decision, manifest) == total
    assert manifest_size(manifest) == total
    assert str(pretrain_gate(scenario.new, manifest).action) == "skip"


def test_a_skip_decision_commits_nothing_unless_forced(scenario, tmp_path: Path) -> None:
    manifest = tmp_path / "reference.vdc"
    decision = pretrain_gate(scenario.reference, manifest, reference=scenario.reference)
    assert str(decision.action) == "skip"
    before = manifest.stat().st_mtime_ns
    assert commit_training(decision, manifest) == 0
    assert manifest.stat().st_mtime_ns == before


def test_commit_a_whole_dataset(photos, tmp_path: Path) -> None:
    data = labelled(photos, tmp_path / "data", range(6))
    assert commit_training(str(data), tmp_path / "m.vdc") == 6
    assert manifest_size(tmp_path / "m.vdc") == 6


def test_a_broken_manifest_is_refused_not_rebuilt(scenario, tmp_path: Path) -> None:
    manifest = tmp_path / "reference.vdc"
    manifest.write_bytes(b"not a manifest")
    with pytest.raises(ManifestError, match="not a vdc_torch manifest"):
        pretrain_gate(scenario.new, manifest, reference=scenario.reference)
    assert manifest.read_bytes() == b"not a manifest"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 2}, "unexpected keyword threads=2; choices: workers, progress"),
        ({"policy": 0.95}, "policy=0.95 must be a vdc_torch.Policy or None"),
        ({"config": {"hash_radius": 3}}, "config=.* must be a vdc_torch.MatchConfig or None"),
    ],
)
def test_pretrain_gate_rejects_unknown_options(scenario, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pretrain_gate(scenario.new, tmp_path / "m.vdc", **kwargs)


def test_policy_and_config_are_applied(scenario, tmp_path: Path) -> None:
    decision = pretrain_gate(scenario.new, tmp_path / "m.vdc", reference=scenario.reference,
                             policy=Policy(skip_overlap=0.3, min_delta_to_train=100),
                             config=MatchConfig(use_features=False), workers=0)
    assert str(decision.action) == "skip"  # ~38 % overlap >= 30 % and ~20 novel < 100
    assert decision.config.use_features is False


# -- rebuild_loader ------------------------------------------------------------------------------------------


def test_rebuild_loader_keeps_the_loader_settings() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(40.0))
    subset = Subset(data, list(range(0, 40, 2)))
    collate = torch.utils.data.default_collate
    loader = DataLoader(data, batch_size=6, shuffle=True, num_workers=2, drop_last=True, collate_fn=collate,
                        persistent_workers=True, prefetch_factor=3)
    rebuilt = rebuild_loader(loader, subset)
    assert rebuilt.dataset is subset
    assert (rebuilt.batch_size, rebuilt.num_workers, rebuilt.drop_last) == (6, 2, True)
    assert type(rebuilt.sampler).__name__ == "RandomSampler"
    assert rebuilt.collate_fn is collate and rebuilt.persistent_workers and rebuilt.prefetch_factor == 3
    plain = rebuild_loader(DataLoader(data, batch_size=5), subset)
    assert isinstance(plain.sampler, SequentialSampler)
    assert next(iter(plain))[0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_rebuild_loader_refuses_a_custom_sampler() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    loader = DataLoader(data, batch_size=2, sampler=WeightedRandomSampler([1.0] * 10, 10))
    with pytest.raises(ValueError, match="sampler of type WeightedRandomSampler cannot be rebuilt"):
        rebuild_loader(loader, Subset(data, [1, 2]))


def test_importing_the_hooks_does_not_import_lightning() -> None:
    code = "import sys, vdc_torch.faces.hooks; print('lightning' in sys.modules, 'pytorch_lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            check=False,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


# -- Lightning -----------------------------------------------------------------------------------------------


@pytest.fixture
def lightning():
    return pytest.importorskip("lightning", reason="pip install 'vdc_torch[lightning]' to test the callback")


def tiny_model(lightning):
    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
            self.seen = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen += len(y)
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny()


def image_folder(root: Path):
    from torchvision import datasets, transforms

    return datasets.ImageFolder(root, transform=transforms.Compose([transforms.Resize((16, 16)),
                                                                    transforms.ToTensor()]))


def trainer(lightning, callback):
    return lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])


def test_callback_trains_on_the_delta_then_grows_the_manifest(lightning, photos, tmp_path: Path) -> None:
    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(10))
    new = labelled(photos, tmp_path / "new", range(20), prefix="drop_")  # 10 old photos (renamed) + 10 new
    dataset = image_folder(new)
    callback = VdcGateCallback(tmp_path / "ckpt" / "reference.vdc", reference=reference)
    model = tiny_model(lightning)
    fit = trainer(lightning, callback)
    fit.fit(model, DataLoader(dataset, batch_size=4, shuffle=True))
    decision = callback.decision
    assert str(decision.action) == "train" and decision.overlap == 0.5
    assert isinstance(fit.train_dataloader.dataset, Subset) and fit.train_dataloader.dataset is decision.delta
    assert fit.train_dataloader.dataset.dataset is dataset
    assert fit.train_dataloader.batch_size == 4
    names = {Path(dataset.samples[i][0]).name for i in decision.delta.indices}
    assert names == {f"drop_{photos[i].name}" for i in range(10, 20)}
    assert model.seen == 10 and fit.global_step == math.ceil(10 / 4)
    assert callback.committed == 10 and manifest_size(tmp_path / "ckpt" / "reference.vdc") == 20


@pytest.mark.parametrize("cut", [{"max_steps": 1}, {"limit_train_batches": 2}])
def test_callback_grows_the_manifest_only_after_a_whole_pass(lightning, photos, tmp_path: Path, cut: dict) -> None:
    # a fit cut short trained on part of the delta: adding all of it would make the next gate skip the rest
    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(10))
    new = labelled(photos, tmp_path / "new", range(20), prefix="drop_")  # 10 old photos (renamed) + 10 new
    manifest = tmp_path / "ckpt" / "reference.vdc"
    callback = VdcGateCallback(manifest, reference=reference)
    model = tiny_model(lightning)
    fit = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **cut)
    with pytest.warns(UserWarning, match=r"ran \d of the 3 batches of one pass.*manifest is left unchanged"):
        fit.fit(model, DataLoader(image_folder(new), batch_size=4, shuffle=True))
    assert model.seen < 10 and callback.committed == 0 and manifest_size(manifest) == 10


def test_callback_stops_the_fit_when_everything_was_seen(lightning, photos, tmp_path: Path) -> None:
    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(12))
    manifest = tmp_path / "reference.vdc"
    DatasetGate(reference=reference).save(manifest)
    before = manifest.read_bytes()
    old_again = labelled(photos, tmp_path / "old", range(12), prefix="again_")
    callback = VdcGateCallback(manifest)
    model = tiny_model(lightning)
    weights = [p.detach().clone() for p in model.parameters()]
    fit = trainer(lightning, callback)
    fit.fit(model, DataLoader(image_folder(old_again), batch_size=4, shuffle=True))
    assert str(callback.decision.action) == "skip" and callback.decision.overlap == 1.0
    assert fit.should_stop and fit.global_step == 0 and model.seen == 0
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert callback.committed == 0 and manifest.read_bytes() == before


def test_callback_report_mode_trains_on_everything(lightning, photos, tmp_path: Path) -> None:
    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(6))
    new = labelled(photos, tmp_path / "new", range(10), prefix="n_")
    callback = VdcGateCallback(tmp_path / "m.vdc", reference=reference, on_train="report")
    model = tiny_model(lightning)
    trainer(lightning, callback).fit(model, DataLoader(image_folder(new), batch_size=5))
    assert str(callback.decision.action) == "train" and len(callback.decision.delta) == 4
    assert model.seen == 10  # the whole dataset, as passed
    assert manifest_size(tmp_path / "m.vdc") == 10  # but only the 4 novel samples were added


def test_callback_works_with_a_datamodule(lightning, photos, tmp_path: Path) -> None:
    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(6))
    new = labelled(photos, tmp_path / "new", range(12), prefix="n_")

    class Data(lightning.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(image_folder(new), batch_size=3, shuffle=True)

    callback = VdcGateCallback(tmp_path / "m.vdc", reference=reference)
    model = tiny_model(lightning)
    trainer(lightning, callback).fit(model, datamodule=Data())
    assert len(callback.decision.delta) == 6 and model.seen == 6


def test_callback_replaces_a_loader_already_loaded_by_configure_optimizers(lightning, photos,
                                                                          tmp_path: Path) -> None:
    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(6))
    new = labelled(photos, tmp_path / "new", range(12), prefix="n_")
    model = tiny_model(lightning)

    def configure_optimizers():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = model.trainer.estimated_stepping_batches  # loads the train dataloader before on_fit_start
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    model.configure_optimizers = configure_optimizers
    callback = VdcGateCallback(tmp_path / "m.vdc", reference=reference)
    fit = trainer(lightning, callback)
    with pytest.warns(UserWarning, match="loaded before fit start"):
        fit.fit(model, DataLoader(image_folder(new), batch_size=2, num_workers=1))
    assert model.seen == 6 and fit.global_step == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_skip": "halt"}, "on_skip='halt' is not one of stop, report"),
        ({"on_train": "all"}, "on_train='all' is not one of delta, report"),
        ({"policy": "strict"}, "policy='strict' must be a vdc_torch.Policy or None"),
        ({"workers": -1}, "workers=-1 must be None or a non-negative integer"),
    ],
)
def test_callback_validates_its_arguments(lightning, tmp_path: Path, kwargs: dict, message: str) -> None:
    from vdc_torch.faces.hooks import VdcGateCallback

    with pytest.raises(ValueError, match=message):
        VdcGateCallback(tmp_path / "m.vdc", **kwargs)
    with pytest.raises(ValueError, match="manifest_path=None must be a file path"):
        VdcGateCallback(None)


def test_callback_logs_the_decision_to_the_trainers_loggers(lightning, photos, tmp_path: Path) -> None:
    """A drop of 10 seen photos and 10 new ones: the decision's figures reach a CSV logger."""
    import csv

    from vdc_torch.faces.hooks import VdcGateCallback

    reference = labelled(photos, tmp_path / "ref", range(10))
    new = labelled(photos, tmp_path / "new", range(20), prefix="drop_")
    callback = VdcGateCallback(tmp_path / "ckpt" / "reference.vdc", reference=reference)
    logger = lightning.pytorch.loggers.CSVLogger(tmp_path / "logs")
    fit = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    fit.fit(tiny_model(lightning), DataLoader(image_folder(new), batch_size=4))
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    logged = {key: float(value) for row in rows for key, value in row.items() if key.startswith("vdc/") and value}
    assert logged == {"vdc/train": 1.0, "vdc/overlap": 0.5, "vdc/readable": 20.0, "vdc/delta": 10.0,
                      "vdc/conflicts": 0.0, "vdc/internal_duplicates": 0.0, "vdc/unreadable": 0.0,
                      "vdc/new_classes": 0.0, "vdc/low_quality": 0.0}
