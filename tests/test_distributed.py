"""Multi-process fingerprinting under torchrun (gloo, CPU): every rank gets the single-process decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vdc_torch import DatasetGate

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from vdc_torch import DatasetGate

    dist.init_process_group("gloo")
    ref, new, out = sys.argv[1:4]
    decision = DatasetGate(reference=ref, workers=0).check(new)
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as handle:
        handle.write(decision.to_json())
    dist.destroy_process_group()
    """
)


def comparable(decision: dict) -> dict:
    return {k: decision[k] for k in ("action", "overlap", "counts", "delta_indices", "matches", "problems")}


def test_two_gloo_ranks_reach_the_single_process_decision(scenario, tmp_path: Path) -> None:
    # a bad file too, so problems travel between ranks as well
    (scenario.new / "broken.png").write_bytes(b"not a png")
    script = tmp_path / "gate_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(scenario.reference), str(scenario.new), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads(DatasetGate(reference=scenario.reference, workers=0).check(scenario.new).to_json())
    assert comparable(ranks[0]) == comparable(ranks[1]) == comparable(single)
    assert single["counts"]["unreadable"] == 1
