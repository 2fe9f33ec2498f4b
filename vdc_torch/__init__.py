"""vdc_torch — decide whether a model should be retrained on new image data, and on what.

Data flows one way: files -> decoded images (``decode``) -> fingerprints (``fingerprint``) -> indexes (``index``)
-> matches (``matching``) -> decision (``gate``) -> report (``report``).

The public names below are imported on first use (PEP 562), so ``import vdc_torch`` and ``vdc --help`` do not pay
for torch, OpenCV, faiss, numpy and pandas; ``from vdc_torch import DatasetGate`` imports what it needs.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "Action": "gate",
    "FeatureExtractor": "compat",
    "Hash": "compat",
    "Image": "compat",
    "Metrics": "compat",
    "VisDatCompare": "compat",
    "Dataset": "data",
    "DatasetGate": "gate",
    "DatasetNotFoundError": "errors",
    "Decision": "gate",
    "Duplicates": "dedup",
    "ImageDecodeError": "errors",
    "InvalidParameterError": "errors",
    "InsufficientEvidenceError": "errors",
    "ManifestError": "errors",
    "MatchConfig": "matching",
    "Policy": "gate",
    "VdcError": "errors",
    "commit_training": "hooks",
    "decide": "gate",
    "find_duplicates": "dedup",
    "pretrain_gate": "hooks",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from .compat import FeatureExtractor, Hash, Image, Metrics, VisDatCompare
    from .data import Dataset
    from .dedup import Duplicates, find_duplicates
    from .errors import DatasetNotFoundError, ImageDecodeError, InvalidParameterError, ManifestError, VdcError
    from .gate import Action, DatasetGate, Decision, Policy, decide
    from .hooks import commit_training, pretrain_gate
    from .matching import MatchConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # `vdc_torch.gate` as with the eager imports
        raise AttributeError(f"module 'vdc_torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
