"""The `vdc` command line on real photos: decisions, exit codes, files written, one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vdc_torch import ManifestError
from vdc_torch.faces.cli import EXIT_ERROR, EXIT_SKIP, EXIT_TRAIN, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[1]


def all_old_copy(reference: Path, target: Path) -> Path:
    """Every reference photo again, re-encoded (JPEG quality 70), resized to 60 % and renamed."""
    target.mkdir(parents=True)
    for i, f in enumerate(sorted(reference.iterdir())):
        with Image.open(f) as im:
            im = im.convert("RGB")
            im.resize((max(8, int(im.width * 0.6)), max(8, int(im.height * 0.6)))).save(
                target / f"old_{i:03d}.jpg", quality=70
            )
    return target


def start_vdc(*args: str) -> subprocess.Popen[str]:
    """`python -m vdc_torch ARGS` as a real process (started, not awaited: several can run at once)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "vdc_torch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture
def manifest(scenario, tmp_path: Path) -> Path:
    path = tmp_path / "out" / "reference.vdc"
    assert main(["index", str(scenario.reference), "-o", str(path), "--quiet"]) == EXIT_TRAIN
    return path


def test_gate_on_half_new_data_exits_0_with_a_train_decision(scenario, manifest, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["gate", "--reference", str(manifest), "--new", str(scenario.new), "--json", str(out / "d.json"),
                 "--report", str(out / "r.html"), "--csv", str(out / "csv"), "--quiet"])
    assert code == EXIT_TRAIN == 0
    decision = json.loads((out / "d.json").read_text())
    assert decision["action"] == "train"
    assert abs(decision["overlap"] - scenario.true_overlap) <= 0.02
    assert {m["new_path"] for m in decision["matches"]} == scenario.copies
    printed = capsys.readouterr()
    assert printed.out.startswith("TRAIN: ") and printed.out.count("\n") == 1  # one paragraph
    assert printed.err == ""  # --quiet: no progress bars, no notes
    # the HTML gallery holds both pictures of every matched pair
    text = (out / "r.html").read_text(encoding="utf-8")
    figures = re.findall(r'<figure class="pair[^"]*".*?</figure>', text, flags=re.DOTALL)
    assert len(figures) == len(decision["matches"]) == len(scenario.copies)
    for figure in figures:
        assert len(re.findall(r'<img [^>]*src="data:image/jpeg;base64,', figure)) == 2
    assert len(pd.read_csv(out / "csv" / "matches.csv")) == len(decision["matches"])


def test_gate_on_all_old_data_exits_99_with_a_skip_decision(scenario, manifest, tmp_path: Path, capsys) -> None:
    old = all_old_copy(scenario.reference, tmp_path / "old")
    code = main(["gate", "--reference", str(manifest), "--new", str(old), "--json", str(tmp_path / "d.json"), "-q"])
    assert code == EXIT_SKIP == 99
    decision = json.loads((tmp_path / "d.json").read_text())
    assert decision["action"] == "skip"
    assert decision["overlap"] >= 0.95
    assert capsys.readouterr().out.startswith("SKIP: ")


def test_skip_and_train_are_distinct_exit_codes_of_the_real_process(scenario, manifest, tmp_path: Path) -> None:
    old = all_old_copy(scenario.reference, tmp_path / "old")
    train = start_vdc("gate", "--reference", str(manifest), "--new", str(scenario.new), "--quiet")
    skip = start_vdc("gate", "--reference", str(manifest), "--new", str(old), "--quiet", "--json", "-")
    (train_code, train_out, train_err), (skip_code, skip_out, skip_err) = finish(train), finish(skip)
    assert (train_code, skip_code) == (EXIT_TRAIN, EXIT_SKIP)
    assert train_out.startswith("TRAIN: ") and train_err == ""
    assert json.loads(skip_out)["action"] == "skip"  # --json -: stdout is pure JSON ...
    assert skip_err.startswith("SKIP: ")  # ... and the paragraph moves to stderr


def test_the_skip_exit_code_can_be_chosen(scenario, manifest, tmp_path: Path) -> None:
    old = all_old_copy(scenario.reference, tmp_path / "old")
    assert main(["gate", "--reference", str(manifest), "--new", str(old), "-q", "--skip-exit-code", "3"]) == 3
    assert main(["gate", "--reference", str(manifest), "--new", str(old), "-q", "--skip-exit-code", "1"]) == 2


def test_folder_reference_and_save_manifest(scenario, tmp_path: Path, capsys) -> None:
    saved = tmp_path / "saved.vdc"
    code = main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
                 "--save-manifest", str(saved), "-q"])
    assert code == EXIT_TRAIN and saved.is_file()
    assert main(["info", str(saved), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["samples"] == 24
    assert info["reference_root"] == str(scenario.reference.resolve())


@pytest.mark.parametrize(
    ("argv", "expected_in_message"),
    [
        (["gate", "--new", "x"], "the following arguments are required: --reference"),
        (["gate", "--reference", "r", "--new", "x", "--skip-overlap", "1.5"], "1.5 is not between 0 and 1"),
        (["gate", "--reference", "r", "--new", "x", "--min-delta", "-3"], "-3 is negative"),
        (["compare", "a", "b", "--method", "phsh"], "invalid choice: 'phsh'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], expected_in_message: str, capsys) -> None:
    assert main(argv) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("vdc: error: ") and err.count("\n") == 1
    assert expected_in_message in err


def test_runtime_errors_exit_1_with_one_line_and_no_traceback(scenario, tmp_path: Path, capsys) -> None:
    assert main(["gate", "--reference", str(scenario.reference), "--new", str(tmp_path / "nope")]) == EXIT_ERROR == 1
    err = capsys.readouterr().err
    assert err.startswith("vdc: error: ") and err.count("\n") == 1
    assert "nope" in err and "Traceback" not in err
    not_a_manifest = tmp_path / "notes.vdc"
    not_a_manifest.write_text("hello")
    assert main(["gate", "--reference", str(not_a_manifest), "--new", str(scenario.new)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vdc: error: ") and "is not a vdc_torch manifest" in err
    with pytest.raises(ManifestError):  # --debug: the real exception and its traceback
        main(["gate", "--reference", str(not_a_manifest), "--new", str(scenario.new), "--debug"])


def test_help_documents_the_exit_codes(capsys) -> None:
    assert main(["gate", "--help"]) == 0
    text = capsys.readouterr().out
    for code, word in ((0, "train"), (99, "skip"), (1, "error"), (2, "usage")):
        assert re.search(rf"^\s+{code}\s+{word}", text, flags=re.MULTILINE), f"exit code {code} ({word}) not documented"


def test_update_grows_the_manifest_so_the_same_drop_is_then_skipped(scenario, manifest, capsys) -> None:
    assert main(["update", str(manifest), str(scenario.new), "-q"]) == 0
    assert f"added {len(scenario.novel)} novel sample(s)" in capsys.readouterr().out
    assert main(["gate", "--reference", str(manifest), "--new", str(scenario.new), "-q"]) == EXIT_SKIP


@pytest.mark.parametrize("method", ["phash", "ssim", "sift"])
def test_compare_finds_the_copies(scenario, tmp_path: Path, method: str, capsys) -> None:
    out = tmp_path / "pairs.csv"
    assert main(["compare", str(scenario.reference), str(scenario.new), "--method", method, "--csv", str(out),
                 "-q"]) == 0
    pairs = pd.read_csv(out)
    assert list(pairs.columns[:5]) == ["image1", "image2", "method", "value", "similar"]
    found = set(pairs.loc[pairs["similar"], "image2"])
    assert found <= scenario.copies  # no genuinely new photo is called similar to a reference photo
    assert len(found) >= len(scenario.copies) - 2
    assert f"similar pair(s) by {method}" in capsys.readouterr().out


def test_compare_all_pairs_lists_every_pair(scenario, tmp_path: Path) -> None:
    out = tmp_path / "all.csv"
    assert main(["compare", str(scenario.reference), str(scenario.new), "--method", "mse", "--all", "--csv",
                 str(out), "-q", "--limit", "0"]) == 0
    pairs = pd.read_csv(out)
    assert len(pairs) == 24 * (len(scenario.copies) + len(scenario.novel))
    assert set(pairs["tier"]) <= {"duplicate", "similar", "different"}


def test_info_describes_a_manifest_a_folder_and_an_image(scenario, manifest, photos, tmp_path: Path,
                                                         capsys) -> None:
    assert main(["info", str(manifest)]) == 0
    text = capsys.readouterr().out
    assert "kind: manifest" in text and "samples: 24" in text and "format_version: 2" in text
    assert "saved_at: " in text
    labelled = tmp_path / "labelled"
    for name, files in (("cat", photos[:3]), ("dog", photos[3:5])):
        (labelled / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, labelled / name / f.name)
    shutil.copy(photos[5], labelled / photos[5].name)  # loose beside the class folders: not a sample
    (labelled / "notes.txt").write_text("not an image")
    assert main(["info", str(labelled), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 5 and info["classes"] == {"cat": 3, "dog": 2}
    assert info["skipped"] == 2 and sum(info["skipped because"].values()) == 2  # said, not only under -v
    canon = next(p for p in photos if p.name == "Canon_40D.jpg")
    assert main(["info", str(canon), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["width"], info["height"]) == ("JPEG", 100, 68)
    assert info["exif"]["Make"] == "Canon" and info["exif"]["Model"] == "Canon EOS 40D"
    assert info["exif_identity"].startswith("Canon|Canon EOS 40D|2008:05:30 15:56:01")


def test_index_never_writes_into_the_dataset_folder(scenario, tmp_path: Path) -> None:
    before = sorted(p.name for p in scenario.reference.iterdir())
    assert main(["index", str(scenario.reference), "-o", str(tmp_path / "m.vdc"), "-q"]) == 0
    assert sorted(p.name for p in scenario.reference.iterdir()) == before


def test_index_and_update_take_max_problem_share(photos, tmp_path: Path, capsys) -> None:
    # a folder with more than 5 % unreadable files gets no manifest; the error names the option that allows it
    folder, drop = tmp_path / "ref", tmp_path / "drop"
    for target, files in ((folder, photos[:6]), (drop, photos[6:9])):
        target.mkdir()
        for f in files:
            shutil.copy(f, target / f.name)
        (target / "broken.jpg").write_bytes(b"not an image")
    manifest = tmp_path / "m.vdc"
    assert main(["index", str(folder), "-o", str(manifest), "-q"]) == EXIT_ERROR
    assert "--max-problem-share" in capsys.readouterr().err and not manifest.exists()
    assert main(["index", str(folder), "-o", str(manifest), "-q", "--max-problem-share", "0.2"]) == EXIT_TRAIN
    assert main(["update", str(manifest), str(drop), "-q"]) == EXIT_ERROR
    assert main(["update", str(manifest), str(drop), "-q", "--max-problem-share", "0.3"]) == EXIT_TRAIN
    assert "added 3 novel sample(s)" in capsys.readouterr().out


def test_gate_encoder_option_imports_a_module_factory(scenario, tmp_path, monkeypatch) -> None:
    import json
    import sys

    from vdc_torch.faces import cli

    (tmp_path / "my_encoders.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from vdc_torch.fingerprints.encoder import LayerEncoder\n"
        "def tiny():\n"
        "    torch.manual_seed(0)\n"
        "    return LayerEncoder(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), layer='1', grid=2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "d.json"
    code = cli.main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
                     "--encoder", "my_encoders:tiny", "--json", str(out), "-q"])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["action"] == "train"
    assert document["encoder"]["source"] == "calibrated" and document["encoder"]["target_precision"] == 0.99
    code = cli.main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
                     "--encoder", "my_encoders:tiny", "--encoder-similarity", "0.97", "--json", str(out), "-q"])
    assert code == 0 and json.loads(out.read_text())["encoder"]["similarity"] == 0.97
    cli.main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
              "--encoder", "my_encoders:tiny", "--encoder-precision", "0.9", "--json", str(out), "-q"])
    assert json.loads(out.read_text())["encoder"]["target_precision"] == 0.9
    assert cli.main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
                     "--encoder", "my_encoders:absent", "-q"]) == 1
    sys.modules.pop("my_encoders", None)


def test_encoder_threshold_options_need_an_encoder_and_a_valid_value(scenario, capsys) -> None:
    from vdc_torch.faces import cli

    assert cli.main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
                     "--encoder-precision", "0.95", "-q"]) == 1
    assert "--encoder-precision needs --encoder" in capsys.readouterr().err
    code = cli.main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new),
                     "--encoder-similarity", "1.5"])
    assert code == cli.EXIT_USAGE and "1.5 is not a cosine between -1 and 1" in capsys.readouterr().err


# -- first minutes: a fast --help, names that match the registries --------------------------------------------


def test_the_parser_method_names_are_the_registries() -> None:
    from vdc_torch import names
    from vdc_torch.fingerprints import features, hashes, metrics

    assert names.HASH_METHODS == hashes.HASH_METHODS
    assert names.HASH_ALIASES == hashes.HASH_ALIASES
    assert names.METRICS == metrics.METRICS
    assert names.EXTRACTORS == features.EXTRACTORS


@pytest.mark.parametrize("args", [["--help"], ["gate", "--help"], ["gate", "--new", "x"], ["--version"],
                                  ["dedup", "--help"], ["dedup", "x", "--keep", "biggest"]])
def test_help_and_usage_errors_import_no_heavy_library(args: list[str]) -> None:
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['vdc', *{args!r}]\n"
        "try:\n    runpy.run_module('vdc_torch', run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'cv2', 'faiss', 'numpy', 'pandas', 'numba', 'PIL') if m in sys.modules)\n"
        "print('HEAVY', ','.join(heavy), 'CODE', code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    last = done.stdout.strip().splitlines()[-1]
    expected_code = EXIT_USAGE if args in (["gate", "--new", "x"], ["dedup", "x", "--keep", "biggest"]) else 0
    assert last == f"HEAVY  CODE {expected_code}", done.stdout + done.stderr


def test_the_package_keeps_its_public_names_while_importing_lazily() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = (
        "import sys, vdc_torch\n"
        "assert 'torch' not in sys.modules, 'import vdc_torch imported torch'\n"
        "assert set(vdc_torch.__all__) <= set(dir(vdc_torch)), 'dir() lacks public names'\n"
        "from vdc_torch import Dataset, DatasetGate, MatchConfig, VdcError, decide, __version__\n"
        "assert DatasetGate.__module__ == 'vdc_torch.decision.gate' and vdc_torch.decision.gate.DatasetGate is DatasetGate\n"
        "assert all(getattr(vdc_torch, n) is not None for n in vdc_torch.__all__)\n"
        "print('OK', __version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "OK 0.1.0", done.stdout + done.stderr
    import vdc_torch

    with pytest.raises(AttributeError, match="no attribute 'DatasetGat'"):
        vdc_torch.DatasetGat  # noqa: B018


def test_a_reader_that_stops_early_is_no_error(manifest: Path) -> None:
    # `vdc info --json M | head`: the pipe closes before vdc writes; it stops quietly, as a Unix tool does
    process = subprocess.Popen([sys.executable, "-m", "vdc_torch", "info", "--json", str(manifest)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the first byte (imports take far longer)
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141 and err == "", err


def test_the_vdc_script_imports_an_encoder_module_from_the_working_directory(photos, tmp_path: Path) -> None:
    # `vdc gate --encoder myenc:tiny` run where myenc.py lies, as `python -m vdc_torch` finds it
    script = Path(sys.executable).parent / "vdc"
    assert script.exists(), "the vdc console script is installed next to the interpreter (pip install -e .)"
    for name, files in (("ref", photos[:3]), ("new", photos[2:5])):
        (tmp_path / name).mkdir()
        for f in files:
            shutil.copy(f, tmp_path / name / f.name)
    (tmp_path / "myenc.py").write_text(
        "import torch\nfrom torch import nn\nfrom vdc_torch.fingerprints.encoder import LayerEncoder\n"
        "def tiny():\n    torch.manual_seed(0)\n"
        "    return LayerEncoder(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), layer='1', grid=2)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(script), "gate", "--reference", "ref", "--new", "new", "--encoder", "myenc:tiny",
                          "--workers", "0", "-q", "--json", "d.json"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "d.json").read_text())["encoder"]["encoder_input"].startswith("32x32")
    missing = subprocess.run([str(script), "gate", "--reference", "ref", "--new", "new", "--encoder", "nomod:tiny",
                              "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "looked in the working directory and on PYTHONPATH" in missing.stderr
