"""Deprecated alias of :mod:`vdc_torch.fingerprints.hashes` (moved in 0.2; this name goes in the next release)."""

import importlib
import sys
import warnings

warnings.warn("vdc_torch.hashes moved to vdc_torch.fingerprints.hashes", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vdc_torch.fingerprints.hashes")
