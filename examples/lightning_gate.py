"""The same three CIFAR-10 drops as ``train_with_gate.py``, gated by a PyTorch Lightning callback.

``VdcGateCallback`` gates the train dataloader's dataset when ``trainer.fit`` starts: a drop the model has already
seen stops the fit cleanly before the first batch; otherwise the dataloader is rebuilt over the novel delta (same
batch size, shuffling and workers) and, once the fit has trained, the delta is added to the manifest::

    trainer = L.Trainer(max_epochs=2, callbacks=[VdcGateCallback("ckpt/reference.vdc")])
    trainer.fit(model, DataLoader(drop, batch_size=64, shuffle=True))

Needs Lightning: ``pip install lightning`` (from a checkout: ``pip install -e '.[lightning]'``).
Usage: python examples/lightning_gate.py [--workdir DIR] [--per-class 200] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_with_gate import TEST_TF, TRAIN_TF, accuracy, build_drops, cifar_root, small_cnn

try:
    import lightning as L
except ImportError:
    sys.exit("error: this example needs Lightning: pip install lightning (from a checkout: pip install -e '.[lightning]')")


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=5e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where drops and manifest go")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from vdc_torch import Dataset
    from vdc_torch.faces.hooks import VdcGateCallback

    L.seed_everything(0, verbose=False)
    cache = Path(os.environ.get("VDC_DATA", Path(tempfile.gettempdir()) / "vdc-data"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vdc-lightning-"))
    drops = build_drops(cifar_root(cache), workdir, args.per_class)
    manifest = workdir / "ckpt" / "reference.vdc"
    model = Classifier()
    test_loader = DataLoader(Dataset(drops["test"], transform=TEST_TF), batch_size=256)
    print(f"workdir: {workdir}\n")

    for step, name in enumerate(("v1", "reexport", "half_new"), start=1):
        drop = Dataset(drops[name], transform=TRAIN_TF)
        print(f"== {step}. drop {name!r}: {len(drop)} images", flush=True)
        # workers=0: CIFAR images are tiny, so fingerprinting in this process is as fast as forking workers
        gate = VdcGateCallback(manifest, on_skip="stop", on_train="delta", workers=0)
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False, callbacks=[gate])
        start = time.perf_counter()
        trainer.fit(model, DataLoader(drop, batch_size=64, shuffle=True, num_workers=2))
        decision = gate.decision
        trained_on = len(trainer.train_dataloader.dataset) if trainer.global_step else 0
        print(f"   decision {str(decision.action).upper()}: {trainer.global_step} optimizer steps on {trained_on} "
              f"samples, manifest +{gate.committed} ({time.perf_counter() - start:.1f} s)")
        if trainer.global_step:
            print(f"   test accuracy {accuracy(model.net, test_loader):.1%}")
            model.train()  # accuracy() left it in eval mode; the next fit expects train mode
        print(flush=True)


if __name__ == "__main__":
    main()
