"""Deprecated alias of :mod:`vdc_torch.search.mih` (moved in 0.2; this name goes in the next release)."""

import importlib
import sys
import warnings

warnings.warn("vdc_torch.mih moved to vdc_torch.search.mih", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vdc_torch.search.mih")
