"""Fingerprints -> matches: exact, Hamming and vector indexes, verification and the matching cascade."""
