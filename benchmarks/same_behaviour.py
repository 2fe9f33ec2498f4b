"""Same behaviour before and after a refactoring: two checkouts of vdc_torch, each run on its own code, compared.

    python benchmarks/same_behaviour.py                                  # 6b24f63 (pre-redesign) vs this checkout
    python benchmarks/same_behaviour.py --before 6b24f63 --after HEAD    # any two commits (or checkout paths)
    python benchmarks/same_behaviour.py --after /work/main --subset 10000,2000 --md /tmp/same.md

``--before`` / ``--after`` take a checkout path (a folder holding ``vdc_torch/``; its working tree is what runs) or a
commit of this repository (checked out once, read-only, with ``git worktree add --detach /tmp/vdc-same-<sha>``; an
existing clean detached worktree of that commit, such as ``/tmp/vdc-before``, is reused). Every figure is computed
by a subprocess of this venv's Python with ``PYTHONPATH=<checkout>`` and its working directory in a scratch folder,
so each side imports only its own ``vdc_torch`` (checked: the subprocess prints ``vdc_torch.__file__``). Nothing is
installed anywhere and ``--cache`` is never used (the match-result cache key and the ``<cache>.matches`` file are
intended changes of the redesign). ``PYTHONHASHSEED=0`` on both sides.

What is compared, each byte for byte:

1. **Match tables.** CIFAR-10 train vs test (``$VDC_DATA/cifar10``, all 60,000 files unless ``--subset``) through
   ``DatasetGate(reference=train).check(test)``: ``decision.matches``, ``internal_duplicates``, ``conflicts``,
   ``problems`` and ``skipped`` written as CSV (``DataFrame.to_csv(index=False)``) with their dtypes, and
   ``decision.to_json()``. The same on the seed-1 suite of ``benchmarks/accuracy.py`` (``accuracy_suite.build_suite``
   with seed 1, 52 references, 12 copies per class, built by each side's own ``accuracy_suite.py``: the two suites'
   file digests are compared too, and both gates then run on the *before* side's suite). ``accuracy.py --seed 1``
   itself is not run: it also runs every single method, imagededup and the figures (minutes); its cascade is exactly
   this ``DatasetGate(reference=str(ref)).check(str(new))`` call.
2. **``vdc gate --json``** on CIFAR (``--reference train/ --new test/``): the JSON file, the decision paragraph
   (standard output), the exit code, and the other lines of standard error with the progress bars taken out (tqdm
   segments: rates and ETAs; the redesign's range also adds per-stage bars on purpose). The only normalisation: the
   run's own output paths in its messages (``--json`` file -> ``<OUT.json>``, manifest -> ``<MANIFEST>``); every
   substitution is listed in the report.
3. **Manifests cross-load.** ``vdc index train/ -o <side>/train.vdc`` with each side, with ``time.gmtime()`` pinned
   (``meta.saved_at`` is the one clock read that lands in an output, and the manifest checksum covers it): the two
   files byte for byte, and their SQLite content (every table and row); then ``vdc gate --reference <manifest of A>
   --new test/ --json`` with the code of B, for all four pairs: each run's JSON, paragraph and exit code must equal
   those of before-code-with-before-manifest.

Writes ``benchmarks/results/same_behaviour.md`` (``--md``) and prints it. Exit status 0 when everything compared is
identical, 1 when anything differs (the differences and first differing rows are in the report), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_BEFORE = "6b24f63"
DEFAULT_MD = HERE / "results" / "same_behaviour.md"
FRAMES = ("matches", "internal_duplicates", "conflicts", "problems", "skipped")
SUITE_SEED = 1


# ============================================================================================== worker (subprocess)
# Runs inside the side's environment: PYTHONPATH=<checkout>. Imports nothing from the driver's checkout except
# this file (sys.path[0] is the driver's benchmarks/ folder, which has no vdc_torch).


def _worker_api(reference: str, new: str, out: Path) -> None:
    import cv2

    cv2.setNumThreads(1)  # as accuracy.py: the cascade forks verification workers
    import vdc_torch
    from vdc_torch import DatasetGate

    t0 = time.perf_counter()
    gate = DatasetGate(reference=reference)
    _ = gate.reference_table
    t1 = time.perf_counter()
    decision = gate.check(new)
    t2 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for name in FRAMES:
        frame = getattr(decision, name)
        frame.to_csv(out / f"{name}.csv", index=False, lineterminator="\n")
        (out / f"{name}.dtypes").write_text("".join(f"{c}\t{t}\n" for c, t in frame.dtypes.astype(str).items()))
    (out / "decision.json").write_text(decision.to_json())
    summary = {
        "action": str(decision.action), "reason": decision.reason, "overlap": repr(decision.overlap),
        "counts": dict(decision.counts), "delta_len": len(decision.delta), "delta_type": type(decision.delta).__name__,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    info = {"vdc_torch": vdc_torch.__file__, "reference_s": t1 - t0, "check_s": t2 - t1}
    (out / "info.json").write_text(json.dumps(info, indent=1))


def _worker_suite(checkout: Path, dest: Path, seed: int) -> None:
    sys.path.insert(0, str(checkout / "benchmarks"))  # the side's own accuracy_suite.py and datasets.py
    import accuracy_suite

    import vdc_torch

    assert Path(accuracy_suite.__file__).resolve().is_relative_to(checkout.resolve()), accuracy_suite.__file__
    t0 = time.perf_counter()
    accuracy_suite.build_suite(dest, seed, log=lambda _msg: None)
    info = {"vdc_torch": vdc_torch.__file__, "accuracy_suite": accuracy_suite.__file__,
            "build_s": time.perf_counter() - t0}
    (dest.parent / f"{dest.name}.info.json").write_text(json.dumps(info, indent=1))


def _worker_main(argv: list[str]) -> int:
    kind, *rest = argv
    if kind == "api":
        _worker_api(rest[0], rest[1], Path(rest[2]))
    elif kind == "suite":
        _worker_suite(Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif kind == "which":
        import vdc_torch

        print(vdc_torch.__file__)
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    return 0


# ============================================================================================== sides


@dataclasses.dataclass
class Side:
    name: str  # "before" / "after"
    spec: str  # as given on the command line
    path: Path
    commit: str
    subject: str
    dirty: list[str]  # `git status --porcelain -- vdc_torch` lines: the package differs from its commit
    work: Path = Path()

    @property
    def label(self) -> str:
        commit = self.commit[:10] if re.fullmatch(r"[0-9a-f]{40}", self.commit) else self.commit
        return f"{commit}{' + uncommitted changes in vdc_torch/' if self.dirty else ''}"


def _git(*args: str, cwd: Path = REPO_ROOT, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} (in {cwd}) failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _worktree_at(sha: str) -> Path | None:
    """An existing detached worktree of this repository at ``sha`` whose ``vdc_torch/`` is clean."""
    entries = _git("worktree", "list", "--porcelain").split("\n\n")
    for entry in entries:
        fields = dict(line.split(" ", 1) if " " in line else (line, "") for line in entry.splitlines())
        path = Path(fields.get("worktree", ""))
        if (fields.get("HEAD") == sha and "detached" in fields and (path / "vdc_torch").is_dir()
                and not _git("status", "--porcelain", "--", "vdc_torch", cwd=path, check=False)):
            return path
    return None


def resolve_side(name: str, spec: str) -> Side:
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "vdc_torch" / "__init__.py").is_file():
            raise SystemExit(f"--{name} {spec}: the folder holds no vdc_torch/ package")
        path = path.resolve()
    else:
        sha = _git("rev-parse", "--verify", f"{spec}^{{commit}}", check=False)
        if not sha:
            raise SystemExit(f"--{name} {spec}: neither a checkout folder nor a commit of {REPO_ROOT}")
        path = _worktree_at(sha) or Path(tempfile.gettempdir()) / f"vdc-same-{sha[:12]}"
        if not path.exists():
            _git("worktree", "add", "--detach", str(path), sha)
        if _git("rev-parse", "HEAD", cwd=path) != sha:
            raise SystemExit(f"{path} is not at {sha}: remove it (git worktree remove {path}) or pass a path")
    commit = _git("rev-parse", "HEAD", cwd=path, check=False) or "(not a git checkout)"
    subject = _git("log", "-1", "--format=%s", cwd=path, check=False)
    dirty = _git("status", "--porcelain", "--", "vdc_torch", cwd=path, check=False).splitlines()
    return Side(name, spec, path, commit, subject, dirty)


def side_env(side: Side) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(side.path)
    env["PYTHONHASHSEED"] = "0"
    # the side's benchmarks/datasets.py looks for <checkout>/../shared/data: point it at the driver's data
    env.setdefault("VDC_SHARED", str(_shared_root()))
    env.pop("PYTHONSTARTUP", None)
    return env


def run_in(side: Side, argv: list[str], *, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    """``argv`` (after the interpreter) in ``side``'s environment, working directory its scratch folder."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=side.work, env=side_env(side), capture_output=True,
                          timeout=timeout, check=False)
    return proc, time.perf_counter() - t0


def worker(side: Side, *args: str) -> float:
    proc, seconds = run_in(side, [str(Path(__file__).resolve()), "--worker", *args])
    if proc.returncode != 0:
        raise SystemExit(f"{side.name} worker {args[0]} failed ({proc.returncode}):\n"
                         f"{proc.stderr.decode(errors='replace')[-4000:]}")
    return seconds


#: ``python -m vdc_torch ARGS`` with ``time.gmtime()`` (no argument) pinned to 2000-01-01T00:00:00Z: the one clock
#: read that lands in an output (a manifest's ``meta.saved_at``, which its checksum also covers).
FIXED_CLOCK = (
    "import runpy, sys, time\n"
    "_gmtime = time.gmtime\n"
    "time.gmtime = lambda secs=None: _gmtime(946684800 if secs is None else secs)\n"
    "sys.argv = ['vdc', *sys.argv[1:]]\n"
    "runpy.run_module('vdc_torch', run_name='__main__', alter_sys=True)\n"
)


def vdc(side: Side, *args: str, placeholders: dict[str, str], fixed_clock: bool = False) -> dict[str, Any]:
    """``python -m vdc_torch ARGS`` on ``side``; ``placeholders``: this run's own paths, normalised in its output."""
    proc, seconds = run_in(side, ["-c", FIXED_CLOCK, *args] if fixed_clock else ["-m", "vdc_torch", *args])
    return {"rc": proc.returncode, "stdout": proc.stdout.decode(errors="surrogateescape"),
            "stderr": proc.stderr.decode(errors="surrogateescape"), "seconds": seconds,
            "placeholders": {str(k): v for k, v in placeholders.items()}}


# ============================================================================================== data


def cifar_data(subset: tuple[int, int] | None) -> tuple[Path, str]:
    """The CIFAR-10 ImageFolder root (train/, test/) and a sentence describing it."""
    sys.path.insert(0, str(HERE))
    from datasets import cifar10_root, data_root

    root = cifar10_root()
    if subset is None:
        return root, "all of CIFAR-10: 50,000 train and 10,000 test JPEGs (`$VDC_DATA/cifar10`)"
    n_train, n_test = subset
    target = data_root() / "same-behaviour" / f"cifar10-{n_train}-{n_test}"
    done = target.parent / f".{target.name}.complete"
    if not done.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        for split, n in (("train", n_train), ("test", n_test)):
            files = sorted((root / split).glob("*/*.jpg"))
            random.Random(0).shuffle(files)
            for src in sorted(files[:n]):
                dst = staging / split / src.parent.name / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        done.write_text("ok\n")
    return target, (f"a fixed subset of CIFAR-10: {n_train:,} train and {n_test:,} test JPEGs "
                    f"(`random.Random(0).shuffle` of the sorted file list of each split; `{target}`)")


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ============================================================================================== comparisons


def read_csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.reader(fh))


def first_diff(a: list[Any], b: list[Any]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_csv(a: Path, b: Path) -> dict[str, Any]:
    """Byte comparison of two CSV files, with row counts and the first differing rows when they differ."""
    same = a.read_bytes() == b.read_bytes()
    ra, rb = read_csv_rows(a), read_csv_rows(b)
    out: dict[str, Any] = {"identical": same, "rows_a": max(0, len(ra) - 1), "rows_b": max(0, len(rb) - 1),
                           "header": ra[0] if ra else []}
    da, db = (a.with_suffix(".dtypes").read_text(), b.with_suffix(".dtypes").read_text())
    out["dtypes_identical"] = da == db
    if da != db:
        out["dtypes"] = (da, db)
    if not same:
        i = first_diff(ra, rb)
        out["first_diff_row"] = i  # 0 = header
        out["diff_rows"] = sum(x != y for x, y in zip(ra, rb)) + abs(len(ra) - len(rb))
        if i is not None:
            out["first_rows"] = ([",".join(r) for r in ra[i:i + 3]], [",".join(r) for r in rb[i:i + 3]])
    return out


def compare_text(a: str, b: str, context: int = 2, limit: int = 40) -> dict[str, Any]:
    if a == b:
        return {"identical": True}
    diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "before", "after", n=context, lineterm=""))
    changed = sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))
    return {"identical": False, "changed_lines": changed, "diff": diff[:limit]}


_PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\|\s*\d+/\d+ \[|it/s\]|img/s\]|\[\d\d:\d\d<")


def messages(stderr: str) -> list[str]:
    """Standard error without progress bars: the segments between CR/LF that are not tqdm bars."""
    return [s for s in re.split(r"[\r\n]", stderr) if s.strip() and not _PROGRESS.search(s)]


def normalise(text: str, placeholders: dict[str, str]) -> tuple[str, list[str]]:
    """Each path of ``placeholders`` (the run's own output files) -> its placeholder; the substitutions made."""
    made = []
    for path, name in placeholders.items():
        if path in text:
            made.append(f"{text.count(path)} x `{path}` -> `{name}`")
            text = text.replace(path, name)
    return text, made


def manifest_dump(path: Path) -> tuple[list[str], str | None]:
    """Every table of a manifest as text lines (schema, then rows in rowid order; blobs as length and SHA-256),
    and its ``meta.saved_at``."""
    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    con.text_factory = bytes
    lines: list[str] = []
    saved_at = None
    try:
        tables = [r[0].decode() for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for (sql,) in con.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"):
            lines.append(f"schema {sql.decode()}")
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                values = []
                for v in row:
                    if isinstance(v, bytes):
                        values.append(v.decode("utf-8", "surrogateescape") if len(v) < 4096 and table == "meta"
                                      else f"blob:{len(v)}:{hashlib.sha256(v).hexdigest()}")
                    else:
                        values.append(repr(v))
                if table == "meta" and values and values[0] == "saved_at":
                    saved_at = values[1]
                lines.append(f"{table} " + " | ".join(values))
    finally:
        con.close()
    return lines, saved_at


# ============================================================================================== the comparison


@dataclasses.dataclass
class Report:
    sides: list[Side]
    lines: list[str] = dataclasses.field(default_factory=list)
    differences: list[str] = dataclasses.field(default_factory=list)
    normalised: list[str] = dataclasses.field(default_factory=list)
    details: list[str] = dataclasses.field(default_factory=list)  # first differing lines of the CLI outputs

    def add(self, *text: str) -> None:
        self.lines.extend(text)

    def yes(self, same: bool, what: str) -> str:
        if not same:
            self.differences.append(what)
        return "yes" if same else "**NO**"


def kind_counts(path: Path, column: str) -> str:
    rows = read_csv_rows(path)
    if not rows:
        return "-"
    i = rows[0].index(column)
    counts: dict[str, int] = {}
    for r in rows[1:]:
        counts[r[i]] = counts.get(r[i], 0) + 1
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def table_section(rep: Report, title: str, before: Path, after: Path) -> None:
    """Rows comparing the API artefacts of ``before`` and ``after`` (each a worker ``api`` output folder)."""
    rep.add(f"| {title}: artefact | rows before | rows after | identical bytes | dtypes identical |",
            "|---|---|---|---|---|")
    details: list[str] = []
    for name in FRAMES:
        c = compare_csv(before / f"{name}.csv", after / f"{name}.csv")
        same = rep.yes(c["identical"], f"{title}: {name}.csv")
        dsame = rep.yes(c["dtypes_identical"], f"{title}: {name} dtypes")
        rep.add(f"| `{name}.csv` | {c['rows_a']:,} | {c['rows_b']:,} | {same} | {dsame} |")
        if not c["identical"]:
            details.append(f"`{name}.csv`: {c['diff_rows']} differing row(s); first at data row "
                           f"{c['first_diff_row']} (0 = header):")
            if "first_rows" in c:
                details += ["```", *(f"before: {r}" for r in c["first_rows"][0]),
                            *(f"after:  {r}" for r in c["first_rows"][1]), "```"]
        if not c["dtypes_identical"]:
            details += [f"`{name}` dtypes differ:", "```", c["dtypes"][0], "---", c["dtypes"][1], "```"]
    j = compare_text((before / "decision.json").read_text(), (after / "decision.json").read_text())
    s = compare_text((before / "summary.json").read_text(), (after / "summary.json").read_text())
    rep.add(f"| `decision.to_json()` | - | - | {rep.yes(j['identical'], f'{title}: decision.to_json()')} | - |",
            f"| action, reason, overlap, counts, len(delta) | - | - | "
            f"{rep.yes(s['identical'], f'{title}: summary')} | - |", "")
    for what, d in (("decision.to_json()", j), ("summary", s)):
        if not d["identical"]:
            details += [f"{what}: {d['changed_lines']} changed line(s), first hunk:", "```diff", *d["diff"], "```"]
    summary = json.loads((before / "summary.json").read_text())
    rep.add(f"Before: action `{summary['action']}`, overlap {float(summary['overlap']):.4%}, counts "
            f"`{json.dumps(summary['counts'])}`, `len(delta)` {summary['delta_len']:,} "
            f"({summary['delta_type']}).",
            f"Match kinds: {kind_counts(before / 'matches.csv', 'kind')}; methods: "
            f"{kind_counts(before / 'matches.csv', 'method')}. Internal duplicates: "
            f"{kind_counts(before / 'internal_duplicates.csv', 'kind')}.", "")
    if details:
        rep.add("Differences:", "", *details, "")


def accuracy_score(api_out: Path, truth_file: Path) -> str:
    """Precision/recall of the cascade on the suite, scored like accuracy.py (strict: exact + near_duplicate)."""
    rows = read_csv_rows(api_out / "matches.csv")
    head = rows[0]
    ni, ri, ki = head.index("new_path"), head.index("ref_path"), head.index("kind")
    pred = {os.path.basename(r[ni]): (os.path.basename(r[ri]), r[ki]) for r in rows[1:]}
    tp = fp = fn = 0
    for t in json.loads(truth_file.read_text())["truth"]:
        got = pred.get(t["new"])
        positive = got is not None and got[1] in ("exact", "near_duplicate")
        if t["ref"] is not None and positive and got[0] == t["ref"]:
            tp += 1
            continue
        if t["ref"] is not None:
            fn += 1
        if positive:
            fp += 1
    return f"tp {tp}, fp {fp}, fn {fn} (precision {tp / max(1, tp + fp):.4f}, recall {tp / max(1, tp + fn):.4f})"


def compare_cli(rep: Report, what: str, runs: dict[str, dict[str, Any]], json_files: dict[str, Path] | None,
                base: str) -> None:
    """Rows comparing CLI runs (keyed by a label) against ``runs[base]``."""
    def norm(label: str, text: str, artefact: str) -> str:
        out, made = normalise(text, runs[label]["placeholders"])
        if made:
            rep.normalised.append(f"{what}, {label}, {artefact}: " + "; ".join(made))
        return out

    for label, run in runs.items():
        json_text = json_files[label].read_text(encoding="utf-8", errors="surrogateescape") if json_files else ""
        run["json"] = norm(label, json_text, "JSON")
        run["para"] = norm(label, run["stdout"], "stdout")
        run["msgs"] = norm(label, "\n".join(messages(run["stderr"])), "stderr messages")
    b = runs[base]
    for label, run in runs.items():
        if label == base:
            continue
        j, p, m = (compare_text(b[k], run[k]) for k in ("json", "para", "msgs"))
        rc = b["rc"] == run["rc"]
        json_cell = rep.yes(j["identical"], f"{what}: JSON {label}") if json_files else "(no JSON)"
        rep.add(f"| {what} | {base} vs {label} | {json_cell} | "
                f"{rep.yes(p['identical'], f'{what}: stdout {label}')} | "
                f"{rep.yes(m['identical'], f'{what}: stderr messages {label}')} | "
                f"{rep.yes(rc, f'{what}: exit code {label}')} ({b['rc']} / {run['rc']}) |")
        for artefact, d in (("JSON", j), ("stdout", p), ("stderr messages", m)):
            if not d["identical"]:
                rep.details.append(f"{what}, {base} vs {label}, {artefact}: {d['changed_lines']} changed line(s)")
                rep.details += ["```diff", *d["diff"], "```", ""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=DEFAULT_BEFORE, help=f"checkout path or commit (default {DEFAULT_BEFORE})")
    ap.add_argument("--after", default=str(REPO_ROOT), help="checkout path or commit (default: this checkout)")
    ap.add_argument("--subset", metavar="N_TRAIN,N_TEST",
                    help="a fixed CIFAR-10 subset instead of all 60,000 images, e.g. 10000,2000")
    ap.add_argument("--no-accuracy", action="store_true", help="leave out the accuracy suite (seed 1)")
    ap.add_argument("--md", type=Path, default=DEFAULT_MD, help=f"the report (default {DEFAULT_MD})")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (outputs, manifests)")
    args = ap.parse_args(argv)
    subset = None
    if args.subset:
        try:
            n_train, n_test = (int(x) for x in args.subset.split(","))
        except ValueError:
            ap.error("--subset takes N_TRAIN,N_TEST, e.g. 10000,2000")
        subset = (n_train, n_test)

    started = time.perf_counter()
    sides = [resolve_side("before", args.before), resolve_side("after", args.after)]
    work = args.work or Path(tempfile.mkdtemp(prefix="vdc-same-work-"))
    for side in sides:
        side.work = (work / side.name).resolve()
        side.work.mkdir(parents=True, exist_ok=True)
    before, after = sides
    rep = Report(sides)
    log = lambda msg: print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)
    seconds: dict[str, dict[str, float]] = {s.name: {} for s in sides}

    for side in sides:  # each side imports its own package
        proc, _ = run_in(side, ["-c", "import vdc_torch; print(vdc_torch.__file__)"])
        imported = Path(proc.stdout.decode().strip())
        if proc.returncode != 0 or not imported.is_relative_to(side.path):
            raise SystemExit(f"{side.name}: PYTHONPATH={side.path} imports {imported or proc.stderr.decode()}")
        log(f"{side.name}: {side.path} at {side.label} imports {imported}")

    root, data_text = cifar_data(subset)
    train, test = str(root / "train"), str(root / "test")

    # -- 1. match tables ------------------------------------------------------------------------------------------
    for side in sides:
        log(f"{side.name}: DatasetGate(reference=train).check(test)")
        seconds[side.name]["API check, CIFAR"] = worker(side, "api", train, test, str(side.work / "api-cifar"))
    suite_same = None
    if not args.no_accuracy:
        for side in sides:
            log(f"{side.name}: accuracy suite, seed {SUITE_SEED}")
            seconds[side.name]["accuracy suite build"] = worker(side, "suite", str(side.path),
                                                                str(side.work / "suite"), str(SUITE_SEED))
        suite = before.work / "suite"
        digests = [tree_digest(s.work / "suite") for s in sides]
        suite_same = digests[0] == digests[1]
        for side in sides:
            log(f"{side.name}: DatasetGate(reference=ref).check(new) on the seed-{SUITE_SEED} suite")
            seconds[side.name]["API check, suite"] = worker(side, "api", str(suite / "ref"), str(suite / "new"),
                                                            str(side.work / "api-suite"))

    # -- 2. vdc gate --json ---------------------------------------------------------------------------------------
    gate_runs: dict[str, dict[str, Any]] = {}
    gate_json: dict[str, Path] = {}
    for side in sides:
        log(f"{side.name}: vdc gate --reference train/ --new test/ --json")
        gate_json[side.name] = side.work / "gate-dir.json"
        gate_runs[side.name] = vdc(side, "gate", "--reference", train, "--new", test,
                                   "--json", str(gate_json[side.name]),
                                   placeholders={gate_json[side.name]: "<OUT.json>"})
        seconds[side.name]["vdc gate (folders)"] = gate_runs[side.name]["seconds"]

    # -- 3. manifests ---------------------------------------------------------------------------------------------
    index_runs: dict[str, dict[str, Any]] = {}
    for side in sides:
        log(f"{side.name}: vdc index train/")
        index_runs[side.name] = vdc(side, "index", train, "-o", str(side.work / "train.vdc"), fixed_clock=True,
                                    placeholders={side.work / "train.vdc": "<MANIFEST>"})
        seconds[side.name]["vdc index"] = index_runs[side.name]["seconds"]
    cross_runs: dict[str, dict[str, Any]] = {}
    cross_json: dict[str, Path] = {}
    for code in sides:
        for made in sides:
            label = f"{code.name} code, {made.name} manifest"
            log(f"vdc gate: {label}")
            cross_json[label] = code.work / f"gate-manifest-{made.name}.json"
            cross_runs[label] = vdc(code, "gate", "--reference", str(made.work / "train.vdc"), "--new", test,
                                    "--json", str(cross_json[label]), placeholders={
                                        made.work / "train.vdc": "<MANIFEST>", cross_json[label]: "<OUT.json>"})
            seconds[code.name][f"vdc gate --reference <{made.name}'s manifest>"] = cross_runs[label]["seconds"]

    # -- report ---------------------------------------------------------------------------------------------------
    rep.add("# Same behaviour before and after the redesign (issue 21)", "",
            f"Written by `benchmarks/same_behaviour.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{sum(len(s) for s in seconds.values())} timed runs in {time.perf_counter() - started:.0f} s; "
            f"{_machine_line()}.", "",
            "Command: `" + " ".join(["python", "benchmarks/same_behaviour.py", *argv]) + "`", "",
            "| side | given as | checkout run | commit | subject |", "|---|---|---|---|---|")
    for s in sides:
        rep.add(f"| {s.name} | `{s.spec}` | `{s.path}` | {s.label} | {s.subject[:90].replace('|', '/')} |")
    rep.add("", "Each side ran in its own subprocess of one venv's Python (`" + sys.executable + "`) with "
            "`PYTHONPATH=<checkout>` and `PYTHONHASHSEED=0`, working directory a scratch folder; each imported its "
            "own `vdc_torch` (checked). No `--cache` anywhere.", "", f"Data: {data_text}.", "")

    rep.add("## 1. Match tables: `DatasetGate(reference=train).check(test)`", "")
    table_section(rep, "CIFAR-10", before.work / "api-cifar", after.work / "api-cifar")
    if not args.no_accuracy:
        rep.add(f"### Accuracy suite, seed {SUITE_SEED} (the suite and cascade call of `accuracy.py --seed "
                f"{SUITE_SEED}`)", "",
                f"Suite built by each side's own `accuracy_suite.build_suite(seed={SUITE_SEED})`: "
                f"{len(digests[0])} files before, {len(digests[1])} after; every file's SHA-256 identical: "
                f"{rep.yes(suite_same, 'accuracy suite files')}. Both gates ran on the before side's suite.", "")
        if not suite_same:
            differing = sorted(k for k in set(digests[0]) | set(digests[1]) if digests[0].get(k) != digests[1].get(k))
            rep.add(f"Differing suite files ({len(differing)}): " + ", ".join(f"`{k}`" for k in differing[:20]), "")
        table_section(rep, f"suite seed {SUITE_SEED}", before.work / "api-suite", after.work / "api-suite")
        truth = before.work / "suite" / "truth.json"
        rep.add(f"Cascade score on the suite: before {accuracy_score(before.work / 'api-suite', truth)}; "
                f"after {accuracy_score(after.work / 'api-suite', truth)}.", "")

    rep.add("## 2. `vdc gate --reference train/ --new test/ --json FILE` and 3. manifests cross-load", "",
            "JSON = the `--json` file; stdout = the decision paragraph; stderr messages = standard error without "
            "the progress bars (tqdm segments between CR/LF; they hold rates and ETAs).", "",
            "| command | compared | JSON identical | stdout identical | stderr messages identical | exit code |",
            "|---|---|---|---|---|---|")
    compare_cli(rep, "vdc gate, folder reference", gate_runs, gate_json, "before")
    compare_cli(rep, "vdc index train/", index_runs, None, "before")  # its output is the manifest: compared below
    compare_cli(rep, "vdc gate, manifest reference", cross_runs, cross_json, "before code, before manifest")
    rep.add("")
    if rep.details:
        rep.add("Differences:", "", *rep.details)
    dumps = [manifest_dump(s.work / "train.vdc") for s in sides]
    same_content = dumps[0][0] == dumps[1][0]
    sizes = [(s.work / "train.vdc").stat().st_size for s in sides]
    same_bytes = (before.work / "train.vdc").read_bytes() == (after.work / "train.vdc").read_bytes()
    rep.add(f"Manifests written by `vdc index` (clock pinned: `meta.saved_at` {dumps[0][1]} / {dumps[1][1]}): "
            f"{sizes[0]:,} bytes before, {sizes[1]:,} after; files byte-identical: "
            f"{rep.yes(same_bytes, 'manifest file bytes')}; SQLite content ({len(dumps[0][0]):,} schema and row lines, "
            f"checksum table included) identical: {rep.yes(same_content, 'manifest content')}.", "")
    if not same_content:
        d = compare_text("\n".join(dumps[0][0]), "\n".join(dumps[1][0]))
        rep.add("Manifest content differences:", "```diff", *d["diff"], "```", "")
    folder_vs_manifest = gate_runs["before"]["json"] == cross_runs["before code, before manifest"]["json"]
    rep.add(f"For information: the JSON with a manifest reference equals the JSON with the folder reference: "
            f"{'yes' if folder_vs_manifest else 'no'}.", "")
    decision = json.loads(cross_runs["before code, before manifest"]["json"])
    rep.add("| code | manifest | action | overlap | exact | near_duplicate | similar | delta | exit code |",
            "|---|---|---|---|---|---|---|---|---|")
    for label, run in cross_runs.items():
        d = json.loads(run["json"])
        c = d["counts"]
        code, made = (x.split()[0] for x in label.split(", "))
        rep.add(f"| {code} | {made} | {d['action']} | {d['overlap']:.4%} | {c['exact']:,} | {c['near_duplicate']:,} |"
                f" {c['similar']:,} | {c['delta']:,} | {run['rc']} |")
    rep.add("", f"Reason (before code, before manifest): {decision['reason']}", "")

    rep.add("## Normalised", "")
    nothing = "- nothing: no artefact held a path that differs between the sides."
    rep.add(*(f"- {n}" for n in rep.normalised) if rep.normalised else [nothing])
    rep.add("- `meta.saved_at` of both manifests: pinned at the source, `time.gmtime()` -> 2000-01-01T00:00:00Z in the "
            "two `vdc index` processes (the manifest checksum covers it, so it is not rewritten afterwards).",
            "- Not compared: the progress bars on standard error (rates and ETAs), wall times.",
            "- Not run on purpose: `--cache` (the redesign changed the match-result cache key and moved cached "
            "results to `<cache>.matches`).", "")

    rep.add("## Verdict", "")
    if rep.differences:
        rep.add(f"**{len(rep.differences)} artefact(s) differ** (first differing rows in the sections above):", "",
                *(f"- {d}" for d in rep.differences), "")
    else:
        rep.add("**Identical**: every artefact above is the same byte for byte on both sides.", "")
    rep.add("Wall times (s; not compared, and not a speed comparison: the before side always ran first, on a "
            "shared 2-core machine):", "", "| run | " + " | ".join(s.name for s in sides) + " |",
            "|---|" + "---|" * len(sides))
    for key in seconds["before"]:
        rep.add(f"| {key} | " + " | ".join(f"{seconds[s.name].get(key, float('nan')):.1f}" for s in sides) + " |")
    rep.add("", "Rerun against a later commit or checkout: `python benchmarks/same_behaviour.py --before "
            f"{DEFAULT_BEFORE} --after <commit-or-path>`.", "")

    text = "\n".join(rep.lines).rstrip() + "\n"
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text)
    print(text)
    log(f"wrote {args.md}")
    if args.keep or args.work:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if rep.differences else 0


def _shared_root() -> Path:
    sys.path.insert(0, str(HERE))
    from datasets import shared_root

    return shared_root().resolve()


def _machine_line() -> str:
    sys.path.insert(0, str(HERE))
    try:
        from datasets import machine_line

        return machine_line()
    except Exception:  # noqa: BLE001 - a description only
        return f"Python {sys.version.split()[0]}"


if __name__ == "__main__":
    raise SystemExit(main())
