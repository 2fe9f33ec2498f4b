"""Build the accuracy suite: a reference set of real photos and a "new" set of transformed copies and distractors.

Used by ``benchmarks/accuracy.py``; ``python benchmarks/accuracy_suite.py --seed 1 --dest /tmp/x`` only builds a
suite and prints its make-up (to look at it by hand).

Source pool (deduplicated, so that the ground truth is right by construction)
---------------------------------------------------------------------------
* Debian wallpapers (``datasets.wallpaper_files()``, previews excluded), grouped by picture with
  ``datasets.wallpaper_groups`` (the group name drops the ``_WxH`` suffix and the Plasma folder layout):

  - several resolutions of one picture (MATE ``Elephants`` in 3 sizes, Plasma ``images/<W>x<H>``): one file is
    kept, the largest landscape one;
  - portrait files (1080x1920, 720x1440, 1622x2880) are *crops* of the landscape picture: dropped (they would be
    undeclared near-duplicates);
  - ``images_dark/`` files are recoloured variants of their picture, and MATE ``Ubuntu-Mate-{Cold,Dark,Radioactive,
    Warm}-no-logo`` are four colourings of one picture: these are *colour families* (see below);
  - images that are blank after compositing their alpha channel on white (the engine composites on white too:
    ``Arc-Colors-Transparent``, ``Flow``, ``Gulp``, ``Silk``, ``Spring``, ``Waves``, ``MATE-Stripes-Light``; gray
    standard deviation < 5) are dropped.
* ``shared/data/exif-samples/jpg`` camera photos with a longer side of at least 400 px (``datasets.exif_sample_files``):
  ``orientation/`` holds one waterfall photo 16 times (8 EXIF orientations, each with a different painted digit, and
  portrait crops): only ``landscape_1.jpg`` is kept; ``hdr/`` holds two HDR / non-HDR pairs of one scene each: two
  more families.

Every source is decoded once by ``vdc_torch.data.decode.decode_file`` (EXIF orientation applied, alpha composited on
white) and downscaled once to at most ``MAX_SIDE`` = 2000 px on its longer side (INTER_AREA) to keep the suite
fast; the downscaled sources are cached under ``benchmarks/out/pool-cache``.

Suite
-----
* Families (HDR pairs, colour variants) always have one member (chosen by the seed) in the reference and the
  other members in the new set as *distractors* (ground truth: no match). The remaining pictures are shuffled:
  the first ``n_ref - families`` join the reference, the rest become plain distractors (``gps/`` street views of
  one town land on both sides, so some distractors look alike without being the same photo).
* Reference files keep the source's format: JPEG (quality 95) or PNG. Reference JPEGs carry EXIF: the camera
  identity of the original (make, model, DateTimeOriginal, sub-seconds, unique id, body serial; orientation reset
  to 1 because the pixels are already upright) or, for wallpapers, a synthetic one with a unique capture time.
* Each transform class is applied to ``per_class`` reference pictures drawn by the seed (parameters drawn by the
  seed too, see ``TRANSFORMS``). Copies carry no EXIF (except ``exif_strip``, which is the reference's own JPEG
  bytes minus its APP1 segment), so the perceptual stages of a matcher are what is measured.
* New files are named ``n0000.<ext>`` in a random order and reference files ``r000.<ext>``: names carry no hint.

``truth.json`` lists every new file: ``{"new": name, "ref": name | null, "class": transform or distractor type,
"params": {...}, "source": pool id, "expected_kind": "exact" | "near_duplicate" | null}``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import REPO_ROOT, exif_sample_files, shared_root, wallpaper_groups

MAX_SIDE = 2000
MIN_EXIF_SIDE = 400
MIN_STD = 5.0
CACHE_DIR = REPO_ROOT / "benchmarks" / "out" / "pool-cache"

#: Transform classes in table order. Copy classes first; distractor types after.
COPY_CLASSES = (
    "resize",
    "jpeg",
    "format",
    "exif_strip",
    "crop_center",
    "crop_offcenter",
    "aspect",
    "brightness_contrast",
    "gamma",
    "blur",
    "noise",
    "rotate",
    "flip",
    "grayscale",
    "overlay",
    "border",
    "combo",
    "flip_crop",
    "rotate_canvas",
    "quarter_turn",
    "desaturate",
    "corner_crop",
    "perspective",
    "rotate_crop",
    "screenshot",
    "blur_pad",
)
DISTRACTOR_CLASSES = ("distractor_hdr", "distractor_colour_variant", "distractor_gps_view", "distractor_other")


# ------------------------------------------------------------------------------------------------ source pool


@dataclass
class Source:
    """One picture of the pool."""

    id: str  # e.g. "wall:plasma/Kay" or "exif:gps/DSCN0010.jpg"
    path: Path
    fmt: str  # "jpeg" or "png": format of the reference file written from it
    family: str | None = None  # members of one family are different pictures that look alike
    exif: dict[str, Any] | None = None  # identity tags of the original, if any
    kind: str = "other"  # "hdr", "colour_variant", "gps_view", "other"
    pixels: np.ndarray | None = field(default=None, repr=False)  # RGB uint8, <= MAX_SIDE


def _exif_identity_tags(path: Path) -> dict[str, Any] | None:
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769) if 0x8769 in exif else {}
            tags = {
                "make": exif.get(0x010F),
                "model": exif.get(0x0110),
                "datetime": exif.get(0x0132),
                "datetime_original": sub.get(0x9003),
                "subsec_original": sub.get(0x9291),
                "unique_id": sub.get(0xA420),
                "body_serial": sub.get(0xA431),
            }
    except (OSError, ValueError, TypeError, KeyError, SyntaxError):  # unreadable or malformed EXIF: no identity
        return None
    clean = {}
    for k, v in tags.items():
        if v is None:
            continue
        if isinstance(v, bytes):
            v = v.decode("latin-1", "replace")
        v = str(v).replace("\x00", "").strip()
        if v:
            clean[k] = v
    return clean if clean.get("datetime_original") or clean.get("unique_id") else None


def _load_pixels(path: Path) -> np.ndarray:
    """Decoded (orientation applied, alpha on white) and downscaled to MAX_SIDE, cached as PNG."""
    st = path.stat()
    key = hashlib.blake2b(f"{path}|{st.st_size}|{st.st_mtime_ns}|{MAX_SIDE}".encode(), digest_size=10).hexdigest()
    cached = CACHE_DIR / f"{key}.png"
    if cached.is_file():
        return np.asarray(Image.open(cached).convert("RGB"))
    from vdc_torch.data.decode import decode_file

    pixels = decode_file(path, decode_side=None).pixels
    h, w = pixels.shape[:2]
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        pixels = cv2.resize(pixels, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.png")
    Image.fromarray(pixels).save(tmp, compress_level=1)
    tmp.replace(cached)
    return np.ascontiguousarray(pixels)


def build_pool(log: Callable[[str], None] = print) -> tuple[list[Source], dict[str, Any]]:
    """The deduplicated pool and a report of every decision (kept / dropped and why)."""
    report: dict[str, Any] = {"kept": [], "dropped": [], "families": {}}
    pool: list[Source] = []
    wall_root = None
    groups = wallpaper_groups(previews=False, min_size=1)
    for name, files in groups.items():

        def size(p: Path) -> tuple[int, int]:
            with Image.open(p) as im:
                return im.size

        light = [p for p in files if "images_dark" not in p.parts]
        dark = [p for p in files if "images_dark" in p.parts]
        chosen = []
        for role, members in (("light", light), ("dark", dark)):
            landscape = [p for p in members if size(p)[0] >= size(p)[1]]
            for p in members:
                if p not in landscape:
                    report["dropped"].append({"path": str(p), "why": "portrait file = crop of the landscape picture"})
            if not landscape:
                continue
            best = max(landscape, key=lambda p: size(p)[0] * size(p)[1])
            for p in landscape:
                if p != best:
                    report["dropped"].append({"path": str(p), "why": f"other resolution of {best.name} ({name})"})
            chosen.append((role, best))
        family = name if len(chosen) > 1 else None
        for role, p in chosen:
            sid = f"wall:{name}" + (":dark" if role == "dark" else "")
            fmt = "jpeg" if p.suffix.lower() in (".jpg", ".jpeg") else "png"
            pool.append(Source(sid, p, fmt, family=family, kind="colour_variant" if family else "other"))
        wall_root = wall_root or files[0]
    # MATE ships one picture in four colourings under four names
    for s in pool:
        m = re.fullmatch(r"wall:mate/Ubuntu-Mate-\w+-no-logo", s.id)
        if m:
            s.family, s.kind = "mate/Ubuntu-Mate-no-logo", "colour_variant"

    exif_root = shared_root() / "exif-samples" / "jpg"
    for p in exif_sample_files():
        rel = p.relative_to(exif_root).as_posix()
        with Image.open(p) as im:
            w, h = im.size
        if max(w, h) < MIN_EXIF_SIDE:
            report["dropped"].append({"path": str(p), "why": f"smaller than {MIN_EXIF_SIDE} px ({w}x{h})"})
            continue
        if rel.startswith("orientation/") and rel != "orientation/landscape_1.jpg":
            report["dropped"].append({"path": str(p), "why": "same waterfall photo as orientation/landscape_1.jpg"})
            continue
        family, kind = None, "other"
        if rel.startswith("hdr/"):
            family, kind = "hdr/" + rel.split("/")[1].split("_hdr_")[0], "hdr"
        elif rel.startswith("gps/"):
            kind = "gps_view"
        pool.append(Source(f"exif:{rel}", p, "jpeg", family=family, exif=_exif_identity_tags(p), kind=kind))

    kept = []
    for s in pool:
        s.pixels = _load_pixels(s.path)
        std = float(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2GRAY).std())
        if std < MIN_STD:
            report["dropped"].append({"path": str(s.path), "why": f"blank after alpha on white (gray std {std:.1f})"})
            continue
        kept.append(s)
    # a family needs two members left
    fam_count: dict[str, int] = {}
    for s in kept:
        if s.family:
            fam_count[s.family] = fam_count.get(s.family, 0) + 1
    for s in kept:
        if s.family and fam_count[s.family] < 2:
            s.family, s.kind = None, "other"
    report["families"] = {
        f: [s.id for s in kept if s.family == f] for f in sorted({s.family for s in kept if s.family})
    }
    report["kept"] = [
        {"id": s.id, "path": str(s.path), "size": list(s.pixels.shape[1::-1]), "family": s.family} for s in kept
    ]
    report["audit"] = audit_pool(kept)
    log(
        f"pool: {len(kept)} pictures ({sum(s.family is None for s in kept)} unrelated, "
        f"{len(report['families'])} families), {len(report['dropped'])} files dropped"
    )
    return kept, report


def audit_pool(pool: list[Source], top: int = 12) -> list[dict[str, Any]]:
    """The most alike pool pairs by 32x32 gray NCC (a check that no undeclared duplicate is left)."""
    thumbs = []
    for s in pool:
        g = cv2.resize(cv2.cvtColor(s.pixels, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        v = g.astype(np.float64).ravel()
        v -= v.mean()
        thumbs.append(v / max(np.linalg.norm(v), 1e-6))
    t = np.stack(thumbs)
    sim = t @ t.T
    np.fill_diagonal(sim, -2)
    iu = np.triu_indices(len(pool), 1)
    order = np.argsort(-sim[iu])[:top]
    return [
        {
            "a": pool[iu[0][k]].id,
            "b": pool[iu[1][k]].id,
            "ncc": round(float(sim[iu][k]), 3),
            "same_family": bool(pool[iu[0][k]].family and pool[iu[0][k]].family == pool[iu[1][k]].family),
        }
        for k in order
    ]


# ------------------------------------------------------------------------------------------------ transforms


def _u(rng: random.Random, lo: float, hi: float) -> float:
    return rng.uniform(lo, hi)


def _text(
    img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int], thickness: int
) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def t_resize(px: np.ndarray, rng: random.Random) -> tuple[np.ndarray, dict]:
    s = _u(rng, 0.25, 0.75)
    interp = rng.choice(["area", "linear", "cubic"])
    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[interp]
    h, w = px.shape[:2]
    return cv2.resize(px, (max(1, round(w * s)), max(1, round(h * s))), interpolation=flag), {
        "scale": round(s, 3),
        "interpolation": interp,
    }


def _crop(px: np.ndarray, rng: random.Random, centred: bool) -> tuple[np.ndarray, dict]:
    f = _u(rng, 0.05, 0.25)  # fraction of each side removed
    h, w = px.shape[:2]
    kh, kw = round(h * (1 - f)), round(w * (1 - f))
    if centred:
        y, x = (h - kh) // 2, (w - kw) // 2
    else:  # the window sits in one corner region: at least 3/4 of the removed margin on one side, per axis
        y = round((h - kh) * rng.choice([_u(rng, 0.0, 0.25), _u(rng, 0.75, 1.0)]))
        x = round((w - kw) * rng.choice([_u(rng, 0.0, 0.25), _u(rng, 0.75, 1.0)]))
    return px[y : y + kh, x : x + kw].copy(), {
        "removed_per_side_total": round(f, 3),
        "kept_area": round((1 - f) ** 2, 3),
        "top": y,
        "left": x,
    }


def t_crop_center(px, rng):
    return _crop(px, rng, True)


def t_crop_offcenter(px, rng):
    return _crop(px, rng, False)


def t_aspect(px, rng):
    a = rng.choice([_u(rng, 0.75, 0.9), _u(rng, 1.1, 1.33)])
    axis = rng.choice(["x", "y"])
    h, w = px.shape[:2]
    size = (round(w * a), h) if axis == "x" else (w, round(h * a))
    out = cv2.resize(px, size, interpolation=cv2.INTER_AREA if a < 1 else cv2.INTER_LINEAR)
    return out, {"factor": round(a, 3), "axis": axis}


def t_brightness_contrast(px, rng):
    alpha = _u(rng, 0.75, 1.3)
    beta = _u(rng, -35, 35)
    f = px.astype(np.float32)
    mean = float(f.mean())
    out = np.clip((f - mean) * alpha + mean + beta, 0, 255).astype(np.uint8)  # contrast about the mean
    return out, {"contrast": round(alpha, 3), "brightness": round(beta, 1)}


def t_gamma(px, rng):
    g = rng.choice([_u(rng, 0.6, 0.85), _u(rng, 1.2, 1.6)])
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** g, 0, 255).astype(np.uint8)
    return lut[px], {"gamma": round(g, 3)}


def t_blur(px, rng):
    sigma = _u(rng, 1.5, 5.0)
    return cv2.GaussianBlur(px, (0, 0), sigma), {"sigma_px": round(sigma, 2), "image_side": int(max(px.shape[:2]))}


def t_noise(px, rng):
    sigma = _u(rng, 5.0, 20.0)
    nrng = np.random.default_rng(rng.randrange(2**32))
    out = np.clip(px.astype(np.float32) + nrng.normal(0, sigma, px.shape), 0, 255).astype(np.uint8)
    return out, {"gaussian_sigma": round(sigma, 2)}


def t_rotate(px, rng):
    angle = rng.choice([-1, 1]) * _u(rng, 1.0, 5.0)
    mode = rng.choice(["black_corners", "crop_inscribed"])
    h, w = px.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    out = cv2.warpAffine(px, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if mode == "crop_inscribed":  # largest axis-aligned rectangle without black corners
        a = math.radians(abs(angle))
        cw = (w * math.cos(a) - h * math.sin(a)) / math.cos(2 * a)
        ch = (h * math.cos(a) - w * math.sin(a)) / math.cos(2 * a)
        cw, ch = int(max(8, cw)), int(max(8, ch))
        y, x = (h - ch) // 2, (w - cw) // 2
        out = out[y : y + ch, x : x + cw].copy()
    return out, {"degrees": round(angle, 2), "mode": mode}


def t_flip(px, rng):
    return np.ascontiguousarray(px[:, ::-1]), {}


def t_grayscale(px, rng):
    g = cv2.cvtColor(px, cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2RGB), {}


def t_overlay(px, rng):
    out = px.copy()
    h, w = out.shape[:2]
    kind = rng.choice(["watermark", "logo", "caption"])
    if kind == "watermark":  # large semi-transparent text across the middle
        layer = out.copy()
        scale = w / 420.0 * _u(rng, 0.8, 1.3)
        text = rng.choice(["(c) STOCKPHOTO", "SAMPLE", "PREVIEW ONLY", "(c) 2024 Studio"])
        size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(scale * 2)))[0]
        org = (max(0, (w - size[0]) // 2), (h + size[1]) // 2)
        _text(layer, text, org, scale, (255, 255, 255), max(1, int(scale * 2.5)))
        opacity = _u(rng, 0.3, 0.6)
        out = cv2.addWeighted(layer, opacity, out, 1 - opacity, 0)
        params = {"text": text, "opacity": round(opacity, 2)}
    elif kind == "logo":  # opaque badge in a corner, 12-22 % of the width
        side = int(w * _u(rng, 0.12, 0.22))
        corner = rng.choice(["tl", "tr", "bl", "br"])
        m = int(w * 0.02)
        x0 = m if corner[1] == "l" else w - side - m
        y0 = m if corner[0] == "t" else h - side - m
        colour = tuple(int(c) for c in rng.choice([(220, 30, 30), (30, 90, 200), (250, 200, 0), (255, 255, 255)]))
        cv2.circle(out, (x0 + side // 2, y0 + side // 2), side // 2, colour, -1, cv2.LINE_AA)
        _text(out, "LOGO", (x0 + side // 8, y0 + side // 2 + side // 10), side / 90.0, (0, 0, 0), max(1, side // 40))
        params = {"corner": corner, "size_fraction_of_width": round(side / w, 3)}
    else:  # caption bar at the bottom
        bar = int(h * _u(rng, 0.08, 0.14))
        region = out[h - bar :]
        out[h - bar :] = (region.astype(np.float32) * 0.25).astype(np.uint8)
        _text(
            out,
            rng.choice(["Holiday 2023 - day 3", "www.example.com/photos", "Sunset at the lake"]),
            (int(w * 0.03), h - bar // 3),
            bar / 45.0,
            (255, 255, 255),
            max(1, bar // 18),
        )
        params = {"bar_fraction_of_height": round(bar / h, 3)}
    params["kind"] = kind
    return out, params


def t_border(px, rng):
    h, w = px.shape[:2]
    kind = rng.choice(["frame", "letterbox"])
    colour = tuple(int(c) for c in rng.choice([(0, 0, 0), (255, 255, 255), (128, 128, 128), (20, 40, 90)]))
    if kind == "frame":
        f = _u(rng, 0.03, 0.12)
        b = [max(1, round(min(h, w) * f * _u(rng, 0.7, 1.3))) for _ in range(4)]
        out = cv2.copyMakeBorder(px, b[0], b[1], b[2], b[3], cv2.BORDER_CONSTANT, value=colour)
        return out, {"kind": kind, "border_px": b, "colour": colour}
    # letterbox / pillarbox into a canvas of another aspect ratio
    aspect = w / h
    targets = [t for t in (16 / 9, 4 / 3, 1.0, 9 / 16) if abs(math.log(t / aspect)) > 0.12]
    target = rng.choice(targets)
    if target > aspect:  # wider canvas: bars left and right
        cw, ch = round(h * target), h
    else:
        cw, ch = w, round(w / target)
    out = np.empty((ch, cw, 3), np.uint8)
    out[:] = colour
    y, x = (ch - h) // 2, (cw - w) // 2
    out[y : y + h, x : x + w] = px
    return out, {"kind": kind, "canvas_aspect": round(target, 3), "colour": colour}


def t_combo(px, rng):
    """A typical re-export: downscale, mild colour edit, small crop, JPEG."""
    out, p1 = t_resize(px, rng)
    f = _u(rng, 0.0, 0.08)
    h, w = out.shape[:2]
    y, x = round(h * f * _u(rng, 0, 1)), round(w * f * _u(rng, 0, 1))
    out = out[y : y + round(h * (1 - f)), x : x + round(w * (1 - f))]
    alpha, beta = _u(rng, 0.85, 1.15), _u(rng, -15, 15)
    out = np.clip(out.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    return out, {"scale": p1["scale"], "crop": round(f, 3), "contrast": round(alpha, 3), "brightness": round(beta, 1)}


def t_flip_crop(px, rng):
    """RandomResizedCrop + RandomHorizontalFlip: mirror, keep 80-90 % of each side anywhere, downscale (JPEG)."""
    h, w = px.shape[:2]
    keep = _u(rng, 0.8, 0.9)
    kh, kw = round(h * keep), round(w * keep)
    y, x = round((h - kh) * _u(rng, 0, 1)), round((w - kw) * _u(rng, 0, 1))
    out = np.ascontiguousarray(px[y : y + kh, x : x + kw][:, ::-1])
    s = _u(rng, 0.4, 0.9)
    out = cv2.resize(out, (max(1, round(kw * s)), max(1, round(kh * s))), interpolation=cv2.INTER_AREA)
    return out, {"kept_per_side": round(keep, 3), "top": y, "left": x, "scale": round(s, 3)}


def t_rotate_canvas(px, rng):
    """Rotated by 5-30 degrees either way on the same canvas (size unchanged), black or edge-smeared corners."""
    angle = rng.choice([-1, 1]) * _u(rng, 5.0, 30.0)
    corners = rng.choice(["black", "edge"])
    h, w = px.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    border = cv2.BORDER_CONSTANT if corners == "black" else cv2.BORDER_REPLICATE
    out = cv2.warpAffine(px, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=(0, 0, 0))
    return out, {"degrees": round(angle, 2), "corners": corners}


def t_quarter_turn(px, rng):
    """Turned by 90, 180 or 270 degrees (a phone photo whose EXIF orientation was lost on export), downscaled."""
    turns = rng.choice([1, 2, 3])
    out = np.ascontiguousarray(np.rot90(px, turns))
    s = _u(rng, 0.5, 1.0)
    h, w = out.shape[:2]
    out = cv2.resize(out, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return out, {"degrees": 90 * turns, "scale": round(s, 3)}


def t_desaturate(px, rng):
    """Colour saturation lowered to 30-60 % (a muted re-export or filter), JPEG."""
    keep = _u(rng, 0.3, 0.6)
    gray = cv2.cvtColor(cv2.cvtColor(px, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB).astype(np.float32)
    out = np.clip(gray + keep * (px.astype(np.float32) - gray), 0, 255).astype(np.uint8)
    return out, {"saturation": round(keep, 3)}


def t_corner_crop(px, rng):
    """A corner crop keeping 50-60 % of the area (about 71-77 % of each side), downscaled, JPEG by the writer."""
    area = _u(rng, 0.5, 0.6)
    k = math.sqrt(area) * _u(rng, 0.97, 1.03)
    h, w = px.shape[:2]
    kh, kw = min(h, round(h * k)), min(w, round(w * area / k))
    y = 0 if rng.random() < 0.5 else h - kh
    x = 0 if rng.random() < 0.5 else w - kw
    out = px[y : y + kh, x : x + kw]
    s = _u(rng, 0.6, 1.0)
    out = cv2.resize(out, (max(1, round(kw * s)), max(1, round(kh * s))), interpolation=cv2.INTER_AREA)
    return out, {"kept_area": round(kh * kw / (h * w), 3), "top": y, "left": x, "scale": round(s, 3)}


def t_perspective(px, rng):
    """A mild perspective warp (each corner moved inwards by 2-7 % of the side), cropped to the warped content."""
    h, w = px.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moves = [(_u(rng, 0.02, 0.07) * w, _u(rng, 0.02, 0.07) * h) for _ in range(4)]
    dst = np.float32([[moves[0][0], moves[0][1]], [w - moves[1][0], moves[1][1]],
                      [w - moves[2][0], h - moves[2][1]], [moves[3][0], h - moves[3][1]]])
    m = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(px, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, {"corner_moves": [[round(a / w, 3), round(b / h, 3)] for a, b in moves]}


def t_rotate_crop(px, rng):
    """Rotated by 7-12 degrees and cropped to the largest upright rectangle inside (no corners left), JPEG."""
    angle = rng.choice([-1, 1]) * _u(rng, 7.0, 12.0)
    h, w = px.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    out = cv2.warpAffine(px, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = math.radians(abs(angle))
    cw = (w * math.cos(a) - h * math.sin(a)) / math.cos(2 * a)
    ch = (h * math.cos(a) - w * math.sin(a)) / math.cos(2 * a)
    cw, ch = int(max(8, cw)), int(max(8, ch))
    y, x = (h - ch) // 2, (w - cw) // 2
    return out[y : y + ch, x : x + cw].copy(), {"degrees": round(angle, 2), "kept": [ch, cw]}


def t_screenshot(px, rng):
    """The picture at 70-90 % of the free height inside a screenshot of an image viewer (toolbar, status bar,
    dark surround), saved by the writer."""
    cw, ch = rng.choice([(1280, 800), (1440, 900), (1024, 768)])
    top, bottom = rng.randint(40, 64), rng.randint(24, 36)
    canvas = Image.new("RGB", (cw, ch), tuple(rng.randint(25, 60) for _ in range(3)))
    draw = ImageDraw.Draw(canvas)
    bar = tuple(rng.randint(200, 240) for _ in range(3))
    draw.rectangle((0, 0, cw, top), fill=bar)
    for i in range(rng.randint(4, 8)):
        draw.rectangle((10 + i * 38, 10, 34 + i * 38, top - 10), fill=(rng.randint(60, 160), 110, 190))
    draw.text((340, top // 2 - 6), f"IMG_{rng.randint(1000, 9999)}.JPG - Viewer   100 %", fill=(20, 20, 20))
    draw.rectangle((0, ch - bottom, cw, ch), fill=(55, 55, 60))
    draw.text((10, ch - bottom + 6), f"{px.shape[1]} x {px.shape[0]}", fill=(210, 210, 210))
    share = _u(rng, 0.7, 0.9)
    free_h = ch - top - bottom
    scale = min(cw * share / px.shape[1], free_h * share / px.shape[0])
    pic = Image.fromarray(px).resize((max(8, round(px.shape[1] * scale)), max(8, round(px.shape[0] * scale))),
                                     Image.BICUBIC)
    canvas.paste(pic, ((cw - pic.width) // 2, top + (free_h - pic.height) // 2))
    return np.asarray(canvas), {"canvas": [cw, ch], "picture": [pic.width, pic.height], "share": round(share, 3)}


def t_blur_pad(px, rng):
    """Padded to a 16:9 or 1:1 canvas filled with a blurred, enlarged copy of itself (social-media export)."""
    h, w = px.shape[:2]
    target = rng.choice([16 / 9, 1.0, 9 / 16])
    if abs(math.log(target * h / w)) < 0.15:
        target = 16 / 9 if w / h < 1.3 else 9 / 16
    cw, ch = (round(h * target), h) if target > w / h else (w, round(w / target))
    cover = max(cw / w, ch / h)
    bg = cv2.resize(px, (math.ceil(w * cover), math.ceil(h * cover)), interpolation=cv2.INTER_LINEAR)
    y, x = (bg.shape[0] - ch) // 2, (bg.shape[1] - cw) // 2
    out = cv2.GaussianBlur(bg[y : y + ch, x : x + cw], (0, 0), sigmaX=max(4.0, min(cw, ch) / 30))
    out = np.ascontiguousarray(out)
    y, x = (ch - h) // 2, (cw - w) // 2
    out[y : y + h, x : x + w] = px
    return out, {"canvas_aspect": round(cw / ch, 3)}


PIXEL_TRANSFORMS: dict[str, Callable[[np.ndarray, random.Random], tuple[np.ndarray, dict]]] = {
    "resize": t_resize,
    "crop_center": t_crop_center,
    "crop_offcenter": t_crop_offcenter,
    "aspect": t_aspect,
    "brightness_contrast": t_brightness_contrast,
    "gamma": t_gamma,
    "blur": t_blur,
    "noise": t_noise,
    "rotate": t_rotate,
    "flip": t_flip,
    "grayscale": t_grayscale,
    "overlay": t_overlay,
    "border": t_border,
    "combo": t_combo,
    "flip_crop": t_flip_crop,
    "rotate_canvas": t_rotate_canvas,
    "quarter_turn": t_quarter_turn,
    "desaturate": t_desaturate,
    "corner_crop": t_corner_crop,
    "perspective": t_perspective,
    "rotate_crop": t_rotate_crop,
    "screenshot": t_screenshot,
    "blur_pad": t_blur_pad,
}


# ------------------------------------------------------------------------------------------------ writing


def _exif_bytes(tags: dict[str, Any] | None) -> bytes | None:
    if not tags:
        return None
    exif = Image.Exif()
    if tags.get("make"):
        exif[0x010F] = tags["make"]
    if tags.get("model"):
        exif[0x0110] = tags["model"]
    if tags.get("datetime"):
        exif[0x0132] = tags["datetime"]
    exif[0x0112] = 1
    sub = {}
    for key, tag in (
        ("datetime_original", 0x9003),
        ("subsec_original", 0x9291),
        ("unique_id", 0xA420),
        ("body_serial", 0xA431),
    ):
        if tags.get(key):
            sub[tag] = tags[key]
    if sub:
        exif[0x8769] = sub
    return exif.tobytes()


def encode(px: np.ndarray, fmt: str, *, quality: int = 95, exif: bytes | None = None, lossless: bool = False) -> bytes:
    """Encode RGB pixels; fmt in jpeg / png / webp."""
    im = Image.fromarray(px)
    buf = io.BytesIO()
    if fmt == "jpeg":
        kwargs: dict[str, Any] = {"quality": int(quality)}
        if exif:
            kwargs["exif"] = exif
        im.save(buf, "JPEG", **kwargs)
    elif fmt == "png":
        im.save(buf, "PNG", compress_level=1)
    elif fmt == "webp":
        if lossless:
            im.save(buf, "WEBP", lossless=True, method=0)
        else:
            im.save(buf, "WEBP", quality=int(quality), method=2)
    else:
        raise ValueError(fmt)
    return buf.getvalue()


_EXT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}


def strip_app1(data: bytes) -> bytes:
    """JPEG bytes without APP1 (EXIF/XMP) segments; the entropy-coded data is untouched."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    out, i = [data[:2]], 2
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError(f"bad marker at {i}")
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            out.append(data[i:])
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xE1:
            out.append(data[i : i + 2 + length])
        i += 2 + length
    return b"".join(out)


# ------------------------------------------------------------------------------------------------ the suite


@dataclass
class Suite:
    root: Path
    ref_dir: Path
    new_dir: Path
    truth: list[dict[str, Any]]
    refs: list[dict[str, Any]]
    pool_report: dict[str, Any]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ref_dir": str(self.ref_dir),
            "new_dir": str(self.new_dir),
            "refs": self.refs,
            "truth": self.truth,
            "pool": self.pool_report,
        }


def build_suite(
    dest: Path, seed: int, n_ref: int = 52, per_class: int = 12, log: Callable[[str], None] = print
) -> Suite:
    """Write ``dest/ref`` and ``dest/new`` and return the ground truth (see the module docstring)."""
    rng = random.Random(seed)
    pool, report = build_pool(log)
    dest = Path(dest)
    ref_dir, new_dir = dest / "ref", dest / "new"
    ref_dir.mkdir(parents=True)
    new_dir.mkdir(parents=True)

    families: dict[str, list[Source]] = {}
    singles: list[Source] = []
    for s in pool:
        (families.setdefault(s.family, []) if s.family else singles).append(s)
    ref_sources: list[Source] = []
    distractors: list[Source] = []
    for name in sorted(families):
        members = families[name][:]
        rng.shuffle(members)
        ref_sources.append(members[0])
        distractors.extend(members[1:])
    rng.shuffle(singles)
    n_single = max(0, min(len(singles) - 1, n_ref - len(ref_sources)))
    ref_sources += singles[:n_single]
    distractors += singles[n_single:]
    rng.shuffle(ref_sources)

    refs: list[dict[str, Any]] = []
    ref_bytes: dict[str, bytes] = {}
    for i, s in enumerate(ref_sources):
        name = f"r{i:03d}{_EXT[s.fmt]}"
        tags = s.exif or (
            {
                "make": "vdc-bench",
                "model": "synthetic",
                "datetime_original": f"2020:01:01 00:{i // 60:02d}:{i % 60:02d}",
                "subsec_original": str(seed),
            }
            if s.fmt == "jpeg"
            else None
        )
        data = encode(s.pixels, s.fmt, quality=95, exif=_exif_bytes(tags) if s.fmt == "jpeg" else None)
        (ref_dir / name).write_bytes(data)
        ref_bytes[name] = data
        refs.append(
            {
                "ref": name,
                "source": s.id,
                "format": s.fmt,
                "size": list(s.pixels.shape[1::-1]),
                "has_exif": bool(tags) and s.fmt == "jpeg",
            }
        )

    items: list[tuple[bytes, str, dict[str, Any]]] = []  # (data, ext, truth without name)
    for cls in COPY_CLASSES:
        eligible = list(range(len(ref_sources)))
        if cls == "exif_strip":
            eligible = [i for i in eligible if refs[i]["has_exif"]]
        chosen = rng.sample(eligible, min(per_class, len(eligible)))
        for i in chosen:
            s, ref = ref_sources[i], refs[i]
            params: dict[str, Any] = {}
            expected = "near_duplicate"
            if cls == "exif_strip":
                data, fmt = strip_app1(ref_bytes[ref["ref"]]), "jpeg"
                expected = "exact"
            elif cls == "jpeg":
                q = rng.randint(30, 95)
                data, fmt, params = encode(s.pixels, "jpeg", quality=q), "jpeg", {"quality": q}
            elif cls == "format":
                base = _decoded_ref(ref_bytes[ref["ref"]])  # converting the reference file as it is
                if s.fmt == "jpeg" and rng.random() < 0.5:
                    data, fmt, params = encode(base, "png"), "png", {"to": "png"}
                    expected = "exact"
                else:
                    lossless = rng.random() < 0.3
                    q = rng.randint(60, 95)
                    data, fmt = encode(base, "webp", quality=q, lossless=lossless), "webp"
                    params = {"to": "webp", "lossless": lossless} | ({} if lossless else {"quality": q})
                    expected = "exact" if lossless else "near_duplicate"
            else:
                px, params = PIXEL_TRANSFORMS[cls](s.pixels, rng)
                lossy = ("combo", "flip_crop", "corner_crop", "rotate_crop", "blur_pad")
                fmt = "jpeg" if cls in lossy else "png" if cls == "screenshot" else s.fmt
                q = rng.randint(60, 90) if cls in lossy else 95
                if cls in lossy:
                    params["quality"] = q
                data = encode(px, fmt, quality=q)
            items.append(
                (
                    data,
                    _EXT[fmt],
                    {"ref": ref["ref"], "class": cls, "params": params, "source": s.id, "expected_kind": expected},
                )
            )
    for s in distractors:
        tags = s.exif if s.fmt == "jpeg" else None
        data = encode(s.pixels, s.fmt, quality=95, exif=_exif_bytes(tags))
        sibling = next((r["ref"] for r, rs in zip(refs, ref_sources) if s.family and rs.family == s.family), None)
        items.append(
            (
                data,
                _EXT[s.fmt],
                {
                    "ref": None,
                    "class": f"distractor_{s.kind}",
                    "source": s.id,
                    "params": {"family": s.family, "sibling_in_reference": sibling},
                    "expected_kind": None,
                },
            )
        )
    rng.shuffle(items)
    truth = []
    for k, (data, ext, t) in enumerate(items):
        name = f"n{k:04d}{ext}"
        (new_dir / name).write_bytes(data)
        truth.append({"new": name, **t})
    (dest / "truth.json").write_text(json.dumps({"refs": refs, "truth": truth}, indent=1, default=str))
    log(
        f"suite (seed {seed}): {len(refs)} reference files, {len(truth)} new files "
        f"({sum(t['ref'] is not None for t in truth)} copies in {len(COPY_CLASSES)} classes, "
        f"{sum(t['ref'] is None for t in truth)} distractors)"
    )
    return Suite(dest, ref_dir, new_dir, truth, refs, report, seed)


def _decoded_ref(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-ref", type=int, default=52)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--dest", type=Path, required=True)
    args = ap.parse_args(argv)
    suite = build_suite(args.dest, args.seed, args.n_ref, args.per_class)
    counts: dict[str, int] = {}
    for t in suite.truth:
        counts[t["class"]] = counts.get(t["class"], 0) + 1
    print(json.dumps(counts, indent=1))
    print(json.dumps(suite.pool_report["audit"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
