"""The Trainer and the example under torchrun: 2 CPU processes on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "helpers" / "ddp_driver.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not __import__("torch").distributed.is_available(), reason="torch.distributed missing"
    ),
]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("stop_rank", [1, 0])
def test_one_rank_saying_stop_never_hangs_the_other(tmp_path: Path, stop_rank: int) -> None:
    proc = torchrun(str(DRIVER), str(tmp_path), str(stop_rank))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = ranks(tmp_path)
    assert r0["world_size"] == r1["world_size"] == 2
    # the decision is rank 0's, broadcast: both ranks ran the same epochs
    assert r0["epochs_run"] == r1["epochs_run"]
    assert r0["stopped_early"] == r1["stopped_early"] == (stop_rank == 0)
    assert r0["epochs_run"] == (1 if stop_rank == 0 else 3)


def test_validation_metrics_are_exact_across_ranks(tmp_path: Path) -> None:
    proc = torchrun(str(DRIVER), str(tmp_path), "-1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = ranks(tmp_path)
    assert r0["validation"] == r1["validation"]
    assert r0["validation"]["count"] == 37  # every sample once, none twice (37 is odd)
    single = r0["single_process_validation"]
    for key in ("acc@1", "acc@5", "acc@10", "mrr", "ndcg", "f1", "count"):
        assert r0["validation"][key] == pytest.approx(single[key], abs=1e-9), key
    assert r0["train_batches"] == r1["train_batches"]  # even training shards: same step count
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 2  # best.pt and last.pt, written once


def test_a_failed_save_on_rank_0_ends_every_rank(tmp_path: Path) -> None:
    proc = torchrun(
        str(DRIVER), str(tmp_path), "-1", "fail-save", timeout=180
    )  # a hang would time out
    assert proc.returncode != 0
    assert "No space left" in proc.stderr
    assert "rank 0 could not save" in proc.stderr  # rank 1 raised too, instead of waiting
    assert not list(tmp_path.glob("rank*.json"))


def test_example_under_torchrun_writes_one_run(tmp_path: Path) -> None:
    proc = torchrun(
        str(ROOT / "examples" / "pointer_v45.py"),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["epochs_run"] == 2
    assert [p.name for p in (runs[0] / "checkpoints").glob("best.pt")] == ["best.pt"]
    assert proc.stdout.count("Epoch 2/2") == 1  # logs on rank 0 only
