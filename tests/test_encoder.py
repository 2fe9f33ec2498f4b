"""Model features as a method: LayerEncoder over an intermediate layer, used by the gate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vdc_torch import DatasetGate, MatchConfig
from vdc_torch.fingerprints.encoder import LayerEncoder, embed_thumbs, nearest_neighbours


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def test_layer_encoder_pools_the_named_layer_to_a_grid() -> None:
    encoder = LayerEncoder(tiny_cnn(), layer="5", grid=4)
    out = encoder(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 16 * 4 * 4)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_unknown_layer_names_the_choices() -> None:
    with pytest.raises(ValueError, match="layer='layer9' is not a node of the model; nodes are: .*5"):
        LayerEncoder(tiny_cnn(), layer="layer9")


def test_embeddings_find_a_copy_as_its_own_nearest_neighbour(photos) -> None:
    thumbs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in photos[:12]])
    noisy = np.clip(thumbs.astype(int) + np.random.default_rng(0).integers(-6, 7, thumbs.shape), 0, 255)
    encoder = LayerEncoder(tiny_cnn(), layer="5", grid=4)
    base, queries = embed_thumbs(encoder, thumbs), embed_thumbs(encoder, noisy.astype(np.uint8))
    sims, ids = nearest_neighbours(queries, base, k=1)
    assert (ids[:, 0] == np.arange(12)).mean() >= 0.9
    assert sims[:, 0].min() > 0.9


def test_gate_with_encoder_reports_encoder_matches(photos, tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    for f in photos[:6]:
        shutil.copy(f, ref / f.name)
    for f in photos[6:10]:
        shutil.copy(f, new / f.name)
    # with the pixel cascade switched off by impossible thresholds, only the encoder can match
    config = MatchConfig(near_duplicate_similarity=2.0, use_features=False, use_alignment=False,
                         encoder_similarity=0.999)
    with Image.open(photos[0]) as im:  # a resized copy: not pixel-identical
        im.convert("RGB").resize((im.width * 9 // 10, im.height * 9 // 10)).save(new / "copy.png")
    decision = DatasetGate(reference=ref, encoder=LayerEncoder(tiny_cnn(), layer="5"), config=config).check(new)
    encoder_rows = decision.matches[decision.matches["method"] == "encoder"]
    assert list(encoder_rows["new_path"]) == ["copy.png"]
    assert encoder_rows.iloc[0]["ref_path"] == photos[0].name


def test_query_with_an_encoder_gives_the_encoder_match_of_check(photos, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    for f in photos[:6]:
        shutil.copy(f, ref / f.name)
    config = MatchConfig(near_duplicate_similarity=2.0, use_features=False, use_alignment=False,
                         encoder_similarity=0.999)
    with Image.open(photos[0]) as im:  # a resized PNG copy: no EXIF, not pixel-identical
        im.convert("RGB").resize((im.width * 9 // 10, im.height * 9 // 10)).save(tmp_path / "copy.png")
    copy = tmp_path / "copy.png"
    gate = DatasetGate(reference=ref, encoder=LayerEncoder(tiny_cnn(), layer="5"), config=config, workers=0)
    answers = gate.query([copy, photos[7]])
    assert answers["method"].tolist()[0] == "encoder" and answers["ref_path"].iloc[0] == photos[0].name
    assert answers["kind"].iloc[1] == "new"
