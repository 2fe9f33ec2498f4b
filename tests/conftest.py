"""Shared fixtures: real photos from ../shared/data, copied or transformed into tmp_path (never modified)."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDC_SHARED", REPO.parent / "shared" / "data"))
EXIF_JPG = SHARED / "exif-samples" / "jpg"
COWS = SHARED / "visdatcompy-examples" / "cows"
COWS_DUPLICATES = SHARED / "visdatcompy-examples" / "cows_duplicates"


def photo_files() -> list[Path]:
    """Readable real camera photos (distinct scenes) from exif-samples."""
    files = sorted(EXIF_JPG.glob("*.jpg")) + sorted((EXIF_JPG / "gps").glob("*.jpg"))
    files += sorted((EXIF_JPG / "exif-org").glob("*.jpg"))
    return [f for f in files if f.name != "corrupted.jpg"]  # corrupted.jpg is damaged on purpose


def photo_folders(root: Path, reference: list[Path], new: list[Path]) -> tuple[Path, Path]:
    """``root/ref`` and ``root/new`` holding copies of these photos under their own names."""
    folders = root / "ref", root / "new"
    for folder, files in zip(folders, (reference, new)):
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
    return folders


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    files = photo_files()
    if len(files) < 30:
        pytest.fail(f"expected the exif-samples photos under {EXIF_JPG}, found {len(files)}")
    return files


@dataclass
class Scenario:
    reference: Path
    new: Path
    copies: set[str]  # new file names that are copies of reference photos
    novel: set[str]  # new file names that are genuinely new

    @property
    def true_overlap(self) -> float:
        return len(self.copies) / (len(self.copies) + len(self.novel))


def build_scenario(photos: list[Path], root: Path, seed: int = 0, n_ref: int = 24, n_copies: int = 12) -> Scenario:
    """Reference = n_ref photos; new = re-encoded, resized, renamed copies of n_copies of them + the other photos."""
    rng = random.Random(seed)
    files = list(photos)
    rng.shuffle(files)
    ref_files, novel_files = files[:n_ref], files[n_ref:]
    (root / "ref").mkdir(parents=True)
    (root / "new").mkdir(parents=True)
    for f in ref_files:
        shutil.copy(f, root / "ref" / f.name)
    copies, novel = set(), set()
    for i, f in enumerate(ref_files[:n_copies]):
        with Image.open(f) as im:
            im = im.convert("RGB")
            scale = rng.uniform(0.3, 0.8)
            im = im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))), Image.BICUBIC)
            name = f"renamed_{i:03d}." + rng.choice(["jpg", "png", "webp"])
            im.save(root / "new" / name, quality=rng.randint(40, 90)) if not name.endswith("png") else im.save(
                root / "new" / name
            )
        copies.add(name)
    for f in novel_files:
        name = f"fresh_{f.name}"
        shutil.copy(f, root / "new" / name)
        novel.add(name)
    return Scenario(root / "ref", root / "new", copies, novel)


@pytest.fixture
def scenario(photos: list[Path], tmp_path: Path) -> Scenario:
    return build_scenario(photos, tmp_path)


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fingerprinting decodes (in this process), in order."""
    import vdc_torch.fingerprints.compute as fingerprint_module

    calls: list[str] = []
    original = fingerprint_module.decode_file

    def counting(path, **kwargs):
        calls.append(str(path))
        return original(path, **kwargs)

    monkeypatch.setattr(fingerprint_module, "decode_file", counting)
    return calls

