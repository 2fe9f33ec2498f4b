"""Benchmark data: where it lives, how it is unpacked once, and how results are written.

Every benchmark script imports from here (``from datasets import cifar10_root``) when run as
``python benchmarks/<script>.py``, so this module uses no package-relative imports and
needs only the standard library (Pillow, torch and OpenCV are imported lazily, and only
to report their versions). Results go to the script's detail file ``benchmarks/results/<name>.md``
(:func:`write_results_section`); BENCHMARKS.md is the short dashboard over them, kept by hand.

Two roots, both overridable by environment variables:

- ``VDC_SHARED``: the read-only shared data folder, default ``<repo>/../shared/data``
  (CI lays ``shared/`` beside its clone the same way). Nothing here writes to it.
- ``VDC_DATA``: the cache root for unpacked and downloaded data, default ``/tmp/vdc-data``.

Every preparation step is idempotent: it works in a temporary folder beside its target,
renames it into place only after it succeeded, and then writes a ``.<name>.complete``
marker beside the target. A target without its marker is treated as unfinished and
rebuilt; a finished one is never touched again.

Example::

    from datasets import cifar10_root, wallpaper_files, write_results_section

    root = cifar10_root()  # /tmp/vdc-data/cifar10 with train/<class>/NNNN.jpg, test/...
    files = wallpaper_files()  # 73 full-size wallpapers, previews excluded
    write_results_section("fingerprint_throughput", "Decode throughput", "| n | images/s |\\n|---|---|\\n| 75 | 12.3 |")
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "REPO_ROOT",
    "RESULTS_DIR",
    "RESULTS_FILES",
    "DataError",
    "cifar10_files",
    "cifar10_root",
    "cifar10_subset",
    "data_root",
    "exif_sample_files",
    "flat_dir",
    "machine_line",
    "shared_root",
    "wallpaper_files",
    "wallpaper_groups",
    "wallpapers_root",
    "write_benchmarks_section",
    "write_results_section",
]

#: Suffixes (lower case) that count as image files in every listing here.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: The repository this file belongs to (``benchmarks/`` is one level below it).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: CIFAR-10 class folder names, in the canonical label order.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_CIFAR_ARCHIVE = "cifar10-jpg.tar.xz"
_WALLPAPER_SCRIPT = "get-wallpapers.sh"


class DataError(RuntimeError):
    """Benchmark data is missing or could not be prepared; the message says what and where."""


# --------------------------------------------------------------------------------------------
# roots


def data_root() -> Path:
    """The cache root for prepared data: ``$VDC_DATA`` or ``/tmp/vdc-data`` (created if missing)."""
    root = Path(os.environ.get("VDC_DATA") or "/tmp/vdc-data")
    root.mkdir(parents=True, exist_ok=True)
    return root


def shared_root() -> Path:
    """The read-only shared data folder: ``$VDC_SHARED`` or ``<repo>/../shared/data``."""
    env = os.environ.get("VDC_SHARED")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not root.is_dir():
        how = "$VDC_SHARED" if env else "<repo>/../shared/data (set VDC_SHARED to override)"
        raise DataError(f"shared data folder {root} not found; looked at {how}")
    return root


def _marker(target: Path) -> Path:
    return target.parent / f".{target.name}.complete"


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """An exclusive inter-process lock, so two scripts never prepare the same data at once."""
    lock_dir = data_root() / ".locks"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install(staging: Path, target: Path) -> None:
    """Move a finished staging folder to ``target`` (replacing an unfinished one), then mark it."""
    if target.exists():
        shutil.rmtree(target)
    staging.chmod(0o755)  # mkdtemp makes it 0700
    staging.rename(target)
    _marker(target).write_text(_dt.datetime.now(_dt.timezone.utc).isoformat() + "\n")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# CIFAR-10


def cifar10_root() -> Path:
    """CIFAR-10 as JPEG files, unpacked once from the shared archive into ``$VDC_DATA/cifar10``.

    Layout (checked): ``train/<class>/NNNN.jpg`` with 5,000 files per class (0000-4999) and
    ``test/<class>/NNNN.jpg`` with 1,000 per class (0000-0999), all 32x32 RGB; file names
    repeat across classes, so always keep the class folder in any copy. The folder is an
    ImageFolder root per split: ``torchvision.datasets.ImageFolder(cifar10_root() / "test")``.
    """
    target = data_root() / "cifar10"
    if _marker(target).exists() and target.is_dir():
        return target
    archive = shared_root() / _CIFAR_ARCHIVE
    if not archive.is_file():
        raise DataError(f"CIFAR-10 archive {archive} not found")
    with _lock("cifar10"):
        if _marker(target).exists() and target.is_dir():  # another process finished meanwhile
            return target
        staging = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=target.parent))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            for split in ("train", "test"):
                if not (staging / split).is_dir():
                    raise DataError(f"{archive} has no top-level {split}/ folder")
            _install(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def cifar10_files(split: str = "test") -> list[Path]:
    """All CIFAR-10 JPEGs of one split (``"train"`` or ``"test"``), sorted by class then name."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not one of 'train', 'test'")
    root = cifar10_root() / split
    return sorted(p for p in root.glob("*/*") if _is_image(p))


def cifar10_subset(
    n: int,
    split: str = "test",
    dest: str | os.PathLike[str] | None = None,
    *,
    seed: int | None = 0,
    offset: int = 0,
) -> Path:
    """Copy ``n`` CIFAR-10 images into a flat folder and return it; the source is never touched.

    Files are named ``<class>_<NNNN>.jpg`` (CIFAR names repeat across classes). With
    ``seed=None`` the first ``n`` files after ``offset`` in sorted order are taken (so
    ``offset=0`` of the test split is 1,000 airplanes first); with an int seed a fixed
    random sample is taken, ``offset`` skipping into that shuffled order, so two calls with
    the same seed and disjoint offsets give disjoint folders. ``dest`` defaults to a new
    temporary folder (the caller removes it); an existing ``dest`` must be empty.

    >>> d = cifar10_subset(10)  # doctest: +SKIP
    >>> sorted(p.name for p in d.iterdir())[:2]  # doctest: +SKIP
    ['airplane_0213.jpg', 'automobile_0486.jpg']
    """
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    files = cifar10_files(split)
    if seed is not None:
        files = files[:]
        random.Random(seed).shuffle(files)
    chosen = files[offset : offset + n]
    if len(chosen) < n:
        raise ValueError(f"n={n} with offset={offset} exceeds the {len(files)} {split} images")
    if dest is None:
        out = Path(tempfile.mkdtemp(prefix=f"cifar10-{split}-{n}-"))
    else:
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise ValueError(f"dest={str(out)!r} is not empty")
    for src in sorted(chosen):
        shutil.copyfile(src, out / f"{src.parent.name}_{src.name}")
    return out


def flat_dir(
    files: list[Path],
    dest: str | os.PathLike[str] | None = None,
    *,
    symlink: bool = True,
) -> Path:
    """Put ``files`` side by side in one folder (for tools that take only a flat directory).

    Names become the file's last path parts joined by ``__`` (as many as needed to be
    unique, e.g. ``Kay__contents__images__5120x2880.png``). Symlinks by default, so
    nothing is copied and the sources are never touched; ``symlink=False`` copies.
    ``dest`` defaults to a new temporary folder (the caller removes it); an existing
    ``dest`` must be empty.
    """
    files = [Path(f).resolve() for f in files]
    if dest is None:
        out = Path(tempfile.mkdtemp(prefix="vdc-flat-"))
    else:
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise ValueError(f"dest={str(out)!r} is not empty")
    depth = 1
    while True:
        names = ["__".join(f.parts[-depth:]) for f in files]
        if len(set(names)) == len(names) or depth >= max((len(f.parts) for f in files), default=1):
            break
        depth += 1
    if len(set(names)) != len(names):
        raise ValueError("files contains the same path twice")
    for src, name in zip(files, names):
        if symlink:
            (out / name).symlink_to(src)
        else:
            shutil.copyfile(src, out / name)
    return out


# --------------------------------------------------------------------------------------------
# Debian wallpapers


def wallpapers_root() -> Path:
    """Debian wallpapers, downloaded once by ``shared/data/get-wallpapers.sh`` into ``$VDC_DATA/wallpapers``.

    The script fetches mate-backgrounds, gnome-backgrounds and plasma-workspace-wallpapers
    with ``apt-get download`` and keeps their JPEG/PNG files under ``<package>/<path below
    /usr/share>``. On Debian 12 gnome-backgrounds ships only WebP and SVG, so it contributes
    no files and no folder. Raises :class:`DataError` with the script's output if it fails.
    """
    target = data_root() / "wallpapers"
    if _marker(target).exists() and target.is_dir():
        return target
    script = shared_root() / _WALLPAPER_SCRIPT
    if not script.is_file():
        raise DataError(f"wallpaper script {script} not found")
    with _lock("wallpapers"):
        if _marker(target).exists() and target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=".wallpapers-", dir=target.parent))
        try:
            proc = subprocess.run(
                ["bash", str(script), str(staging)],
                capture_output=True,
                text=True,
                cwd=staging,
                check=False,
            )
            n = sum(1 for p in staging.rglob("*") if _is_image(p))
            if proc.returncode != 0 or n == 0:
                output = (proc.stdout + proc.stderr).strip()[-2000:] or "(no output)"
                raise DataError(
                    f"{script} {staging} exited with {proc.returncode} and left {n} images; "
                    f"it needs apt-get with access to Debian's package registry. Output:\n{output}"
                )
            _install(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _is_preview(path: Path) -> bool:
    # KDE wallpaper packages carry a small preview next to the real images:
    # <Name>/contents/screenshot.{jpg,png}, 400x225 to 440x247 px.
    return path.stem.lower() == "screenshot" and path.parent.name == "contents"


def wallpaper_files(previews: bool = False) -> list[Path]:
    """The wallpaper images, sorted by path; image suffixes only.

    Without ``previews`` (the default) this is the 73 full-size images, 1.0 to 17.9 MP
    (JPEG and PNG; RGB, RGBA, L and LA), which is what decode and hashing throughput should
    be measured on. ``previews=True`` adds the 29 ``contents/screenshot.*`` thumbnails of
    the Plasma wallpapers (about 400x250 px, 0.1 MP): each is a real, independently encoded
    downscale of its wallpaper, useful as a near-duplicate but not as a throughput load.
    They are recognised by their role, not by a pixel threshold: at 400 px or more they
    would pass any "tiny image" cut-off such as 200 px.
    """
    root = wallpapers_root()
    return sorted(p for p in root.rglob("*") if _is_image(p) and (previews or not _is_preview(p)))


def _picture_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).parts
    if rel[0] == "plasma-workspace-wallpapers" and len(rel) > 2:
        return f"plasma/{rel[2]}"  # wallpapers/<Name>/contents/...
    package = rel[0].split("-")[0]  # mate-backgrounds -> mate (both ship a "Flow")
    return f"{package}/" + re.sub(r"_\d+x\d+$", "", path.stem)  # Elephants_3840x2160 -> Elephants


def wallpaper_groups(previews: bool = True, min_size: int = 2) -> dict[str, list[Path]]:
    """Files that show the same picture, by picture name: a ground truth for near-duplicates.

    Plasma wallpapers group by their folder (``plasma/Kay``: ``images/`` and ``images_dark/``
    in 1080x1920 and 5120x2880, plus ``screenshot.png``); MATE files by the stem without a
    ``_WxH`` suffix (``mate/Elephants``: 1920x1080, 3840x2160 and 5640x3172).
    Caveats a benchmark should state: portrait files (1080x1920, 720x1440, 1622x2880) are
    crops of the landscape picture, not rescales; ``images_dark/`` files are recoloured
    variants; the preview shows the light variant. Only groups with ``min_size`` or more
    files are returned.
    """
    root = wallpapers_root()
    groups: dict[str, list[Path]] = {}
    for path in wallpaper_files(previews=previews):
        groups.setdefault(_picture_name(path, root), []).append(path)
    return {k: v for k, v in sorted(groups.items()) if len(v) >= min_size}


# --------------------------------------------------------------------------------------------
# EXIF samples


@functools.lru_cache(maxsize=1)
def _exif_sample_files(root: str) -> tuple[Path, ...]:
    from PIL import Image  # lazy: only this listing needs Pillow

    base = Path(root)
    out = []
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg") or not path.is_file():
            continue
        rel = path.relative_to(base)
        if rel.parts[0] in ("tests", "invalid") or rel.as_posix() == "corrupted.jpg":
            continue
        try:
            with Image.open(path) as im:
                if im.format != "JPEG":
                    continue
        except OSError:
            continue
        out.append(path)
    return tuple(out)


def exif_sample_files() -> list[Path]:
    """The readable camera JPEGs of ``shared/data/exif-samples/jpg``, sorted by path.

    Excludes ``tests/`` (malformed EXIF that crashed other parsers), ``invalid/`` and the
    damaged ``corrupted.jpg``; keeps the top-level camera files and ``exif-org/``, ``gps/``,
    ``hdr/``, ``mobile/``, ``orientation/`` (EXIF orientations 1-8) and ``xmp/``: 68 files,
    49x100 px thumbnails up to 4608x1976. A file Pillow cannot identify is skipped. These
    are the shared originals: copy them before changing anything.
    """
    return list(_exif_sample_files(str(shared_root() / "exif-samples" / "jpg")))


# --------------------------------------------------------------------------------------------
# Results: benchmarks/results/<name>.md (BENCHMARKS.md is the hand-kept dashboard over them)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(module: str, attr: str = "__version__") -> str:
    try:
        mod = sys.modules.get(module) or __import__(module)
        return str(getattr(mod, attr, "?"))
    except (ImportError, OSError):  # a broken binary install raises OSError
        return "not installed"


def machine_line() -> str:
    """One line naming the machine and the versions that benchmark numbers depend on.

    >>> machine_line()  # doctest: +SKIP
    '2 × Intel(R) Xeon(R) ... · Python 3.11.7 · torch 2.14.1+cu130 · OpenCV 5.0.0 · Pillow 13.0.0'
    """
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return " · ".join(
        [
            f"{nproc} × {_cpu_model()}",
            f"Python {platform.python_version()}",
            f"torch {_version('torch')}",
            f"OpenCV {_version('cv2')}",
            f"Pillow {_version('PIL')}",
        ]
    )


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


_HEADING = re.compile(r"^##\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")

#: Detail files of the benchmarks, one per script: ``benchmarks/results/<name>.md``. BENCHMARKS.md is a short
#: dashboard kept by hand (one table per topic, each row linking here); the scripts write only these files.
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

#: Detail file name -> its ``# `` title and what writes it (the preamble of a new file).
RESULTS_FILES = {
    "accuracy_real_photos": ("Accuracy on real photos", "`benchmarks/accuracy.py`"),
    "accuracy_sizes": ("Accuracy by image size", "`benchmarks/accuracy_sizes.py`"),
    "cifar_overlap": ("CIFAR-10: test images already seen in training", "`benchmarks/cifar_overlap.py`"),
    "cifar_end_to_end": ("CIFAR-10 end to end", "`benchmarks/speed_cifar.py`"),
    "encoder_cifar": ("Model encoder on CIFAR-10", "`benchmarks/encoder_cifar.py`"),
    "encoder_threshold": ("Encoder threshold derived from the reference", "`benchmarks/encoder_threshold.py`"),
    "encoder_views": ("The encoder at its own input size", "`benchmarks/encoder_views.py`"),
    "fingerprint_throughput": ("Fingerprinting throughput", "`benchmarks/speed_fingerprint.py`"),
    "fuzzing": ("Fuzzing untrusted inputs", "`benchmarks/fuzz.py`"),
    "quality_flags": ("Quality flags", "`benchmarks/quality_flags.py`"),
    "matching_at_scale": ("Matching speed and memory at scale", "`benchmarks/speed_matching.py`"),
    "train_with_gate": ("Training with the gate", "`examples/train_with_gate.py`"),
    "query_latency": ("Query latency", "`benchmarks/query_latency.py`"),
    "update_cost": ("Saving an updated reference", "`benchmarks/update_cost.py`"),
    "scale_ranks": ("A reference split across ranks", "`benchmarks/scale_ranks.py`"),
    "vs_visdatcompy": ("vdc_torch vs visdatcompy (seed API)", "`benchmarks/vs_visdatcompy.py`"),
}


def _preamble(name: str) -> str:
    title, script = RESULTS_FILES.get(name, (name.replace("_", " ").capitalize(), "a script in `benchmarks/`"))
    return (
        f"# {title}\n\n"
        f"Detail file of [BENCHMARKS.md](../../BENCHMARKS.md). Each `##` section is written by {script}, which "
        "replaces only its own section; the line under each heading gives the date, commit, machine and library "
        "versions of the run.\n"
    )


def _split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split markdown into (preamble, [(title, section text incl. heading), ...]) on ``## `` lines."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    in_fence = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m and not line.startswith("###"):
            sections.append((m.group(1), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(t, "".join(lines)) for t, lines in sections]


def write_results_section(name: str, title: str, markdown_body: str) -> Path:
    """Replace the ``## title`` section of ``benchmarks/results/<name>.md`` (or append it); returns the file.

    ``name`` is the benchmark's detail file (see :data:`RESULTS_FILES`), created with a short preamble if missing.
    The section becomes the heading, an italic header line (UTC date, commit, and :func:`machine_line`), then
    ``markdown_body``. The body may use ``###`` headings but not ``##`` ones (they would start a new section),
    except inside code fences. The file is replaced atomically under a lock, so concurrent scripts do not lose
    each other's sections. BENCHMARKS.md itself is the hand-kept dashboard: update its row when a figure moves.

    >>> write_results_section("fuzzing", "Fuzzing", "| n | crashes |\\n|---|---|\\n| 60000 | 0 |")  # doctest: +SKIP
    """
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"name={name!r}: a detail file name of lower-case letters, digits and underscores")
    return write_benchmarks_section(title, markdown_body, RESULTS_DIR / f"{name}.md", _preamble(name))


def write_benchmarks_section(
    title: str,
    markdown_body: str,
    path: str | os.PathLike[str] | None = None,
    preamble_if_new: str | None = None,
) -> Path:
    """Replace the ``## title`` section of the markdown file ``path`` (or append it), leaving the others as they are.

    Benchmark scripts call :func:`write_results_section`, which picks their detail file. ``path`` is required:
    BENCHMARKS.md is a short dashboard kept by hand, which no script appends to any more.
    """
    if path is None:
        raise ValueError(
            "BENCHMARKS.md is a hand-kept dashboard: write the run to its detail file with "
            "write_results_section(name, title, body) and update the dashboard row by hand"
        )
    title = title.strip()
    if not title or "\n" in title:
        raise ValueError(f"title={title!r} must be one non-empty line")
    _, body_sections = _split_sections("\n" + markdown_body)
    if body_sections:
        raise ValueError(
            f"markdown_body of {title!r} contains a '## {body_sections[0][0]}' heading; "
            "use ### or deeper inside a section"
        )
    if sum(1 for line in markdown_body.splitlines() if _FENCE.match(line)) % 2:
        raise ValueError(f"markdown_body of {title!r} has an unclosed code fence")
    target = Path(path)
    stamp = [_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")]
    commit = _commit()
    if commit:
        stamp.append(f"commit {commit}")
    stamp.append(machine_line())
    section = f"## {title}\n\n_{' · '.join(stamp)}_\n\n{markdown_body.strip()}\n\n"

    with _lock("benchmarks-md"):
        text = target.read_text(encoding="utf-8") if target.exists() else (preamble_if_new or f"# {target.stem}\n")
        preamble, sections = _split_sections(text)
        for i, (existing, _) in enumerate(sections):
            if existing == title:
                sections[i] = (title, section)
                break
        else:
            if sections and not sections[-1][1].endswith("\n\n"):
                sections[-1] = (sections[-1][0], sections[-1][1].rstrip("\n") + "\n\n")
            sections.append((title, section))
        if preamble and not preamble.endswith("\n\n"):
            preamble = preamble.rstrip("\n") + "\n\n"
        out = (preamble + "".join(s for _, s in sections)).rstrip("\n") + "\n"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".md", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(out)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


if __name__ == "__main__":  # python benchmarks/datasets.py: prepare everything and summarise
    print(machine_line())
    root = cifar10_root()
    print(f"cifar10: {root} train={len(cifar10_files('train'))} test={len(cifar10_files('test'))}")
    print(
        f"wallpapers: {wallpapers_root()} full-size={len(wallpaper_files())} "
        f"with previews={len(wallpaper_files(previews=True))} groups={len(wallpaper_groups())}"
    )
    print(f"exif samples: {len(exif_sample_files())}")
