"""Deprecated alias of :mod:`vdc_torch.search._mih_numba` (moved in 0.2; this name goes in the next release)."""

import importlib
import sys
import warnings

warnings.warn("vdc_torch._mih_numba moved to vdc_torch.search._mih_numba", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vdc_torch.search._mih_numba")
