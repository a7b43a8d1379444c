"""examples/pointer_v45.py from the command line: a 2-epoch smoke run and clear input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "pointer_v45.py"
sys.path.insert(0, str(ROOT / "examples"))

import pointer_v45  # noqa: E402

RESULT_KEYS = ("acc@1", "acc@5", "acc@10", "mrr", "ndcg", "f1", "loss", "acc@1_seen")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("--epochs", "2", "--out", str(out), "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def test_two_epoch_run_writes_the_run_directory(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    for block in ("validation", "test"):
        for key in RESULT_KEYS:
            assert key in results[block], (block, key)
    assert results["recipe"] == "proposed"
    assert results["epochs_run"] == 2
    assert results["world_size"] == 1
    assert results["device"] == "cpu"
    assert set(results["num_samples"]) == {"train", "validation", "test"}
    assert all(n > 0 for n in results["num_samples"].values())
    assert results["num_locations"] > 2
    assert {"seed", "best_epoch", "wall_time_s"} <= set(results)
    assert (smoke_run / "checkpoints" / "best.pt").is_file()
    assert (smoke_run / "checkpoints" / "last.pt").is_file()
    assert len((smoke_run / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["training"]["epochs"] == 2
    log = (smoke_run / "train.log").read_text()
    assert "reduced to 0" in log  # warmup 5 does not fit 2 epochs
    assert "baseline" in log and "Epoch 2/2" in log


def test_two_epochs_learn_beyond_the_baseline(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["test"]["acc@1"] > results["baseline_test_acc@1"] + 10


def test_resume_of_a_finished_run_continues_to_more_epochs(smoke_run: Path) -> None:
    proc = run_cli("--resume", str(smoke_run), "--epochs", "3", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["epochs_run"] == 3
    assert "Resumed from" in (smoke_run / "train.log").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--data", "/nonexistent/staypoints.csv"], "data file not found"),
        (["--resume", "/nonexistent/run"], "no config.json"),
    ],
)
def test_bad_input_gives_one_line_error(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    code = pointer_v45.main([*args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_is_named_with_a_suggestion(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  learning_rate: 0.001\n  lr: 0.001\n")
    assert pointer_v45.main(["--config", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate" in err


def test_config_warmup_longer_than_epochs_is_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  epochs: 3\n  warmup_epochs: 5\n")
    assert pointer_v45.main(["--config", str(config), "--out", str(tmp_path)]) == 2
    assert "warmup_epochs (5) must not exceed epochs (3)" in capsys.readouterr().err


def test_nan_hyperparameter_is_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  lr: .nan\n")
    assert pointer_v45.main(["--config", str(config), "--out", str(tmp_path)]) == 2
    assert "lr must be a finite number" in capsys.readouterr().err


def test_csv_missing_a_column_is_refused(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("id,user_id,duration,start_day,start_min,weekday\n0,1,10,0,0,0\n")
    assert pointer_v45.main(["--data", str(csv), "--out", str(tmp_path)]) == 2
    assert "location_id" in capsys.readouterr().err


def test_yaml_config_equals_the_embedded_defaults() -> None:
    yaml = pytest.importorskip("yaml")
    loaded = yaml.safe_load((ROOT / "examples" / "configs" / "pointer_v45.yaml").read_text())
    assert loaded == pointer_v45.DEFAULT_CONFIG
