"""The encoder at its own input size: each image's view comes from its one decode, on real photos and CIFAR-10."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_encoder import ENCODER_ONLY, _Centred, cifar_drop, copy_drop  # noqa: F401 - fixtures used here too
from torch import nn

from vdc_torch import DatasetGate, MatchConfig
from vdc_torch.data.decode import decode_file
from vdc_torch.fingerprints.encoder import LayerEncoder, embed_thumbs
from vdc_torch.fingerprints.per_image import fingerprint_decoded


class _Detail(nn.Module):
    """Where the picture has fine detail: the absolute response of a fixed Laplacian, per colour channel."""

    def __init__(self) -> None:
        super().__init__()
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernel", kernel.expand(3, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.kernel, groups=3).abs()


def detail_encoder(size: int) -> LayerEncoder:
    """Fine detail pooled to a 4x4 grid, next to the 8x8 colour layout: it sees what a 32 px thumbnail loses."""
    return LayerEncoder(_Both(size), grid=0, input_size=size)


class _Both(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.detail, self.colour = _Detail(), nn.Sequential(nn.AdaptiveAvgPool2d(8), _Centred())
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detail = torch.nn.functional.adaptive_avg_pool2d(self.detail(x), 4).flatten(1)
        colour = self.colour(x).flatten(1)
        return torch.cat([torch.nn.functional.normalize(detail, dim=1), torch.nn.functional.normalize(colour, dim=1)],
                         dim=1)


def test_the_encoder_is_shown_each_photo_at_its_input_size_from_the_fingerprint_decode(copy_drop) -> None:
    ref, new = copy_drop
    encoder = detail_encoder(160)
    gate = DatasetGate(reference=ref, encoder=encoder, workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    decision = gate.check(new)
    assert decision.encoder.encoder_input == "160x160 views, each from its image's one decode"
    found = decision.matches[decision.matches["method"] == "encoder"]
    assert found["new_path"].tolist() == ["copy.jpg"] and found["ref_path"].tolist() == [sorted(ref.iterdir())[0].name]
    # the stored row is the embedding of the picture at 160 px as decoding the file on its own gives it ...
    table = gate.reference_table
    stored = gate._reference_views(table).embeddings
    first = ref / table.paths[0]
    view = fingerprint_decoded(decode_file(first), view_size=(160, 160)).view
    assert view.shape == (160, 160, 3)
    np.testing.assert_allclose(stored[0], embed_thumbs(encoder, view[None])[0], atol=1e-5)
    # ... and not the 32 px thumbnail enlarged, which has lost the fine detail the encoder measures
    enlarged = torch.nn.functional.interpolate(torch.from_numpy(table.thumbs[:1]).permute(0, 3, 1, 2).float() / 255,
                                               size=(160, 160), mode="bilinear", antialias=True)
    seen = torch.from_numpy(view[None]).permute(0, 3, 1, 2).float() / 255
    assert _Detail()(seen).mean() > 3 * _Detail()(enlarged).mean()
    assert np.abs(stored[0] - embed_thumbs(encoder, table.thumbs[:1])[0]).max() > 0.01


def test_with_a_cache_the_embeddings_are_kept_for_the_same_encoder_and_made_again_for_another(
        copy_drop, tmp_path: Path, monkeypatch) -> None:
    ref, new = copy_drop
    config = MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9)
    cache = tmp_path / "cache.vdc"
    first = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0, cache=cache, config=config)
    found = first.check(new).matches
    assert (tmp_path / "cache.vdc.embeddings").is_file()
    import vdc_torch.decision.views as views

    decoded = []
    compute = views.compute_fingerprints
    monkeypatch.setattr(views, "compute_fingerprints", lambda data, **kw: decoded.append(kw["indices"]) or
                        compute(data, **kw))
    # the same encoder in a new process: fingerprints from the cache, embeddings from <cache>.embeddings, no decode
    again = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0, cache=cache, config=config)
    decision = again.check(new)
    kept = again._reference_views(again.reference_table)
    assert decoded == [] and kept.decoded_again == 0
    np.testing.assert_allclose(kept.embeddings, first._reference_views(first.reference_table).embeddings, atol=1e-6)
    assert decision.encoder.encoder_input == "96x96 views, each from its image's one decode"
    assert decision.matches.equals(found)
    # another encoder (a model trained since) finds nothing kept: every cached row is decoded again for its views
    retrained = detail_encoder(96)
    with torch.no_grad():
        retrained.body.detail.kernel[:, :, 1, 1] = -3.0
    other = DatasetGate(reference=ref, encoder=retrained, workers=0, cache=cache, config=config)
    other.check(new)
    assert other._reference_views(other.reference_table).decoded_again == 24
    assert sorted(len(indices) for indices in decoded) == [11, 24]  # the reference, then the drop


def test_a_loaded_reference_is_read_again_for_its_views_while_its_images_are_there(copy_drop, tmp_path: Path,
                                                                                  caplog) -> None:
    ref, new = copy_drop
    config = MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9)
    viewed = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0, config=config)
    found = viewed.check(new)
    viewed.save(tmp_path / "ref.vdc")
    loaded = DatasetGate.load(tmp_path / "ref.vdc", encoder=detail_encoder(96), workers=0, config=config)
    decision = loaded.check(new)
    assert decision.encoder.encoder_input == "96x96 views, each from its image's one decode"
    views = loaded._reference_views(loaded.reference_table)
    assert views.decoded_again == 24
    np.testing.assert_allclose(views.embeddings, viewed._reference_views(viewed.reference_table).embeddings,
                               atol=1e-6)
    assert decision.matches.equals(found.matches)
    # one image gone, or one changed since the manifest was saved: the stored thumbnails, and the reason, instead
    sorted(ref.iterdir())[5].unlink()
    loaded = DatasetGate.load(tmp_path / "ref.vdc", encoder=detail_encoder(96), workers=0, config=config)
    with caplog.at_level(logging.WARNING, logger="vdc_torch"):
        said = loaded.check(new).encoder.encoder_input
    gone = f"1 of the stored reference's 24 images are not under {str(ref)!r}"
    assert said == f"32x32 thumbnails resized to 96x96 ({gone})"
    assert "shown the stored 32x32 thumbnails" in caplog.text
    viewed = DatasetGate(reference=ref, workers=0)
    viewed.save(tmp_path / "ref23.vdc")
    first = sorted(ref.iterdir())[0]
    with Image.open(first) as im:
        im.convert("RGB").save(first, quality=50)  # the same name, other bytes
    said = DatasetGate.load(tmp_path / "ref23.vdc", encoder=detail_encoder(96), workers=0,
                            config=config).check(new).encoder.encoder_input
    assert said.endswith(f"(1 of the stored reference's images under {str(ref)!r} changed since it was saved)")


def test_the_threshold_is_calibrated_on_copies_of_the_views(cifar_drop) -> None:  # noqa: F811
    ref, new, copy_of = cifar_drop
    encoder = LayerEncoder(nn.Sequential(nn.AvgPool2d(8), _Centred(), nn.Flatten()), grid=0, input_size=64)
    gate = DatasetGate(reference=ref, encoder=encoder, config=MatchConfig(**ENCODER_ONLY), workers=0)
    decision = gate.check(new)
    threshold = decision.encoder
    assert threshold.encoder_input == "64x64 views, each from its image's one decode"
    assert threshold.source == "calibrated" and threshold.sample == 1200 and threshold.positives == 2400
    assert threshold.estimated_precision >= 0.99 and threshold.false_match_rate < 0.01
    copies = gate._reference_views(gate.reference_table).copies
    assert len(copies.of) == 2400 and len(np.unique(copies.of)) == 1200
    found = decision.matches[decision.matches["method"] == "encoder"]
    right = [copy_of.get(Path(n).name) == r for n, r in zip(found["new_path"], found["ref_path"])]
    assert sum(right) >= 20 and sum(not r for r in right) <= 12
    # a second check derives the same threshold: the copies are seeded by sample index
    assert DatasetGate(reference=ref, encoder=encoder, config=MatchConfig(**ENCODER_ONLY),
                       workers=0).check(new).encoder == threshold


def test_a_retrained_encoder_is_shown_the_reference_again(copy_drop) -> None:
    ref, new = copy_drop
    encoder = detail_encoder(96)
    gate = DatasetGate(reference=ref, encoder=encoder, workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    gate.check(new)
    before = gate._reference_views(gate.reference_table)
    assert before.decoded_again == 0  # made while the reference was fingerprinted
    with torch.no_grad():  # the model trains in place: same object, other weights
        encoder.body.detail.kernel[:, :, 1, 1] = -3.0
    decision = gate.check(new)
    after = gate._reference_views(gate.reference_table)
    assert after is not before and after.decoded_again == 24
    assert np.abs(after.embeddings - before.embeddings).max() > 0.01
    views = np.stack([fingerprint_decoded(decode_file(ref / p), view_size=(96, 96)).view
                      for p in gate.reference_table.paths])
    np.testing.assert_allclose(after.embeddings, embed_thumbs(encoder, views), atol=1e-5)
    assert decision.encoder.encoder_input.startswith("96x96 views")


def test_views_kept_for_a_fixed_cosine_get_their_copies_when_the_threshold_is_then_derived(copy_drop) -> None:
    ref, new = copy_drop
    gate = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    gate.check(new)
    assert gate._reference_views(gate.reference_table).copies is None  # a fixed cosine needs none
    gate.config = MatchConfig(**ENCODER_ONLY)
    derived = gate.check(new).encoder
    assert derived.encoder_input == "96x96 views, each from its image's one decode"
    assert derived.source == "calibrated" and derived.sample == 24 and derived.positives == 24 * 8
    assert len(gate._reference_views(gate.reference_table).copies.of) == 24 * 8


def test_an_update_with_nothing_usable_keeps_the_views(copy_drop, tmp_path: Path) -> None:
    ref, new = copy_drop
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a picture")
    gate = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    assert gate.update(broken) == 0 and len(gate.reference_problems) == 1
    assert gate.check(new).encoder.encoder_input.startswith("96x96 views")


def test_a_reference_file_changed_on_disk_is_not_shown_to_a_retrained_encoder(copy_drop, monkeypatch) -> None:
    ref, new = copy_drop
    encoder = detail_encoder(96)
    gate = DatasetGate(reference=ref, encoder=encoder, workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    gate.check(new)
    first = sorted(ref.iterdir())[3]
    with Image.open(first) as im:
        im.convert("RGB").save(first, quality=40)  # the fingerprinted picture is no longer on disk
    with torch.no_grad():
        encoder.body.detail.kernel[:, :, 1, 1] = -3.0
    import vdc_torch.decision.views as views

    read_again = []
    compute = views.compute_fingerprints
    monkeypatch.setattr(views, "compute_fingerprints", lambda data, **kw: read_again.append(kw["indices"]) or
                        compute(data, **kw))
    said = gate.check(new).encoder.encoder_input
    again = gate.check(new).encoder.encoder_input
    assert said == again == ("32x32 thumbnails resized to 96x96 (the reference: 1 of its images changed since they "
                             "were fingerprinted)")
    assert [len(indices) for indices in read_again] == [24]  # read again once for this encoder, not every check


def test_a_query_shows_the_encoder_its_images_as_a_check_does(copy_drop) -> None:
    ref, new = copy_drop
    gate = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    checked = gate.check(new).matches.set_index("new_path")
    answers = gate.query([new / "copy.jpg", new / sorted(p.name for p in new.iterdir())[0]])
    assert answers["method"].tolist()[0] == "encoder" and answers["ref_path"].tolist()[0] == checked.loc[
        "copy.jpg", "ref_path"]
    assert answers["score"].tolist()[0] == pytest.approx(checked.loc["copy.jpg", "score"], abs=1e-4)
    assert gate.encoder_threshold.encoder_input == "96x96 views, each from its image's one decode"


def test_a_reference_grown_by_update_is_read_again_part_by_part_for_a_retrained_encoder(copy_drop, photos,
                                                                                      tmp_path: Path) -> None:
    ref, new = copy_drop
    more = tmp_path / "more"
    more.mkdir()
    for f in photos[34:40]:
        (more / f.name).write_bytes(f.read_bytes())
    encoder = detail_encoder(96)
    gate = DatasetGate(reference=ref, encoder=encoder, workers=0,
                       config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    gate.check(new)
    with torch.no_grad():  # trained on the drop ...
        encoder.body.detail.kernel[:, :, 1, 1] = -3.0
    added = gate.update(more)  # ... which then joins the reference
    assert added == 6
    decision = gate.check(new)
    assert decision.encoder.encoder_input == "96x96 views, each from its image's one decode"
    views = gate._reference_views(gate.reference_table)
    table = gate.reference_table
    assert len(views.embeddings) == len(table) == 24 + added
    roots = [ref] * 24 + [more] * added
    direct = np.stack([fingerprint_decoded(decode_file(root / p), view_size=(96, 96)).view
                       for root, p in zip(roots, table.paths)])
    np.testing.assert_allclose(views.embeddings, embed_thumbs(encoder, direct), atol=1e-5)
    # a stream read once cannot be read again: the reason names its rows
    class Once(torch.utils.data.IterableDataset):
        def __iter__(self):
            for f in photos[40:42]:
                yield Image.open(f).convert("RGB"), 0

    assert gate.update(Once()) == 2
    with torch.no_grad():
        encoder.body.detail.kernel[:, :, 1, 1] = -2.0
    said = gate.check(new).encoder.encoder_input
    assert said.endswith(f"(the reference: its rows {24 + added}-{25 + added} came from a stream, read once)")


def test_kept_embeddings_serve_a_loaded_reference_whose_images_are_gone(copy_drop, tmp_path: Path) -> None:
    ref, new = copy_drop
    config = MatchConfig(**ENCODER_ONLY)  # the threshold derived: the calibration copies are kept too
    cache = tmp_path / "cache.vdc"
    first = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0, cache=cache, config=config)
    derived = first.check(new).encoder
    first.save(tmp_path / "ref.vdc")
    for f in ref.iterdir():
        f.unlink()
    loaded = DatasetGate.load(tmp_path / "ref.vdc", encoder=detail_encoder(96), workers=0, cache=cache, config=config)
    decision = loaded.check(new)
    assert decision.encoder.encoder_input == "96x96 views, each from its image's one decode"
    assert decision.encoder == derived and derived.positives == 24 * 8
    assert loaded._reference_views(loaded.reference_table).decoded_again == 0


def test_the_embeddings_file_keeps_the_latest_encoders_and_ignores_a_damaged_one(copy_drop, tmp_path: Path,
                                                                                 caplog) -> None:
    from vdc_torch.decision.store.embeddings import KEEP_ENCODERS, EmbeddingStore

    store = EmbeddingStore(tmp_path / "e.embeddings")
    thumb = np.zeros((32, 32, 3), np.uint8)
    for number in range(KEEP_ENCODERS + 1):
        store.put(f"encoder-{number}", {b"digest": (np.full(4, number, np.float32), [(np.ones(4, np.float32), thumb)])})
    assert store.get("encoder-0", [b"digest"]) == {}  # the oldest is forgotten
    view, copies = store.get(f"encoder-{KEEP_ENCODERS}", [b"digest"])[b"digest"]
    assert view.tolist() == [KEEP_ENCODERS] * 4 and len(copies) == 1 and copies[0][1].shape == (32, 32, 3)
    # not an embeddings file (here: bytes of a photo): ignored with a warning, never written, the check goes on
    ref, new = copy_drop
    cache = tmp_path / "cache.vdc"
    damaged = tmp_path / "cache.vdc.embeddings"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    before = damaged.read_bytes()
    with caplog.at_level(logging.WARNING, logger="vdc_torch"):
        decision = DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0, cache=cache,
                               config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9)).check(new)
    assert "ignoring the encoder embeddings" in caplog.text and damaged.read_bytes() == before
    assert decision.encoder.encoder_input.startswith("96x96 views")

    # a forged row of the wrong types is left out (not a crash); an empty file (a first write cut short) is used
    import sqlite3

    forged = EmbeddingStore(tmp_path / "f.embeddings")
    forged.put("e", {b"d": (np.ones(4, np.float32), [(np.ones(4, np.float32), thumb)])})
    with sqlite3.connect(forged.path) as db:
        db.execute("UPDATE embeddings SET thumb = 5 WHERE copy = 1")
        db.execute("INSERT INTO embeddings VALUES ('e', 'text', 0, 'text', NULL)")
    view, copies = EmbeddingStore(forged.path).get("e", [b"d", "text"])[b"d"]
    assert view.tolist() == [1.0] * 4 and copies == []
    empty = tmp_path / "empty.embeddings"
    empty.write_bytes(b"")
    assert EmbeddingStore(empty).usable
    dangling = tmp_path / "dangling.embeddings"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    linked = EmbeddingStore(dangling)
    linked.put("e", {b"d": (np.ones(4, np.float32), [])})
    assert not linked.usable and not (tmp_path / "nowhere").exists()


def test_kept_embeddings_are_not_used_once_the_encoder_code_changes(copy_drop, tmp_path: Path) -> None:
    ref, new = copy_drop
    config = MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9)
    cache = tmp_path / "cache.vdc"
    DatasetGate(reference=ref, encoder=detail_encoder(96), workers=0, cache=cache, config=config).check(new)

    class _Edited(_Both):  # the same class name and weights, another forward (what an edit of the code gives)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x.flip(-1))

    _Edited.__qualname__ = _Both.__qualname__
    edited = LayerEncoder(_Edited(96), grid=0, input_size=96)
    from vdc_torch.fingerprints.encoder import encoder_identity

    assert encoder_identity(edited) == encoder_identity(detail_encoder(96))
    gate = DatasetGate(reference=ref, encoder=edited, workers=0, cache=cache, config=config)
    gate.check(new)
    assert gate._reference_views(gate.reference_table).decoded_again == 24  # nothing kept was taken


def test_a_saved_reference_grown_by_update_is_read_again_part_by_part(copy_drop, photos, tmp_path: Path) -> None:
    # the manifest records the folder of each part, so a loaded reference grown by update still gets views
    ref, new = copy_drop
    more = tmp_path / "more"
    more.mkdir()
    for f in photos[34:40]:
        (more / f.name).write_bytes(f.read_bytes())
    gate = DatasetGate(reference=ref, workers=0)
    assert gate.update(more) == 6
    gate.save(tmp_path / "ref.vdc")
    loaded = DatasetGate.load(tmp_path / "ref.vdc", encoder=detail_encoder(96), workers=0,
                              config=MatchConfig(**ENCODER_ONLY, encoder_similarity=0.9))
    decision = loaded.check(new)
    assert decision.encoder.encoder_input == "96x96 views, each from its image's one decode"
    table = loaded.reference_table
    views = loaded._reference_views(table)
    assert views.decoded_again == len(table) == 30
    roots = [ref] * 24 + [more] * 6
    direct = np.stack([fingerprint_decoded(decode_file(root / p), view_size=(96, 96)).view
                       for root, p in zip(roots, table.paths)])
    np.testing.assert_allclose(views.embeddings, embed_thumbs(loaded.encoder, direct), atol=1e-5)
