"""`vdc dedup` and `find_duplicates` on real photos: groups, the kept file, outputs, exit codes, files untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXIF_JPG
from PIL import Image, ImageOps

from vdc_torch import DatasetGate, InsufficientEvidenceError, MatchConfig, Policy, find_duplicates
from vdc_torch.faces.cli import EXIT_DUPLICATES, EXIT_ERROR, EXIT_TRAIN, EXIT_USAGE, main

ORG = EXIF_JPG / "exif-org"

#: The expected duplicate groups of the `drop` folder (each a set of file names).
GROUPS = [
    {"01_nikon_small.png", "nikon-e950.jpg", "zz_nikon_copy.jpg"},  # resized copy, original, byte-identical copy
    {"kodak-dc210 (re-encoded).jpg", "kodak-dc210.jpg"},  # JPEG re-encoded at quality 40: same pixels count
    {"olympus-c960.jpg", "renamed_olympus.jpg"},  # byte-identical under another name
    {"sony-d700.jpg", "sony_flipped.jpg"},  # horizontally flipped
]
UNIQUE = {"canon-ixus.jpg", "fujifilm-mx1700.jpg", "sanyo-vpcg250.jpg"}
KEPT_FIRST = {"01_nikon_small.png", "kodak-dc210 (re-encoded).jpg", "olympus-c960.jpg", "sony-d700.jpg"}
KEPT_LARGEST = {"nikon-e950.jpg", "kodak-dc210.jpg", "olympus-c960.jpg", "sony-d700.jpg"}


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def build_drop(target: Path) -> Path:
    """Distinct real photos plus real copies of four of them (sorted order chosen so both --keep rules differ)."""
    target.mkdir(parents=True)
    for name in ("canon-ixus.jpg", "fujifilm-mx1700.jpg", "kodak-dc210.jpg", "nikon-e950.jpg", "olympus-c960.jpg",
                 "sanyo-vpcg250.jpg", "sony-d700.jpg"):
        shutil.copy(ORG / name, target / name)
    nikon = _rgb(ORG / "nikon-e950.jpg")
    nikon.resize((nikon.width * 2 // 5, nikon.height * 2 // 5), Image.LANCZOS).save(target / "01_nikon_small.png")
    shutil.copy(ORG / "nikon-e950.jpg", target / "zz_nikon_copy.jpg")
    _rgb(ORG / "kodak-dc210.jpg").save(target / "kodak-dc210 (re-encoded).jpg", quality=40)
    shutil.copy(ORG / "olympus-c960.jpg", target / "renamed_olympus.jpg")
    ImageOps.mirror(_rgb(ORG / "sony-d700.jpg")).save(target / "sony_flipped.jpg", quality=70)
    # --keep largest breaks pixel ties by bytes: these copies must be the smaller files for KEPT_LARGEST to hold
    for copy, original in (("sony_flipped.jpg", "sony-d700.jpg"), ("kodak-dc210 (re-encoded).jpg", "kodak-dc210.jpg")):
        assert (target / copy).stat().st_size < (target / original).stat().st_size
    return target


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> BLAKE2b of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.blake2b(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_drop(tmp_path_factory.mktemp("dedup") / "drop")


@pytest.fixture(scope="module")
def found_first(drop: Path):
    return find_duplicates(drop, keep="first", workers=0)


def groups_of(files: pd.DataFrame) -> list[set[str]]:
    return [set(frame["path"]) for _, frame in files.groupby("group", sort=True)]


def kept_of(files: pd.DataFrame) -> set[str]:
    return set(files.loc[files["action"] == "keep", "path"])


def test_find_duplicates_groups_the_copies_and_keeps_the_first_of_each(found_first, drop: Path) -> None:
    found = found_first
    assert groups_of(found.files) == GROUPS
    assert kept_of(found.files) == KEPT_FIRST
    assert set(found.removable) == set().union(*GROUPS) - KEPT_FIRST
    assert found.removable_paths == [os.path.join(str(drop), p) for p in found.removable]
    assert all(os.path.isfile(p) for p in found.removable_paths)
    c = found.counts
    assert (c["images"], c["readable"], c["groups"], c["duplicate_files"], c["removable"], c["unique"]) == (
        12, 12, 4, 9, 5, 7)
    by_path = found.files.set_index("path")
    assert (by_path.loc["renamed_olympus.jpg", "kind"], by_path.loc["renamed_olympus.jpg", "method"]) == (
        "exact", "bytes")
    assert by_path.loc["zz_nikon_copy.jpg", "kind"] == "exact"
    assert by_path.loc["zz_nikon_copy.jpg", "matched_path"] == "nikon-e950.jpg"
    assert (by_path.loc["sony_flipped.jpg", "kind"], by_path.loc["sony_flipped.jpg", "method"]) == (
        "near_duplicate", "mirror")
    assert by_path.loc["kodak-dc210.jpg", "kind"] == "near_duplicate"
    assert by_path.loc["nikon-e950.jpg", "kind"] == "near_duplicate"  # linked to the resized copy
    assert set(by_path["kept_path"]) == KEPT_FIRST
    unique = {found.fingerprints.paths[i] for i, s in enumerate(found.fingerprints.sample_index)
              if int(s) in set(found.unique_indices)}
    assert unique == UNIQUE | KEPT_FIRST
    assert found.similar.empty and c["similar_pairs"] == 0


def test_keep_largest_keeps_most_pixels_then_the_larger_file_then_the_first(drop: Path) -> None:
    found = find_duplicates(drop, keep="largest", workers=0)
    assert groups_of(found.files) == GROUPS  # the same groups whichever file is kept
    assert kept_of(found.files) == KEPT_LARGEST
    # nikon-e950.jpg and zz_nikon_copy.jpg tie on pixels and bytes: the first in sorted order stays
    assert "zz_nikon_copy.jpg" in found.removable and "01_nikon_small.png" in found.removable
    # the re-encoded Kodak has as many pixels as the original but fewer bytes
    assert "kodak-dc210 (re-encoded).jpg" in found.removable
    nikon = found.files[found.files["group"] == 1]
    assert nikon.iloc[0]["path"] == "nikon-e950.jpg" and nikon.iloc[0]["action"] == "keep"
    assert set(nikon["kept_path"]) == {"nikon-e950.jpg"}


def test_keep_first_removes_exactly_what_the_gate_drops_as_internal_duplicates(found_first, drop: Path) -> None:
    decision = DatasetGate(workers=0).check(drop)  # no reference: every readable sample is new
    assert set(decision.internal_duplicates["new_path"]) == set(found_first.removable)
    assert sorted(decision.delta_indices) == found_first.unique_indices


def test_similar_pairs_are_listed_and_only_grouped_with_count_similar(drop: Path) -> None:
    config = MatchConfig(mirror_is_duplicate=False)  # a flipped copy is then only "similar"
    plain = find_duplicates(drop, config=config, workers=0)
    assert {"sony-d700.jpg", "sony_flipped.jpg"} not in groups_of(plain.files)
    pair = plain.similar[plain.similar["path"] == "sony_flipped.jpg"]
    assert list(pair["similar_path"]) == ["sony-d700.jpg"] and list(pair["method"]) == ["mirror"]
    assert plain.counts["removable"] == 4 and plain.counts["similar_pairs"] >= 1
    assert "not counted" in plain.summary()
    counted = find_duplicates(drop, config=config, count_similar=True, workers=0)
    assert {"sony-d700.jpg", "sony_flipped.jpg"} in groups_of(counted.files)
    assert counted.files.set_index("path").loc["sony_flipped.jpg", "kind"] == "similar"
    assert counted.counts["removable"] == 5 and counted.counts["similar"] == 1 and counted.similar.empty
    same = find_duplicates(drop, config=config, policy=Policy(count_similar=True), workers=0)
    assert set(same.removable) == set(counted.removable)


def test_vdc_dedup_writes_json_csv_and_html_exits_3_and_changes_no_file(drop: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(drop)
    out = tmp_path / "out"
    code = main(["dedup", str(drop), "--keep", "largest", "--json", str(out / "d.json"), "--csv", str(out / "csv"),
                 "--report", str(out / "r.html"), "--workers", "0", "--quiet"])
    assert code == EXIT_DUPLICATES == 3
    assert snapshot(drop) == before  # same names, same bytes: nothing written, moved or deleted
    paragraph = capsys.readouterr().out
    assert paragraph.startswith("DUPLICATES: 12 images")
    assert "4 duplicate group(s) hold 9 files" in paragraph and "5 would be removed" in paragraph

    data = json.loads((out / "d.json").read_text())
    assert data["keep"] == "largest" and data["counts"]["removable"] == 5 and data["counts"]["groups"] == 4
    assert [{g["keep"]["path"], *(r["path"] for r in g["remove"])} for g in data["groups"]] == GROUPS
    assert {g["keep"]["path"] for g in data["groups"]} == KEPT_LARGEST
    assert set(data["removable"]) == set().union(*GROUPS) - KEPT_LARGEST
    sony = next(g for g in data["groups"] if g["keep"]["path"] == "sony-d700.jpg")
    assert sony["kind"] == "near_duplicate" and sony["remove"][0]["method"] == "mirror"
    olympus = next(g for g in data["groups"] if g["keep"]["path"] == "olympus-c960.jpg")
    assert olympus["kind"] == "exact" and olympus["remove"][0]["evidence"] == "identical bytes"

    rows = pd.read_csv(out / "csv" / "duplicates.csv")
    assert len(rows) == 9 and set(rows.loc[rows["action"] == "keep", "path"]) == KEPT_LARGEST
    assert {"group", "path", "action", "kind", "method", "score", "kept_path"} <= set(rows.columns)
    assert (out / "csv" / "similar.csv").is_file() and (out / "csv" / "problems.csv").is_file()

    page = (out / "r.html").read_text(encoding="utf-8")
    assert 'data-verdict="duplicates"' in page and page.count('class="pair group"') == 4
    for name in set().union(*GROUPS):
        assert f"{'keep' if name in KEPT_LARGEST else 'remove'}: {name}" in page
    assert "<img " in page and "http" not in page.split("</header>", 1)[1]  # pictures inline, nothing fetched


def test_list_removable_prints_one_path_per_line_and_the_paragraph_to_stderr(drop: Path, capsys) -> None:
    assert main(["dedup", str(drop), "--list-removable", "--workers", "0", "-q"]) == EXIT_DUPLICATES
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert sorted(lines) == sorted(os.path.join(str(drop), n) for n in set().union(*GROUPS) - KEPT_FIRST)
    assert all(os.path.isfile(line) for line in lines)
    assert captured.err.startswith("DUPLICATES:")
    assert main(["dedup", str(drop), "--json", "-", "--csv", str(drop.parent / "dups.csv"), "--workers", "0",
                 "-q"]) == EXIT_DUPLICATES
    captured = capsys.readouterr()
    assert json.loads(captured.out)["counts"]["removable"] == 5 and captured.err.startswith("DUPLICATES:")
    assert len(pd.read_csv(drop.parent / "dups.csv")) == 9  # --csv OUT.csv: one file, the duplicates


def test_a_folder_without_duplicates_exits_0(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    for name in sorted(UNIQUE) + ["kodak-dc210.jpg"]:
        shutil.copy(ORG / name, folder / name)
    assert main(["dedup", str(folder), "--json", str(tmp_path / "d.json"), "--report", str(tmp_path / "r.html"),
                 "--workers", "0", "-q"]) == EXIT_TRAIN == 0
    assert capsys.readouterr().out.startswith("NO DUPLICATES: 4 images")
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["groups"] == [] and data["removable"] == [] and data["counts"]["unique"] == 4
    assert 'data-verdict="clean"' in (tmp_path / "r.html").read_text(encoding="utf-8")
    shutil.copy(ORG / "kodak-dc210.jpg", folder / "kodak copy.jpg")
    assert main(["dedup", str(folder), "--duplicates-exit-code", "0", "--workers", "0", "-q"]) == 0
    assert "1 would be removed" in capsys.readouterr().out


def test_no_readable_image_is_no_answer_exit_1(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "cut.jpg").write_bytes((ORG / "canon-ixus.jpg").read_bytes()[:300])  # a truncated real JPEG
    before = snapshot(folder)
    with pytest.raises(InsufficientEvidenceError, match="no readable sample"):
        find_duplicates(folder, workers=0)
    assert main(["dedup", str(folder), "--workers", "0", "-q"]) == EXIT_ERROR == 1
    err = capsys.readouterr().err
    assert err.startswith("vdc: error: ") and "no readable sample" in err and err.count("\n") == 1
    assert main(["dedup", str(tmp_path / "missing"), "-q"]) == EXIT_ERROR
    assert snapshot(folder) == before


def test_too_many_unreadable_images_is_no_answer_unless_allowed(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    for name in ("canon-ixus.jpg", "sony-d700.jpg"):
        shutil.copy(ORG / name, folder / name)
    shutil.copy(ORG / "sony-d700.jpg", folder / "sony again.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert main(["dedup", str(folder), "--workers", "0", "-q"]) == EXIT_ERROR  # 1 of 4 unreadable > 0.05
    assert "could not be read" in capsys.readouterr().err
    assert main(["dedup", str(folder), "--max-problem-share", "0.5", "--workers", "0", "-q"]) == EXIT_DUPLICATES
    assert "1 unreadable left out" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected_in_message"),
    [
        (["dedup"], "the following arguments are required: DIR"),
        (["dedup", "x", "--keep", "biggest"], "invalid choice: 'biggest'"),
        (["dedup", "x", "--duplicates-exit-code", "1"], "must be 0 or lie in 3..255"),
        (["dedup", "x", "--max-problem-share", "2"], "2.0 is not between 0 and 1"),
        (["dedup", "x", "--json", "-", "--list-removable"], "both write to standard output"),
    ],
)
def test_dedup_usage_errors_exit_2_with_one_line(argv: list[str], expected_in_message: str, capsys) -> None:
    assert main(argv) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("vdc: error: ") and err.count("\n") == 1
    assert expected_in_message in err


def test_dedup_help_documents_its_exit_codes(capsys) -> None:
    assert main(["dedup", "--help"]) == 0
    text = capsys.readouterr().out
    for code, word in ((0, "no duplicates"), (3, "duplicates found"), (1, "error"), (2, "usage")):
        assert f"\n  {code:<3} {word}" in text, f"exit code {code} ({word}) not documented"
    assert "--keep {first,largest}" in text and "--count-similar" in text and "--list-removable" in text


def test_class_folders_a_copy_across_classes_is_a_group_that_mixes_labels(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
    shutil.copy(ORG / "canon-ixus.jpg", root / "cats" / "a.jpg")
    shutil.copy(ORG / "canon-ixus.jpg", root / "dogs" / "b.jpg")
    shutil.copy(ORG / "sony-d700.jpg", root / "dogs" / "c.jpg")
    (root / "README.txt").write_text("notes")
    found = find_duplicates(str(root), workers=0)
    assert found.removable == [os.path.join("dogs", "b.jpg")]
    assert found.removable_paths == [str(root / "dogs" / "b.jpg")]
    assert set(found.files["label"]) == {"cats", "dogs"} and found.counts["label_conflicts"] == 1
    assert found.counts["skipped_files"] == 1 and "mix class labels" in found.summary()
