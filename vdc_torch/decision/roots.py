"""Where a reference's rows were read from: the folder it was fingerprinted from and the folder of each drop
:meth:`~vdc_torch.decision.gate.DatasetGate.update` added to it.

Every row stores its path relative to the folder it came from, and a manifest records one ``reference_root``; a
reference grown by updates holds rows of several folders, so the gate's meta also records, under
:data:`PARTS_KEY`, the first sample index of each added part and its folder. Plans and reports resolve a row's path
under its own part's folder (a drop's ``airplane/0000.jpg`` is not the reference's). Meta read from a manifest is
untrusted: anything but a sorted list of ``[first sample index, folder]`` pairs is ignored with a warning.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from typing import Any

log = logging.getLogger(__name__)

#: The meta key of the parts: ``[[first sample index, folder], ...]``, the first part at 0.
PARTS_KEY = "reference_parts"


def parts_of(meta: dict[str, Any]) -> list[tuple[int, str]]:
    """The ``(first sample index, folder)`` of each part of the reference, the first at 0; one part (the
    ``reference_root``) when the meta records none or records them wrongly."""
    root = str(meta.get("reference_root", "") or "")
    recorded = meta.get(PARTS_KEY)
    if recorded is None:
        return [(0, root)]
    ok = isinstance(recorded, list) and recorded and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
        and isinstance(p[1], str) for p in recorded)
    firsts = [p[0] for p in recorded] if ok else []
    if not ok or firsts[0] != 0 or any(b <= a for a, b in zip(firsts, firsts[1:])):
        log.warning("ignoring the manifest's %s (not a sorted list of [first sample index, folder] pairs): every "
                    "row's path is read under its reference_root %r", PARTS_KEY, root)
        return [(0, root)]
    return [(int(first), folder) for first, folder in recorded]


def add_part(meta: dict[str, Any], first_index: int, folder: str) -> None:
    """Record in ``meta`` that rows from sample index ``first_index`` on came from ``folder`` (``""``: from no
    folder, e.g. a stream)."""
    parts = parts_of(meta)
    folder = os.path.abspath(folder) if folder else ""
    if folder == (os.path.abspath(parts[-1][1]) if parts[-1][1] else ""):
        return  # the same folder as the part before: its rows resolve there already
    meta[PARTS_KEY] = [[first, root] for first, root in parts if first < first_index] + [[int(first_index), folder]]


def root_of(parts: list[tuple[int, str]], sample_index: int) -> str:
    """The folder the row with ``sample_index`` was read from (``parts`` as :func:`parts_of` gives them)."""
    return parts[max(0, bisect_right([first for first, _ in parts], int(sample_index)) - 1)][1]
