"""Decoded images -> fingerprints: per-image computation, the columnar table, hashes, metrics, local
features, alignment and the model encoder. Never reads or writes a cache or a manifest."""
