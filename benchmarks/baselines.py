"""Run the baseline libraries (imagededup, visdatcompy) in their own virtualenvs and time them.

Neither baseline is importable here: visdatcompy needs Python >= 3.12 and pins its own
OpenCV, and imagededup is kept out of the main interpreter on purpose. Each run therefore
writes a small script and a JSON file of arguments to a temporary folder, starts the
venv's Python on them, and reads the results back from a JSON file (no pickle). Timings
are measured inside the child process around the library calls only, so interpreter
start-up and imports are excluded (they are reported separately as ``process_s``).

Venvs (override with ``VDC_IMAGEDEDUP_PYTHON`` / ``VDC_VISDATCOMPY_PYTHON`` / ``VDC_FASTDUP_PYTHON``)::

    python -m venv --system-site-packages /tmp/venvs/imagededup   # reuses the system torch
    /tmp/venvs/imagededup/bin/pip install imagededup
    python3 -m venv /tmp/venvs/fastdup && /tmp/venvs/fastdup/bin/pip install fastdup   # offline, bundled model;
    # never a dependency of vdc_torch: the model's licence is non-commercial
    /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/venvs/visdatcompy
    /tmp/venvs/visdatcompy/bin/pip install visdatcompy

Example::

    from baselines import imagededup_run, visdatcompy_run
    from datasets import cifar10_subset

    d = cifar10_subset(100)
    r = imagededup_run(d, "PHash")          # {"encode_s": ..., "find_s": ..., "duplicates": {...}, ...}
    v = visdatcompy_run(d, d, what=("mse",))  # {"results": {"mse": {"seconds": ..., "matrix": [...]}}, ...}

``python benchmarks/baselines.py --selftest`` runs both on 10 vs 10 CIFAR images and on the
cows example and prints the results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # `datasets` is our sibling module
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import cifar10_subset, flat_dir, shared_root

__all__ = [
    "IMAGEDEDUP_METHODS",
    "VISDATCOMPY_EXTRACTORS",
    "VISDATCOMPY_HASHES",
    "VISDATCOMPY_METRICS",
    "BaselineError",
    "cifar10_subset",
    "flat_dir",
    "fastdup_python",
    "fastdup_run",
    "imagededup_python",
    "imagededup_run",
    "visdatcompy_python",
    "visdatcompy_run",
]

IMAGEDEDUP_METHODS = ("PHash", "DHash", "WHash", "AHash")
#: visdatcompy.Metrics methods; each gives a len(dir1) x len(dir2) matrix.
VISDATCOMPY_METRICS = ("pix2pix", "mae", "mse", "nrmse", "ssim", "psnr", "nmi")
#: our names -> visdatcompy.Hash compare_method names (cv2.img_hash algorithms).
VISDATCOMPY_HASHES = {
    "phash": "p",
    "ahash": "average",
    "average": "average",
    "p": "p",
    "marr_hildreth": "marr_hildreth",
    "radial_variance": "radial_variance",
    "block_mean": "block_mean",
    "color_moment": "color_moment",
}
#: visdatcompy.FeatureExtractor extractors.
VISDATCOMPY_EXTRACTORS = ("sift", "orb", "fast")


class BaselineError(RuntimeError):
    """A baseline's venv is missing, or its child process failed; the message has its output."""


def imagededup_python() -> Path:
    return Path(os.environ.get("VDC_IMAGEDEDUP_PYTHON") or "/tmp/venvs/imagededup/bin/python")


def fastdup_python() -> Path:
    return Path(os.environ.get("VDC_FASTDUP_PYTHON") or "/tmp/venvs/fastdup/bin/python")


def visdatcompy_python() -> Path:
    return Path(os.environ.get("VDC_VISDATCOMPY_PYTHON") or "/tmp/venvs/visdatcompy/bin/python")


def _run_child(python: Path, script: str, args: dict, timeout: float | None) -> dict:
    """Run ``script`` with ``python``; it reads ``argv[1]`` (JSON args) and writes ``argv[2]`` (JSON)."""
    if not python.is_file():
        raise BaselineError(
            f"baseline interpreter {python} not found; create the venv as described in "
            f"{Path(__file__).name}'s docstring"
        )
    with tempfile.TemporaryDirectory(prefix="vdc-baseline-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "runner.py").write_text(script)
        (tmp_path / "args.json").write_text(json.dumps(args))
        out = tmp_path / "result.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(python), str(tmp_path / "runner.py"), str(tmp_path / "args.json"), str(out)],
            capture_output=True,
            text=True,
            cwd=tmp,  # never the repo: a child must not import our own modules by accident
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"},
        )
        process_s = time.perf_counter() - t0
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout + proc.stderr).strip()[-3000:] or "(no output)"
            raise BaselineError(f"{python} runner exited with {proc.returncode}:\n{tail}")
        result = json.loads(out.read_text())
    result["process_s"] = process_s
    return result


# --------------------------------------------------------------------------------------------
# imagededup

_IMAGEDEDUP_RUNNER = textwrap.dedent(
    """
    import json, sys, time, logging, resource
    from importlib.metadata import version

    def cpu():  # user + system seconds of this process and of its finished children (pool workers)
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(x.ru_utime + x.ru_stime for x in r)

    def main():
        args = json.load(open(sys.argv[1]))
        logging.disable(logging.INFO)  # imagededup sets its loggers to DEBUG with a console handler
        from imagededup import methods
        method = getattr(methods, args["method"])(verbose=False)
        c0, t0 = cpu(), time.perf_counter()
        enc = method.encode_images(
            args["image_dir"], recursive=args["recursive"], num_enc_workers=args["num_enc_workers"]
        )
        t1, c1 = time.perf_counter(), cpu()
        kw = {}
        if args["max_distance_threshold"] is not None:
            kw["max_distance_threshold"] = args["max_distance_threshold"]
        if args["search_method"] is not None:
            kw["search_method"] = args["search_method"]
        dups = method.find_duplicates(
            encoding_map=enc, scores=True, num_dist_workers=args["num_dist_workers"], **kw
        )
        t2 = time.perf_counter()
        json.dump(
            {
                "tool": "imagededup",
                "version": version("imagededup"),
                "method": args["method"],
                "image_dir": args["image_dir"],
                "n_images": len(enc),
                "encode_s": t1 - t0,
                "encode_cpu_s": c1 - c0,
                "find_s": t2 - t1,
                "max_distance_threshold": kw.get("max_distance_threshold", 10),
                "encodings": dict(sorted(enc.items())),
                "duplicates": {
                    k: [[name, int(dist)] for name, dist in v] for k, v in sorted(dups.items())
                },
            },
            open(sys.argv[2], "w"),
        )

    if __name__ == "__main__":  # imagededup encodes with multiprocessing
        main()
    """
)


def imagededup_run(
    image_dir: str | os.PathLike[str],
    method: str = "PHash",
    max_distance_threshold: int | None = None,
    num_enc_workers: int = 2,
    *,
    num_dist_workers: int = 2,
    recursive: bool = False,
    search_method: str | None = None,
    timeout: float | None = 3600,
) -> dict:
    """Encode every image of ``image_dir`` with an imagededup hash and find duplicates.

    ``max_distance_threshold=None`` keeps imagededup's default (10 bits of 64). Returns::

        {"encode_s": float, "find_s": float, "process_s": float, "n_images": int,
         "encodings": {filename: 16-hex-digit hash}, "max_distance_threshold": int,
         "duplicates": {filename: [[other_filename, hamming_distance], ...]}, ...}

    Files imagededup cannot decode are left out of ``encodings`` (imagededup drops them).
    ``encode_cpu_s`` is the CPU time of encoding summed over the pool workers, a measure
    that holds up better than ``encode_s`` on a busy machine. Note that imagededup hands
    files to its pool in chunks of 100 (``pool.imap(..., chunksize=100)``), so fewer than
    101 images are encoded by one worker whatever ``num_enc_workers`` says.
    """
    if method not in IMAGEDEDUP_METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(IMAGEDEDUP_METHODS)}")
    image_dir = Path(image_dir).resolve()
    if not image_dir.is_dir():
        raise ValueError(f"image_dir={str(image_dir)!r} is not a directory")
    args = {
        "image_dir": str(image_dir),
        "method": method,
        "max_distance_threshold": max_distance_threshold,
        "num_enc_workers": num_enc_workers,
        "num_dist_workers": num_dist_workers,
        "recursive": recursive,
        "search_method": search_method,
    }
    return _run_child(imagededup_python(), _IMAGEDEDUP_RUNNER, args, timeout)


# --------------------------------------------------------------------------------------------
# fastdup

_FASTDUP_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, time
    from importlib.metadata import version

    def main():
        args = json.load(open(sys.argv[1]))
        import fastdup
        work = os.path.join(os.path.dirname(sys.argv[2]), "work")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # progress bars and banners
            fd = fastdup.create(work_dir=work, input_dir=args["image_dir"])
            fd.run(overwrite=True, threshold=args["threshold"], nearest_neighbors_k=args["k"],
                   num_threads=args["num_threads"], verbose=False)
        t1 = time.perf_counter()
        pairs = fd.similarity()
        valid = fd.annotations()
        json.dump({
            "tool": "fastdup", "version": version("fastdup"), "run_s": t1 - t0,
            "n_images": int(valid["is_valid"].sum()),
            "unreadable": [os.path.basename(f) for f, ok in zip(valid["filename"], valid["is_valid"]) if not ok],
            "pairs": [[os.path.basename(a), os.path.basename(b), float(d)]
                      for a, b, d in zip(pairs["filename_from"], pairs["filename_to"], pairs["distance"])],
        }, open(sys.argv[2], "w"))

    if __name__ == "__main__":
        main()
    """
)


def fastdup_run(image_dir: str | os.PathLike[str], threshold: float = 0.5, k: int = 20, num_threads: int = 2,
                timeout: float | None = 7200) -> dict:
    """Run fastdup (its bundled ONNX model, offline) on every image of ``image_dir``.

    Returns ``{"run_s", "n_images", "unreadable": [name], "pairs": [[name, other, similarity], ...]}``: each image's
    ``k`` nearest others with cosine similarity >= ``threshold`` (both directions are listed). fastdup's galleries
    call 0.9 a near duplicate.
    """
    image_dir = Path(image_dir).resolve()
    if not image_dir.is_dir():
        raise ValueError(f"image_dir={str(image_dir)!r} is not a directory")
    args = {"image_dir": str(image_dir), "threshold": threshold, "k": k, "num_threads": num_threads}
    return _run_child(fastdup_python(), _FASTDUP_RUNNER, args, timeout)


# --------------------------------------------------------------------------------------------
# visdatcompy

_VISDATCOMPY_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, math, re, sys, time, traceback, warnings
    from importlib.metadata import version

    ANSI = re.compile(r"\\x1b\\[[0-9;]*m")

    def num(v):
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, bool) or v is None:
            return v
        v = float(v)
        return v if math.isfinite(v) else str(v)  # "inf"/"nan": strict JSON has neither

    def sort_dataset(ds):
        # os.listdir order is arbitrary; sorting keeps runs comparable (results per pair are the same)
        ds.images.sort(key=lambda im: im.filename)
        ds.filenames = [im.filename for im in ds.images]
        ds.image_generator = ds._image_generator()

    def main():
        args = json.load(open(sys.argv[1]))
        warnings.simplefilter("ignore")  # e.g. skimage's divide-by-zero on identical images (PSNR)
        from visdatcompy import Dataset, FeatureExtractor, Hash, Metrics
        d1, d2 = Dataset(args["dir1"]), Dataset(args["dir2"])
        if args["sort"]:
            sort_dataset(d1)
            sort_dataset(d2)
        same = d1.path == d2.path  # visdatcompy's own test for "one dataset against itself"
        out = {
            "tool": "visdatcompy",
            "version": version("visdatcompy"),
            "dir1": args["dir1"],
            "dir2": args["dir2"],
            "rows": d1.filenames,
            "cols": d2.filenames,
            "resize_images": args["resize_images"],
            "results": {},
        }
        for what in args["what"]:
            res = {}
            log = io.StringIO()
            try:
                with contextlib.redirect_stdout(log):
                    if what in args["metrics"]:
                        metrics = Metrics(d1, d2)
                        t0, c0 = time.perf_counter(), time.process_time()
                        matrix = metrics.methods[what](resize_images=args["resize_images"])
                        res["seconds"] = time.perf_counter() - t0
                        res["cpu_s"] = time.process_time() - c0
                        res["matrix"] = [[num(v) for v in row] for row in matrix]
                        # the pairs VisDatCompare would report, with the library's own ranges
                        ranges = metrics.ranges.get(what, {})
                        for kind in ("duplicate", "similar"):
                            if what == "pix2pix" and kind == "duplicate":
                                test = bool  # pix2pix has no range entry; True means identical
                            elif kind in ranges:
                                test = ranges[kind]
                            else:
                                continue
                            res[kind + "_pairs"] = [
                                [d1.filenames[i], d2.filenames[j]]
                                for i, row in enumerate(matrix)
                                for j, v in enumerate(row)
                                if (i != j or not same) and test(v)
                            ]
                    elif what in args["hashes"] or what.endswith("_matrix"):
                        name = args["hashes"][what.removesuffix("_matrix")]
                        hasher = Hash(d1, d2)
                        t0, c0 = time.perf_counter(), time.process_time()
                        if what.endswith("_matrix"):
                            df = hasher.matrix(name)
                        else:
                            df = hasher.find_similars(name)
                        res["seconds"] = time.perf_counter() - t0
                        res["cpu_s"] = time.process_time() - c0
                        if df is None:
                            raise RuntimeError("visdatcompy.Hash returned None (it caught an error)")
                        if what.endswith("_matrix"):
                            # rows = dir1 files; the frame also has all-NaN columns named after dir1
                            # files that are not in dir2 (a visdatcompy quirk): keep dir2's columns
                            res["matrix"] = [
                                [num(df.loc[a, b]) for b in d2.filenames] for a in d1.filenames
                            ]
                        else:
                            res["similars"] = [
                                [a, str(row["similar_image_name"])] for a, row in df.iterrows()
                            ]
                    elif what in args["extractors"]:
                        t0, c0 = time.perf_counter(), time.process_time()
                        fext = FeatureExtractor(d1, d2, what)
                        t1 = time.perf_counter()
                        similars = fext.find_similars()
                        t2 = time.perf_counter()
                        res.update(seconds=t2 - t0, extract_s=t1 - t0, match_s=t2 - t1)
                        res["cpu_s"] = time.process_time() - c0
                        res["similars"] = [
                            [a.filename, b.filename if b is not False else None]
                            for a, b in similars.items()
                        ]
                    else:
                        raise ValueError(f"what={what!r} is unknown")
            except Exception as exc:
                res["error"] = "".join(traceback.format_exception_only(exc)).strip()
            text = ANSI.sub("", log.getvalue())
            res["printed_lines"] = text.count("\\n")
            res["log_tail"] = text.strip().splitlines()[-3:]
            out["results"][what] = res
        json.dump(out, open(sys.argv[2], "w"))

    if __name__ == "__main__":
        main()
    """
)


def visdatcompy_run(
    dir1: str | os.PathLike[str],
    dir2: str | os.PathLike[str],
    what: tuple[str, ...] | list[str] = ("mse", "ssim", "sift", "phash"),
    *,
    resize_images: bool = True,
    sort: bool = True,
    timeout: float | None = 3600,
) -> dict:
    """Compare two image folders with visdatcompy, one timed library call per item of ``what``.

    ``what`` items:

    - a metric (``pix2pix mae mse nrmse ssim psnr nmi``): ``Metrics(d1, d2).<metric>(resize_images)``;
      gives ``matrix`` (rows = ``dir1`` files, columns = ``dir2`` files; ``"inf"``/``"nan"``
      as strings) and the ``duplicate_pairs`` / ``similar_pairs`` that visdatcompy's ranges
      select (diagonal skipped when both folders are the same path, as the library does);
    - a hash (``phash ahash marr_hildreth radial_variance block_mean color_moment``):
      ``Hash(d1, d2).find_similars(method)`` gives ``similars`` = ``[[file1, nearest file2], ...]``;
      ``<hash>_matrix`` gives ``Hash.matrix`` as ``matrix``;
    - a feature extractor (``sift orb fast``): ``FeatureExtractor(d1, d2, x).find_similars()``
      gives ``similars``, with ``extract_s`` (constructor) and ``match_s`` timed apart.

    ``resize_images=True`` is ``Metrics``' default (every image resized to 600 px high and
    flattened); ``VisDatCompare`` itself calls the metrics with ``False`` (raw pixels, so all
    images must have the same size). ``sort`` orders both datasets by file name (visdatcompy
    keeps ``os.listdir`` order). A failing item gets ``error`` instead of results; the run
    goes on. Each item has ``seconds`` (wall) and ``cpu_s`` (process CPU time, all threads).
    Returns ``{"rows", "cols", "results": {what: {...}}, "process_s", ...}``.
    """
    dir1, dir2 = Path(dir1).resolve(), Path(dir2).resolve()
    for d in (dir1, dir2):
        if not d.is_dir():
            raise ValueError(f"{str(d)!r} is not a directory")
    known = set(VISDATCOMPY_METRICS) | set(VISDATCOMPY_HASHES) | set(VISDATCOMPY_EXTRACTORS)
    known |= {h + "_matrix" for h in VISDATCOMPY_HASHES}
    what = [what] if isinstance(what, str) else list(what)
    for w in what:
        if w not in known:
            raise ValueError(f"what item {w!r} is not one of {', '.join(sorted(known))}")
    args = {
        "dir1": str(dir1),
        "dir2": str(dir2),
        "what": what,
        "resize_images": resize_images,
        "sort": sort,
        "metrics": list(VISDATCOMPY_METRICS),
        "hashes": VISDATCOMPY_HASHES,
        "extractors": list(VISDATCOMPY_EXTRACTORS),
    }
    return _run_child(visdatcompy_python(), _VISDATCOMPY_RUNNER, args, timeout)


# --------------------------------------------------------------------------------------------
# self-test


def _short(result: dict, keep: int = 4) -> str:
    """One line per key of ``result``, lists and mappings cut to ``keep`` items, floats rounded."""

    def cut(v):
        if isinstance(v, dict):
            items = list(v.items())
            d = {k: cut(x) for k, x in items[:keep]}
            if len(items) > keep:
                d["..."] = f"{len(items) - keep} more"
            return d
        if isinstance(v, list):
            return [cut(x) for x in v[:keep]] + ([f"+{len(v) - keep}"] if len(v) > keep else [])
        if isinstance(v, float):
            return round(v, 3)
        return v

    return "\n".join(f"    {k}: {json.dumps(cut(v), ensure_ascii=False)}" for k, v in result.items())


def _selftest() -> int:
    cows = shared_root() / "visdatcompy-examples"
    tmp = Path(tempfile.mkdtemp(prefix="vdc-selftest-"))
    try:
        a = cifar10_subset(10, dest=tmp / "a")
        b = cifar10_subset(10, dest=tmp / "b", offset=5)  # shares 5 files (same names) with a
        print(
            f"CIFAR folders: {a} vs {b}; shared names: "
            f"{sorted({p.name for p in a.iterdir()} & {p.name for p in b.iterdir()})}"
        )
        for method in IMAGEDEDUP_METHODS:
            r = imagededup_run(a, method)
            print(
                f"\nimagededup {method} on 10 CIFAR images: encode {r['encode_s']:.3f}s "
                f"find {r['find_s']:.3f}s, {sum(map(len, r['duplicates'].values()))} dup links"
            )
        r = imagededup_run(cows / "cows_duplicates", "PHash")
        print("\nimagededup PHash on cows_duplicates:\n" + _short(r, 5))
        assert r["duplicates"]["V00001.png"] == [["V00001 (copy).png", 0]], r["duplicates"]

        v = visdatcompy_run(a, b, ("mse", "ssim", "sift", "phash"))
        print("\nvisdatcompy CIFAR 10 vs 10:")
        for k, res in v["results"].items():
            print(f"  {k}: {res.get('seconds', float('nan')):.3f}s {res.get('error') or ''}")
            print(_short({x: y for x, y in res.items() if x != "seconds"}))
        v = visdatcompy_run(cows / "cows", cows / "cows_duplicates", ("mse", "phash", "sift"))
        print("\nvisdatcompy cows vs cows_duplicates:")
        for k, res in v["results"].items():
            print(f"  {k}: {res.get('seconds', float('nan')):.3f}s {res.get('error') or ''}")
            print("   ", res.get("duplicate_pairs") or res.get("similars"))
        assert ["V00001.png", "V00001 (copy).png"] in v["results"]["mse"]["duplicate_pairs"]
        print(f"\nselftest passed (process overhead of the last run: {v['process_s']:.1f}s)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        sys.exit(_selftest())
    print(f"usage: python {sys.argv[0]} --selftest", file=sys.stderr)
    sys.exit(2)
