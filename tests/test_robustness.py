"""Never crash, never lose: every kind of dirty file becomes a clear problem record, and the run completes.

Each bad input is built in ``tmp_path`` from the real photos in ``../shared/data`` (never modified) and checked
twice: alone through ``decode_file`` (the exact reason), and all together through ``DatasetGate.check`` (the run
completes, the readable samples are used, the decision says how many were left out).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import EXIF_JPG, REPO, SHARED
from PIL import Image

from vdc_torch import Dataset, DatasetGate, Policy
from vdc_torch.data.decode import decode_bytes, decode_file, exif_problems, load_image
from vdc_torch.errors import ImageDecodeError

#: These tests are about reporting every bad file, so the gate decides on whatever it could read (by default it
#: refuses to decide when more than 5 % of the samples are unreadable).
REPORT_ALL = Policy(max_problem_share=1.0)

HEIC_DIR = SHARED / "exif-samples" / "heic"
CANON = EXIF_JPG / "Canon_40D.jpg"
BIG_JPEG = EXIF_JPG / "Reconyx_HC500_Hyperfire.jpg"  # 2048 x 1536
NON_UTF8 = b"caf\xe9"  # Latin-1 "café": not valid UTF-8


# -- builders: each writes one bad (or odd) file into a folder and returns its path --------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds no pixel data (a decompression bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """A baseline JPEG header (SOF0 + SOS) declaring ``width`` x ``height`` with no entropy-coded data."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\xff\xd9"


def photo(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small RGB version of a real photo."""
    with Image.open(CANON) as im:
        return im.convert("RGB").resize(size, Image.BILINEAR)


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def write(folder: Path, name: str | bytes, data: bytes) -> Path:
    path = os.path.join(os.fsencode(folder), name) if isinstance(name, bytes) else folder / name
    with open(path, "wb") as handle:
        handle.write(data)
    return Path(os.fsdecode(path))


def exif_block(entries: list[tuple[int, int, int, int]]) -> bytes:
    """A little-endian EXIF APP1 payload with one IFD0 of ``(tag, type, count, value)`` entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHLL", *e) for e in entries) + b"\0\0\0\0"
    return b"Exif\x00\x00II*\x00" + struct.pack("<L", 8) + ifd


def truncated_jpeg(folder: Path) -> Path:
    data = BIG_JPEG.read_bytes()
    return write(folder, "truncated.jpg", data[: len(data) * 6 // 10])


def truncated_png(folder: Path) -> Path:
    data = encoded(photo((300, 200)), "PNG")
    return write(folder, "truncated.png", data[: len(data) // 2])


def random_bytes_png(folder: Path) -> Path:
    return write(folder, "noise.png", np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def broken_symlink(folder: Path) -> Path:
    link = folder / "broken.jpg"
    os.symlink("gone.jpg", link)
    return link


def symlink_loop(folder: Path) -> Path:
    link = folder / "loop.jpg"
    os.symlink("loop.jpg", link)
    return link


def fifo(folder: Path) -> Path:
    path = folder / "pipe.jpg"
    os.mkfifo(path)  # opening it for reading would block forever
    return path


def directory_named_jpg(folder: Path) -> Path:
    path = folder / "folder.jpg"
    path.mkdir()
    return path


def device_named_jpg(folder: Path) -> Path:
    link = folder / "device.jpg"
    os.symlink("/dev/zero", link)  # reading it would never end
    return link


def heic(folder: Path) -> Path:
    return Path(shutil.copy(HEIC_DIR / "IMG_5195.HEIC", folder / "phone.heic"))


#: name -> (builder, reason the ImageDecodeError must give)
UNREADABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero-byte": (lambda d: write(d, "zero.jpg", b""), r"empty file \(0 bytes\)"),
    "truncated JPEG": (truncated_jpeg, r"corrupt or truncated image data"),
    "truncated JPEG header": (lambda d: write(d, "head.jpg", CANON.read_bytes()[:300]), r"corrupt or truncated"),
    "truncated PNG": (truncated_png, r"corrupt or truncated image data"),
    "random bytes .png": (random_bytes_png, r"not a recognised image format"),
    "text file .png": (lambda d: write(d, "notes.png", b"shopping list\nmilk\n"), r"the file holds plain text"),
    "HTML saved as .jpg": (
        lambda d: write(d, "page.jpg", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>"),
        r"the file holds text/markup \(HTML",
    ),
    "HEIC without a plugin": (heic, r"HEIC/HEIF image, but no HEIF decoder is installed \(pip install pillow-heif\)"),
    "PNG bomb header": (lambda d: write(d, "bomb.png", png_header(100_000, 100_000)), r"decompression bomb"),
    "JPEG bomb header": (lambda d: write(d, "bomb.jpg", jpeg_header(65_000, 65_000)), r"decompression bomb"),
    "broken symlink": (broken_symlink, r"broken symbolic link \(points to 'gone.jpg', which does not exist\)"),
    "symlink loop": (symlink_loop, r"symbolic link loop"),
    "FIFO named .jpg": (fifo, r"is a named pipe \(FIFO\), not a regular image file"),
    "directory named .jpg": (directory_named_jpg, r"is a directory, not a regular image file"),
    "device named .jpg": (device_named_jpg, r"is a character device, not a regular image file"),
}


@pytest.fixture(autouse=True)
def _no_heif_plugin(request: pytest.FixtureRequest) -> None:
    if "HEIC" in request.node.name:
        try:
            import pillow_heif  # noqa: F401
        except ImportError:
            return
        pytest.skip("pillow-heif is installed here, so HEIC files decode")


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_file_gives_one_clear_error_naming_it(tmp_path: Path, case: str) -> None:
    build, reason = UNREADABLE[case]
    path = build(tmp_path)
    with pytest.raises(ImageDecodeError, match=reason) as error:
        decode_file(path)
    assert str(error.value).startswith(str(path) + ": ")


@pytest.mark.parametrize("name", sorted(p.name for p in HEIC_DIR.rglob("*") if p.suffix.lower() in (".heic", ".heif")))
def test_every_shared_HEIC_file_names_the_missing_plugin(name: str) -> None:
    path = next(HEIC_DIR.rglob(name))
    with pytest.raises(ImageDecodeError, match="no HEIF decoder is installed"):
        decode_file(path)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "secret.jpg", CANON.read_bytes())
    if os.geteuid() != 0:  # root reads anything, so the real chmod case only works for other users
        path.chmod(0)
        with pytest.raises(ImageDecodeError, match="secret.jpg: permission denied"):
            decode_file(path)
        path.chmod(0o644)

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", refuse)  # the same code path as chmod 000 for a non-root user
    with pytest.raises(ImageDecodeError, match="secret.jpg: permission denied"):
        decode_file(path)


def test_file_larger_than_max_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "large.jpg", CANON.read_bytes())
    with pytest.raises(ImageDecodeError, match=r"larger than max_bytes=1000; refused"):
        decode_file(path, max_bytes=1000)


def test_non_utf8_file_name_decodes_and_errors_name_it_printably(tmp_path: Path) -> None:
    good = write(tmp_path, NON_UTF8 + b".jpg", CANON.read_bytes())
    assert decode_file(good).pixels.shape[2] == 3
    assert decode_file(os.fsencode(good)).byte_digest == decode_file(good).byte_digest  # bytes paths work too
    bad = write(tmp_path, NON_UTF8 + b"-empty.jpg", b"")
    with pytest.raises(ImageDecodeError, match=r"caf\\xe9-empty.jpg: empty file") as error:
        decode_file(bad)
    str(error.value).encode("utf-8")  # printable: no lone surrogates in the message


# -- odd but valid files decode --------------------------------------------------------------------------------------


def sixteen_bit_gray_png() -> bytes:
    gray = np.asarray(photo().convert("L"), dtype=np.uint16) * 257
    return encoded(Image.fromarray(gray), "PNG")


def sixteen_bit_rgb_png() -> bytes:
    bgr = cv2.cvtColor(np.asarray(photo()), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    ok, data = cv2.imencode(".png", bgr)
    assert ok
    return data.tobytes()


def alpha_png() -> bytes:
    array = np.asarray(photo().convert("RGBA")).copy()
    array[:, 48:, 3] = 0  # right half fully transparent
    return encoded(Image.fromarray(array, "RGBA"), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    pages = [photo(), photo().transpose(Image.FLIP_LEFT_RIGHT), Image.new("RGB", (96, 72), (0, 0, 255))]
    return encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:])


#: name -> (bytes, file name, expected format, expected frames)
DECODABLE: dict[str, tuple[Callable[[], bytes], str, str, int]] = {
    "PNG named .jpg": (lambda: encoded(photo(), "PNG"), "really_png.jpg", "PNG", 1),
    "JPEG named .png": (lambda: encoded(photo(), "JPEG", quality=92), "really_jpeg.png", "JPEG", 1),
    "16-bit gray PNG": (sixteen_bit_gray_png, "gray16.png", "PNG", 1),
    "16-bit RGB PNG": (sixteen_bit_rgb_png, "rgb16.png", "PNG", 1),
    "CMYK JPEG": (lambda: encoded(photo().convert("CMYK"), "JPEG", quality=95), "cmyk.jpg", "JPEG", 1),
    "palette PNG": (lambda: encoded(photo().convert("P", palette=Image.ADAPTIVE), "PNG"), "palette.png", "PNG", 1),
    "palette PNG with transparency": (
        lambda: encoded(photo().convert("P", palette=Image.ADAPTIVE), "PNG", transparency=0), "ptrans.png", "PNG", 1,
    ),
    "alpha PNG": (alpha_png, "alpha.png", "PNG", 1),
    "animated GIF": (animated_gif, "animated.gif", "GIF", 3),
    "multi-page TIFF": (multipage_tiff, "pages.tiff", "TIFF", 3),
}


@pytest.mark.parametrize("case", list(DECODABLE))
def test_odd_but_valid_files_decode_to_rgb_uint8(tmp_path: Path, case: str) -> None:
    build, name, fmt, frames = DECODABLE[case]
    decoded = decode_file(write(tmp_path, name, build()))
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3
    assert (decoded.format, decoded.frames) == (fmt, frames)
    assert decoded.warnings == []


def test_high_bit_depth_and_cmyk_look_like_the_8_bit_rgb_original(tmp_path: Path) -> None:
    reference = np.asarray(photo(), dtype=np.float64)
    gray = np.asarray(photo().convert("L"), dtype=np.float64)
    assert np.abs(decode_bytes(sixteen_bit_gray_png()).pixels[..., 0] - gray).max() <= 1
    assert np.abs(decode_bytes(sixteen_bit_rgb_png()).pixels - reference).max() <= 1
    cmyk = decode_bytes(encoded(photo().convert("CMYK"), "JPEG", quality=95)).pixels
    assert np.abs(cmyk - reference).mean() < 8  # lossy, but the same colours (not inverted)


def test_alpha_is_composited_on_white_and_first_frame_is_used() -> None:
    pixels = decode_bytes(alpha_png()).pixels
    assert (pixels[:, 50:] == 255).all()  # fully transparent -> white, not black
    first = decode_bytes(animated_gif()).pixels
    assert first[..., 0].mean() > 150 and first[..., 2].mean() < 80  # the red first frame


def test_malformed_exif_in_shared_samples_keeps_pixels_and_records_a_caveat() -> None:
    files = sorted((EXIF_JPG / "tests").glob("*.jp*g")) + sorted((EXIF_JPG / "invalid").glob("*.jpg"))
    assert len(files) >= 15
    caveats = {}
    for path in files:
        decoded = decode_file(path)  # every one decodes: the pixels are used
        assert decoded.pixels.size > 0
        assert len(decoded.warnings) <= 1  # one caveat per file, however many tags are broken
        if decoded.warnings:
            caveats[path.name] = decoded.warnings[0]
    assert set(caveats) == {"30-type_error.jpg", "45-gps_ifd.jpg"}
    assert "the Exif IFD pointer has field type ASCII and count 154 instead of one LONG" in caveats["30-type_error.jpg"]
    assert "the GPS IFD pointer has field type LONG and count 0" in caveats["45-gps_ifd.jpg"]
    assert all(w.startswith(f"{EXIF_JPG}/tests/") and "pixels used" in w for w in caveats.values())


def test_corrupted_jpg_from_the_samples_still_decodes() -> None:
    decoded = decode_file(EXIF_JPG / "corrupted.jpg")  # libjpeg recovers from its damaged entropy data
    assert decoded.pixels.shape[2] == 3 and decoded.width == 3648


@pytest.mark.parametrize(
    ("entries", "caveat"),
    [
        ([(0x8769, 4, 1, 5000)], r"the Exif IFD offset 5000 lies outside the 26-byte EXIF block"),
        ([(0x0112, 3, 1, 99)], r"orientation 99 is not 1-8, taken as 1"),
        ([(0x010F, 2, 400, 8)], r"the value of tag 0x010f in the IFD0 IFD lies outside the EXIF block"),
        ([(0x8825, 4, 1, 8)], r"the GPS IFD pointer leads back to the IFD0 IFD"),
        ([(0x0110, 99, 1, 0)], r"tag 0x0110 in the IFD0 IFD has unknown field type 99"),
    ],
)
def test_crafted_malformed_exif_is_a_caveat_not_a_failure(entries: list, caveat: str) -> None:
    data = encoded(photo(), "JPEG", exif=exif_block(entries))
    decoded = decode_bytes(data, name="crafted.jpg")
    assert decoded.pixels.shape == (72, 96, 3)
    assert len(decoded.warnings) == 1
    assert decoded.warnings[0].startswith("crafted.jpg: malformed EXIF, broken tags ignored and pixels used: ")
    assert re.search(caveat, decoded.warnings[0]), decoded.warnings[0]


def test_exif_checker_accepts_every_real_camera_file() -> None:
    for path in sorted(EXIF_JPG.glob("*.jpg")) + sorted((EXIF_JPG / "exif-org").glob("*.jpg")):
        with Image.open(path) as im:
            raw = im.info.get("exif")
        assert not raw or exif_problems(raw) == [], path.name


def test_file_changing_while_read_is_a_caveat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "growing.jpg", CANON.read_bytes())
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:  # the size seen at open differs from the bytes read
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                               st.st_size - 100, st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(os, "fstat", stale_fstat)
    decoded = decode_file(path)
    size = path.stat().st_size
    assert decoded.warnings == [f"{path}: file changed while it was read ({size - 100} bytes at open, {size} read)"]


# -- decompression bombs: refused without allocating ----------------------------------------------------------------

_BOMB_SCRIPT = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
from vdc_torch.data.decode import decode_bytes
from vdc_torch.errors import ImageDecodeError
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (384 << 20), resource.RLIM_INFINITY))  # 384 MB more, at most
for name in sys.argv[2:]:
    data = open(name, "rb").read()
    try:
        decode_bytes(data, name=name, max_pixels=int(1e6) if "small" in name else 150_000_000)
        print("decoded", name)
    except ImageDecodeError as exc:
        print("refused", exc)
"""


def test_bomb_headers_are_refused_without_allocating_pixel_memory(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "png_100000x100000.png", png_header(100_000, 100_000)),  # 30 GB of RGB
        write(tmp_path, "jpeg_65000x65000.jpg", jpeg_header(65_000, 65_000)),  # 12.7 GB
        write(tmp_path, "small_limit_png_5000x5000.png", png_header(5000, 5000)),
        write(tmp_path, "small_limit_jpeg_5000x5000.jpg", jpeg_header(5000, 5000)),
    ]
    result = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, str(REPO), *map(str, files)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("refused") for line in lines), lines
    assert all("decompression bomb" in line and "memory" not in line for line in lines), lines
    assert "declares 5000x5000 pixels, more than max_pixels=1000000; refused without decoding" in lines[2]


# -- a whole dirty dataset through the gate --------------------------------------------------------------------------


def build_dirty_dataset(root: Path) -> tuple[Path, Path, dict[str, str], list[str]]:
    """Reference of 6 photos; new = 2 copies + 3 novel photos + one file of every bad kind.

    Returns (reference, new, {bad file name: reason}, [names of caveat files]).
    """
    ref, new = root / "ref", root / "new"
    ref.mkdir()
    new.mkdir()
    photos = sorted(p for p in EXIF_JPG.glob("*.jpg") if p.name not in ("corrupted.jpg",))
    for path in photos[:6]:
        shutil.copy(path, ref / path.name)
    shutil.copy(photos[0], new / "copy_a.jpg")
    write(new, "copy_b_is_png.jpg", encoded(Image.open(photos[1]), "PNG"))  # wrong extension, same pixels
    for path in photos[8:11]:
        shutil.copy(path, new / f"novel_{path.name}")
    write(new, NON_UTF8 + b"_novel.jpg", photos[12].read_bytes())
    shutil.copy(EXIF_JPG / "tests" / "30-type_error.jpg", new / "bad_exif.jpg")
    bad = {}
    for case, (build, reason) in UNREADABLE.items():
        if case == "directory named .jpg":
            continue  # a folder is scanned as a folder, not as a sample
        if case == "HEIC without a plugin" and importable("pillow_heif"):
            continue
        bad[build(new).name] = reason  # loose files only: a sub-folder would make this an ImageFolder
    bad[write(new, NON_UTF8 + b"_empty.jpg", b"").name] = r"empty file"
    return ref, new, bad, ["bad_exif.jpg"]


def importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_gate_completes_on_a_dirty_dataset_and_reports_every_bad_file(tmp_path: Path) -> None:
    ref, new, bad, caveats = build_dirty_dataset(tmp_path)
    decision = DatasetGate(reference=str(ref), workers=0, policy=REPORT_ALL).check(str(new))
    problems = decision.problems
    fatal = problems[problems["fatal"]]
    assert sorted(os.path.basename(p) for p in fatal["path"]) == sorted(bad)
    for path, reason in zip(fatal["path"], fatal["reason"]):
        assert re.search(bad[os.path.basename(path)], reason), (path, reason)
    assert sorted(os.path.basename(p) for p in problems[~problems["fatal"]]["path"]) == caveats
    readable = len(Dataset(new)) - len(bad)
    assert decision.counts["unreadable"] == len(bad) and decision.counts["readable"] == readable
    assert decision.counts["exact"] == 2  # the copy and the re-encoded PNG named .jpg
    assert f"{len(bad)} unreadable sample(s) were left out" in decision.reason
    assert str(decision.action) == "train" and len(decision.delta) == readable - 2


def test_files_truncated_or_deleted_between_scan_and_decode(tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    shutil.copy(CANON, ref / "a.jpg")
    for name in ("keep.jpg", "shrinks.jpg", "vanishes.jpg"):
        shutil.copy(BIG_JPEG, new / name)
    dataset = Dataset(new)  # scanned now ...
    data = (new / "shrinks.jpg").read_bytes()
    (new / "shrinks.jpg").write_bytes(data[: len(data) // 3])  # ... changed before it is decoded
    (new / "vanishes.jpg").unlink()
    decision = DatasetGate(reference=str(ref), workers=0, policy=REPORT_ALL).check(dataset)
    reasons = dict(zip(map(os.path.basename, decision.problems["path"]), decision.problems["reason"]))
    assert "corrupt or truncated image data" in reasons["shrinks.jpg"]
    assert reasons["vanishes.jpg"].endswith("vanishes.jpg: file not found (deleted or moved after the dataset was "
                                            "scanned?)")
    assert decision.counts["readable"] == 1


def test_decision_with_non_utf8_file_names_serialises(tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    shutil.copy(CANON, ref / "a.jpg")
    write(new, NON_UTF8 + b"_copy.jpg", CANON.read_bytes())
    write(new, NON_UTF8 + b"_empty.jpg", b"")
    decision = DatasetGate(reference=str(ref), workers=0, policy=REPORT_ALL).check(str(new))
    assert decision.counts["exact"] == 1 and decision.counts["unreadable"] == 1
    assert "caf" in decision.to_json()


# -- scanning: links, loops, odd names -------------------------------------------------------------------------------


def test_scan_survives_link_loops_broken_links_and_non_utf8_names(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    shutil.copy(CANON, root / "sub" / "a.jpg")
    write(root / "sub", NON_UTF8 + b".jpg", CANON.read_bytes())
    os.symlink("..", root / "sub" / "up")  # a directory loop back to the root
    os.symlink("missing.jpg", root / "sub" / "broken.jpg")
    os.symlink("self.jpg", root / "sub" / "self.jpg")
    dataset = Dataset(root)
    names = [os.path.relpath(p, root) for p, _ in dataset.samples]
    assert names == ["sub/a.jpg", "sub/broken.jpg", f"sub/{os.fsdecode(NON_UTF8)}.jpg", "sub/self.jpg"]
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(CANON, ref / "a.jpg")
    counts = DatasetGate(reference=str(ref), workers=0, policy=REPORT_ALL).check(dataset).counts
    assert (counts["readable"], counts["unreadable"], counts["exact"]) == (2, 2, 2)
    assert counts["internal_duplicates"] == 1


def test_link_to_an_ancestor_does_not_copy_other_classes_into_a_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    shutil.copy(CANON, root / "cats" / "a.jpg")
    shutil.copy(BIG_JPEG, root / "dogs" / "b.jpg")
    os.symlink("..", root / "cats" / "up")  # cats/up/dogs/b.jpg must not become a cat
    dataset = Dataset(root)
    assert [(os.path.relpath(p, root), label) for p, label in dataset.samples] == [("cats/a.jpg", 0), ("dogs/b.jpg", 1)]


def test_symlink_loop_at_the_dataset_root_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    shutil.copy(CANON, tmp_path / "a.jpg")
    symlink_loop(tmp_path)
    dataset = Dataset(tmp_path)
    assert [os.path.basename(p) for p, _ in dataset.samples] == ["a.jpg", "loop.jpg"]


def test_dataset_getitem_raises_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    shutil.copy(CANON, tmp_path / "a.jpg")
    truncated_jpeg(tmp_path)
    write(tmp_path, "notes.png", b"not a picture\n")
    dataset = Dataset(tmp_path)
    assert dataset[0][0].size == Image.open(CANON).size
    for index, name in ((1, "notes.png"), (2, "truncated.jpg")):
        with pytest.raises(ImageDecodeError, match=name):
            dataset[index]


def test_safe_loader_never_blocks_and_matches_the_fingerprinted_pixels(tmp_path: Path) -> None:
    shutil.copy(CANON, tmp_path / "a.jpg")
    fifo(tmp_path)
    write(tmp_path, "z_bomb.png", png_header(100_000, 100_000))
    dataset = Dataset(tmp_path, loader=load_image)
    image, _ = dataset[0]
    assert np.array_equal(np.asarray(image), decode_file(tmp_path / "a.jpg", decode_side=None).pixels)
    with pytest.raises(ImageDecodeError, match=r"pipe.jpg: is a named pipe"):
        dataset[1]
    with pytest.raises(ImageDecodeError, match=r"z_bomb.png: refused as a decompression bomb"):
        dataset[2]


# -- never modify user data ------------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha256) of every file (and link) under ``roots``, by path."""
    state = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                content = ""
                if os.path.isfile(path) and not os.path.islink(path):
                    content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                state[path] = (st.st_size, st.st_mtime_ns, content)
    return state


def test_gate_never_modifies_or_adds_files_under_the_dataset_roots(tmp_path: Path) -> None:
    ref, new, _, _ = build_dirty_dataset(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(EXIF_JPG / "Nikon_D70.jpg", extra / "n.jpg")
    before = snapshot(ref, new, extra)
    gate = DatasetGate(reference=str(ref), workers=0, policy=REPORT_ALL)
    decision = gate.check(str(new))
    gate.update(decision.delta)
    gate.update(str(extra))
    manifest = gate.save(tmp_path / "ckpt" / "reference.vdc")
    loaded = DatasetGate.load(manifest, policy=REPORT_ALL)
    loaded.check(str(new))
    loaded.save(manifest)
    assert snapshot(ref, new, extra) == before
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["reference.vdc", "reference.vdc.lock"]


# -- determinism -----------------------------------------------------------------------------------------------------


def many_small_images(root: Path, n: int = 260) -> tuple[Path, Path]:
    """A reference of 20 small photos and a new set of ``n`` crops, re-encodes and copies of them (>= 256 samples, so
    ``workers=2`` really starts worker processes)."""
    ref, new = root / "ref", root / "new"
    ref.mkdir()
    new.mkdir()
    rng = np.random.default_rng(3)
    sources = [p for p in sorted(EXIF_JPG.glob("*.jpg")) if p.name != "corrupted.jpg"][:20]
    small = []
    for path in sources:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((128, 128))
        im.save(ref / f"{path.stem}.png")
        small.append(im)
    for i in range(n):
        im = small[i % len(small)]
        w, h = im.size
        x, y = int(rng.integers(0, w // 5)), int(rng.integers(0, h // 5))
        crop = im.crop((x, y, x + w * 3 // 4, y + h * 3 // 4)) if i % 3 else im
        crop.save(new / f"{i:04d}.jpg", quality=int(rng.integers(60, 95)))
    return ref, new


def manifest_rows(path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT name, part, data, digest FROM parts ORDER BY name, part").fetchall()


def test_same_inputs_same_decision_and_manifest_with_one_or_two_workers(tmp_path: Path) -> None:
    ref, new = many_small_images(tmp_path)
    results = []
    for run, workers in enumerate((0, 0, 2)):
        gate = DatasetGate(reference=str(ref), workers=workers, policy=REPORT_ALL)
        decision = gate.check(str(new))
        gate.update(decision.delta)
        results.append((decision.to_dict(), manifest_rows(gate.save(tmp_path / f"m{run}.vdc"))))
    assert results[0][0]["counts"]["new"] == 260
    assert results[0] == results[1] == results[2]
