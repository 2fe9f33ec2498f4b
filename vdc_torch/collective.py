"""Pickle-free collectives over ``torch.distributed``: bytes, numpy arrays and JSON gathered from every rank.

Everything travels as ``uint8`` tensors (on the current CUDA device for nccl, on the CPU otherwise), so it works on
gloo and nccl alike and never unpickles what another process sent. Arrays are framed with ``np.save``
(``allow_pickle=False``); text and records as JSON. Without an initialised process group every function is the
identity on this one process.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

#: What this process has sent and received through :func:`all_gather_bytes` (calls, bytes), for benchmarks.
traffic = {"calls": 0, "sent": 0, "received": 0}


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (``(0, 1)`` without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_bytes(blob: bytes) -> list[bytes]:
    """Every rank's ``blob``, in rank order, on every rank."""
    _, world = rank_and_world()
    if world == 1:
        return [blob]
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    size = torch.tensor([len(blob)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(1, int(max(s.item() for s in sizes)))
    tensor = torch.zeros(longest, dtype=torch.uint8, device=device)
    if blob:
        tensor[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device)
    received = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(received, tensor)
    out = [r[: int(s.item())].cpu().numpy().tobytes() for r, s in zip(received, sizes)]
    traffic["calls"] += 1
    traffic["sent"] += len(blob)
    traffic["received"] += sum(len(b) for b in out) - len(blob)
    return out


def _pack(arrays: Sequence[np.ndarray]) -> bytes:
    out = io.BytesIO()
    for array in arrays:
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def _unpack(blob: bytes, count: int) -> list[np.ndarray]:
    source = io.BytesIO(blob)
    return [np.load(source, allow_pickle=False) for _ in range(count)]


def all_gather_arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    """Each of ``arrays`` (numeric, same dtype on every rank) concatenated over the ranks in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return [np.asarray(a) for a in arrays]
    parts = [_unpack(blob, len(arrays)) for blob in all_gather_bytes(_pack(arrays))]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]


def all_gather_json(value: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``value``, in rank order."""
    return [json.loads(b.decode()) for b in all_gather_bytes(json.dumps(value, allow_nan=False).encode())]


def all_sum(value: int) -> int:
    """``value`` summed over the ranks."""
    return int(all_gather_arrays(np.asarray([value], dtype=np.int64))[0].sum())
