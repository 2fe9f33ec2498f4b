"""Model features as a method: LayerEncoder over an intermediate layer, used by the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_folders
from PIL import Image
from torch import nn

from vdc_torch import DatasetGate, MatchConfig
from vdc_torch.decision.gate import DECISION_SCHEMA_PATH
from vdc_torch.fingerprints.encoder import LayerEncoder, embed_thumbs, nearest_neighbours
from vdc_torch.search.encoder_threshold import choose_threshold, wilson_bounds


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


def test_a_submodule_name_is_the_output_of_its_last_node() -> None:
    import torchvision

    resnet = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 64, 64)
    by_module = LayerEncoder(resnet, layer="layer2", grid=2)(x)  # as the README writes it
    assert torch.equal(by_module, LayerEncoder(resnet, layer="layer2.1.relu_1", grid=2)(x))
    assert by_module.shape == (2, 128 * 4)
    with pytest.raises(ValueError, match="layer='layer' is not a node"):  # a prefix of names is not a module
        LayerEncoder(resnet, layer="layer")


def test_embeddings_find_a_copy_as_its_own_nearest_neighbour(photos) -> None:
    thumbs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in photos[:12]])
    noisy = np.clip(thumbs.astype(int) + np.random.default_rng(0).integers(-6, 7, thumbs.shape), 0, 255)
    encoder = LayerEncoder(tiny_cnn(), layer="5", grid=4)
    base, queries = embed_thumbs(encoder, thumbs), embed_thumbs(encoder, noisy.astype(np.uint8))
    sims, ids = nearest_neighbours(queries, base, k=1)
    assert (ids[:, 0] == np.arange(12)).mean() >= 0.9
    assert sims[:, 0].min() > 0.9


def test_gate_with_encoder_reports_encoder_matches(photos, tmp_path: Path) -> None:
    ref, new = photo_folders(tmp_path, photos[:6], photos[6:10])
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


# -- the encoder stage's threshold, derived from the reference ------------------------------------------------------

class _Centred(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=(1, 2, 3), keepdim=True)


def pixel_encoder() -> LayerEncoder:
    """An encoder whose cosine is the correlation of 8x8 colour thumbnails: it tells copies from other pictures."""
    return LayerEncoder(nn.Sequential(nn.AvgPool2d(4), _Centred(), nn.Flatten()), grid=0)


#: The pixel cascade switched off by impossible thresholds: only the encoder stage can match.
ENCODER_ONLY = dict(near_duplicate_similarity=2.0, use_features=False, use_alignment=False)


@pytest.fixture
def copy_drop(photos, tmp_path: Path) -> tuple[Path, Path]:
    """A reference of 24 camera photos; a drop of 10 other photos and a cropped, shrunk JPEG-60 copy of the first."""
    ref, new = photo_folders(tmp_path, photos[:24], photos[24:34])
    with Image.open(photos[0]) as im:
        w, h = im.size
        im.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).resize((w * 3 // 5, h * 3 // 5)).save(
            new / "copy.jpg", quality=60)
    return ref, new


@pytest.fixture(scope="module")
def cifar_drop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """1,200 CIFAR-10 training JPEGs (reference); 1,200 test JPEGs and 120 edited copies of every 10th reference
    image (new), with the reference file each copy came from."""
    import importlib
    import sys

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        build_cifar = importlib.import_module("same_matches").build_cifar
    finally:
        sys.path.remove(benchmarks)
    ref, new = build_cifar(tmp_path_factory.mktemp("encoder"), 2400)
    sources = sorted(ref.rglob("*.jpg"))[::10]
    return ref, new, {f.name: "/".join(sources[int(f.stem[4:8])].parts[-2:]) for f in new.rglob("copy*")}


def test_the_gate_derives_the_encoder_threshold_from_the_reference(cifar_drop) -> None:
    ref, new, copy_of = cifar_drop
    config = MatchConfig(**ENCODER_ONLY)
    gate = DatasetGate(reference=ref, encoder=pixel_encoder(), config=config, workers=0)
    decision = gate.check(new)
    threshold = json.loads(decision.to_json())["encoder"]
    assert threshold["source"] == "calibrated" and threshold["target_precision"] == 0.99
    assert threshold["sample"] == 1200 and threshold["positives"] == 2400 and threshold["negatives"] > 300
    assert threshold["estimated_precision"] >= 0.99 and 0.2 < threshold["estimated_recall"] < 1.0
    assert 0.5 < threshold["similarity"] < 1.0
    found = decision.matches[decision.matches["method"] == "encoder"]
    assert (found["score"] >= threshold["similarity"]).all()
    right = [copy_of.get(Path(n).name) == "/".join(Path(r).parts[-2:])
             for n, r in zip(found["new_path"], found["ref_path"])]
    # re-encoded and lightly edited copies are found; of the 1,200 CIFAR test images few are matched (the bound
    # allows ~0.6 % of them), nearly all to a training image of their own class (CIFAR's own test/train
    # near-duplicates among them)
    assert threshold["false_match_rate"] < 0.01
    wrong = found[[not ok for ok in right]]
    other_class = [n for n, r in zip(wrong["new_path"], wrong["ref_path"]) if Path(n).parts[-2] != Path(r).parts[-2]]
    assert sum(right) >= 20 and len(wrong) <= 12 and len(other_class) <= 2
    schema = json.loads(DECISION_SCHEMA_PATH.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(decision.to_json()), schema, cls=jsonschema.Draft202012Validator)
    # the same reference loaded from a manifest (thumbnails read on demand) gives the same threshold and answers
    gate.save(ref.parent / "ref.vdc")
    loaded = DatasetGate.load(ref.parent / "ref.vdc", encoder=pixel_encoder(), config=config, workers=0)
    assert json.loads(loaded.check(new).to_json())["encoder"] == threshold
    first = found.iloc[int(np.argmax(right))]
    answers = loaded.query([new / first["new_path"]])
    assert answers["method"].tolist() == ["encoder"] and answers["ref_path"].tolist() == [first["ref_path"]]
    assert loaded.encoder_threshold.to_dict() == threshold


class _Squeezed(nn.Module):
    """The pixel encoder's unit vector next to a constant of the same length: every cosine c becomes (c + 1) / 2."""

    def __init__(self) -> None:
        super().__init__()
        self.pixels = nn.Sequential(nn.AvgPool2d(4), _Centred(), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(self.pixels(x), dim=1)
        return torch.cat([unit, torch.ones(len(unit), 1)], dim=1)


def test_the_threshold_follows_the_encoder_and_the_matches_stay(cifar_drop) -> None:
    ref, new, _ = cifar_drop
    config = MatchConfig(**ENCODER_ONLY)
    plain = DatasetGate(reference=ref, encoder=pixel_encoder(), config=config, workers=0).check(new)
    squeezed = DatasetGate(reference=ref, encoder=LayerEncoder(_Squeezed(), grid=0), config=config,
                           workers=0).check(new)
    cosine, squeezed_cosine = plain.encoder.similarity, squeezed.encoder.similarity
    assert squeezed_cosine == pytest.approx((cosine + 1) / 2, abs=1e-5)  # a fixed cosine would fit one of them
    assert squeezed_cosine - cosine > 0.03

    def pairs(decision) -> list[tuple[str, str]]:
        rows = decision.matches[decision.matches["method"] == "encoder"]
        return sorted(zip(rows["new_path"], rows["ref_path"]))

    assert pairs(plain) == pairs(squeezed) and len(pairs(plain)) >= 20


def test_a_check_derives_the_threshold_again_for_a_new_config_or_encoder(cifar_drop) -> None:
    ref, new, _ = cifar_drop
    gate = DatasetGate(reference=ref, encoder=pixel_encoder(), config=MatchConfig(**ENCODER_ONLY), workers=0)
    derived = gate.check(new).encoder
    assert derived.source == "calibrated"
    gate.config = MatchConfig(**ENCODER_ONLY, encoder_similarity=0.99)
    assert gate.check(new).encoder.similarity == 0.99
    assert gate.query([new / "airplane" / "0013.jpg"]) is not None and gate.encoder_threshold.similarity == 0.99
    gate.config = MatchConfig(**ENCODER_ONLY)
    gate.encoder = LayerEncoder(_Squeezed(), grid=0)
    assert gate.query([new / "airplane" / "0013.jpg"]) is not None
    assert gate.encoder_threshold.similarity == pytest.approx((derived.similarity + 1) / 2, abs=1e-5)


def test_copies_inside_the_reference_are_not_counted_as_look_alikes(cifar_drop, tmp_path: Path) -> None:
    ref, _, _ = cifar_drop
    doubled = tmp_path / "doubled"
    shutil.copytree(ref, doubled)
    for f in sorted(doubled.rglob("*.jpg"))[::6]:  # 200 pictures twice, the second re-encoded
        with Image.open(f) as im:
            im.save(f.with_name("again_" + f.name), quality=85)
    gate = DatasetGate(reference=doubled, encoder=pixel_encoder(), workers=0)
    embeddings = embed_thumbs(gate.encoder, gate.reference_table.thumbs)
    from vdc_torch.search.encoder_threshold import encoder_threshold

    def derive(config: MatchConfig):
        return encoder_threshold(gate.reference_table.thumbs, embeddings, gate._embed, config)

    kept = derive(MatchConfig())  # the re-encoded copies correlate at near-duplicate level: skipped
    assert kept.similarity is not None and kept.false_match_rate < 0.01
    counted = derive(MatchConfig(near_duplicate_similarity=2.0))  # taken for look-alikes, they near 1.0
    assert counted.similarity is None or counted.similarity > kept.similarity


def test_a_small_reference_cannot_show_the_precision_so_the_stage_stays_off(copy_drop, caplog) -> None:
    ref, new = copy_drop  # 24 reference photos: 24 look-alikes cannot show a false-match rate of 1 %
    with caplog.at_level("WARNING"):
        decision = DatasetGate(reference=ref, encoder=pixel_encoder(), config=MatchConfig(**ENCODER_ONLY),
                               workers=0).check(new)
    threshold = decision.to_dict()["encoder"]
    assert threshold["similarity"] is None and 0 < threshold["negatives"] <= 24
    assert "no cosine shows balanced precision 0.99" in threshold["note"] and "too few" in threshold["note"]
    assert "encoder stage off" in caplog.text
    assert not (decision.matches["method"] == "encoder").any()


def test_a_fixed_encoder_similarity_is_used_as_given(photos, copy_drop) -> None:
    ref, new = copy_drop
    found = DatasetGate(reference=ref, encoder=pixel_encoder(), workers=0,
                        config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9)).check(new).matches
    assert found.loc[found["method"] == "encoder", "ref_path"].tolist() == [photos[0].name]  # the copy: ~0.96
    config = MatchConfig(**ENCODER_ONLY, encoder_similarity=0.995)  # above the copy's cosine
    decision = DatasetGate(reference=ref, encoder=pixel_encoder(), config=config, workers=0).check(new)
    assert not (decision.matches["method"] == "encoder").any()
    assert decision.to_dict()["encoder"] == {
        "similarity": 0.995, "source": "fixed", "target_precision": None, "estimated_precision": None,
        "estimated_recall": None, "false_match_rate": None, "positives": 0, "negatives": 0, "sample": 0,
        "note": "", "encoder_input": "32x32 thumbnails"}
    assert DatasetGate(reference=ref, workers=0).check(new).to_dict()["encoder"] is None  # no encoder, no section


def test_an_encoder_that_cannot_tell_copies_from_look_alikes_matches_nothing(copy_drop, caplog) -> None:
    ref, new = copy_drop
    # a constant embedding: every pair has cosine 1, copies and other pictures alike
    encoder = LayerEncoder(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)), grid=0)
    nn.init.zeros_(encoder.body[2].weight)
    nn.init.ones_(encoder.body[2].bias)
    with caplog.at_level("WARNING"):
        decision = DatasetGate(reference=ref, encoder=encoder, config=MatchConfig(**ENCODER_ONLY),
                               workers=0).check(new)
    assert not (decision.matches["method"] == "encoder").any()
    threshold = decision.to_dict()["encoder"]
    assert threshold["similarity"] is None and threshold["estimated_recall"] == 0.0
    assert "no cosine shows balanced precision 0.99" in threshold["note"] and "encoder stage off" in caplog.text


def test_choose_threshold_keeps_the_precision_with_confidence() -> None:
    # 2,000 copies at 0.80..0.99, 2,000 look-alikes at 0.50..0.90: above 0.90 only copies
    positives = np.linspace(0.80, 0.99, 2000)
    negatives = np.linspace(0.50, 0.90, 2000)
    chosen = choose_threshold(positives, negatives, 0.99, sample=2000)
    tp = (positives >= chosen.similarity).mean()
    fp = (negatives >= chosen.similarity).mean()
    assert chosen.similarity > 0.86 and tp / (tp + fp) > 0.99  # the point estimate clears the target ...
    assert chosen.estimated_precision >= 0.99 and chosen.estimated_recall < tp  # ... and so do the bounds
    lower = positives[positives < chosen.similarity].max()  # the next copy down no longer shows 0.99
    recall, _ = wilson_bounds(np.array([(positives >= lower).sum()]), len(positives))
    _, false_rate = wilson_bounds(np.array([(negatives >= lower).sum()]), len(negatives))
    assert recall[0] / (recall[0] + false_rate[0]) < 0.99
    assert choose_threshold(positives, negatives, 0.9, 2000).similarity < chosen.similarity
    # the same shares from 20 look-alikes cannot show 0.99: with so few, a false-match rate of 1 % is not ruled out
    low, high = wilson_bounds(np.array([0, 50]), 100)  # none of 100: up to 2.6 %; half: 42-58 % (95 %, one-sided)
    assert np.allclose(low, [0.0, 0.4188], atol=1e-4) and np.allclose(high, [0.0264, 0.5812], atol=1e-4)
    few = choose_threshold(positives, np.linspace(0.50, 0.90, 20), 0.99, sample=20)
    assert few.similarity is None and few.estimated_recall == 0.0 and "too few to rule out" in few.note


@pytest.mark.parametrize("kwargs, message", [
    (dict(encoder_similarity=1.5), "encoder_similarity=1.5 must be a cosine in"),
    (dict(encoder_precision=1.0), r"encoder_precision=1.0 must lie in \(0, 1\)"),
    (dict(encoder_calibration_samples=1), "encoder_calibration_samples=1 must be >= 2"),
])
def test_encoder_threshold_settings_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatchConfig(**kwargs)
