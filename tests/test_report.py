"""The HTML report, CSV files and plots, on decisions made from real photos."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from vdc_torch import DatasetGate, Policy
from vdc_torch.faces.report import plot_overlap_per_class, plot_score_histograms, write_csv, write_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pair_figures(text: str) -> list[str]:
    return re.findall(r'<figure class="pair[^"]*".*?</figure>', text, flags=re.DOTALL)


def data_images(fragment: str) -> list[str]:
    return re.findall(r'<img [^>]*src="(data:image/[a-z]+;base64,[A-Za-z0-9+/=]+)"', fragment)


@pytest.fixture
def decision(scenario):
    return DatasetGate(reference=scenario.reference).check(scenario.new)


def test_gallery_shows_both_pictures_of_every_matched_pair(decision, tmp_path: Path) -> None:
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    figures = pair_figures(text)
    assert len(decision.matches) == 12
    assert len(figures) == len(decision.matches)
    for figure in figures:
        assert len(re.findall(r"<img ", figure)) == 2
        assert len(data_images(figure)) == 2
    shown = {int(i) for i in re.findall(r'data-new-index="(\d+)" data-ref-index', text)}
    assert shown == set(decision.matches["new_index"].astype(int))
    assert 'data-action="train"' in text
    assert decision.reason.split(":")[0] in text


def test_report_is_self_contained(decision, tmp_path: Path) -> None:
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!data:)', text), "every picture must be an embedded data URI"
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "<style>" in text and "<script" not in text


def test_novel_sample_gallery_is_capped(decision, tmp_path: Path) -> None:
    text = write_html(decision, tmp_path / "report.html", max_novel=5).read_text(encoding="utf-8")
    novel = text.split('<section id="novel">')[1].split("</section>")[0]
    assert len(data_images(novel)) == 5
    assert f"5 of {decision.counts['delta']}" in novel


def test_max_pairs_limits_the_gallery_and_says_so(decision, tmp_path: Path) -> None:
    text = write_html(decision, tmp_path / "report.html", max_pairs=3).read_text(encoding="utf-8")
    assert len(pair_figures(text)) == 3
    assert "3 of 12" in text


def test_file_names_are_escaped(photos, tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    shutil.copy(photos[0], ref / "a.jpg")
    shutil.copy(photos[0], new / '<b>bold & "quoted".jpg')
    shutil.copy(photos[1], new / "<img src=x onerror=alert(1)>.jpg")
    decision = DatasetGate(reference=ref).check(new)
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<b>bold" not in text and "<img src=x" not in text and "onerror=alert(1)>" not in text
    assert "&lt;b&gt;bold &amp; &quot;quoted&quot;.jpg" in text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in text


def test_pictures_fall_back_to_the_stored_fingerprints_when_files_are_gone(scenario, tmp_path: Path) -> None:
    manifest = DatasetGate(reference=scenario.reference).save(tmp_path / "ref.vdc")
    shutil.rmtree(scenario.reference)  # the reference images are gone; only the manifest is left
    decision = DatasetGate.load(manifest).check(scenario.new)
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    figures = pair_figures(text)
    assert len(figures) == len(decision.matches) == 12
    for figure in figures:
        assert len(data_images(figure)) == 2
        assert figure.count("from the stored fingerprint") == 1  # the reference side only


def test_conflicts_and_problem_files_are_listed(photos, tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    for folder in (ref / "cat", ref / "dog", new / "cat", new / "dog"):
        folder.mkdir(parents=True)
    for p in photos[:4]:
        shutil.copy(p, ref / "cat" / p.name)
    shutil.copy(photos[0], new / "dog" / "relabelled.jpg")  # a cat of the reference, now labelled dog
    shutil.copy(photos[1], new / "cat" / "same.jpg")
    (new / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    decision = DatasetGate(reference=ref, policy=Policy(max_problem_share=1.0)).check(new)  # problems reported
    assert len(decision.conflicts) == 1
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    conflicts = text.split('<section id="conflicts">')[1].split("</section>")[0]
    assert "relabelled.jpg" in conflicts and "dog" in conflicts and "cat" in conflicts
    assert text.count('<figure class="pair conflict"') == 1
    problems = text.split('<section id="problems">')[1].split("</section>")[0]
    assert "broken.jpg" in problems and "left out" in problems
    assert problems.count("<tr>") == 1 + len(decision.problems)


def test_write_csv_writes_the_four_tables(decision, tmp_path: Path) -> None:
    written = write_csv(decision, tmp_path / "csv")
    assert set(written) == {"matches", "conflicts", "problems", "internal_duplicates"}
    matches = pd.read_csv(written["matches"])
    assert len(matches) == len(decision.matches)
    assert list(matches.columns) == list(decision.matches.columns)
    assert set(matches["new_path"]) == set(decision.matches["new_path"])
    assert pd.read_csv(written["problems"]).empty


def test_plots_are_png_files(decision, tmp_path: Path) -> None:
    for func, name in ((plot_overlap_per_class, "overlap.png"), (plot_score_histograms, "scores.png")):
        path = func(decision, tmp_path / "plots" / name)
        data = Path(path).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(path) as image:
            assert image.width > 200 and image.height > 100


def test_plots_work_without_matches_and_with_classes(photos, tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    for folder in (ref / "a", new / "a", new / "b"):
        folder.mkdir(parents=True)
    for p in photos[:3]:
        shutil.copy(p, ref / "a" / p.name)
    for p in photos[3:6]:
        shutil.copy(p, new / "a" / p.name)
    for p in photos[6:9]:
        shutil.copy(p, new / "b" / p.name)
    decision = DatasetGate(reference=ref).check(new)
    assert decision.matches.empty
    assert Path(plot_score_histograms(decision, tmp_path / "s.png")).read_bytes().startswith(PNG_SIGNATURE)
    assert Path(plot_overlap_per_class(decision, tmp_path / "o.svg")).read_text().lstrip().startswith("<?xml")
    text = write_html(decision, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No new sample matched the reference" in text


def test_write_html_refuses_bad_arguments(decision, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no 'action'"):
        write_html({"action": "train"}, tmp_path / "r.html")
    with pytest.raises(ValueError, match="max_pairs=-1 must be a non-negative integer"):
        write_html(decision, tmp_path / "r.html", max_pairs=-1)
    assert not (tmp_path / "r.html").exists()


def test_in_memory_datasets_are_pictured_from_their_fingerprints(photos, tmp_path: Path) -> None:
    class Pictures(torch.utils.data.Dataset):
        def __init__(self, files: list[Path]) -> None:
            self.images = [Image.open(f).convert("RGB") for f in files]

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int):
            return self.images[i], 0

    decision = DatasetGate(reference=Pictures(photos[:4])).check(Pictures(photos[2:6]))
    assert len(decision.matches) == 2
    text = write_html(decision, tmp_path / "r.html").read_text(encoding="utf-8")
    figures = pair_figures(text)
    assert len(figures) == 2
    for figure in figures:
        assert len(data_images(figure)) == 2 and figure.count("from the stored fingerprint") == 2


def test_a_report_from_a_manifest_never_embeds_files_its_stored_paths_name(scenario, photos, tmp_path: Path) -> None:
    """A manifest comes from anyone: its reference_root and stored paths must not pull local pictures into a report."""
    manifest = DatasetGate(reference=scenario.reference).save(tmp_path / "ref.vdc")
    private = photos[-1]  # a picture the manifest's author wants a shared report to leak
    for file in scenario.reference.iterdir():
        shutil.copy(private, file)  # every file the stored paths name under reference_root is now that picture
    decision = DatasetGate.load(manifest).check(scenario.new)
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    figures = pair_figures(text)
    assert len(figures) == len(decision.matches) == 12
    for figure in figures:
        assert figure.count("from the stored fingerprint") == 1  # the reference side: never read from a file


def test_a_reference_fingerprinted_here_is_pictured_from_its_files(decision, tmp_path: Path) -> None:
    assert decision.reference_from_files
    text = write_html(decision, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "from the stored fingerprint" not in text
