"""Files -> decoded images: dataset scanning and wrapping (folders, torch, Hugging Face, streams), safe decoding.

``vdc_torch.data.Dataset`` and the other names of :mod:`vdc_torch.data.dataset` stay reachable here, where they
were before the package was split into parts.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("vdc_torch.data.dataset"), name)
