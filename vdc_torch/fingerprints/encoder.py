"""Model features as a near-duplicate method: embeddings of the model being trained, searched with faiss.

A classifier's globally pooled features (what feeds its head) encode the *class*, so every cat lands near
every other cat; instance identity lives in intermediate feature maps that keep a coarse layout
(see ``../shared/notes/model-encoder-on-cifar10.md``: after the 2nd pooling stage, pooled to a 4×4 grid,
found 0.66 of the human-judged CIFAR-10 near-duplicates at 3 % flagged, versus 0.12 for the pooled output).
:class:`LayerEncoder` therefore takes a layer name and pools that layer to a small grid.

What the encoder sees: with an ``input_size`` larger than the 32×32 thumbnails, each image's *view* — the
thumbnail's border-trimmed picture at the encoder's input size (:func:`~vdc_torch.fingerprints.per_image.
encoder_view`) — made from the single decode while the image is fingerprinted and embedded in batches on the
model's device as fingerprinting goes (:class:`ViewEmbedder`); only the embeddings are kept (4·D bytes an image:
8 KB for 128 channels pooled to 4×4). Where no view can be had (images gone since a manifest was saved, rows
split across ranks) the encoder sees the stored 32×32 thumbnails, resized to ``input_size``,
for the reference and the new images alike, and the decision's evidence says which it was.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vdc_torch.errors import InvalidParameterError
from vdc_torch.fingerprints.table import THUMB_SIDE

log = logging.getLogger(__name__)

#: Seed of the encoder threshold's calibration sample and of its edited copies: the same reference, read the same
#: way, gives the same threshold (views: the sample is drawn over the samples of the dataset, unusable ones
#: included, or over the rows of a loaded manifest, so one reference with unusable images may draw two samples).
CALIBRATION_SEED = 0


class LayerEncoder(nn.Module):
    """Wrap ``model`` so it returns L2-normalised features of ``layer`` average-pooled to ``grid``×``grid``.

    ``layer=None`` uses the model's own output (flattened). Layer names are those of
    ``torchvision.models.feature_extraction.get_graph_node_names(model)``, or a submodule holding some of them
    (``"layer2"`` of a ResNet: the output of its last node).

    >>> encoder = LayerEncoder(model, layer="layer2", grid=4)  # doctest: +SKIP
    >>> gate = DatasetGate(reference=train_dir, encoder=encoder)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        grid: int = 4,
        input_size: int | tuple[int, int] = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if layer is not None:
            from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

            _, eval_nodes = get_graph_node_names(model)
            if layer not in eval_nodes and not any(node.startswith(layer + ".") for node in eval_nodes):
                shown = ", ".join(eval_nodes[:40]) + (" ..." if len(eval_nodes) > 40 else "")
                raise InvalidParameterError(f"layer={layer!r} is not a node of the model; nodes are: {shown}")
            self.body = create_feature_extractor(model, return_nodes={layer: "features"})
        else:
            self.body = model
        self.layer = layer
        self.grid = int(grid)
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0, 1.0, 1.0]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: (N, 3, H, W) floats in [0, 1] -> (N, D) unit vectors."""
        x = (images - self.mean) / self.std
        out = self.body(x)
        if isinstance(out, dict):
            out = out["features"]
        if out.ndim == 4 and self.grid > 0:
            out = F.adaptive_avg_pool2d(out, self.grid)
        out = out.flatten(1)
        return F.normalize(out, dim=1)


def view_size(encoder: nn.Module) -> tuple[int, int] | None:
    """The (height, width) of the views ``encoder`` is shown (its ``input_size``), or ``None`` when the 32×32
    thumbnails already are its input (no ``input_size``, or one no larger than a thumbnail)."""
    size = getattr(encoder, "input_size", None)
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return None if height <= THUMB_SIDE and width <= THUMB_SIDE else (height, width)


def encoder_identity(encoder: nn.Module) -> str:
    """A digest naming what ``encoder`` computes: its class, layer, grid, input size, normalisation and the bytes
    of every parameter and buffer. It changes when the model trains (the embeddings must then be made again)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(encoder).__qualname__.encode())
    for name in ("layer", "grid", "input_size"):
        h.update(f"{name}={getattr(encoder, name, None)!r};".encode())
    name = ""
    try:
        for name, value in sorted(encoder.state_dict().items()):
            h.update(name.encode())
            h.update(_state_bytes(value))
    except Exception as exc:  # noqa: BLE001 - an unknown kind of state: never the same, so always embedded anew
        log.debug("encoder_identity: state of %s not digestible (%s); it is embedded anew each time", name, exc)
        return f"undigestible-{uuid.uuid4().hex}"
    return h.hexdigest()


def _state_bytes(value: Any) -> bytes:
    """The bytes of one ``state_dict`` entry: a tensor's dtype, shape and raw storage (quantized: its integers and
    scales), a tuple or list entry by entry, anything else its ``repr``."""
    if isinstance(value, (tuple, list)):
        return b"(" + b",".join(_state_bytes(v) for v in value) + b")"
    if not isinstance(value, torch.Tensor):
        return repr(value).encode()
    tensor = value.detach().to("cpu")
    head = f"{tensor.dtype}{tuple(tensor.shape)}".encode()
    if tensor.is_quantized:
        if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scales = repr((tensor.q_scale(), tensor.q_zero_point())).encode()
        else:
            scales = _state_bytes(tensor.q_per_channel_scales()) + _state_bytes(tensor.q_per_channel_zero_points())
        return head + _state_bytes(tensor.int_repr()) + scales
    return head + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@torch.no_grad()
def embed_thumbs(encoder: nn.Module, thumbs: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embed (N, h, w, 3) uint8 RGB images (thumbnails or views) with ``encoder``, resized to its ``input_size``
    where they differ; returns (N, D) float32 L2-normalised rows."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    except StopIteration:  # pragma: no cover - parameterless module
        device = torch.device("cpu")
    size = getattr(encoder, "input_size", None)
    chunks = []
    for start in range(0, len(thumbs), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(thumbs[start : start + batch_size])).to(device)
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out = encoder(x)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        out = F.normalize(out.flatten(1).float(), dim=1)
        chunks.append(out.cpu().numpy())
    encoder.train(was_training)
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def nearest_neighbours(
    queries: np.ndarray, base: np.ndarray, k: int = 1, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours (faiss inner product on unit vectors): ``(similarities, indices)``."""
    import faiss

    if len(base) == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    extra = 1 if exclude_self else 0
    sims, ids = index.search(queries, min(len(base), k + extra))
    if exclude_self:
        keep = ids != np.arange(len(queries))[:, None]
        sims = np.stack([row[m][:k] for row, m in zip(sims, keep)]) if len(sims) else sims[:, :k]
        ids = np.stack([row[m][:k] for row, m in zip(ids, keep)]) if len(ids) else ids[:, :k]
    return sims, ids


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of an (h, w, 3) uint8 RGB picture as a re-export would make it: cropped by up to 10 % per side and
    resized back, saturation 0.7-1.2, contrast 0.9-1.1, brightness -10..10, JPEG 60-95."""
    side_y, side_x = image.shape[:2]
    left, right, top, bottom = rng.uniform(0.0, 0.10, 4)
    x0, x1 = int(round(left * side_x)), side_x - int(round(right * side_x))
    y0, y1 = int(round(top * side_y)), side_y - int(round(bottom * side_y))
    image = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (side_x, side_y), interpolation=cv2.INTER_LINEAR)
    pixels = image.astype(np.float32)
    gray = pixels @ np.float32([0.299, 0.587, 0.114])
    pixels = gray[..., None] + (pixels - gray[..., None]) * rng.uniform(0.7, 1.2)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.9, 1.1) + mean + rng.uniform(-10.0, 10.0)
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    quality = int(rng.integers(60, 96))
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])


@dataclass(frozen=True, eq=False)
class CalibrationCopies:
    """Edited copies (:func:`augment_image`) of sampled images' views, embedded from the same decode as the image:
    the positives of the encoder threshold's calibration (:mod:`vdc_torch.search.encoder_threshold`)."""

    of: np.ndarray  # (m,) int64: the sample index (or, once placed, the table row) each copy is of
    embeddings: np.ndarray  # (m, D) float32 unit rows
    thumbs: np.ndarray  # (m, 32, 32, 3) uint8: each copy area-resized to a thumbnail, for the stage's pixel check


class ViewEmbedder:
    """Embeds the views fingerprinting hands over (``on_views`` of :func:`~vdc_torch.fingerprints.compute.
    compute_fingerprints`), batch by batch on the encoder's device, keeping one unit row per sample index; of the
    samples in ``calibrate`` (sample index -> number of copies) it also embeds edited copies of the same view."""

    def __init__(self, encoder: nn.Module, calibrate: dict[int, int] | None = None) -> None:
        size = view_size(encoder)
        if size is None:
            raise InvalidParameterError("the encoder's input_size is no larger than the 32x32 thumbnails: it is "
                                        "shown those, not views")
        self.encoder = encoder
        self.size = size
        self.calibrate = calibrate or {}
        self.rows: dict[int, np.ndarray] = {}
        #: Samples whose embeddings were taken from a store (:meth:`prefill`), not made here.
        self.prefilled: set[int] = set()
        self._copies: list[tuple[list[int], np.ndarray, np.ndarray]] = []

    def __call__(self, indices: Sequence[int], views: np.ndarray) -> None:
        for index, row in zip(indices, embed_thumbs(self.encoder, views)):
            self.rows[int(index)] = row
        picked = [(int(i), view) for i, view in zip(indices, views) if int(i) in self.calibrate]
        if picked:
            of, copies = [], []
            for index, view in picked:
                rng = np.random.default_rng([CALIBRATION_SEED, index])
                for _ in range(self.calibrate[index]):
                    of.append(index)
                    copies.append(augment_image(view, rng))
            stack = np.stack(copies)
            thumbs = np.stack([cv2.resize(c, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA) for c in copies])
            self._copies.append((of, embed_thumbs(self.encoder, stack), thumbs))

    def prefill(self, stored: dict[int, tuple[np.ndarray | None, list[tuple[np.ndarray, np.ndarray]]]]) -> None:
        """Take embeddings made before (by sample index: the view's, and its calibration copies' with their
        thumbnails); a sample of the calibration sample whose copies are not all there is left to be decoded."""
        width = next((len(row) for row in self.rows.values()), None)
        for index, (view, copies) in stored.items():
            wanted = self.calibrate.get(index, 0)
            if view is None or len(copies) < wanted or (width is not None and len(view) != width) or any(
                    len(vector) != len(view) for vector, _ in copies[:wanted]):
                continue
            width = len(view)
            self.rows[index] = view
            self.prefilled.add(index)
            if wanted:
                self._copies.append(([index] * wanted, np.stack([vector for vector, _ in copies[:wanted]]),
                                     np.stack([thumb for _, thumb in copies[:wanted]])))

    def made(self, indices: Sequence[int]) -> dict[int, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]]:
        """What this embedder made (not took) of these samples: the view's embedding and the calibration copies."""
        copies: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for of, embeddings, thumbs in self._copies:
            for index, vector, thumb in zip(of, embeddings, thumbs):
                copies.setdefault(int(index), []).append((vector, thumb))
        return {int(i): (self.rows[int(i)], copies.get(int(i), [])) for i in indices
                if int(i) in self.rows and int(i) not in self.prefilled}

    def embeddings(self, sample_index: np.ndarray) -> np.ndarray | None:
        """The rows of these sample indices, in order; ``None`` when any has none."""
        try:
            rows = [self.rows[int(i)] for i in sample_index]
        except KeyError:
            return None
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def missing(self, sample_index: np.ndarray) -> list[int]:
        """The sample indices that have no embedding yet."""
        return [int(i) for i in sample_index if int(i) not in self.rows]

    def copies(self) -> CalibrationCopies | None:
        """Every calibration copy embedded so far (``None``: none)."""
        if not self._copies:
            return None
        return CalibrationCopies(np.asarray([i for of, _, _ in self._copies for i in of], np.int64),
                                 np.concatenate([e for _, e, _ in self._copies]),
                                 np.concatenate([t for _, _, t in self._copies]))


def calibration_plan(total: int, samples: int, max_copies: int,
                     rng: np.random.Generator | None = None) -> dict[int, int]:
    """The seeded calibration sample of a dataset of ``total`` samples (sample index -> copies to make, in index
    order): at most ``samples`` of them, each with enough copies (up to ``max_copies``) that the copies number
    ``samples`` where the dataset allows. Drawn from ``rng`` when given (a caller drawing more from the same
    stream), else from :data:`CALIBRATION_SEED`."""
    if total <= 0:
        return {}
    rng = np.random.default_rng(CALIBRATION_SEED) if rng is None else rng
    chosen = np.sort(rng.choice(total, size=min(total, samples), replace=False))
    copies = max(1, min(max_copies, -(-samples // len(chosen))))
    return {int(i): copies for i in chosen}
