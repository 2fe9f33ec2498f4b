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

``--forgetting`` runs the replay experiment instead (issue 19). The reference ``v1`` holds classes 0-7 only; the new
drop holds re-encoded v1 pictures plus pictures of classes 8 and 9, which the gate names as never seen. From the same
v1 checkpoint, copies are fine-tuned for the same number of steps on ``decision.delta`` alone and on
``decision.training_set(v1, replay=R)``; accuracy on the CIFAR-10 test images of the old and of the new classes shows
what the delta alone makes the model forget. The table is printed and written to
``benchmarks/results/train_with_gate.md`` (not with ``--no-benchmarks-md``). About 4 minutes for 3 seeds, with one
torch thread by default: on 2 cores that is as fast as 2 threads, and several times faster when another process
shares the cores.

Usage: python examples/train_with_gate.py [--workdir DIR] [--per-class 200] [--epochs 2]
       python examples/train_with_gate.py --forgetting [--seeds 0 1 2] [--replay 0.2 0.5 1.0] [--threads 1]
                                           [--no-benchmarks-md]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import shlex
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


# -- forgetting: delta only vs delta + replay ----------------------------------------------------------------

#: Classes 0-7 (canonical CIFAR-10 order) are the reference's; 8 (ship) and 9 (truck) arrive with the new drop.
OLD_CLASSES = 8
RESULTS_SECTION = "Forgetting: delta only vs delta + replay"


def build_forgetting_drops(cifar: Path, workdir: Path, per_class: int, test_per_class: int) -> dict[str, Path]:
    """``v1`` (classes 0-7, ``per_class`` each), ``new`` (a quarter of that re-encoded and renamed per old class, plus
    ``per_class`` pictures each of classes 8 and 9) and ``test`` (CIFAR-10 test images, all 10 classes)."""
    drops = {name: workdir / f"forgetting_{per_class}_{test_per_class}" / name for name in ("v1", "new", "test")}
    if all(p.is_dir() for p in drops.values()):
        return drops
    for number, cls in enumerate(sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())):
        files = sorted((cifar / "train" / cls).glob("*.jpg"))[:per_class]
        for name in ("new", "test") if number >= OLD_CLASSES else drops:
            (drops[name] / cls).mkdir(parents=True, exist_ok=True)
        if number < OLD_CLASSES:
            for f in files:
                shutil.copy(f, drops["v1"] / cls / f.name)
            for f in files[: per_class // 4]:
                reencode(f, drops["new"] / cls / f"export_{f.stem}.jpg")
        else:
            for f in files:
                shutil.copy(f, drops["new"] / cls / f"new_{f.name}")
        for f in sorted((cifar / "test" / cls).glob("*.jpg"))[:test_per_class]:
            shutil.copy(f, drops["test"] / cls / f.name)
    return drops


def fine_tune(model: nn.Module, dataset: torch.utils.data.Dataset, steps: int, lr: float = 1e-3) -> None:
    """``steps`` AdamW steps on shuffled batches of 64, going round ``dataset`` as often as that takes."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    model.train()
    done = 0
    while done < steps:
        for x, y in DataLoader(dataset, batch_size=64, shuffle=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break


def scores(model: nn.Module, old: DataLoader, new: DataLoader) -> tuple[float, float]:
    """Test accuracy on the old classes (0-7) and on the new ones (8-9)."""
    return accuracy(model, old), accuracy(model, new)


def cell(values: list[float]) -> str:
    """``54.1%`` for one seed, ``54.1% (52.3%–55.9%)`` (mean, then min–max over seeds) for several."""
    mean = sum(values) / len(values)
    return f"{mean:.1%}" if len(values) == 1 else f"{mean:.1%} ({min(values):.1%}–{max(values):.1%})"


def write_results(body: str) -> Path:
    """The section in ``benchmarks/results/train_with_gate.md``, via ``benchmarks/datasets.py`` (loaded under its
    own name: put on ``sys.path`` it would shadow the Hugging Face ``datasets`` package)."""
    spec = importlib.util.spec_from_file_location("vdc_benchmark_data", REPO / "benchmarks" / "datasets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_results_section("train_with_gate", RESULTS_SECTION, body)


def forgetting(args: argparse.Namespace, cifar: Path, workdir: Path) -> None:
    """Fine-tune the v1 model on the delta alone and on the delta plus a replay sample; print (and write) the table."""
    from vdc_torch import Dataset, DatasetGate

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    drops = build_forgetting_drops(cifar, workdir, args.fg_per_class, args.test_per_class)
    v1, new = Dataset(drops["v1"], transform=TRAIN_TF), Dataset(drops["new"], transform=TRAIN_TF)
    test = Dataset(drops["test"], transform=TEST_TF)
    # Labels agree by name: v1's 8 class folders are the first 8 of the 10 (sorted = canonical CIFAR-10 order).
    assert new.classes == test.classes == v1.classes + ["ship", "truck"], (v1.classes, new.classes)
    old_test = DataLoader(test.view([i for i, (_, y) in enumerate(test.samples) if y < OLD_CLASSES]), batch_size=256)
    new_test = DataLoader(test.view([i for i, (_, y) in enumerate(test.samples) if y >= OLD_CLASSES]), batch_size=256)
    print(f"workdir: {workdir}\nv1: {len(v1)} images of classes 0-7; new drop: {len(new)} images; "
          f"test: {len(old_test.dataset)} old-class + {len(new_test.dataset)} new-class images\n")

    decision = DatasetGate(reference=v1, workers=0).check(new)
    print(f"gate: {str(decision.action).upper()} - {decision.reason}")
    assert decision.action == "train", decision.reason
    names = [Path(new.samples[i][0]).name for i in decision.delta.indices]
    missed = sum(n.startswith("export_") for n in names)
    reexports = sum(Path(path).name.startswith("export_") for path, _ in new.samples)
    steps = args.ft_epochs * math.ceil(len(decision.delta) / 64)
    arms = [("delta only", 0.0)] + [(f"delta + replay {r:g}", r) for r in args.replay]
    sizes = {label: len(decision.delta) + len(decision.replay_indices(v1, r)) for label, r in arms}
    print(f"delta: {len(decision.delta)} samples ({missed} re-exports the gate did not match); every fine-tuning "
          f"run: {steps} steps of 64 (= {args.ft_epochs} epochs of the delta), lr {args.ft_lr:g}\n")

    rows: dict[str, list[tuple[float, float]]] = {"v1, before fine-tuning": []} | {label: [] for label, _ in arms}
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = small_cnn().to(memory_format=torch.channels_last)  # ~1.5x faster convolutions on CPU
        print(f"== seed {seed}: v1 model, {args.fg_epochs} epochs on v1")
        train(model, DataLoader(v1, batch_size=64, shuffle=True), args.fg_epochs)
        checkpoint = copy.deepcopy(model.state_dict())
        rows["v1, before fine-tuning"].append(scores(model, old_test, new_test))
        print(f"   before fine-tuning: old classes {rows['v1, before fine-tuning'][-1][0]:.1%}")
        for label, replay in arms:
            model.load_state_dict(checkpoint)
            torch.manual_seed(1000 + seed)
            if replay == 0:
                train_on = decision.delta
            else:
                train_on = decision.training_set(v1, replay=replay, seed=seed)
                train_on.transform = TRAIN_TF  # the merged folder dataset starts without a transform
            start = time.perf_counter()
            fine_tune(model, train_on, steps, args.ft_lr)
            rows[label].append(scores(model, old_test, new_test))
            print(f"   {label} ({len(train_on)} samples, {time.perf_counter() - start:.0f} s): old classes "
                  f"{rows[label][-1][0]:.1%}, new classes {rows[label][-1][1]:.1%}")
    wall = time.perf_counter() - started

    seeds = " ".join(map(str, args.seeds))
    table = ["| model | fine-tuned on | old classes 0–7 (forgetting) | new classes 8–9 | all 10 |",
             "|---|---|---|---|---|"]
    share = len(old_test.dataset) / (len(old_test.dataset) + len(new_test.dataset))
    for label, values in rows.items():
        what = "–" if label not in sizes else (
            f"{sizes[label]} samples: the delta" if label == "delta only"
            else f"{sizes[label]} samples: the delta + {sizes[label] - len(decision.delta)} of v1")
        table.append(f"| {label} | {what} | {cell([v[0] for v in values])} | {cell([v[1] for v in values])} | "
                     f"{cell([share * old + (1 - share) * new for old, new in values])} |")
    argv = [a for i, a in enumerate(sys.argv[1:])
            if not a.startswith("--workdir") and sys.argv[i] != "--workdir"]  # sys.argv[i]: the previous one
    mean = {label: [sum(v[k] for v in values) / len(values) for k in (0, 1)] for label, values in rows.items()}
    before = mean["v1, before fine-tuning"][0]
    kept = "; ".join(f"{label} keeps {mean[label][0] / before:.0%} ({mean[label][1]:.1%} on the new classes)"
                     for label, _ in arms)
    body = "\n".join([
        f"`{shlex.join(['python', 'examples/train_with_gate.py', *argv])}` ({wall:.0f} s wall, {args.threads} "
        f"torch thread(s)). Reference v1: {len(v1)} CIFAR-10 training images of classes 0–7 ({args.fg_per_class} "
        f"each); the small CNN is trained {args.fg_epochs} epochs on them (AdamW, lr 3e-3). New drop: {reexports} "
        f"re-encoded (JPEG 70) and renamed v1 pictures plus {args.fg_per_class} each of ship and truck. Gate: "
        f"*{decision.reason}* Every fine-tuning run starts from the same v1 checkpoint and takes {steps} steps of "
        f"64 (= {args.ft_epochs} epochs of the delta, lr {args.ft_lr:g}), so the runs differ only in what they "
        "train on; replay samples are class-balanced (`decision.training_set(v1, replay=R, balance=\"class\", "
        f"seed=seed)`). Test: {args.test_per_class} CIFAR-10 test images per class; accuracy is the mean over seeds "
        f"{seeds}" + (" (min–max in brackets)." if len(args.seeds) > 1 else "."),
        "",
        *table,
        "",
        f"Old-class accuracy before fine-tuning: {before:.1%}. Of it, {kept}.",
    ])
    print(f"\n{body}\n")
    if not args.no_benchmarks_md:
        print(f"written to {write_results(body)}")


# -- the gated runs ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where drops, manifest and report go")
    parser.add_argument("--per-class", type=int, default=200, help="v1 images per class (default 200 = 2,000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--forgetting", action="store_true", help="run the replay experiment instead of the drops")
    parser.add_argument("--fg-per-class", type=int, default=500, help="--forgetting: training images per class")
    parser.add_argument("--fg-epochs", type=int, default=6, help="--forgetting: epochs of the v1 model")
    parser.add_argument("--ft-epochs", type=int, default=5, help="--forgetting: fine-tuning length, in delta epochs")
    parser.add_argument("--ft-lr", type=float, default=1e-3, help="--forgetting: fine-tuning learning rate")
    parser.add_argument("--test-per-class", type=int, default=200, help="--forgetting: CIFAR-10 test images per class")
    parser.add_argument("--replay", type=float, nargs="+", default=[0.2, 0.5, 1.0], help="--forgetting: replay shares")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--forgetting: seeds")
    parser.add_argument("--threads", type=int, default=1,
                        help="--forgetting: torch threads (default 1: as fast on 2 cores, robust when they are shared)")
    parser.add_argument("--no-benchmarks-md", action="store_true",
                        help="--forgetting: do not write benchmarks/results/train_with_gate.md")
    args = parser.parse_args()

    from vdc_torch import Dataset
    from vdc_torch.faces.hooks import commit_training, pretrain_gate
    from vdc_torch.faces.report import write_html

    cache = Path(os.environ.get("VDC_DATA", Path(tempfile.gettempdir()) / "vdc-data"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vdc-train-"))
    if args.forgetting:
        forgetting(args, cifar_root(cache), workdir)
        return
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
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
