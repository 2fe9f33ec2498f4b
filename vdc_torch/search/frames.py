"""Where a picture sits inside a larger new image: a screenshot of an image viewer, a frame, a pad filled with a
blurred copy of itself (the framed stage of the cascade looks these rectangles up among the references' pHashes).

Three kinds of evidence bound a framed picture in the gray detail image: a flat surround (a viewer's background,
toolbar and status bar: :func:`flat_surround`), a smooth one (a blurred pad: :func:`smooth_surround`), and edges
along all four sides (:func:`edge_rectangles`). :func:`framed_rectangles` puts them in one list, best first, and
:func:`framed_picture` cuts one out the way every fingerprint's content is cut.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from vdc_torch.fingerprints.compute import content_box

#: Gray levels between neighbouring pixels that make them two sides of an edge (frame stage).
FRAME_EDGE_STEP = 10
#: A weaker step (a dark picture on a dark surround) also counts as an edge when the step just outside it, away
#: from the picture, is at most 1/FRAME_OUTSIDE_RATIO of it: a flat or blurred surround meets the picture there.
FRAME_WEAK_STEP = 3
FRAME_OUTSIDE_RATIO = 2
#: Rows (and columns) with the most edge pixels that may bound a framed picture.
FRAME_EDGE_LINES = 8
#: A framed picture spans at least FRAME_MIN_SIDE of the new image's height and of its width (a 2:1 picture padded
#: to 9:16 spans 28 % of the height), at least FRAME_MIN_SPAN of one of them (a pad fills one side, a viewer shows
#: a picture at 70-90 % of its window), and at most FRAME_MAX_AREA of its area.
FRAME_MIN_SIDE = 0.2
FRAME_MIN_SPAN = 0.55
FRAME_MAX_AREA = 0.92
#: Weight of the image's own border as a side of a framed picture (a picture in a corner touches it); a picture
#: padded on two opposite sides touches it on the other two, which then count in full.
FRAME_BORDER_WEIGHT = 0.5
#: A surround is a region reached from a flat pixel of the border while the gray level stays within
#: FRAME_FLAT_LEVELS of that pixel's, covering at least FRAME_SURROUND_SHARE of the image (a viewer's background,
#: a toolbar, a letterbox); the picture's sides are then looked for up to FRAME_REFINE_REACH px inside its edge
#: (the stored detail is a JPEG, whose ringing keeps a few pixels next to an edge from being flat).
FRAME_FLAT_LEVELS = 2
FRAME_SURROUND_SHARE = 0.05
FRAME_REFINE_REACH = 6
#: Smooth: the mean absolute difference to a Gaussian blur (sigma 1 px) over a 5x5 window stays below this many
#: gray levels (a pad blurred by a few pixels of the detail image; a sharp photo's texture is well above).
FRAME_SMOOTH_LEVELS = 1.0
#: Rectangles looked up per new image, the best bounded first, no two with all sides within FRAME_DISTINCT of the
#: longer side.
FRAME_RECTANGLES = 5
FRAME_DISTINCT = 0.04


Box = tuple[int, int, int, int]


def framed_rectangles(detail: np.ndarray, count: int = FRAME_RECTANGLES) -> list[Box]:
    """``(top, bottom, left, right)`` of the rectangles of a gray detail image that may hold a framed picture,
    best first: where a picture sits inside a screenshot, a frame or a blurred copy of itself.

    The picture a flat surround leaves (:func:`surrounded_box` of :func:`flat_surround`: a viewer's background,
    exact where there is one), the best rectangle bounded by edges (:func:`edge_rectangles`), the picture a smooth
    surround leaves (:func:`smooth_surround`: a blurred pad, whose blurred boundary is less exact than an edge),
    then the other edge rectangles; no two with all sides within :data:`FRAME_DISTINCT` of the longer side.
    """
    g = np.ascontiguousarray(detail)
    h, w = g.shape
    if h < 8 or w < 8:
        return []
    edges = edge_rectangles(g)
    flat, smooth = (np.array(surrounded_box(g, surround(g)), np.int64).reshape(-1, 4)
                    for surround in (flat_surround, smooth_surround))
    boxes = np.concatenate([flat, edges[:1], smooth, edges[1:]])  # all acceptable (_acceptable): none empty
    apart = FRAME_DISTINCT * max(h, w)
    open_boxes = np.ones(len(boxes), bool)  # not within FRAME_DISTINCT of a box chosen before
    chosen: list[Box] = []
    while len(chosen) < count and open_boxes.any():
        first = boxes[int(np.argmax(open_boxes))]
        chosen.append(tuple(int(v) for v in first))
        open_boxes &= np.abs(boxes - first).max(axis=1) > apart
    return chosen


def framed_picture(detail: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of ``detail`` inside ``box``, trimmed of uniform borders as every fingerprint's content is
    (:func:`content_box`), so that a reference whose own border was trimmed is looked up by the same picture.

    The outermost lines of the box may blend the border with the surround (the detail is area-resized), which
    would stop the trim, so the trim is looked for inside a 1 px margin; where it finds no border, the whole box
    is returned.
    """
    t, b, left, r = box
    picture = detail[t:b, left:r]
    if min(picture.shape) > 2:  # a margin leaves something to trim
        inner = picture[1:-1, 1:-1]
        top, bottom, first, last = content_box(inner)
        if (top, bottom, first, last) != (0, inner.shape[0], 0, inner.shape[1]):
            return np.ascontiguousarray(inner[top:bottom, first:last])
    return np.ascontiguousarray(picture)


def _acceptable(t: Any, b: Any, left: Any, r: Any, h: int, w: int) -> Any:
    """Whether boxes are large enough to be a framed picture, and leave enough of the image to be its frame."""
    tall, wide = (b - t) / h, (r - left) / w
    return ((np.minimum(tall, wide) >= FRAME_MIN_SIDE) & (np.maximum(tall, wide) >= FRAME_MIN_SPAN)
            & (tall * wide <= FRAME_MAX_AREA))


def surrounded_box(gray: np.ndarray, surround: np.ndarray | None) -> list[Box]:
    """The box of the largest region that ``surround`` (a mask touching the image's border) leaves and that may
    be a framed picture (:func:`_acceptable`), each side then moved to the strongest step within
    :data:`FRAME_REFINE_REACH` px inside it; an empty list where there is none.

    Found where :func:`edge_rectangles` fails: a picture whose dark parts meet a dark surround has no edge
    there, and a sharp picture on a blurred copy of itself barely steps; the surround is still flat or smooth.
    The toolbar icons and status text of a screenshot are regions too, but small ones.
    """
    if surround is None:
        return []
    h, w = gray.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats((~surround).astype(np.uint8), connectivity=8)
    for i in (np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1).tolist():
        x, y, bw, bh = stats[i, :4].tolist()
        if _acceptable(y, y + bh, x, x + bw, h, w):
            refined = _refined(gray, (y, y + bh, x, x + bw))
            # on a small picture both sides may snap to one edge inside it: then the region's own box
            return [refined if _acceptable(*refined, h, w) else (y, y + bh, x, x + bw)]
    return []


def _border_positions(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ys, xs)`` of the pixels along an image's border: top row, bottom row, left column, right column."""
    return (np.concatenate([np.zeros(w, int), np.full(w, h - 1), np.arange(h), np.arange(h)]),
            np.concatenate([np.arange(w), np.arange(w), np.zeros(h, int), np.full(h, w - 1)]))


def _border_labels(labels: np.ndarray) -> np.ndarray:
    """The values (labels, mask bits) along the image's border, in :func:`_border_positions` order."""
    return labels[_border_positions(*labels.shape)]


def flat_surround(g: np.ndarray) -> np.ndarray | None:
    """A viewer's background, a toolbar, a letterbox: the regions reached by a flood from a flat border pixel (its
    3x3 neighbourhood within :data:`FRAME_FLAT_LEVELS`) while the gray level stays within FRAME_FLAT_LEVELS of
    that pixel's (a fixed range, so a smooth gradient inside the picture is not reached), each covering at least
    :data:`FRAME_SURROUND_SHARE` of the image. ``None`` where there is none."""
    h, w = g.shape
    flat = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) <= FRAME_FLAT_LEVELS
    if not _border_labels(flat).any():  # most photos: nothing flat along the border, no labelling needed
        return None
    n, labels, stats, _ = cv2.connectedComponentsWithStats(flat.astype(np.uint8), connectivity=4)
    large = np.zeros(n, bool)
    large[1:] = stats[1:, cv2.CC_STAT_AREA] >= FRAME_SURROUND_SHARE * h * w
    seeds = large[_border_labels(labels)]
    if not seeds.any():
        return None
    ys, xs = (positions[seeds] for positions in _border_positions(h, w))
    g = g.copy()  # floodFill asks for a writable image, though it only writes the mask here
    filled = np.zeros((h + 2, w + 2), np.uint8)
    surround = np.zeros((h + 2, w + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    todo = np.ones(len(ys), bool)  # seeds no fill has reached yet
    while todo.any():
        i = int(np.argmax(todo))
        region = np.zeros_like(filled)
        area = cv2.floodFill(g, region, (int(xs[i]), int(ys[i])), 0, FRAME_FLAT_LEVELS, FRAME_FLAT_LEVELS, flags)[0]
        filled |= region
        if area >= FRAME_SURROUND_SHARE * h * w:
            surround |= region
        todo &= filled[ys + 1, xs + 1] == 0
        todo[i] = False
    return surround[1:-1, 1:-1].astype(bool) if surround.any() else None


def smooth_surround(g: np.ndarray) -> np.ndarray | None:
    """A pad filled with a blurred copy of the picture: the smooth regions (no detail above
    :data:`FRAME_SMOOTH_LEVELS`) that touch the border, each covering at least :data:`FRAME_SURROUND_SHARE`
    of the image. ``None`` where there is none."""
    h, w = g.shape
    f = g.astype(np.float32)
    smooth = cv2.boxFilter(np.abs(f - cv2.GaussianBlur(f, (0, 0), 1.0)), -1, (5, 5)) < FRAME_SMOOTH_LEVELS
    if not _border_labels(smooth).any():
        return None
    n, labels, stats, _ = cv2.connectedComponentsWithStats(smooth.astype(np.uint8), connectivity=4)
    touching = np.unique(_border_labels(labels))
    large = touching[(touching > 0) & (stats[touching, cv2.CC_STAT_AREA] >= FRAME_SURROUND_SHARE * h * w)]
    return np.isin(labels, large) if len(large) else None


def _refined(gray: np.ndarray, box: Box) -> Box:
    """``box`` with each side not on the image's border moved to the strongest mean step across it within
    :data:`FRAME_REFINE_REACH` px inside (or 1 px outside)."""
    g = gray.astype(np.int16)
    h, w = g.shape
    t, b, left, r = box
    across_rows = np.abs(np.diff(g[:, left:r], axis=0)).mean(axis=1)  # [k - 1]: the step above pixel row k
    across_cols = np.abs(np.diff(g[t:b], axis=1)).mean(axis=0)

    def strongest(steps: np.ndarray, lo: int, hi: int) -> int:
        lo, hi = max(lo, 1), min(hi, len(steps))
        return lo + int(np.argmax(steps[lo - 1 : hi])) if hi >= lo else (lo + hi) // 2

    reach = FRAME_REFINE_REACH
    return (strongest(across_rows, t - 1, t + reach) if t > 0 else 0,
            strongest(across_rows, b - reach, b + 1) if b < h else h,
            strongest(across_cols, left - 1, left + reach) if left > 0 else 0,
            strongest(across_cols, r - reach, r + 1) if r < w else w)


def edge_rectangles(detail: np.ndarray) -> np.ndarray:
    """Rectangles whose four sides run along edges, best first: an ``(n, 4)`` int64 array of
    ``(top, bottom, left, right)``.

    Each side is scored by the share of its length that is an edge seen from that side: the gray level steps
    by more than :data:`FRAME_EDGE_STEP` across it, or by :data:`FRAME_WEAK_STEP` or more where the surround just
    outside is flat or blurred (the image's own border scores :data:`FRAME_BORDER_WEIGHT`, or 1 where the
    rectangle spans the image between two opposite borders: a picture padded on the other two sides); rectangles
    are ranked by their weakest side, then by the mean of the four. Sides are drawn from the
    :data:`FRAME_EDGE_LINES` rows and columns with the most edge pixels, so this costs a few thousand sums of
    prefix tables, not a search over every rectangle.
    """
    g = detail.astype(np.int16)
    h, w = g.shape
    top, bottom = _edges_from_outside(np.abs(np.diff(g, axis=0)), axis=0)
    left_side, right_side = _edges_from_outside(np.abs(np.diff(g, axis=1)), axis=1)

    def best_lines(edges: np.ndarray, axis: int, end: int) -> np.ndarray:
        inner = edges[1:end] if axis == 0 else edges[:, 1:end]
        return np.argsort(-inner.mean(axis=1 - axis), kind="stable")[:FRAME_EDGE_LINES] + 1

    t, b, left, r = (a.reshape(-1) for a in np.meshgrid(
        np.r_[0, best_lines(top, 0, h)], np.r_[best_lines(bottom, 0, h), h],
        np.r_[0, best_lines(left_side, 1, w)], np.r_[best_lines(right_side, 1, w), w], indexing="ij"))
    ok = _acceptable(t, b, left, r, h, w)
    t, b, left, r = t[ok], b[ok], left[ok], r[ok]

    def along_rows(edges: np.ndarray, row: np.ndarray) -> np.ndarray:  # prefix sums of the candidate lines only
        lines, which = np.unique(row, return_inverse=True)
        sums = np.concatenate([np.zeros((len(lines), 1), np.float32), np.cumsum(edges[lines], axis=1)], axis=1)
        return (sums[which, r] - sums[which, left]) / (r - left)

    def along_cols(edges: np.ndarray, col: np.ndarray) -> np.ndarray:
        lines, which = np.unique(col, return_inverse=True)
        sums = np.concatenate([np.zeros((1, len(lines)), np.float32), np.cumsum(edges[:, lines], axis=0)], axis=0)
        return (sums[b, which] - sums[t, which]) / (b - t)

    sides = np.stack([along_rows(top, t), along_rows(bottom, b), along_cols(left_side, left),
                      along_cols(right_side, r)])
    sides[2:, (left == 0) & (r == w)] = 1.0  # a picture padded above and below spans the width: its own sides
    sides[:2, (t == 0) & (b == h)] = 1.0
    weakest, mean = sides.min(axis=0), sides.mean(axis=0)
    # a rectangle is as good as its weakest side (a toolbar's two long edges and the picture's top make no
    # picture; a band between two long edges that spans the image, the shape of a pad, does); then the mean;
    # ties: the first rectangle in (t, b, l, r) order. A side with no edge at all is no evidence (a blank image).
    order = np.lexsort((r, left, b, t, -mean, -weakest))
    order = order[weakest[order] > 0]
    return np.stack([t, b, left, r], axis=1).astype(np.int64)[order]


def _edges_from_outside(steps: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Edge maps (float32, one more line than pixels along ``axis``) of the boundaries between
    neighbouring pixel lines, seen as the first and as the second side of a picture (top/left, bottom/right).

    ``steps`` are the absolute differences along ``axis``. A boundary is an edge where it steps by more than
    :data:`FRAME_EDGE_STEP`, or by :data:`FRAME_WEAK_STEP` or more while the step beyond it on the outside is at
    most 1/:data:`FRAME_OUTSIDE_RATIO` of it. The image's own border is :data:`FRAME_BORDER_WEIGHT`.
    """
    s = np.moveaxis(steps, axis, 0)
    strong = s > FRAME_EDGE_STEP
    weak = s >= FRAME_WEAK_STEP
    first, second = strong.copy(), strong.copy()
    first[1:] |= weak[1:] & (s[:-1] * FRAME_OUTSIDE_RATIO <= s[1:])  # outside: the step before (above / left)
    second[:-1] |= weak[:-1] & (s[1:] * FRAME_OUTSIDE_RATIO <= s[:-1])  # outside: the step after
    out = []
    for inner in (first, second):
        edges = np.empty((s.shape[0] + 2, s.shape[1]), np.float32)
        edges[1:-1] = inner
        edges[0] = edges[-1] = FRAME_BORDER_WEIGHT
        out.append(np.moveaxis(edges, 0, axis))
    return out[0], out[1]
