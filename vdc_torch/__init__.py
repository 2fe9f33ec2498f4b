"""vdc_torch — decide whether a model should be retrained on new image data, and on what.

Data flows one way: files -> decoded images (``decode``) -> fingerprints (``fingerprint``) -> indexes (``index``)
-> matches (``matching``) -> decision (``gate``) -> report (``report``).
"""

from __future__ import annotations

from .compat import FeatureExtractor, Hash, Image, Metrics, VisDatCompare
from .data import Dataset
from .errors import DatasetNotFoundError, ImageDecodeError, InvalidParameterError, ManifestError, VdcError
from .gate import Action, DatasetGate, Decision, Policy, decide
from .hooks import commit_training, pretrain_gate
from .matching import MatchConfig

__version__ = "0.1.0"

__all__ = [
    "Action",
    "FeatureExtractor",
    "Hash",
    "Image",
    "Metrics",
    "VisDatCompare",
    "Dataset",
    "DatasetGate",
    "DatasetNotFoundError",
    "Decision",
    "ImageDecodeError",
    "InvalidParameterError",
    "ManifestError",
    "MatchConfig",
    "Policy",
    "VdcError",
    "commit_training",
    "decide",
    "pretrain_gate",
]
