"""A reference split across 2 gloo ranks: each rank holds only its part, and the decision is byte for byte the one
a single process reaches (real photos with hard edits, CIFAR-10 images, a sharded manifest loaded in parts, and
synthetic tables large enough for the inverted-file kNN)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vdc_torch import DatasetGate, MatchConfig
from vdc_torch.decision.store.manifest import manifest_info, shards_of_rank
from vdc_torch.fingerprints.per_image import encode_detail
from vdc_torch.search.cascade import match_tables

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _benchmark_module(name: str) -> Any:
    """A module of benchmarks/, imported without leaving benchmarks/ on sys.path (its datasets.py would hide
    Hugging Face's ``datasets`` from later tests)."""
    saved = list(sys.path)
    try:
        sys.path.insert(0, str(BENCHMARKS))
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
        for key, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").parent == BENCHMARKS and key != name:
                del sys.modules[key]


build_cifar = _benchmark_module("same_matches").build_cifar
build_photos = _benchmark_module("same_matches").build_photos
make_tables = _benchmark_module("speed_matching").make_tables

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[5])
    sys.path.insert(0, sys.argv[8])
    from speed_matching import make_tables
    from test_split_reference import synthetic_drop
    from vdc_torch import DatasetGate
    from vdc_torch.fingerprints.per_image import encode_detail
    from vdc_torch.search.cascade import match_tables
    from vdc_torch.search import split_drop
    from vdc_torch.search.shards import ReferenceShard

    split_drop.DROP_CHUNK_ROWS = 23  # the drop gathered a few rows at a time: many chunks, the same decision
    split_drop.GATHER_ROWS = 5
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    photos_ref, photos_new, manifest, out = sys.argv[1:5]
    cifar_ref, cifar_new = sys.argv[6:8]
    result = {}
    for name, ref, new in (("photos", photos_ref, photos_new), ("cifar", cifar_ref, cifar_new)):
        gate = DatasetGate(reference=ref, workers=0)
        result[name] = json.loads(gate.check(new).to_json())
        result[name + "_rows"] = len(gate.reference_table)
    gate = DatasetGate.load(manifest, workers=0)
    result["manifest"] = json.loads(gate.check(photos_new).to_json())
    result["manifest_rows"] = len(gate.reference_table)
    DatasetGate(reference=photos_ref, workers=0).save(out + "/by_ranks.vdc")  # one shard per rank
    reloaded = DatasetGate.load(out + "/by_ranks.vdc", workers=0)
    result["by_ranks"] = json.loads(reloaded.check(photos_new).to_json())
    result["by_ranks_rows"] = len(reloaded.reference_table)
    broken = DatasetGate(reference=photos_ref, workers=0)
    if rank == 1:  # this rank's shard cannot be written: every rank must fail, the saved version stay
        broken.reference_table.crop_hashes = broken.reference_table.crop_hashes[:, :3]
    else:
        broken.reference_table
    try:
        broken.save(out + "/by_ranks.vdc")
        result["failed_save"] = "saved"
    except Exception as exc:
        result["failed_save"] = f"{type(exc).__name__}: {exc}"
    new, ref, _ = make_tables(40_000, 3_000, seed=3)
    detail = encode_detail(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))
    ref.details, new.details = [detail] * len(ref), [detail] * len(new)
    rows = np.arange(rank, len(ref), 2)  # strided: global rows need not be contiguous
    shard = ReferenceShard.across_ranks(rows, ref.rows(rows))
    frame = match_tables(new, ref.rows(rows), shard=shard)
    result["synthetic"] = frame.to_json(orient="split", double_precision=15)
    # a drop of 22k rows, matched 9,000 at a time: large enough for an inverted file over the drop's own rows in the
    # search for its internal duplicates
    drop, small_ref, small = synthetic_drop()
    rows = np.arange(rank, len(small_ref), 2)
    shard = ReferenceShard.across_ranks(rows, small_ref.rows(rows))
    frames = split_drop.match_split_drop(split_drop.SplitDrop.of_whole(drop), small_ref.rows(rows), shard, small,
                                         chunk_rows=9000)
    result["drop"] = [f.to_json(orient="split", double_precision=15) for f in frames]
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(result, handle)
    dist.destroy_process_group()
    """
)


def synthetic_drop() -> tuple[Any, Any, Any]:
    """A 22k-row drop (a 20k synthetic reference and 2k rows with copies of it), that reference, and a config without
    the rotation and frame stages (they would take most of the time on random tables)."""
    from vdc_torch.fingerprints.compute import FingerprintTable
    from vdc_torch.search.config import MatchConfig

    new, ref, _ = make_tables(20_000, 2_000, seed=5)
    detail = encode_detail(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))
    ref.details, new.details = [detail] * len(ref), [detail] * len(new)
    drop = FingerprintTable.concat([ref, new])
    drop.sample_index = np.arange(len(drop))
    return drop, ref, MatchConfig(max_rotation=0, framed=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("split")
    photos_ref, photos_new = build_photos(work)
    cifar_ref, cifar_new = build_cifar(work, 1200)
    # a sharded manifest of three shards: the photos reference saved in parts
    files = sorted(photos_ref.iterdir())
    parts = [work / f"part{i}" for i in range(3)]
    for i, f in enumerate(files):
        parts[i % 3].mkdir(exist_ok=True)
        os.link(f, parts[i % 3] / f.name)
    manifest = work / "ref.vdc"
    gate = DatasetGate(reference=parts[0], workers=0)
    gate.save(manifest, sharded=True)
    for part in parts[1:]:
        gate.update(part)
        gate.save(manifest)
    return {"photos_ref": photos_ref, "photos_new": photos_new, "cifar_ref": cifar_ref, "cifar_new": cifar_new,
            "manifest": manifest, "out": work}


def test_shards_of_rank_split_rows_evenly_in_order() -> None:
    assert [list(shards_of_rank([10, 10, 10, 10], r, 2)) for r in (0, 1)] == [[0, 1], [2, 3]]
    assert [list(shards_of_rank([100, 1, 1, 1], r, 2)) for r in (0, 1)] == [[0], [1, 2, 3]]
    assert [list(shards_of_rank([5], r, 3)) for r in range(3)] == [[0], [], []]


def test_two_ranks_holding_half_the_reference_each_decide_as_one_process(data: dict[str, Path]) -> None:
    script = data["out"] / "split.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [str(data[k]) for k in ("photos_ref", "photos_new", "manifest", "out")] + [
        str(ROOT / "benchmarks"), str(data["cifar_ref"]), str(data["cifar_new"]), str(ROOT / "tests")]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((data["out"] / f"rank{r}.json").read_text()) for r in (0, 1)]

    for name, ref in (("photos", data["photos_ref"]), ("cifar", data["cifar_ref"])):
        single = json.loads(DatasetGate(reference=ref, workers=0).check(data[f"{name}_new"] if name == "cifar"
                                                                         else data["photos_new"]).to_json())
        assert ranks[0][name] == ranks[1][name] == single, name
        total = single["counts"]["reference"]
        assert ranks[0][f"{name}_rows"] + ranks[1][f"{name}_rows"] == total
        assert 0 < ranks[0][f"{name}_rows"] < total
        assert single["counts"]["near_duplicate"] + single["counts"]["exact"] > 20  # many stages had work

    single = json.loads(DatasetGate.load(data["manifest"], workers=0).check(data["photos_new"]).to_json())
    assert ranks[0]["manifest"] == ranks[1]["manifest"] == single
    assert ranks[0]["manifest_rows"] + ranks[1]["manifest_rows"] == single["counts"]["reference"]
    assert 0 < ranks[1]["manifest_rows"] < single["counts"]["reference"]

    by_ranks = data["out"] / "by_ranks.vdc"
    assert manifest_info(by_ranks)["shards"] == 2
    loaded = DatasetGate.load(by_ranks, workers=0)
    assert sorted(loaded.reference_table.paths) == sorted(p.name for p in data["photos_ref"].iterdir())
    single = json.loads(loaded.check(data["photos_new"]).to_json())
    assert ranks[0]["by_ranks"] == ranks[1]["by_ranks"] == single
    for r in ranks:  # the failed save of rank 1 is an error on both ranks, and the saved version stays
        assert r["failed_save"].startswith("ManifestError") and "rank 1" in r["failed_save"], r["failed_save"]
    assert manifest_info(by_ranks)["shards"] == 2 and len(DatasetGate.load(by_ranks).reference_table) == len(
        loaded.reference_table)
    assert 0 < ranks[0]["by_ranks_rows"] < single["counts"]["reference"]
    folder = json.loads(DatasetGate(reference=data["photos_ref"], workers=0).check(data["photos_new"]).to_json())
    assert single["counts"] == folder["counts"] and single["delta_indices"] == folder["delta_indices"]

    new, ref, truth = make_tables(40_000, 3_000, seed=3)
    detail = encode_detail(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))
    ref.details, new.details = [detail] * len(ref), [detail] * len(new)
    whole = match_tables(new, ref).to_json(orient="split", double_precision=15)
    assert ranks[0]["synthetic"] == ranks[1]["synthetic"] == whole
    assert len(json.loads(whole)["data"]) >= truth["exact"] + truth["near"]

    drop, small_ref, small = synthetic_drop()
    one = [match_tables(drop, small_ref, small), match_tables(drop, drop, small, same_table=True)]
    assert ranks[0]["drop"] == ranks[1]["drop"] == [f.to_json(orient="split", double_precision=15) for f in one]
    assert len(one[0]) >= 20_000 and len(one[1]) >= 60  # every reference row, and the copies among the 2k


UPDATE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from PIL import Image
    from vdc_torch import DatasetGate
    from vdc_torch.errors import InvalidParameterError
    from vdc_torch.search import split_drop

    split_drop.DROP_CHUNK_ROWS, split_drop.GATHER_ROWS = 17, 4
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    manifest, extra, out, new, one_folder = sys.argv[1:6]
    queries = sys.argv[6:]
    result = {}
    gate = DatasetGate.load(manifest, workers=0)
    result["rows"] = len(gate.reference_table)
    result["query"] = gate.query(queries).to_json(orient="split")
    try:
        gate.query(queries[: 2 + rank])  # the ranks ask about different images: an error on every rank
        result["mismatch"] = "answered"
    except InvalidParameterError as exc:
        result["mismatch"] = str(exc)
    # a drop of one image: one rank holds none of it
    result["one"] = json.loads(gate.check(one_folder).to_json())

    class Stream(torch.utils.data.IterableDataset):  # every rank reads a stream whole, then shares it out
        def __iter__(self):
            for path in queries[:6]:
                with Image.open(path) as image:
                    yield image.convert("RGB"), 0

    result["stream"] = json.loads(gate.check(Stream()).to_json())

    class ByNode(torch.utils.data.IterableDataset):  # each rank its own share, as WebDataset's split_by_node
        def __iter__(self):
            for path in queries[rank:6:2]:
                with Image.open(path) as image:
                    yield image.convert("RGB"), 0

    try:
        gate.check(ByNode())
        result["by_node"] = "decided"
    except InvalidParameterError as exc:
        result["by_node"] = str(exc)
    result["added"] = gate.update(extra)
    result["rows_after"] = len(gate.reference_table)
    result["check"] = json.loads(gate.check(new).to_json())
    result["query_after"] = gate.query(queries).to_json(orient="split")
    gate.save(manifest)
    result["saved_rows"] = len(gate)
    with open(f"{out}/update{rank}.json", "w") as handle:
        json.dump(result, handle)
    dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def two_shards(data: dict[str, Path]) -> dict[str, Path]:
    """A sharded manifest of two shards (half the photos reference each) and a drop to add: the novel photos."""
    work = data["out"] / "update"
    files = sorted(data["photos_ref"].iterdir())
    halves = [work / "half0", work / "half1"]
    for i, f in enumerate(files):
        halves[i % 2].mkdir(parents=True, exist_ok=True)
        os.link(f, halves[i % 2] / f.name)
    extra = work / "extra"
    extra.mkdir()
    for f in sorted(data["photos_new"].glob("n*")):
        os.link(f, extra / f.name)
    manifest = work / "ref.vdc"
    gate = DatasetGate(reference=halves[0], workers=0)
    gate.save(manifest, sharded=True)
    gate.update(halves[1])
    gate.save(manifest)
    return {"manifest": manifest, "extra": extra, "work": work}


def test_two_ranks_answer_queries_and_append_an_update_as_one_process(data: dict[str, Path],
                                                                      two_shards: dict[str, Path]) -> None:
    work, manifest, extra = two_shards["work"], two_shards["manifest"], two_shards["extra"]
    before = work / "before"
    before.mkdir()
    shutil.copy(manifest, before / manifest.name)
    shutil.copytree(manifest.with_name(manifest.name + ".shards"), before / (manifest.name + ".shards"))
    stored = {p.name: p.read_bytes() for p in manifest.with_name(manifest.name + ".shards").iterdir()}
    queries = [str(p) for p in sorted(data["photos_new"].iterdir())]
    one_folder = work / "one"
    one_folder.mkdir()
    os.link(queries[0], one_folder / Path(queries[0]).name)
    script = work / "update.py"
    script.write_text(UPDATE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(manifest), str(extra), str(work), str(data["photos_new"]), str(one_folder),
                             *queries], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((work / f"update{r}.json").read_text()) for r in (0, 1)]

    single = DatasetGate.load(before / manifest.name, workers=0)
    total = len(single.reference_table)
    assert 0 < ranks[0]["rows"] < total and ranks[0]["rows"] + ranks[1]["rows"] == total  # each holds its part
    answers = single.query(queries)
    assert ranks[0]["query"] == ranks[1]["query"] == answers.to_json(orient="split")
    assert answers["seen"].sum() >= 20 and (~answers["seen"]).sum() >= len(list(extra.iterdir()))
    for r in ranks:
        assert "every rank must pass the same images" in r["mismatch"] and "rank 1: 3" in r["mismatch"]

    one = json.loads(single.check(one_folder).to_json())
    assert ranks[0]["one"] == ranks[1]["one"] == one and one["counts"]["readable"] == 1

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            for path in queries[:6]:
                with Image.open(path) as image:
                    yield image.convert("RGB"), 0

    streamed = json.loads(single.check(Stream()).to_json())
    assert ranks[0]["stream"] == ranks[1]["stream"] == streamed and streamed["counts"]["readable"] == 6
    for r in ranks:  # a stream that gives each rank other samples is refused on every rank, not matched wrongly
        assert "a stream must give every rank the same samples" in r["by_node"], r["by_node"]

    added = single.update(extra)
    assert ranks[0]["added"] == ranks[1]["added"] == added == len(list(extra.iterdir()))
    assert ranks[0]["rows_after"] + ranks[1]["rows_after"] == total + added
    after = single.query(queries)
    assert ranks[0]["query_after"] == ranks[1]["query_after"] == after.to_json(orient="split")
    novel = [q for q in queries if Path(q).name.startswith("n")]
    assert after.set_index("name").loc[novel, "kind"].eq("exact").all()  # the added photos are now seen

    decided = json.loads(single.check(data["photos_new"]).to_json())
    assert ranks[0]["check"] == ranks[1]["check"] == decided
    assert decided["counts"]["exact"] >= len(novel)

    # the save appended one shard per rank and left the stored shards as they were
    assert manifest_info(manifest)["shards"] == len(stored) + 2
    shards = {p.name: p.read_bytes() for p in manifest.with_name(manifest.name + ".shards").iterdir()}
    assert all(shards[name] == content for name, content in stored.items())
    reloaded = DatasetGate.load(manifest, workers=0)
    assert len(reloaded.reference_table) == total + added
    assert reloaded.query(queries).to_json(orient="split") == after.to_json(orient="split")
    assert json.loads(reloaded.check(data["photos_new"]).to_json()) == decided


ENCODER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    from test_encoder import pixel_encoder
    from vdc_torch import DatasetGate, MatchConfig

    dist.init_process_group("gloo")
    ref, new, out = sys.argv[1:4]
    gate = DatasetGate(reference=ref, workers=0, encoder=pixel_encoder(), config=MatchConfig(encoder_precision=0.95))
    result = {"check": json.loads(gate.check(new).to_json()), "rows": len(gate.reference_table)}
    result["query"] = gate.query(sorted(str(p) for p in __import__("pathlib").Path(new).rglob("copy*"))).to_json()
    # a sharded manifest of one shard: rank 1 holds no reference row
    loaded = DatasetGate.load(sys.argv[5], workers=0, encoder=pixel_encoder(),
                              config=MatchConfig(encoder_precision=0.95))
    result["one_shard"] = json.loads(loaded.check(new).to_json())
    result["one_shard_rows"] = len(loaded.reference_table)
    with open(f"{out}/encoder_rank{dist.get_rank()}.json", "w") as handle:
        json.dump(result, handle)
    dist.destroy_process_group()
    """
)


def test_two_ranks_derive_the_encoder_threshold_of_one_process(data: dict[str, Path]) -> None:
    """The calibration sample is drawn from the whole reference and its look-alikes searched on every rank's rows:
    the threshold, and so the decision, are those of one process."""
    script = data["out"] / "encoder.py"
    script.write_text(ENCODER_SCRIPT)
    one_shard = data["out"] / "encoder_one_shard.vdc"
    DatasetGate(reference=data["cifar_ref"], workers=0).save(one_shard, sharded=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [str(data["cifar_ref"]), str(data["cifar_new"]), str(data["out"]), str(ROOT / "tests"), str(one_shard)]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((data["out"] / f"encoder_rank{r}.json").read_text()) for r in (0, 1)]
    from test_encoder import pixel_encoder  # tests/ is on sys.path under pytest (rootdir conftest)

    gate = DatasetGate(reference=data["cifar_ref"], workers=0, encoder=pixel_encoder(),
                       config=MatchConfig(encoder_precision=0.95))
    single = json.loads(gate.check(data["cifar_new"]).to_json())
    assert ranks[0]["check"] == ranks[1]["check"] == single
    assert single["encoder"]["source"] == "calibrated" and single["encoder"]["similarity"] is not None
    assert single["encoder"]["sample"] == single["counts"]["reference"] == 600
    assert any(m["method"] == "encoder" for m in single["matches"])
    assert 0 < ranks[0]["rows"] < single["counts"]["reference"]
    queries = gate.query(sorted(str(p) for p in data["cifar_new"].rglob("copy*")))
    assert ranks[0]["query"] == ranks[1]["query"] == queries.to_json()
    loaded = DatasetGate.load(one_shard, workers=0, encoder=pixel_encoder(), config=MatchConfig(encoder_precision=0.95))
    assert ranks[1]["one_shard_rows"] == 0 and ranks[0]["one_shard_rows"] == 600
    assert ranks[0]["one_shard"] == ranks[1]["one_shard"] == json.loads(loaded.check(data["cifar_new"]).to_json())
