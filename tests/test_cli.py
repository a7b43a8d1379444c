"""examples/pointer_v45.py from the command line: a 2-epoch smoke run, clear input errors,
and the run directory's guarantees (lock, resume checks, no leftovers from refused runs)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "pointer_v45.py"
sys.path.insert(0, str(ROOT / "examples"))

import pointer_v45  # noqa: E402
import pointer_v45_config  # noqa: E402
import run_curves  # noqa: E402
import run_dir  # noqa: E402
import trainkit  # noqa: E402
from trainkit import recipes  # noqa: E402

RESULT_KEYS = ("acc@1", "acc@5", "acc@10", "mrr", "ndcg", "f1", "loss", "acc@1_seen")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("--epochs", "2", "--out", str(out), "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


@pytest.mark.slow  # the smoke_run fixture: a whole CLI run
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
    assert set(results["timings"]) == {
        "imports",
        "data",
        "device_init",
        "capture",
        "train",
        "eval",
        "final_eval",
        "total_wall",
    }
    assert all(isinstance(v, float) and v >= 0 for v in results["timings"].values())
    assert (
        results["timings"]["total_wall"] >= results["timings"]["train"] + results["timings"]["eval"]
    )
    assert (smoke_run / "checkpoints" / "best.pt").is_file()
    assert (smoke_run / "checkpoints" / "last.pt").is_file()
    assert len((smoke_run / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["recipe"] == "proposed" and config["training"]["epochs"] == 2
    assert config["training"]["warmup"] == 0 and config["training"]["capture"] is True
    assert not (
        smoke_run.parent / ".cache"
    ).exists()  # the split cache lives in the user cache directory
    assert list(Path(os.environ["TRAINKIT_CACHE_DIR"]).glob("geolife-*.npz"))
    log = (smoke_run / "train.log").read_text()
    assert "reduced to 0" in log  # warmup 5 does not fit 2 epochs
    assert "baseline" in log and "Epoch 2/2" in log


def test_two_epochs_learn_beyond_the_baseline(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["test"]["acc@1"] > results["baseline_test_acc@1"] + 10


@pytest.mark.slow  # the smoke_run fixture: a whole CLI run
def test_resume_of_a_finished_run_continues_to_more_epochs(smoke_run: Path) -> None:
    proc = run_cli("--resume", str(smoke_run), "--epochs", "3", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["epochs_run"] == 3
    assert "Resumed from" in (smoke_run / "train.log").read_text()


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert (
        err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    ), err
    return err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--epochs", str(10**400)], "--epochs must be a 64-bit integer, got 1000"),
        (["--seed", str(10**400)], "--seed must be a 64-bit integer, got 1000"),
        (["--data", "/nonexistent/staypoints.csv"], "staypoint file not found"),
        (["--resume", "/nonexistent/run"], "no config.json"),
        (
            ["--recipe", "compare", "--seeds", "two"],
            "--seeds must be a count or a comma-separated list",
        ),
        (["--seed", str(2**63 - 1)], f"--seed must be an int in [0, {2**32 - 1}], got {2**63 - 1}"),
        (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
        (
            ["--recipe", "compare", "--seed", str(2**32 - 1), "--seeds", "2"],
            f"--seeds 2 from seed {2**32 - 1}: the seeds must lie in [0, {2**32 - 1}]",
        ),
        (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
        (["--lr", "-1"], "--lr must be a finite number > 0.0, got -1.0"),
        (["--lr", "nan"], "--lr must be a finite number > 0.0, got nan"),
        (["--limit-batches", "0"], "--limit-batches must be an int >= 1, got 0"),
        (["--set", "lr"], "--set expects KEY=VALUE (e.g. --set lr=0.001), got 'lr'"),
        (["--set", "=1"], "--set expects KEY=VALUE"),
        (["--set", "lr=abc"], "--set lr=abc: lr must be a number, got 'abc'"),
        (["--set", "lr=nan"], "training.lr must be a finite number, got nan"),
        (["--set", "learning_rate=0.1"], "--set learning_rate=0.1: unknown key 'learning_rate'"),
        (["--set", "warmup_epochs=1"], "unknown key 'warmup_epochs' (did you mean 'warmup'?)"),
        (["--set", "modl.d_model=3"], "unknown section 'modl' (did you mean 'model'?)"),
        (["--set", "model.lr=0.1"], "--set model.lr=0.1: unknown key 'model.lr'"),
        (["--set", "compile=maybe"], "--set compile=maybe: compile must be true or false"),
        (["--set", "model.num_layers=1.5"], "model.num_layers must be an integer, got '1.5'"),
        (["--set", "data.max_len=ten"], "data.max_len must be null or an integer, got 'ten'"),
        (["--set", "betas=0.9,x"], "betas must be null or 2 comma-separated values, each a number"),
        (["--set", "betas=0.9"], "betas must be null or 2 comma-separated values, got '0.9'"),
        (["--set", "optimizer=sgd"], "training.optimizer must be one of 'adagrad', 'adamw'"),
        (
            ["--set", "data.synthetic_seed=-1"],
            "data.synthetic_seed must be an int in [0, 4294967295]",
        ),
        (["--set", "seed=4294967296"], f"seed must be an int in [0, {2**32 - 1}], got {2**32}"),
    ],
)
def test_bad_input_gives_one_line_error(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:
    code = pointer_v45.main([*args, "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert message in one_line_error(code, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()  # refused before the run directory was made


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("training:\n  learning_rate: 0.001\n", "unknown key training.learning_rate"),
        (
            "training:\n  warmup_epochs: 3\n",
            "unknown key training.warmup_epochs (did you mean 'warmup'?)",
        ),
        ("trainng:\n  lr: 0.001\n", "unknown section 'trainng' (did you mean 'training'?)"),
        ("training:\n  compile: 'no'\n", "training.compile must be true or false, got 'no'"),
        (
            "training:\n  per_step_schedule: 'no'\n",
            "training.per_step_schedule must be true or false, got 'no'",
        ),
        ("training:\n  lr: .nan\n", "training.lr must be a finite number, got nan"),
        ("model:\n  num_layers: 1.0\n", "model.num_layers must be a 64-bit integer, got 1.0"),
        (
            "model:\n  d_model: 100000000\n",
            "model.d_model must be between 1 and 4096, got 100000000",
        ),
        ("data:\n  max_len: ten\n", "data.max_len must be a 64-bit integer or null, got 'ten'"),
        ("data:\n  path: 5\n", "data.path must be a string or null, got 5"),
        (
            "data:\n  synthetic_seed: -1\n",
            "data.synthetic_seed must be an int in [0, 4294967295], got -1",
        ),
        ("data:\n  synthetic_users: 0\n", "data.synthetic_users must be an int >= 1, got 0"),
        ("training:\n  seed: -3\n", "seed must be an int >= 0, got -3"),
        ("training:\n  limit_batches: 0\n", "training.limit_batches must be an int >= 1, got 0"),
        (
            "data:\n  path: [a.csv, b.csv]\n",
            "data.path must be a string or null, got ['a.csv', 'b.csv']",
        ),
        (
            "proposed:\n  optimizer: sgd\n",
            "proposed.optimizer must be one of 'adagrad', 'adamw', got 'sgd'",
        ),
        ("training: [1, 2]\n", "section 'training' must be a mapping"),
        (
            "training:\n  epochs: 3\n  warmup: 5\n",
            "warmup must be <= total (3), got 5",
        ),  # WarmupCosineSchedule
        (
            "proposed:\n  lr: -0.001\n",
            "-0.001",
        ),  # refused by the optimizer, after the run directory was made
    ],
)
def test_bad_config_is_one_line_and_leaves_no_run_directory(
    yaml_text: str, message: str, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    code = pointer_v45.main(
        ["--config", str(config), "--out", str(tmp_path / "runs"), "--device", "cpu"]
    )
    assert message in one_line_error(code, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_csv_missing_a_column_is_refused(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("id,user_id,duration,start_day,start_min,weekday\n0,1,10,0,0,0\n")
    assert pointer_v45.main(["--data", str(csv), "--out", str(tmp_path)]) == 2
    assert "location_id" in capsys.readouterr().err


def test_non_integral_location_id_names_the_row(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday\n"
        "0,1,5,30.0,0,0,60,90,1\n1,1,1e300,30.0,0,0,60,90,1\n"
    )
    err = one_line_error(
        pointer_v45.main(["--data", str(csv), "--out", str(tmp_path / "runs")]),
        capsys.readouterr().err,
    )
    assert "line 3, column 'location_id': expected an integer, got '1e300'" in err


def test_yaml_config_equals_the_recipe_and_dataclass_defaults() -> None:
    yaml = pytest.importorskip("yaml")
    loaded = yaml.safe_load((ROOT / "examples" / "configs" / "pointer_v45.yaml").read_text())
    proposed, original = recipes.proposed().to_dict(), recipes.original().to_dict()
    assert set(loaded) == {"data", "model", "training", "proposed"}
    assert loaded["data"] == dataclasses.asdict(pointer_v45_config.DataConfig())
    assert loaded["model"] == dataclasses.asdict(pointer_v45_config.ModelConfig())
    run_fields = dataclasses.asdict(pointer_v45_config.RunConfig())
    shared = {k: v for k, v in loaded["training"].items() if k not in run_fields}
    assert {k: v for k, v in loaded["training"].items() if k in run_fields} == run_fields
    assert all(proposed[k] == original[k] == v for k, v in shared.items())  # for every recipe
    assert all(proposed[k] == v for k, v in loaded["proposed"].items()), loaded["proposed"]
    assert set(shared) | set(loaded["proposed"]) | {"name"} == set(
        proposed
    )  # every field spelled out
    settings, chosen = pointer_v45_config.configure(loaded, {"proposed": recipes.proposed()})
    assert chosen["proposed"] == recipes.proposed() and settings == pointer_v45_config.Settings()


# --------------------------------------------------------------------- the run directory

TINY = """\
data: {synthetic_users: 4, synthetic_days: 40}
model: {d_model: 16, nhead: 2, num_layers: 1, dim_feedforward: 32}
training: {batch_size: 64, epochs: 1, precision: fp32, log_every: 1}
proposed: {warmup: 0}
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished one-epoch run of each recipe (in-process)."""
    out = tmp_path_factory.mktemp("tiny")
    config = out / "tiny.yaml"
    config.write_text(TINY)
    runs = {}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for name in recipes.NAMES:
        code = pointer_v45.main(
            [
                "--config",
                str(config),
                "--recipe",
                name,
                "--out",
                str(out / name),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        assert code == 0
        (runs[name],) = (out / name).iterdir()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    return runs


def copy_run(tiny_runs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    target = tmp_path / tiny_runs[name].name
    shutil.copytree(tiny_runs[name], target)
    return target


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--seed", "7"),
        ("--recipe", "original"),
        ("--precision", "bf16"),
        ("--data", "other.csv"),
        ("--config", "tiny.yaml"),
    ],
)
def test_resume_refuses_a_conflicting_flag(
    flag: str, value: str, tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    err = one_line_error(
        pointer_v45.main(["--resume", str(run), flag, value, "--no-progress"]),
        capsys.readouterr().err,
    )
    assert f"{flag} " in err and "conflicts with the run's" in err
    assert (
        pointer_v45.main(
            ["--resume", str(run), "--seed", "42", "--recipe", "proposed", "--no-progress"]
        )
        == 0
    )


def test_resume_with_the_other_recipes_checkpoint_is_refused_before_loading(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    shutil.copy(tiny_runs["original"] / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    out_err = capsys.readouterr()
    code = pointer_v45.main(["--resume", str(run), "--epochs", "2", "--no-progress"])
    captured = capsys.readouterr()
    err = one_line_error(code, captured.err)
    assert "written by another recipe" in err and "optimizer" in err
    assert "Resumed from" not in captured.out, out_err

    edited = copy_run(
        tiny_runs, "proposed", tmp_path / "edited"
    )  # config.json edited to the other recipe
    config = json.loads((tiny_runs["original"] / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(config))
    err = one_line_error(
        pointer_v45.main(["--resume", str(edited), "--epochs", "2", "--no-progress"]),
        capsys.readouterr().err,
    )
    assert "written by another recipe" in err


@pytest.mark.parametrize(
    "block, value",
    [("optimizer", {"state": {}, "param_groups": "x"}), ("rng", [1, 2]), ("optimizer", None)],
)
def test_resume_with_a_malformed_state_block_is_one_line(
    block: str, value, tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    for name in os.listdir(run / "checkpoints"):
        if name != "best.pt":
            state = torch.load(run / "checkpoints" / name, weights_only=True)
            state[block] = value
            torch.save(state, run / "checkpoints" / name)
    err = one_line_error(
        pointer_v45.main(["--resume", str(run), "--epochs", "2", "--no-progress"]),
        capsys.readouterr().err,
    )
    assert block in err


def test_resume_tolerates_malformed_steps_jsonl_lines(
    tiny_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    with (run / "steps.jsonl").open("a") as handle:
        handle.write('{"step": "x"}\n[1, 2]\n{"step": [3]}\n{broken\n')
    assert pointer_v45.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 2


def test_a_second_process_on_a_locked_run_directory_is_refused(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    script = (
        "import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush()\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(run / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = one_line_error(
            pointer_v45.main(["--resume", str(run), "--epochs", "2", "--no-progress"]),
            capsys.readouterr().err,
        )
        assert f"in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert (
        pointer_v45.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    )  # the lock died with it
    with open(run / ".lock") as handle:  # and a finished run holds no lock
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_killed_before_its_config_json_is_refused_clearly(tmp_path: Path, capsys) -> None:
    run = tmp_path / "pointer_v45-proposed-seed42-20260101-000000"
    run.mkdir()  # as a kill between mkdir and the config.json write leaves it
    err = one_line_error(pointer_v45.main(["--resume", str(run)]), capsys.readouterr().err)
    assert "no config.json" in err and "stopped before it started" in err


def test_sweep_directory_with_a_malformed_sweep_json_is_one_line(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "pointer_v45-compare-seed42-x"
    for name in recipes.NAMES:
        shutil.copytree(tiny_runs[name], sweep / name / "seed42")
    (sweep / "sweep.json").write_text("[1, 2")
    err = one_line_error(
        pointer_v45.main(["--resume", str(sweep), "--no-progress"]), capsys.readouterr().err
    )
    assert "sweep.json" in err


def test_run_dir_lock_names_the_holder(tmp_path: Path) -> None:
    with run_dir.locked(tmp_path):
        with pytest.raises(run_dir.UsageError, match=f"in use by process {os.getpid()}"):
            with run_dir.locked(tmp_path):
                pass
    with run_dir.locked(tmp_path):  # released
        pass


# ------------------------------------------------------------- flags, dry runs, interrupts


def test_version_prints_trainkit_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pointer_v45.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"trainkit {trainkit.__version__}"


def test_help_says_that_a_warmup_that_does_not_fit_is_reduced(capsys) -> None:
    with pytest.raises(SystemExit):
        pointer_v45.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "reduced to EPOCHS // 10 (logged)" in help_text
    for flag in ("--set KEY=VALUE", "--lr", "--batch-size", "--fast-dev-run", "--limit-batches"):
        assert flag in help_text, flag


def test_set_values_are_typed_by_their_fields() -> None:
    sections = pointer_v45_config.parse_set(
        [
            "lr=3e-4",
            "batch_size=32",
            "model.d_model=32",
            "dropout=0.1",
            "proposed.patience=10",
            "betas=0.9,0.99",
            "max_len=null",
            "data.path=5",
            "compile=yes",
            "precision=bf16",
        ]
    )
    assert sections == {
        "training": {
            "lr": 3e-4,
            "batch_size": 32,
            "betas": (0.9, 0.99),
            "compile": True,
            "precision": "bf16",
        },
        "model": {"d_model": 32, "dropout": 0.1},
        "proposed": {"patience": 10},
        "data": {"max_len": None, "path": "5"},
    }


def test_set_and_flags_reach_the_recipe_in_order_config_set_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("training: {lr: 0.1, batch_size: 16}\nmodel: {d_model: 8}\n")
    args = pointer_v45.parse_args(
        [
            *("--config", str(config), "--recipe", "compare"),
            *("--set", "lr=0.2", "--set", "batch_size=24", "--set", "proposed.patience=9"),
            *("--set", "model.nhead=2", "--lr", "0.3"),
        ]
    )
    settings, chosen = pointer_v45_config.configure_new_run(args)
    assert {recipe.lr for recipe in chosen.values()} == {0.3}  # the flag wins over --set
    assert {recipe.batch_size for recipe in chosen.values()} == {24}  # --set wins over --config
    assert chosen["proposed"].patience == 9 and chosen["original"].patience is None
    assert (settings.model.d_model, settings.model.nhead) == (8, 2)


@pytest.mark.parametrize(
    "argv, warmup",
    [
        (["--epochs", "3"], 0),
        (["--set", "epochs=20"], 5),  # fits
        (["--set", "epochs=4"], 0),
        (["--set", "epochs=30", "--set", "warmup=2"], 2),
        (["--fast-dev-run"], 0),
    ],
)
def test_a_warmup_that_does_not_fit_the_epochs_is_reduced_and_logged(
    argv: list[str], warmup: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pointer_v45")
    _, chosen = pointer_v45_config.configure_new_run(pointer_v45.parse_args(argv))
    assert chosen["proposed"].warmup == warmup
    assert ("reduced to 0" in caplog.text) == (warmup == 0)


def test_an_explicit_warmup_that_does_not_fit_is_refused(tmp_path: Path, capsys) -> None:
    code = pointer_v45.main(
        [*("--set", "epochs=3", "--set", "warmup=5"), "--out", str(tmp_path), "--device", "cpu"]
    )
    assert "warmup must be <= total (3), got 5" in one_line_error(code, capsys.readouterr().err)


def test_fast_dev_run_trains_two_batches_of_one_epoch_into_a_run_directory(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 1", "epochs: 30"))
    out = tmp_path / "runs"
    args = ["--config", str(config), "--fast-dev-run", "--out", str(out), "--device", "cpu"]
    assert pointer_v45.main([*args, "--no-progress"]) == 0
    (run,) = out.iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 1
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["training"]["limit_batches"] == 2
    assert config_json["training"]["epochs"] == 1
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 2  # two batches, where the split holds three
    assert record["val_count"] <= 2 * 64
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_a_finished_run_has_curves_beside_its_results(tiny_runs: dict[str, Path]) -> None:
    for run in tiny_runs.values():
        assert (run / "results.json").is_file()
        assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_curves_are_skipped_with_one_line_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pointer_v45")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    history = [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_acc@1": 30.0}]
    assert run_curves.write_curves(history, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
    (line,) = [r.getMessage() for r in caplog.records if "curves" in r.getMessage()]
    assert "matplotlib is not installed" in line


def test_curves_draw_every_epoch_of_the_history(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    history = [
        {"epoch": epoch, "train_loss": 3.0 / epoch, "val_loss": float("nan"), "val_acc@1": 10.0}
        for epoch in (1, 2, 3)
    ]
    path = run_curves.write_curves(history, tmp_path / "curves.png", best_epoch=2)
    assert path == tmp_path / "curves.png" and path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left
    assert run_curves.write_curves([], tmp_path / "none.png") is None


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stage", ["load_data", "results.json", "curves"])
def test_ctrl_c_outside_fit_is_one_line_and_exit_130(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    if stage == "load_data":
        monkeypatch.setattr(pointer_v45, "load_data", _interrupt)
    elif stage == "results.json":
        write_json = run_dir.write_json

        def interrupted_results(path: Path, value) -> None:
            if path.name == "results.json":
                raise KeyboardInterrupt
            write_json(path, value)

        monkeypatch.setattr(run_dir, "write_json", interrupted_results)
    else:
        monkeypatch.setattr(run_curves, "write_curves", _interrupt)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    argv = ["--config", str(config), "--out", str(tmp_path / "runs"), "--no-progress"]
    try:
        code = pointer_v45.main([*argv, "--device", "cpu"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    err = capsys.readouterr().err
    assert code == 130
    assert err.startswith("interrupted (Ctrl-C)") and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_while_importing_is_one_line_and_exit_130() -> None:
    """A KeyboardInterrupt raised by the import of one of the example's modules (as Ctrl-C
    during the slow imports does)."""
    code = (
        "import runpy, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'geolife_cache':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--no-progress']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "interrupted (Ctrl-C) while starting: nothing was written"


def test_resume_with_fewer_epochs_than_trained_is_one_clear_line(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    assert pointer_v45.main(["--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    capsys.readouterr()
    code = pointer_v45.main(["--resume", str(run), "--epochs", "2", "--no-progress"])
    err = one_line_error(code, capsys.readouterr().err)
    assert "the run has trained 3 epochs already; give --epochs 3 or more" in err
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 3  # untouched


def test_resume_with_fewer_epochs_than_the_warmup_is_one_clear_line(tmp_path: Path) -> None:
    recipe = recipes.proposed()  # warmup 5 of 50 epochs, nothing trained yet
    with pytest.raises(run_dir.UsageError, match="shorter than the run's warmup of 5 epochs"):
        pointer_v45_config.check_resume_epochs(tmp_path, recipe, 4)
    pointer_v45_config.check_resume_epochs(tmp_path, recipe, 5)  # fits


def test_a_deleted_config_json_beside_checkpoints_is_named(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    (run / "config.json").unlink()
    err = one_line_error(pointer_v45.main(["--resume", str(run)]), capsys.readouterr().err)
    assert "its config.json is missing" in err and "checkpoint file(s)" in err
    assert "stopped before it started" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "lr=0.1"], "--set cannot change a run that exists"),
        (["--fast-dev-run"], "--fast-dev-run cannot change a run that exists"),
        (["--lr", "0.1"], "--lr 0.1 conflicts with the run's"),
        (["--batch-size", "7"], "--batch-size 7 conflicts with the run's 64"),
        (["--limit-batches", "1"], "--limit-batches 1 conflicts with the run's None"),
    ],
)
def test_resume_refuses_flags_that_would_change_the_run(
    argv: list[str], message: str, tiny_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_runs, "proposed", tmp_path)
    code = pointer_v45.main(["--resume", str(run), *argv, "--no-progress"])
    assert message in one_line_error(code, capsys.readouterr().err)
