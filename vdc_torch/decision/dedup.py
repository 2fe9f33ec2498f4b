"""Duplicates inside one dataset: the gate's internal-duplicate cascade, grouped, one file kept per group.

:func:`find_duplicates` fingerprints a dataset exactly as :meth:`DatasetGate.check` fingerprints new data and runs
the same cascade the gate runs for "duplicates inside the new data" (``match_tables(new, new, same_table=True)``:
every later copy points at an earlier sample). Those links are joined into groups (a resized copy of a
byte-identical copy of a photo is one group of three), and one file per group is kept:

* ``keep="first"``: the first file in the dataset's sorted (ImageFolder) order, as the gate's delta does;
* ``keep="largest"``: the most pixels, ties broken by the larger file, then by order.

The other files of the group are *removable*. Nothing is ever written, moved or deleted: the result only lists
them (``Duplicates.removable_paths``). ``similar`` pictures (look alike, not verified as the same picture) are
not duplicates unless ``count_similar``; they are listed in ``Duplicates.similar`` either way.

>>> found = find_duplicates("data/drop_07", keep="largest")   # doctest: +SKIP
>>> found.counts["removable"], found.removable_paths[:2]        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vdc_torch.decision.gate import DatasetGate, Policy, _json_default, _records, _text, as_dataset, check_evidence
from vdc_torch.errors import check_choice
from vdc_torch.fingerprints.table import FingerprintTable
from vdc_torch.names import KEEP_RULES as _KEEP_RULES
from vdc_torch.search.cascade import KIND_RANK, MatchConfig, match_tables

#: Which file of a duplicate group is kept (``vdc dedup --keep``).
KEEP_RULES: tuple[str, ...] = _KEEP_RULES

#: Columns of :attr:`Duplicates.files`: one row per file of a duplicate group.
FILE_COLUMNS = ["group", "index", "path", "action", "kind", "method", "score", "evidence", "matched_index",
                "matched_path", "kept_index", "kept_path", "width", "height", "file_size", "label"]
#: Columns of :attr:`Duplicates.similar`: pairs that look alike but were not verified (not counted by default).
SIMILAR_COLUMNS = ["index", "path", "similar_index", "similar_path", "method", "score", "evidence"]


@dataclass
class Duplicates:
    """What :func:`find_duplicates` found: groups of duplicate files, the one kept and the ones removable."""

    #: One row per file of a duplicate group (:data:`FILE_COLUMNS`), groups in dataset order, the kept file first.
    #: ``kind``/``method``/``score``/``evidence`` describe the verified link that put the file into its group, with
    #: ``matched_path`` (the file at the other end of that link; for a group of two, the other file).
    files: pd.DataFrame
    #: Pairs found ``similar`` that do not count as duplicates (:data:`SIMILAR_COLUMNS`); empty with
    #: ``count_similar``, where they join the groups instead.
    similar: pd.DataFrame
    #: Samples that could not be used (``index, path, reason, fatal``), as in :attr:`Decision.problems`.
    problems: pd.DataFrame
    #: Files under the root that are not samples (``path, reason``).
    skipped: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    keep: str = "first"
    count_similar: bool = False
    root: str = ""
    policy: Policy = field(default_factory=Policy)
    config: MatchConfig = field(default_factory=MatchConfig)
    #: The dataset's fingerprints (for reports), not serialised.
    fingerprints: FingerprintTable | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.summary()

    @property
    def removable(self) -> list[str]:
        """Paths (relative to :attr:`root`) of the files that would be removed, in dataset order."""
        rows = self.files[self.files["action"] == "remove"].sort_values("index")
        return [str(p) for p in rows["path"]]

    @property
    def removable_paths(self) -> list[str]:
        """:attr:`removable` joined to the root as it was given: paths to hand to ``xargs rm`` from there."""
        return [p if (not self.root or p.startswith("<") or os.path.isabs(p)) else os.path.join(self.root, p)
                for p in self.removable]

    @property
    def removable_indices(self) -> list[int]:
        """Dataset indices of the removable files."""
        return sorted(int(i) for i in self.files.loc[self.files["action"] == "remove", "index"])

    @property
    def unique_indices(self) -> list[int]:
        """Dataset indices of the readable samples that stay: ``Subset(dataset, unique_indices)`` is deduplicated."""
        if self.fingerprints is None:
            return []
        removed = set(self.removable_indices)
        return [int(i) for i in self.fingerprints.sample_index if int(i) not in removed]

    def groups(self) -> list[dict[str, Any]]:
        """The groups as nested dicts: ``group``, ``kind`` (its weakest link), ``keep`` (one file), ``remove``."""
        out = []
        for number, frame in self.files.groupby("group", sort=True):
            records = _records(frame.drop(columns=["group"]))
            kept = [r for r in records if r["action"] == "keep"]
            kind = max((r["kind"] for r in records), key=lambda k: KIND_RANK.get(k, len(KIND_RANK)))
            out.append({"group": int(number), "kind": kind, "size": len(records), "keep": kept[0] if kept else None,
                        "remove": [r for r in records if r["action"] == "remove"]})
        return out

    def summary(self) -> str:
        """The paragraph ``vdc dedup`` prints: images, groups, removable files and their kinds."""
        c = self.counts
        where = self.root or "the dataset"
        head = (f"{c.get('images', 0)} images in {where} ({c.get('readable', 0)} readable"
                + (f", {c['unreadable']} unreadable left out" if c.get("unreadable") else "") + ").")
        if not c.get("removable"):
            parts = ["NO DUPLICATES:", head, "No file duplicates another."]
        else:
            kinds = ", ".join(f"{c[k]} {k.replace('_', '-')}" for k in ("exact", "near_duplicate", "similar")
                              if c.get(k))
            parts = ["DUPLICATES:", head,
                     f"{c['groups']} duplicate group(s) hold {c['duplicate_files']} files; keeping the "
                     f"{'first' if self.keep == 'first' else 'largest'} of each, {c['removable']} would be removed "
                     f"({kinds}), leaving {c['unique']} unique images."]
            if c.get("label_conflicts"):
                parts.append(f"{c['label_conflicts']} group(s) mix class labels.")
        if c.get("similar_pairs"):
            parts.append(f"{c['similar_pairs']} similar pair(s) are not counted as duplicates (--count-similar "
                         "counts them).")
        if c.get("skipped_files"):
            parts.append(f"{c['skipped_files']} file(s) under the folder are not images (see skipped).")
        parts.append("Nothing was changed.")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able Python values."""
        return {
            "root": self.root,
            "keep": self.keep,
            "count_similar": self.count_similar,
            "counts": dict(self.counts),
            "groups": self.groups(),
            "removable": self.removable,
            "similar": _records(self.similar),
            "problems": _records(self.problems),
            "skipped": _records(self.skipped),
            "policy": asdict(self.policy),
            "config": self.config.to_dict(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """The result as JSON text (also written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=indent, default=_json_default)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def find_duplicates(
    dataset: Any,
    *,
    keep: str = "first",
    count_similar: bool | None = None,
    policy: Policy | None = None,
    config: MatchConfig | None = None,
    workers: int | None = None,
    progress: bool = False,
    cache: str | os.PathLike[str] | None = None,
) -> Duplicates:
    """Groups of duplicate samples inside ``dataset`` and, for each, the one kept (``keep``: ``"first"`` or
    ``"largest"``) and the removable others.

    ``dataset`` is anything :meth:`DatasetGate.check` takes (a folder path, a :class:`Dataset`, a torch or Hugging
    Face dataset, a stream). ``count_similar`` (default: ``policy.count_similar``, False) lets ``similar`` pairs
    join the groups. Raises :class:`InsufficientEvidenceError` when nothing, or more than
    ``policy.max_problem_share`` of the samples, can be read. Reads the files only.

    >>> find_duplicates("data/drop_07").removable   # doctest: +SKIP
    ['cats/IMG_0001 copy.jpg']
    """
    check_choice("keep", keep, KEEP_RULES)
    policy = policy or Policy()
    counted_similar = policy.count_similar if count_similar is None else bool(count_similar)
    config = config or MatchConfig()
    data = as_dataset(dataset)
    gate = DatasetGate(None, policy=policy, config=config, workers=workers, progress=progress, cache=cache)
    table, problems, view = gate._fingerprint(data, "dedup")
    check_evidence(len(table), problems, policy, "dataset")
    links = match_tables(table, table, config, same_table=True)
    counted = dataclasses.replace(policy, count_similar=counted_similar).counted_kinds
    strong = links[links["kind"].isin(list(counted))]
    weak = links[~links["kind"].isin(list(counted))]
    files = _group_files(table, strong, keep)
    similar = pd.DataFrame({
        "index": table.sample_index[weak["new_row"].to_numpy(dtype=np.int64)],
        "path": _text([table.paths[int(q)] for q in weak["new_row"]]),
        "similar_index": table.sample_index[weak["ref_row"].to_numpy(dtype=np.int64)],
        "similar_path": _text([table.paths[int(r)] for r in weak["ref_row"]]),
        "method": weak["method"].to_numpy(), "score": weak["score"].to_numpy(dtype=np.float64).round(4),
        "evidence": weak["evidence"].to_numpy(),
    }, columns=SIMILAR_COLUMNS).sort_values("index").reset_index(drop=True)
    problem_frame = pd.DataFrame({
        "index": pd.Series([p.index for p in problems], dtype=np.int64),
        "path": _text([p.path for p in problems]), "reason": _text([p.reason for p in problems]),
        "fatal": pd.Series([p.fatal for p in problems], dtype=bool),
    })
    unused = getattr(view, "skipped", [])
    skipped = pd.DataFrame({"path": _text([os.path.relpath(f.path, view.root) if view.root else f.path
                                           for f in unused]),
                            "reason": _text([f.reason for f in unused])})
    removed = files[files["action"] == "remove"]
    n_groups = int(files["group"].nunique()) if len(files) else 0
    mixed = (files.groupby("group")["label"].nunique(dropna=True) > 1).sum() if len(files) else 0
    counts = {
        "images": len(view),
        "readable": len(table),
        "unreadable": sum(p.fatal for p in problems),
        "groups": n_groups,
        "duplicate_files": len(files),
        "removable": len(removed),
        "unique": len(table) - len(removed),
        "exact": int((removed["kind"] == "exact").sum()),
        "near_duplicate": int((removed["kind"] == "near_duplicate").sum()),
        "similar": int((removed["kind"] == "similar").sum()),
        "similar_pairs": len(similar),
        "label_conflicts": int(mixed),
        "skipped_files": len(unused),
    }
    return Duplicates(files=files, similar=similar, problems=problem_frame, skipped=skipped, counts=counts, keep=keep,
                      count_similar=counted_similar, root=view.root, policy=policy, config=config, fingerprints=table)


def _group_files(table: FingerprintTable, links: pd.DataFrame, keep: str) -> pd.DataFrame:
    """:data:`FILE_COLUMNS` rows: ``links`` (each later row -> one earlier row) joined into groups.

    Each row has at most one link, to an earlier row, so the links form trees whose root is the group's first row;
    that root's own link is the earliest link pointing at it.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    q_rows = links["new_row"].to_numpy(dtype=np.int64)
    r_rows = links["ref_row"].to_numpy(dtype=np.int64)
    own: dict[int, int] = {}  # row -> position in links of the row's link
    for position, (q, r) in enumerate(zip(q_rows.tolist(), r_rows.tolist())):
        own.setdefault(q, position)
        a, b = find(q), find(r)
        if a != b:
            parent[max(a, b)] = min(a, b)
    for position in np.argsort(q_rows, kind="stable").tolist():  # a root takes the earliest link pointing at it
        own.setdefault(int(r_rows[position]), position)
    members: dict[int, list[int]] = {}
    for row in sorted(own):
        members.setdefault(find(row), []).append(row)
    size = [int(s) if s is not None else 0 for s in table.file_size]
    records = []
    for number, root in enumerate(sorted(members), start=1):
        rows = members[root]
        if keep == "largest":
            kept = max(rows, key=lambda x: (int(table.width[x]) * int(table.height[x]), size[x], -x))
        else:
            kept = min(rows)
        for row in sorted(rows, key=lambda x: (x != kept, x)):
            link = links.iloc[own[row]]
            other = int(link["ref_row"]) if int(link["new_row"]) == row else int(link["new_row"])
            records.append({
                "group": number, "index": int(table.sample_index[row]), "path": table.paths[row],
                "action": "keep" if row == kept else "remove", "kind": link["kind"], "method": link["method"],
                "score": round(float(link["score"]), 4), "evidence": link["evidence"],
                "matched_index": int(table.sample_index[other]), "matched_path": table.paths[other],
                "kept_index": int(table.sample_index[kept]), "kept_path": table.paths[kept],
                "width": int(table.width[row]), "height": int(table.height[row]), "file_size": table.file_size[row],
                "label": table.labels[row],
            })
    frame = pd.DataFrame(records, columns=FILE_COLUMNS)
    for column in ("path", "matched_path", "kept_path", "label", "evidence"):
        frame[column] = _text(frame[column].tolist())
    return frame
