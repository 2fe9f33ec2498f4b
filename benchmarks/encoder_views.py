"""What showing the encoder each image at its own input size costs (issue 17), against fingerprinting alone.

    python benchmarks/encoder_views.py [--repeats 3] [--size 224] [--copies 1]

On the camera JPEGs of ``shared/data/exif-samples`` (68 files, 49 px to 4608 px; ``--copies`` puts each in the folder
that many times under other names), ``compute_fingerprints(workers=2)`` timed interleaved round-robin with:

* **fingerprints** alone (the baseline);
* **+ views**: the same pass also making each image's view at ``--size`` (handed over, not embedded);
* **+ views + encoder**: the views embedded as they arrive by ``LayerEncoder(resnet18(weights=None),
  layer="layer2", grid=4, input_size=size)`` on this machine's CPU (random weights: no model hub is reachable
  here; the cost of a forward pass does not depend on the weights);
* **thumbnail path**: fingerprints, then the same encoder on the 32×32 thumbnails enlarged to ``--size`` (what
  the gate did before views).

Printed and written to ``benchmarks/results/encoder_views.md``: seconds and images/s per contender, the views'
own cost, the encoder's cost per image, and the memory the gate keeps per image (the embedding's 4·D bytes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from common_timing import fmt_s, interleaved, load_line, md_table, median
from datasets import exif_sample_files, write_results_section

from vdc_torch import Dataset
from vdc_torch.fingerprints.compute import compute_fingerprints
from vdc_torch.fingerprints.encoder import LayerEncoder, ViewEmbedder, embed_thumbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    files = exif_sample_files()
    root = Path(tempfile.mkdtemp(prefix="vdc-encoder-views-"))
    try:
        for c in range(args.copies):
            for i, f in enumerate(files):
                (root / f"{c:02d}_{i:03d}_{f.name}").symlink_to(f)
        dataset = Dataset(root)
        n = len(dataset)
        size = (args.size, args.size)
        encoder = LayerEncoder(torchvision.models.resnet18(weights=None), layer="layer2", grid=4, input_size=args.size)
        dim = embed_thumbs(encoder, np.zeros((1, 32, 32, 3), np.uint8)).shape[1]
        load_before = load_line()

        def fingerprints() -> int:
            table, _ = compute_fingerprints(dataset, workers=args.workers)
            return len(table)

        def with_views() -> int:
            count = [0]

            def take(indices: list[int], views: np.ndarray) -> None:
                count[0] += len(views)

            compute_fingerprints(dataset, workers=args.workers, view_size=size, on_views=take)
            return count[0]

        def with_encoder() -> int:
            embedder = ViewEmbedder(encoder)
            table, _ = compute_fingerprints(dataset, workers=args.workers, view_size=size, on_views=embedder)
            assert embedder.embeddings(table.sample_index).shape == (len(table), dim)
            return len(table)

        def thumbnails() -> int:
            table, _ = compute_fingerprints(dataset, workers=args.workers)
            return len(embed_thumbs(encoder, table.thumbs))

        contenders = {"fingerprints": fingerprints, "+ views": with_views, "+ views + encoder": with_encoder,
                      "thumbnail path (fingerprints, then encoder on enlarged thumbnails)": thumbnails}
        times = interleaved(contenders, repeats=args.repeats)
        base = median(times["fingerprints"])
        rows = [[name, fmt_s(median(t)), f"{n / median(t):.1f}", f"{median(t) / base:.2f}×"] for name, t in times.items()]
        views_cost = (median(times["+ views"]) - base) / n * 1000
        encoder_cost = (median(times["+ views + encoder"]) - median(times["+ views"])) / n * 1000
        body = (
            f"{n} camera JPEGs (exif-samples × {args.copies}), views of {args.size}×{args.size}, "
            f"`compute_fingerprints(workers={args.workers})`, {args.repeats} interleaved rounds (medians); encoder "
            f"ResNet-18 `layer2` pooled 4×4 (D = {dim}) on the CPU, 2 torch threads; {load_before} → "
            f"{load_line()}.\n\n"
            + md_table(["contender", "seconds", "images/s", "vs fingerprints"], rows)
            + f"\n\nViews cost {views_cost:+.1f} ms an image on top of fingerprinting (the rounds' spread is of "
            f"the same order); the encoder "
            f"{encoder_cost:.1f} ms an image (this CPU; on a GPU the forward pass is batched on the model's device). "
            f"Kept per image: the embedding, {dim} float32 = {dim * 4 / 1024:.0f} KB (views are not kept: at most "
            f"a batch of 64 views, {64 * args.size * args.size * 3 / 2**20:.1f} MB, per worker in flight).\n"
        )
        print(body)
        write_results_section("encoder_views", "Encoder views: cost against fingerprinting alone", body)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
