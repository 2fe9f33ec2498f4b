"""Deprecated alias of :mod:`vdc_torch.decision.gate` (moved in 0.2; this name goes in the next release)."""

import importlib
import sys
import warnings

warnings.warn("vdc_torch.gate moved to vdc_torch.decision.gate", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vdc_torch.decision.gate")
