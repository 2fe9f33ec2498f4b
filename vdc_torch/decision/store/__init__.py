"""Manifests, lazily read stored columns and the fingerprint cache: the only code that imports sqlite3."""
