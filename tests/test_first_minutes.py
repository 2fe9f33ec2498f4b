"""What a new user sees in the first minutes of `vdc`: progress with ETA while matching, stage timings under -v,
no import noise, and no manifest from a folder with nothing readable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from vdc_torch.faces.cli import EXIT_ERROR, EXIT_TRAIN, main

REPO = Path(__file__).resolve().parents[1]


def crop_copies(scenario, count: int = 3) -> list[str]:
    """Centre crops (80 % of each side) of reference photos added to the new folder: verified by local features."""
    names = []
    for i, f in enumerate(sorted(scenario.reference.iterdir())[:count]):
        with Image.open(f) as im:
            w, h = im.size
            name = f"crop_{i}.jpg"
            im.convert("RGB").crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(scenario.new / name, quality=90)
        names.append(name)
    return names


def test_matching_shows_a_progress_bar_with_eta_and_quiet_hides_it(scenario, capsys) -> None:
    crop_copies(scenario)
    code = main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == EXIT_TRAIN
    bars = [line for line in re.split(r"[\r\n]", err) if line.startswith("matching: ")]
    assert bars, f"no matching progress bar on stderr: {err[-2000:]!r}"
    assert any(re.search(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d", line) for line in bars), bars  # count, elapsed<ETA
    assert any(line.startswith("new: ") for line in re.split(r"[\r\n]", err))  # the fingerprint bar too

    code = main(["gate", "--reference", str(scenario.reference), "--new", str(scenario.new), "--workers", "0",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_TRAIN
    assert "matching: " not in err and "new: " not in err, err[-2000:]


def test_verbose_logs_each_stage_with_its_time_and_no_faiss_loader_noise(scenario) -> None:
    crop_copies(scenario)
    # a child process: faiss logs how it loaded only on its first import, which an earlier test may have done here
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.run([sys.executable, "-m", "vdc_torch", "gate", "--reference", str(scenario.reference),
                            "--new", str(scenario.new), "--workers", "0", "-v"],
                           capture_output=True, text=True, env=env, timeout=300)
    err = child.stderr
    assert child.returncode == EXIT_TRAIN, err[-2000:]
    stages = re.findall(r"matching, stage ([a-z ]+): (\d+) match\(es\) in \d+\.\d\d s", err)
    names = [name for name, _ in stages]
    for stage in ("bytes", "pixels", "exif", "phash", "local features", "rotations"):
        assert stage in names, (stage, names)
    assert int(dict(stages)["local features"]) >= 3  # the crops were verified there
    assert re.search(r"internal duplicates, stage bytes", err)
    assert re.search(r"fingerprinting new: \d+ samples in \d+\.\d\d s", err)
    assert re.search(r"decision: train in \d+\.\d\d s", err)
    assert "faiss.loader" not in err and "ModuleNotFoundError" not in err, err[-3000:]


def test_index_of_a_folder_with_nothing_readable_exits_1_and_writes_no_manifest(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out" / "reference.vdc"
    code = main(["index", str(folder), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert not out.exists() and not out.parent.exists() or not any(out.parent.iterdir())
    assert "no readable sample" in err and "broken.jpg" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["broken.jpg", "empty.png"]
