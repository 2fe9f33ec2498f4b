"""Matches -> decision: ``Policy``, ``decide``, ``Decision`` and ``DatasetGate``; ``store`` holds what
persists (manifest, lazily read columns, cache) and is the only code that touches SQLite."""
