"""The visdatcompy API on the vdc_torch engine: every class and call, on real images copied into tmp_path."""

from __future__ import annotations

import logging
import runpy
import shutil
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch.utils.data
from conftest import COWS, COWS_DUPLICATES, EXIF_JPG, REPO

import vdc_torch
from vdc_torch.data.dataset import Dataset
from vdc_torch.faces import seed as compat
from vdc_torch.faces.seed import FeatureExtractor, Hash, Image, Metrics, VisDatCompare
from vdc_torch.fingerprints.hashes import HASH_METHODS
from vdc_torch.fingerprints.metrics import METRICS

ANSI = "\x1b["
COPIES = {  # cows_duplicates file -> its original in cows
    "V00001 (copy).png": "V00001.png",
    "V00001.png": "V00001.png",
    "V00003.png": "V00003.png",
    "V00006.png": "V00006.png",
    "V00010.png": "V00010.png",
}

pytestmark = pytest.mark.skipif(not (COWS.is_dir() and EXIF_JPG.is_dir()), reason="shared images not available")


@pytest.fixture
def cows(tmp_path: Path) -> tuple[Path, Path]:
    """Writable copies of the visdatcompy example folders."""
    a, b = tmp_path / "cows", tmp_path / "cows_duplicates"
    shutil.copytree(COWS, a)
    shutil.copytree(COWS_DUPLICATES, b)
    for p in list(a.iterdir()) + list(b.iterdir()):
        p.chmod(0o644)
    return a, b


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()[:64]) for p in sorted(folder.iterdir())}


def pairs_of(mapping: dict) -> set[tuple[str, str]]:
    return {(a.filename, b.filename) for a, values in mapping.items() for b in values}


EXPECTED_PAIRS = {(orig, copy) for copy, orig in COPIES.items()}


# -- exports and output hygiene ---------------------------------------------------------------------------------


def test_the_seed_api_is_importable_from_vdc_torch() -> None:
    for name in ("Image", "Metrics", "Hash", "FeatureExtractor", "VisDatCompare"):
        assert getattr(vdc_torch, name) is getattr(compat, name), name
    assert vdc_torch.Dataset is compat.Dataset is Dataset


def test_readme_examples_run_and_print_no_colour_codes(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/seed_api.py = the original README's examples with visdatcompy -> vdc_torch, on the example data."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its CSV files and heat map
    runpy.run_path(str(REPO / "examples" / "seed_api.py"), run_name="__main__")
    out, err = capfd.readouterr()
    assert ANSI not in out and ANSI not in err
    assert "400 x 200 x 3" in out
    assert "Make: Canon" in out
    assert "cows_duplicates left in memory: 0 images" in out
    assert "V00001 (copy).png" in out


# -- Image -----------------------------------------------------------------------------------------------------


def test_image_info_read_and_attributes(capsys: pytest.CaptureFixture[str]) -> None:
    img = Image(COWS / "V00001.png")
    text = img.info()
    assert "V00001.png" in text and "400 x 200 x 3" in capsys.readouterr().out
    pixels = img.read()
    assert pixels.dtype == np.uint8 and pixels.shape == (200, 400, 3)
    np.testing.assert_array_equal(pixels, cv2.imread(str(COWS / "V00001.png"), cv2.IMREAD_COLOR))
    assert (img.width, img.height, img.channels, img.channel) == (400, 200, 3, 3)
    assert img.path == str(COWS / "V00001.png") and img.filename == "V00001.png"


def test_image_read_applies_exif_orientation() -> None:
    path = EXIF_JPG / "orientation" / "landscape_6.jpg"  # stored sideways, tagged "rotate 90"
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    upright = Image(EXIF_JPG / "orientation" / "landscape_1.jpg").read()
    turned = Image(path).read()
    assert stored.shape == (600, 450, 3) and turned.shape == upright.shape == (450, 600, 3)
    assert np.abs(turned.astype(int) - upright.astype(int)).mean() < 20  # same picture (each file prints its number)


def test_image_identity_and_repr() -> None:
    a, b = Image(COWS / "V00001.png"), Image(str(COWS / "V00001.png"))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Image(COWS_DUPLICATES / "V00001.png")
    assert repr(a) == "Image('cows/V00001.png')"


def test_image_exif() -> None:
    img = Image(EXIF_JPG / "Canon_40D.jpg")
    tags = img.get_exif_data()
    assert tags["Make"] == "Canon" and tags["Model"] == "Canon EOS 40D"
    assert img.exif_data is tags
    assert all(not isinstance(v, bytes) for v in tags.values())
    assert tags["ComponentsConfiguration"] == "<4 bytes>"  # binary values summarised, never raw bytes


def test_image_without_exif_warns_unless_told_not_to() -> None:
    img = Image(COWS / "V00002.png")
    with pytest.warns(UserWarning, match="no EXIF"):
        assert img.get_exif_data() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert img.get_exif_data(warn=False) is None
    assert img.exif_data is None


def test_image_visualize_is_headless(tmp_path: Path) -> None:
    fig = Image(COWS / "V00003.png").visualize(path=tmp_path / "v.png")
    assert type(fig).__name__ == "Figure"
    assert (tmp_path / "v.png").stat().st_size > 1000


def test_unreadable_image_raises_a_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(vdc_torch.ImageDecodeError, match="broken.png"):
        Image(bad).read()


# -- Dataset ---------------------------------------------------------------------------------------------------


def test_dataset_visdatcompy_calls(cows: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, b = cows
    ds = Dataset(b)
    ds.info()
    assert "images: 5" in capsys.readouterr().out
    assert ds.image_count == len(ds) == 5 and ds.filenames == sorted(COPIES)
    assert ds.images[0] == Image(b / "V00001 (copy).png")
    assert ds.get_image("V00003.png") == Image(b / "V00003.png")
    with pytest.raises(KeyError):
        ds.get_image("nope.png")
    before = snapshot(b)
    ds.delete_image(ds.get_image("V00003.png"))
    ds.delete_image("V00006.png")
    assert ds.filenames == ["V00001 (copy).png", "V00001.png", "V00010.png"]
    assert snapshot(b) == before
    image, label = ds[2]
    assert image.size == (400, 200) and label == -1


def test_dataset_exif_frame(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("Canon_40D.jpg", "Nikon_D70.jpg"):
        shutil.copy(EXIF_JPG / name, folder / name)
    shutil.copy(COWS / "V00001.png", folder / "V00001.png")
    frame = Dataset(folder).get_exif_data()
    assert list(frame.columns[:2]) == ["Filename", "FileExtension"]
    assert list(frame["Filename"]) == ["Canon_40D", "Nikon_D70", "V00001"]
    assert list(frame["Make"][:2]) == ["Canon", "NIKON CORPORATION"]
    cow = frame.iloc[2].drop(["Filename", "FileExtension"])
    assert cow.isna().all() and frame.iloc[2]["FileExtension"] == "png"
    assert not frame.map(lambda v: isinstance(v, bytes)).any().any()


# -- Metrics ---------------------------------------------------------------------------------------------------


def test_metrics_labelled_matrices(cows: tuple[Path, Path]) -> None:
    a, b = cows
    m = Metrics(Dataset(a), Dataset(b))
    for name in METRICS:
        frame = m.methods[name]()
        assert frame.shape == (10, 5)
        assert list(frame.index) == [f"V{i:05d}.png" for i in range(1, 11)]
        assert list(frame.columns) == sorted(COPIES)
        found = m.in_range(frame, "duplicate")
        pairs = {(r, c) for r in frame.index for c in frame.columns if found.loc[r, c]}
        assert pairs == EXPECTED_PAIRS, name  # exact copies are duplicates under every metric, ssim and nmi too
    p2p = m.pix2pix()
    assert (p2p.dtypes == bool).all() and int(p2p.to_numpy().sum()) == 5
    assert m.mse().loc["V00001.png", "V00001 (copy).png"] == 0.0
    assert m.ssim().loc["V00002.png", "V00003.png"] < 0.8
    assert set(m.ranges) == set(METRICS) and m.ranges["mse"]["duplicate"] == (0.0, 10.0)


def test_metrics_decode_each_image_once(cows: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cows
    calls: list[str] = []
    real = compat.decode_file
    monkeypatch.setattr(compat, "decode_file", lambda path, **kw: calls.append(str(path)) or real(path, **kw))
    m = Metrics(Dataset(a), Dataset(b))
    for name in METRICS:
        m.methods[name]()
    assert sorted(calls) == sorted(str(p) for p in list(a.iterdir()) + list(b.iterdir()))


def test_metrics_csv_echo_and_heat_map(cows: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, b = cows
    out = tmp_path / "results" / "metrics_results"
    m = Metrics(Dataset(a), Dataset(b), str(out))
    mae = m.mae(echo=True, to_csv=True)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "mae: 10 x 5 matrix" in printed and "5 pairs in the duplicate range" in printed
    back = pd.read_csv(out / "mae.csv", index_col=0)
    assert list(back.index) == list(mae.index) and list(back.columns) == list(mae.columns)
    np.testing.assert_allclose(back.to_numpy(), mae.to_numpy())
    fig = m.show(mae, path=tmp_path / "mae.png")
    assert type(fig).__name__ == "Figure" and (tmp_path / "mae.png").is_file()
    m.show(mae)  # no display here: saved beside the CSV files
    assert (out / "mae_heatmap.png").is_file()


def test_metrics_compare_images_of_different_sizes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("V00001.png", "V00005.png"):
        shutil.copy(COWS / name, a / name)
    original = cv2.imread(str(COWS / "V00001.png"))
    cv2.imwrite(str(b / "half.png"), cv2.resize(original, (200, 100), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(b / "double.jpg"), cv2.resize(original, (800, 400), interpolation=cv2.INTER_CUBIC))
    m = Metrics(Dataset(a), Dataset(b))
    assert not m.pix2pix().to_numpy().any()
    for name in ("mse", "ssim", "psnr", "mae", "nmi", "nrmse"):
        frame = m.methods[name]()
        similar = m.in_range(frame, "similar")
        assert similar.loc["V00001.png"].all() and not similar.loc["V00005.png"].any(), name


# -- Hash ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", HASH_METHODS)
def test_hash_finds_every_copy_including_same_names(cows: tuple[Path, Path], method: str) -> None:
    a, b = cows
    frame = Hash(Dataset(a), Dataset(b)).find_similars(method)
    assert list(frame.columns[:3]) == ["image1", "image2", "distance"]
    exact = frame[frame["distance"] <= 1e-9]
    assert set(zip(exact["image1"], exact["image2"])) == EXPECTED_PAIRS
    if method in ("average", "marr_hildreth", "radial_variance", "block_mean"):
        assert len(frame) == 5  # only genuine pairs, not a "best match" for every image


def test_hash_matrix_csv_and_caching(cows: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cows
    computed: list[str] = []
    real = compat.hash_lib.compute_hash
    monkeypatch.setattr(compat.hash_lib, "compute_hash", lambda m, img: computed.append(m) or real(m, img))
    searched: list[int] = []
    real_index = compat.HammingIndex

    class SpyIndex(real_index):  # type: ignore[misc, valid-type]
        def search(self, queries, radius):
            searched.append(radius)
            return super().search(queries, radius)

    monkeypatch.setattr(compat, "HammingIndex", SpyIndex)
    h = Hash(Dataset(a), Dataset(b), str(tmp_path))
    h.find_similars("p", to_csv=True)
    h.find_similars("phash")
    matrix = h.matrix("p", to_csv=True)
    assert computed.count("p") == 15 and searched == [10, 10]
    assert matrix.shape == (10, 5) and matrix.loc["V00003.png", "V00003.png"] == 0
    assert list(pd.read_csv(tmp_path / "p_matrix.csv", index_col=0).columns) == sorted(COPIES)
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(h.find_similars("p"))
    with pytest.raises(ValueError, match="is not one of"):
        h.find_similars("phsh")


# -- FeatureExtractor ------------------------------------------------------------------------------------------


def test_sift_pairs_each_copy_with_its_original(cows: tuple[Path, Path]) -> None:
    a, b = cows
    fext = FeatureExtractor(Dataset(a), Dataset(b), "sift")
    assert fext.sift_similars == {}
    similars = fext.find_similars()
    assert similars is fext.sift_similars
    assert {(k.filename, v.filename) for k, v in similars.items()} == {
        ("V00001.png", "V00001 (copy).png"), ("V00003.png", "V00003.png"),
        ("V00006.png", "V00006.png"), ("V00010.png", "V00010.png"),
    }
    pairs = fext.find_pairs()
    assert set(zip(pairs["image1"], pairs["image2"])) == EXPECTED_PAIRS


@pytest.mark.parametrize("extractor", ["orb", "fast"])
def test_orb_and_fast_find_the_copies(cows: tuple[Path, Path], extractor: str) -> None:
    a, b = cows
    fext = FeatureExtractor(Dataset(a), Dataset(b), extractor)
    similars = fext.find_similars()
    assert getattr(fext, f"{extractor}_similars") is similars
    assert {("V00001.png", "V00001 (copy).png"), ("V00010.png", "V00010.png")} <= {
        (k.filename, v.filename) for k, v in similars.items()
    }


@pytest.mark.parametrize("extractor", ["sift", "orb"])
def test_candidate_counts_bound_the_matches_of_every_pair(cows: tuple[Path, Path], extractor: str) -> None:
    """The vectorised pre-filter may only drop pairs that verification would reject anyway."""
    a, b = cows
    fext = FeatureExtractor(Dataset(a), Dataset(b), extractor)
    _, _, f1, f2, _ = fext._candidates()
    counts = compat._good_match_counts(f1, f2, 0.75, np.ones(len(f1), dtype=bool))
    for i, fa in enumerate(f1):
        for j, fb in enumerate(f2):
            assert counts[i, j] >= len(compat.local_features.match(fa, fb, 0.75)), (i, j)


def test_features_are_extracted_once_per_image(cows: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cows
    extracted: list[tuple[int, int]] = []
    real = compat.local_features.extract
    monkeypatch.setattr(compat.local_features, "extract",
                        lambda img, *args, **kw: extracted.append(img.shape) or real(img, *args, **kw))
    fext = FeatureExtractor(Dataset(a), Dataset(b), "sift")
    fext.find_similars()
    fext.find_pairs()
    assert len(extracted) == 15 and all(max(s) <= compat.FEATURE_SIDE for s in extracted)


# -- VisDatCompare ---------------------------------------------------------------------------------------------


def test_pix2pix_duplicates_then_clear_empties_the_dataset_not_the_folder(cows: tuple[Path, Path]) -> None:
    a, b = cows
    before = snapshot(b)
    ds2 = Dataset(b)
    compy = VisDatCompare(Dataset(a), ds2)
    dups = compy.duplicates_finder.find_metrics_duplicates("pix2pix")
    assert pairs_of(dups) == EXPECTED_PAIRS
    assert dups[Image(a / "V00001.png")] == [Image(b / "V00001 (copy).png"), Image(b / "V00001.png")]
    assert compy.duplicates_finder.find_metrics_duplicates("pix2pix") == dups  # a finder called twice
    assert pairs_of(compy.duplicates_finder.find_metrics_duplicates(metric="mse")) == EXPECTED_PAIRS
    removed = compy.duplicates_finder.clear_duplicates()
    assert len(removed) == 5 and len(ds2) == 0
    assert snapshot(b) == before
    compy.duplicates_finder.clear_duplicates()  # idempotent


def test_dataset_compared_with_itself_never_matches_an_image_to_itself(cows: tuple[Path, Path]) -> None:
    _, b = cows
    ds = Dataset(b)
    compy = VisDatCompare(ds, ds)
    for metric in ("pix2pix", "ssim", "nmi"):
        dups = compy.duplicates_finder.find_metrics_duplicates(metric)
        assert pairs_of(dups) == {("V00001 (copy).png", "V00001.png")}, metric
    assert pairs_of(compy.similars_finder.find_hash_similars("p")) == {("V00001 (copy).png", "V00001.png")}
    assert pairs_of(compy.similars_finder.find_features_similars("sift")) == {("V00001 (copy).png", "V00001.png")}
    compy.duplicates_finder.clear_duplicates()
    assert ds.filenames == ["V00001 (copy).png", "V00003.png", "V00006.png", "V00010.png"]  # one of each kept
    same_path = VisDatCompare(Dataset(b), Dataset(b))
    assert pairs_of(same_path.duplicates_finder.find_metrics_duplicates()) == {("V00001 (copy).png", "V00001.png")}


def test_similars_finders_and_clear(cows: tuple[Path, Path]) -> None:
    a, b = cows
    before = snapshot(b)
    ds2 = Dataset(b)
    finder = VisDatCompare(Dataset(a), ds2).similars_finder
    assert pairs_of(finder.find_features_similars("sift")) == EXPECTED_PAIRS  # every copy, with its original
    assert pairs_of(finder.find_features_similars(extractor="sift")) == EXPECTED_PAIRS
    assert EXPECTED_PAIRS <= pairs_of(finder.find_hash_similars("average"))
    assert pairs_of(finder.find_hash_similars("block_mean")) == EXPECTED_PAIRS
    assert pairs_of(finder.find_metrics_similars(metric="ssim")) == EXPECTED_PAIRS
    assert all(isinstance(v, list) for v in finder.metrics_similars.values())
    finder.clear_similars()
    assert len(ds2) == 0 and snapshot(b) == before
    assert isinstance(ds2, torch.utils.data.Dataset)


def test_exif_duplicates(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("Canon_40D.jpg", "Nikon_D70.jpg"):
        shutil.copy(EXIF_JPG / name, a / name)
    shutil.copy(EXIF_JPG / "Canon_40D.jpg", b / "renamed.jpg")
    shutil.copy(EXIF_JPG / "Canon_40D_photoshop_import.jpg", b / "edited.jpg")  # re-exported: other EXIF
    shutil.copy(COWS / "V00001.png", b / "V00001.png")  # no EXIF: never a match
    ds2 = Dataset(b)
    compy = VisDatCompare(Dataset(a), ds2)
    dups = compy.duplicates_finder.find_exif_duplicates()
    assert pairs_of(dups) == {("Canon_40D.jpg", "renamed.jpg")}
    assert compy.duplicates_finder.find_exif_duplicates() == dups
    compy.duplicates_finder.clear_duplicates()
    assert ds2.filenames == ["V00001.png", "edited.jpg"]


def test_unreadable_files_are_reported_not_fatal(cows: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    a, b = cows
    (b / "broken.png").write_bytes(b"\x89PNG broken")
    caplog.set_level(logging.WARNING)
    m = Metrics(Dataset(a), Dataset(b))
    mse = m.mse()
    assert mse["broken.png"].isna().all() and "broken.png" in " ".join(m.problems)
    assert not m.pix2pix()["broken.png"].any()
    assert "broken.png" in caplog.text and ANSI not in caplog.text
    assert len(Hash(Dataset(a), Dataset(b)).find_similars("p")) >= 5
    assert len(FeatureExtractor(Dataset(a), Dataset(b)).find_similars()) == 4


def test_library_output_has_no_colour_codes(cows: tuple[Path, Path], capfd: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    a, b = cows
    caplog.set_level(logging.DEBUG)
    d1, d2 = Dataset(a), Dataset(b)
    d1.info()
    Image(a / "V00001.png").info()
    Metrics(d1, d2).nmi(echo=True)
    Hash(d1, d2).find_similars("p", echo=True)
    FeatureExtractor(d1, d2, "orb").find_similars(echo=True)
    compy = VisDatCompare(d1, d2)
    compy.duplicates_finder.find_metrics_duplicates("psnr", echo=True)
    compy.duplicates_finder.clear_duplicates()
    out, err = capfd.readouterr()
    assert out and ANSI not in out and ANSI not in err and ANSI not in caplog.text


@pytest.mark.parametrize("extractor", ["sift", "orb"])
def test_vdc_compare_and_feature_extractor_give_the_same_pairs(extractor: str, tmp_path) -> None:
    """One engine: `vdc compare --method sift` lists exactly the pairs FeatureExtractor(..., "sift") verifies."""
    import pandas as pd

    from vdc_torch import Dataset, FeatureExtractor
    from vdc_torch.faces.cli import main

    cows, duplicates = COWS, COWS_DUPLICATES
    pairs = FeatureExtractor(Dataset(str(cows)), Dataset(str(duplicates)), extractor).find_pairs()
    assert len(pairs) >= 5  # the 5 exact copies at least
    out = tmp_path / "pairs.csv"
    assert main(["compare", str(cows), str(duplicates), "--method", extractor, "--csv", str(out), "--quiet"]) == 0
    listed = pd.read_csv(out)
    assert set(zip(listed["image1"], listed["image2"])) == set(zip(pairs["image1"], pairs["image2"]))
    assert dict(zip(zip(listed["image1"], listed["image2"]), listed["value"])) == dict(
        zip(zip(pairs["image1"], pairs["image2"]), pairs["inliers"]))
