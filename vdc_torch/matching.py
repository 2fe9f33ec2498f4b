"""Deprecated alias of :mod:`vdc_torch.search.cascade` (moved in 0.2; this name goes in the next release)."""

import importlib
import sys
import warnings

warnings.warn("vdc_torch.matching moved to vdc_torch.search.cascade", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vdc_torch.search.cascade")
