"""vdc_torch — decide whether a model should be retrained on new image data, and on what.

Data flows one way, one subpackage per part, each importing only the parts before it: files -> decoded images
(``data``) -> fingerprints (``fingerprints``) -> indexes and matches (``search``) -> decision (``decision``, whose
``store`` alone touches SQLite) -> what users touch: CLI, reports, hooks, the visdatcompy API (``faces``).
``errors``, ``progress`` and ``names`` are shared by all.

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
    "Action": "decision.policy",
    "FeatureExtractor": "faces.seed",
    "Hash": "faces.seed",
    "Image": "data.image",
    "Metrics": "faces.seed",
    "VisDatCompare": "faces.seed",
    "Dataset": "data.dataset",
    "DatasetGate": "decision.gate",
    "DatasetNotFoundError": "errors",
    "Decision": "decision.gate",
    "Duplicates": "decision.dedup",
    "ImageDecodeError": "errors",
    "InvalidParameterError": "errors",
    "InsufficientEvidenceError": "errors",
    "ManifestError": "errors",
    "MatchConfig": "search.cascade",
    "Policy": "decision.policy",
    "VdcError": "errors",
    "commit_training": "faces.hooks",
    "compact_manifest": "decision.store.manifest",
    "decide": "decision.policy",
    "find_duplicates": "decision.dedup",
    "pretrain_gate": "faces.hooks",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from vdc_torch.data.dataset import Dataset  # noqa: F401
    from vdc_torch.decision.dedup import Duplicates, find_duplicates  # noqa: F401
    from vdc_torch.decision.gate import DatasetGate, Decision  # noqa: F401
    from vdc_torch.decision.policy import Action, Policy, decide  # noqa: F401
    from vdc_torch.decision.store.manifest import compact_manifest  # noqa: F401
    from vdc_torch.errors import DatasetNotFoundError, ImageDecodeError, InvalidParameterError, ManifestError, VdcError  # noqa: F401
    from vdc_torch.faces.hooks import commit_training, pretrain_gate  # noqa: F401
    from vdc_torch.faces.seed import FeatureExtractor, Hash, Image, Metrics, VisDatCompare  # noqa: F401
    from vdc_torch.search.cascade import MatchConfig  # noqa: F401


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
