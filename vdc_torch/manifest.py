"""Deprecated alias of :mod:`vdc_torch.decision.store.manifest` (moved in 0.2; this name goes in the next release)."""

import importlib
import sys
import warnings

warnings.warn("vdc_torch.manifest moved to vdc_torch.decision.store.manifest", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vdc_torch.decision.store.manifest")
