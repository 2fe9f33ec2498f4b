"""Model features as a near-duplicate method on CIFAR-10: train a small CNN on this CPU, gate test vs train.

1. Trains the plain CNN of ``../shared/notes/model-encoder-on-cifar10.md`` (7 conv-BN-ReLU layers, widths
   16/32/64, three max-pools, global average pool, linear head) on the 50,000 training JPEGs: SGD + one-cycle,
   flip and 4-pixel shift augmentation. Reports the wall time and test accuracy.
2. Runs ``DatasetGate(reference=train).check(test)`` without and with
   ``encoder=LayerEncoder(model, layer=<after the 2nd pooling stage>, grid=4)`` and reports the share of test
   images found in train, by method, with galleries of found pairs (``benchmarks/figures/``).
3. Prints the distribution of top-1 cosine similarities so the threshold can be read off.

Usage: python benchmarks/encoder_cifar.py [--epochs 8] [--threshold 0.9]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import cifar10_root, write_results_section  # noqa: E402

from vdc_torch import DatasetGate, MatchConfig  # noqa: E402
from vdc_torch.data.dataset import Dataset  # noqa: E402
from vdc_torch.fingerprints.encoder import LayerEncoder, embed_thumbs, nearest_neighbours  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
FIGURES = Path(__file__).resolve().parent / "figures"


def small_cnn() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 16), *block(16, 16), nn.MaxPool2d(2),  # stage 1: 16x16
        *block(16, 32), *block(32, 32), nn.MaxPool2d(2),  # stage 2: 8x8
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),  # stage 3: 4x4
        *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def load_split(root: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = Dataset(root)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in ds.samples])
    return images, np.asarray(ds.targets)


def train(images: np.ndarray, labels: np.ndarray, epochs: int) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    model = small_cnn()
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    mean = x_all.mean(dim=(0, 2, 3), keepdim=True)
    std = x_all.std(dim=(0, 2, 3), keepdim=True)
    x_all = (x_all - mean) / std
    y_all = torch.from_numpy(labels).long()
    batch = 128
    steps = epochs * (len(x_all) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all))
        for i in range(len(x_all) // batch):
            idx = order[i * batch : (i + 1) * batch]
            x = x_all[idx]
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(3)
            x = F.pad(x, (4, 4, 4, 4), mode="reflect")
            dx, dy = np.random.randint(0, 9, size=2)
            x = x[:, :, dy : dy + 32, dx : dx + 32]
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    model.norm_mean, model.norm_std = mean.flatten().tolist(), std.flatten().tolist()
    return model, time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(model.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.norm_std).view(1, 3, 1, 1)
    preds = torch.cat([model((x[i : i + 1000] - mean) / std).argmax(1) for i in range(0, len(x), 1000)])
    return float((preds.numpy() == labels).mean())


def gallery(pairs: list[tuple[str, str, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(pairs)
    cols = 5
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols * 2, figsize=(cols * 2 * 1.1, rows * 1.3))
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (a, b, label) in enumerate(pairs):
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(Image.open(a).convert("RGB"))
        axes[r, 2 * c + 1].imshow(Image.open(b).convert("RGB"))
        axes[r, 2 * c].set_title(label, fontsize=6, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.92,
                        help="a fixed cosine (the gate derives one from the reference when MatchConfig's "
                             "encoder_similarity is None: benchmarks/encoder_threshold.py measures that)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a shared 2-core machine 1 avoids OpenMP spin contention")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = cifar10_root()
    OUT.mkdir(exist_ok=True)
    weights = OUT / f"cifar_cnn_e{args.epochs}.pt"
    train_x, train_y = load_split(root / "train")
    test_x, test_y = load_split(root / "test")
    model = small_cnn()
    if weights.exists():
        state = torch.load(weights, weights_only=True)  # our own file, loaded without pickle all the same
        model.load_state_dict(state["model"])
        model.norm_mean, model.norm_std = state["mean"], state["std"]
        model.eval()
        train_seconds = float(state["seconds"])
    else:
        model, train_seconds = train(train_x, train_y, args.epochs)
        torch.save({"model": model.state_dict(), "mean": model.norm_mean, "std": model.norm_std,
                    "seconds": train_seconds}, weights)
    acc = accuracy(model, test_x, test_y)
    print(f"trained in {train_seconds:.0f} s, test accuracy {acc:.3f}")

    gate = DatasetGate(reference=root / "train")
    ref_table = gate.reference_table
    t0 = time.perf_counter()
    plain = gate.check(root / "test")
    t_plain = time.perf_counter() - t0

    encoder = LayerEncoder(model, layer="13", grid=4, input_size=32, mean=model.norm_mean, std=model.norm_std)
    t0 = time.perf_counter()
    new_emb = embed_thumbs(encoder, plain.new_fingerprints.thumbs)
    ref_emb = embed_thumbs(encoder, ref_table.thumbs)
    sims, _ = nearest_neighbours(new_emb, ref_emb, k=1)
    t_embed = time.perf_counter() - t0
    top = np.sort(sims[:, 0])[::-1]
    quantiles = {f"top {p}%": float(top[int(len(top) * p / 100)]) for p in (1, 2, 3, 4, 5, 10)}
    print("top-1 cosine at flagged shares:", {k: round(v, 4) for k, v in quantiles.items()})

    gate_enc = DatasetGate(reference=root / "train", encoder=encoder,
                           config=MatchConfig(encoder_similarity=args.threshold))
    gate_enc._table = ref_table  # same reference fingerprints; only the method differs
    t0 = time.perf_counter()
    with_encoder = gate_enc.check(root / "test")
    t_enc = time.perf_counter() - t0

    def share(decision) -> float:
        return decision.counts["exact"] + decision.counts["near_duplicate"]

    test_root, train_root = root / "test", root / "train"
    rng = np.random.default_rng(args.seed)
    enc_only = with_encoder.matches[with_encoder.matches["method"] == "encoder"]
    pick = enc_only.iloc[rng.permutation(len(enc_only))[:40]] if len(enc_only) else enc_only
    gallery([(str(test_root / r.new_path), str(train_root / r.ref_path), f"{r.score:.3f}") for r in pick.itertuples()],
            FIGURES / "cifar_encoder_found_pairs.png",
            f"CIFAR-10 test->train pairs found only by the model encoder (cosine >= {args.threshold})")
    plain_found = plain.matches[plain.matches["kind"].isin(["exact", "near_duplicate"])]
    pick = plain_found.iloc[rng.permutation(len(plain_found))[:40]]
    gallery([(str(test_root / r.new_path), str(train_root / r.ref_path), f"{r.method} {r.score:.2f}")
             for r in pick.itertuples()], FIGURES / "cifar_found_pairs_default.png",
            "CIFAR-10 test->train pairs found by the default cascade (random sample)")

    by_method = with_encoder.matches[with_encoder.matches["kind"] != "similar"].groupby("method").size().to_dict()
    body = "\n".join([
        f"Small CNN of the notes (~0.3 M parameters), {args.epochs} epochs on the 50,000 training JPEGs: "
        f"**{train_seconds:.0f} s** on this CPU, test accuracy **{acc:.3f}**. Encoder: the output of the 2nd "
        "pooling stage (8×8×32), average-pooled to 4×4, L2-normalised; faiss `IndexFlatIP` top-1.",
        "",
        "| run | test images found in train | share | time |",
        "|---|---|---|---|",
        f"| default cascade | {share(plain)} | {share(plain) / 10000:.2%} | {t_plain:.1f} s (check only) |",
        f"| cascade + encoder (cosine ≥ {args.threshold}) | {share(with_encoder)} | "
        f"{share(with_encoder) / 10000:.2%} | {t_enc:.1f} s (check only; embedding + search {t_embed:.1f} s) |",
        "",
        f"Matches by method with the encoder: {by_method}.",
        "",
        "Top-1 cosine similarity of test images to their nearest training image, at the share of test images "
        "flagged: " + ", ".join(f"{k}: {v:.3f}" for k, v in quantiles.items()) + ".",
        "",
        "The published study (Barz & Denzler 2020) reports ~3.3% of CIFAR-10 test images with near-duplicates in "
        "train. Galleries: `benchmarks/figures/cifar_encoder_found_pairs.png` (pairs only the encoder found), "
        "`benchmarks/figures/cifar_found_pairs_default.png` (default cascade).",
    ])
    print(body)
    write_results_section("encoder_cifar", "Model encoder on CIFAR-10", body)


if __name__ == "__main__":
    main()
