"""A small CNN on a CIFAR-10 subset, trained only when the gate says the data is worth it.

Three data drops arrive one after another:

1. ``v1``: 2,000 training images. No manifest exists yet, so everything is new: train, then save the manifest.
2. ``reexport``: the same 2,000 pictures re-encoded (JPEG quality 70) and renamed. The gate skips it.
3. ``half_new``: 1,000 re-encoded pictures of v1 plus 1,000 pictures never seen. Train on the delta only.

The pattern is two calls around the training code::

    decision = pretrain_gate(drop, "ckpt/reference.vdc")
    if decision.action == "train":
        train(model, DataLoader(decision.delta, batch_size=64, shuffle=True))
        commit_training(decision, "ckpt/reference.vdc")

Data: ``../shared/data/cifar10-jpg.tar.xz`` (relative to the repository; or ``$VDC_SHARED``) is unpacked once into
``$VDC_DATA`` (default: ``<tmp>/vdc-data``). The drops, the manifest and an HTML report are written under
``--workdir`` (default: a new temporary folder). A few minutes at most on 2 CPU cores.

Usage: python examples/train_with_gate.py [--workdir DIR] [--per-class 200] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDC_SHARED", REPO.parent / "shared" / "data"))
ARCHIVE = SHARED / "cifar10-jpg.tar.xz"
MEAN, STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)


# -- data ----------------------------------------------------------------------------------------------------


def cifar_root(cache: Path) -> Path:
    """``cache/cifar10`` with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, unpacked once from the archive."""
    root = cache / "cifar10"
    if all(len([d for d in (root / split).glob("*") if d.is_dir()]) == 10 for split in ("train", "test")):
        return root
    if not ARCHIVE.is_file():
        sys.exit(f"error: CIFAR-10 archive {ARCHIVE} not found; set VDC_SHARED to the shared data folder")
    print(f"unpacking {ARCHIVE} into {root} (once) ...", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=cache))
    with tarfile.open(ARCHIVE, "r:xz") as archive:
        archive.extractall(staging, filter="data")  # no absolute paths, links out of the folder or devices
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    return root


def reencode(source: Path, target: Path, quality: int = 70) -> None:
    with Image.open(source) as image:
        image.convert("RGB").save(target, quality=quality)


def build_drops(cifar: Path, workdir: Path, per_class: int) -> dict[str, Path]:
    """The three drops (ImageFolder layout) and a test folder, made from disjoint CIFAR-10 files."""
    drops = {name: workdir / "data" / name for name in ("v1", "reexport", "half_new", "test")}
    if all(p.is_dir() for p in drops.values()):
        return drops
    for cls in sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir()):
        files = sorted((cifar / "train" / cls).glob("*.jpg"))
        seen, unseen = files[:per_class], files[per_class : per_class + per_class // 2]
        for folder in drops.values():
            (folder / cls).mkdir(parents=True, exist_ok=True)
        for f in seen:
            shutil.copy(f, drops["v1"] / cls / f.name)
            reencode(f, drops["reexport"] / cls / f"export_{f.stem}.jpg")
        for f in seen[: per_class // 2]:
            reencode(f, drops["half_new"] / cls / f"export_{f.stem}.jpg")
        for f in unseen:
            shutil.copy(f, drops["half_new"] / cls / f"new_{f.name}")
        for f in sorted((cifar / "test" / cls).glob("*.jpg"))[:100]:
            shutil.copy(f, drops["test"] / cls / f.name)
    return drops


TRAIN_TF = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4),
                               transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
TEST_TF = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


# -- model ---------------------------------------------------------------------------------------------------


def small_cnn(classes: int = 10) -> nn.Module:
    """~0.1 M parameters: three conv stages, global average pooling, a linear head."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                         *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def train(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    model.train()
    for epoch in range(epochs):
        total, count, start = 0.0, 0, time.perf_counter()
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(y), count + len(y)
        print(f"   epoch {epoch + 1}/{epochs}: loss {total / count:.3f} on {count} samples "
              f"({time.perf_counter() - start:.1f} s)")


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return right / total


# -- the gated runs ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where drops, manifest and report go")
    parser.add_argument("--per-class", type=int, default=200, help="v1 images per class (default 200 = 2,000)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from vdc_torch import Dataset
    from vdc_torch.faces.hooks import commit_training, pretrain_gate
    from vdc_torch.faces.report import write_html

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cache = Path(os.environ.get("VDC_DATA", Path(tempfile.gettempdir()) / "vdc-data"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vdc-train-"))
    drops = build_drops(cifar_root(cache), workdir, args.per_class)
    manifest = workdir / "ckpt" / "reference.vdc"
    model = small_cnn()
    test_loader = DataLoader(Dataset(drops["test"], transform=TEST_TF), batch_size=256)
    print(f"workdir: {workdir}\n")

    for step, name in enumerate(("v1", "reexport", "half_new"), start=1):
        drop = Dataset(drops[name], transform=TRAIN_TF)
        print(f"== {step}. drop {name!r}: {len(drop)} images")
        start = time.perf_counter()
        # workers=0: CIFAR images are tiny, so fingerprinting in this process is as fast as forking workers
        decision = pretrain_gate(drop, manifest, workers=0)
        print(f"   gate ({time.perf_counter() - start:.1f} s): {str(decision.action).upper()} - {decision.reason}")
        if name == "half_new":
            print(f"   report: {write_html(decision, workdir / 'report_half_new.html')}")
        if decision.action == "train":
            names = [Path(drop.samples[i][0]).name for i in decision.delta.indices]
            truly_new = sum(not n.startswith("export_") for n in names)
            print(f"   training on the delta: {len(decision.delta)} of {len(drop)} samples "
                  f"({truly_new} of them never seen, {len(names) - truly_new} re-exports the gate did not match)")
            train(model, DataLoader(decision.delta, batch_size=64, shuffle=True, num_workers=2), args.epochs)
            added = commit_training(decision, manifest, workers=0)
            print(f"   test accuracy {accuracy(model, test_loader):.1%}; manifest +{added} samples")
        else:
            print("   no training run: the model has already seen this data")
        print()


if __name__ == "__main__":
    main()
