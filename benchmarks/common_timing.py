"""Timing helpers shared by the ``speed_*.py`` benchmarks (standard library only).

This machine is shared and busy (two cores, other processes running), so absolute seconds drift
from run to run. Every speed benchmark therefore measures its baseline *in the same run*,
interleaved round-robin with the thing under test (A B C A B C ...), repeats, and reports the
median and the ratio of medians; the load average at the start and end of a run is printed
beside the figures so a reader can judge how noisy they are.

Peak memory is measured in a fresh child process per configuration (``run_child``), because
``ru_maxrss`` is a high-water mark that never goes down within one process.

Example::

    from common_timing import interleaved, median, md_table, run_child

    times = interleaved({"ours": lambda: f(x), "baseline": lambda: g(x)}, repeats=3)
    print(median(times["ours"]), median(times["baseline"]))
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "REPO_ROOT",
    "median",
    "interleaved",
    "timed",
    "peak_rss_mb",
    "reset_peak_rss",
    "current_rss_mb",
    "run_child",
    "child_main",
    "fit_exponent",
    "md_table",
    "load_line",
    "fmt_s",
    "fmt_rate",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:  # siblings: datasets, baselines
    sys.path.insert(0, str(BENCH_DIR))
if str(REPO_ROOT) not in sys.path:  # the package itself, when PYTHONPATH is not set
    sys.path.insert(0, str(REPO_ROOT))


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(wall seconds, result)`` of one call; the garbage collector runs before, not during."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 3,
    *,
    verbose: bool = True,
    results: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Run every function once per round, ``repeats`` rounds, rotating the order each round.

    Returns ``{name: [seconds per round]}``; the last result of each function is stored in
    ``results[name]`` when a dict is given. Rotating the order keeps a slow phase of the machine
    from always hitting the same contender.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, value = timed(fns[name])
            times[name].append(seconds)
            if results is not None:
                results[name] = value
            if verbose:
                print(f"    round {r + 1}/{repeats} {name}: {seconds:.3f} s", flush=True)
    return times


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` of ``/proc/self/status``.

    ``VmHWM`` belongs to the current address space, so unlike ``ru_maxrss`` it is not inherited from
    the parent that started this process, and :func:`reset_peak_rss` can restart it.
    Falls back to ``ru_maxrss`` (KiB on Linux) where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Restart the peak-RSS high-water mark at the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    """Current resident set size of this process in MiB (from ``/proc/self/statm``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_child(script: str | os.PathLike[str], args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python script --child '<json args>'`` in a fresh interpreter and return its JSON result.

    The child must call :func:`child_main`, which prints exactly one line ``@@RESULT {json}``.
    On timeout or failure returns ``{"error": "..."}`` instead of raising, so one bad
    configuration does not end a long benchmark.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(script), "--child", json.dumps(args)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "timeout": True, "wall_s": time.perf_counter() - t0}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            result = json.loads(line[len("@@RESULT "):])
            result["wall_s"] = time.perf_counter() - t0
            return result
    tail = (proc.stdout + proc.stderr).strip()[-2000:]
    return {"error": f"child exited with {proc.returncode}: {tail}", "wall_s": time.perf_counter() - t0}


def child_main(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """In a child: parse ``--child <json>``, call ``fn(args)``, print its result with the peak RSS added."""
    args = json.loads(sys.argv[sys.argv.index("--child") + 1])
    result = fn(args)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print("@@RESULT " + json.dumps(result), flush=True)


def fit_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(size): time grows as size ** slope."""
    pts = [(math.log(s), math.log(t)) for s, t in zip(sizes, seconds) if s > 0 and t and t > 0 and math.isfinite(t)]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else float("nan")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells converted with ``str``)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def load_line() -> str:
    """The 1/5/15-minute load averages and the core count, e.g. ``load 3.1/2.8/2.0 on 2 cores``."""
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return "load n/a"
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"load {a:.1f}/{b:.1f}/{c:.1f} on {n} cores"


def fmt_s(seconds: float | None, digits: int = 3) -> str:
    """Seconds for a table cell: 3 significant digits, ``–`` for missing."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds >= 100:
        return f"{seconds:.0f}"
    return f"{seconds:.{digits}g}"


def fmt_rate(value: float | None) -> str:
    """A throughput for a table cell (``–`` for missing)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
