"""How long `vdc --help` and a usage error take, against Python's own start-up, measured in the same run.

    python benchmarks/cli_startup.py                      # this checkout
    python benchmarks/cli_startup.py --before ../main     # and another checkout (e.g. before a change), interleaved

Each command is a fresh ``python -m vdc_torch ...`` process (the ``vdc`` script does the same), timed wall clock,
``--repeats`` rounds interleaved round-robin with the baselines ``python -c pass`` and ``python -c "import torch"``;
the medians are printed and written to ``benchmarks/results/cli_startup.md``. The first round is a warm-up (page
cache) and is not counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common_timing import BENCH_DIR, REPO_ROOT, fmt_s, load_line, md_table, median


def run(cmd: list[str], checkout: Path | None) -> float:
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    # `python -m` puts the working directory first on sys.path: run in the checkout so it is the one imported
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=checkout, check=False)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="counted rounds (default 7)")
    parser.add_argument("--before", type=Path, help="another checkout to time the same commands in")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "cli_startup.md")
    args = parser.parse_args()

    py = sys.executable
    checkouts = {"this checkout": REPO_ROOT.resolve()}
    if args.before is not None:
        checkouts["--before " + str(args.before)] = args.before.resolve()
    commands: dict[str, tuple[list[str], Path | None]] = {
        "python -c pass": ([py, "-c", "pass"], None),
        'python -c "import torch"': ([py, "-c", "import torch"], None),
    }
    for label, path in checkouts.items():
        commands[f"vdc --help ({label})"] = ([py, "-m", "vdc_torch", "--help"], path)
        commands[f"vdc gate (usage error; {label})"] = ([py, "-m", "vdc_torch", "gate"], path)

    load_before = load_line()
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for r in range(args.repeats + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = run(*commands[name])
            if r:  # round 0 warms the page cache
                times[name].append(seconds)
        print(f"round {r}/{args.repeats} done", flush=True)
    load_after = load_line()

    base = median(times["python -c pass"])
    rows = [[f"`{name}`", fmt_s(median(t)), fmt_s(min(t)), fmt_s(max(t)), f"{median(t) - base:+.3f}"]
            for name, t in times.items()]
    table = md_table(["command", "median s", "min s", "max s", "median - `python -c pass` s"], rows)
    text = (
        "# `vdc` start-up\n\n"
        f"Wall time of a fresh process, median of {args.repeats} interleaved rounds (after one warm-up round), "
        f"measured by `benchmarks/cli_startup.py`; {load_before} at the start, {load_after} at the end; "
        f"Python {sys.version.split()[0]}.\n\n{table}\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
