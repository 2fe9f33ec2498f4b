"""Method names the command line offers, without importing the modules that implement them.

``vdc --help`` and argument checking must not import OpenCV, numpy or torch, so the parser reads these tuples;
``tests/test_cli.py`` asserts that they equal the registries (``hashes.HASH_METHODS``, ``hashes.HASH_ALIASES``,
``metrics.METRICS``, ``features.EXTRACTORS``), so they cannot drift apart.
"""

from __future__ import annotations

#: :data:`vdc_torch.hashes.HASH_METHODS`
HASH_METHODS: tuple[str, ...] = ("average", "p", "marr_hildreth", "radial_variance", "block_mean", "color_moment")
#: :data:`vdc_torch.hashes.HASH_ALIASES` (alternative spelling -> canonical name)
HASH_ALIASES: dict[str, str] = {"phash": "p", "ahash": "average"}
#: :data:`vdc_torch.metrics.METRICS`
METRICS: tuple[str, ...] = ("pix2pix", "mse", "nrmse", "ssim", "psnr", "mae", "nmi")
#: :data:`vdc_torch.features.EXTRACTORS`
EXTRACTORS: tuple[str, ...] = ("sift", "orb", "fast")
#: :data:`vdc_torch.dedup.KEEP_RULES`: which file of a duplicate group ``vdc dedup --keep`` keeps
KEEP_RULES: tuple[str, ...] = ("first", "largest")
