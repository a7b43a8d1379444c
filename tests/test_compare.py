"""examples/compare.py: pointer_v45's --recipe compare|ablate as a user of trainkit.sweep.

The sweep machinery (resume, checks, report, pool) is tested in tests/test_sweep.py; here:
the rows of each design, the flags the example refuses, and the real CLI end to end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import compare  # noqa: E402
import pointer_v45  # noqa: E402
from pointer_v45_config import Settings  # noqa: E402
from test_cli import run_cli  # noqa: E402
from trainkit import recipes  # noqa: E402
from trainkit.recipes import Recipe  # noqa: E402
from trainkit.sweep import RESULT_FILE, write_json  # noqa: E402

SEEDS = [1, 2, 3]


def base() -> dict[str, Recipe]:
    return {name: recipes.by_name(name).replace(epochs=4) for name in recipes.NAMES}


def row_recipe(row: dict) -> Recipe:
    return recipes.from_dict({**row, "seed": 0})


# ---------------------------------------------------------------------------- the rows
def test_compare_rows_are_the_two_recipes_without_their_seed() -> None:
    sweep = compare.sweep_of("compare", base(), Settings(), SEEDS, "revert")
    assert sweep.kind == "compare" and list(sweep.rows) == ["original", "proposed"]
    for name, recipe in base().items():
        assert "seed" not in sweep.rows[name]
        assert row_recipe(sweep.rows[name]) == recipe.replace(seed=0)
    assert sweep.train == "compare:train" and sweep.metrics is not None
    assert [m.label for m in sweep.metrics if m.verdict] == [
        "test Acc@1",
        "test Acc@5",
        "test MRR",
        "test Acc@1, seen targets",
    ]
    settings = sweep.shared["settings"]
    assert settings["model"] == dataclasses.asdict(Settings().model)
    assert "progress" not in settings["training"]  # chosen per process, not a result


def test_revert_design_takes_one_group_of_the_original_per_row() -> None:
    proposed, original = base()["proposed"], base()["original"]
    sweep = compare.sweep_of("ablate", base(), Settings(), SEEDS, "revert")
    assert sweep.kind == "ablation" and sweep.design == "revert"
    assert list(sweep.rows) == ["base", *recipes.ABLATION_GROUPS]
    assert row_recipe(sweep.rows["base"]) == proposed.replace(seed=0)
    for row, fields in recipes.ABLATION_GROUPS.items():
        recipe = row_recipe(sweep.rows[row])
        assert all(getattr(recipe, f) == getattr(original, f) for f in fields), row
        others = [f.name for f in dataclasses.fields(Recipe) if f.name not in fields]
        assert all(getattr(recipe, f) == getattr(proposed, f) for f in others if f != "seed"), row
    assert row_recipe(sweep.rows["optimizer"]).optimizer == "adagrad"
    assert row_recipe(sweep.rows["schedule"]).schedule == "fixed"
    assert row_recipe(sweep.rows["clip"]).max_grad_norm == 2.0
    assert row_recipe(sweep.rows["precision"]).precision == "fp32"


def test_add_one_design_starts_from_the_original_and_adds_one_group_per_row() -> None:
    proposed, original = base()["proposed"], base()["original"]
    sweep = compare.sweep_of("ablate", base(), Settings(), SEEDS, "add-one")
    assert sweep.design == "add-one"
    assert list(sweep.rows) == ["base", *recipes.ABLATION_GROUPS, "all"]
    assert row_recipe(sweep.rows["base"]) == original.replace(seed=0)
    schedule = row_recipe(sweep.rows["schedule"])
    assert (schedule.schedule, schedule.warmup, schedule.schedule_epochs) == (
        "warmup_cosine",
        proposed.warmup,
        proposed.schedule_epochs,
    )
    assert schedule.lr_schedule()(0) > 0  # a recipe that trains: its schedule builds
    assert row_recipe(sweep.rows["loss"]).label_smoothed_loss() is not None
    every = row_recipe(sweep.rows["all"])
    for fields in recipes.ABLATION_GROUPS.values():
        assert all(getattr(every, f) == getattr(proposed, f) for f in fields)


# ------------------------------------------------------------------- flags it refuses
def one_line(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "3"], "--seeds: only for --recipe compare or ablate"),
        (["--recipe", "original", "--jobs", "2"], "--jobs: only for --recipe compare or ablate"),
        (["--recipe", "compare", "--design", "add-one"], "--design: only for --recipe ablate"),
        (["--recipe", "compare", "--seeds", "1000000000000"], "--seeds: the count must be in"),
        (["--recipe", "ablate", "--seeds", "99999999999999999999,1"], "every seed must be an int"),
    ],
)
def test_flags_that_would_be_ignored_or_too_large_are_refused(
    tmp_path: Path, args: list[str], message: str, capsys
) -> None:
    code = pointer_v45.main([*args, "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert message in one_line(code, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def written_sweep(out: Path, rows: int = 2) -> Path:
    sweep = compare.sweep_of("compare", base(), Settings(), SEEDS, "revert")
    spec = sweep.to_spec(out / "sweep.json")
    if rows == 1:
        del spec["rows"]["proposed"]
    out.mkdir()
    write_json(out / "sweep.json", spec)
    return out


@pytest.mark.parametrize(
    "args", [["--epochs", "5"], ["--seeds", "5"], ["--recipe", "proposed"], ["--device", "cpu"]]
)
def test_resume_of_a_sweep_refuses_flags_that_would_change_it(
    tmp_path: Path, args: list[str], capsys
) -> None:
    out = written_sweep(tmp_path / "s")
    err = one_line(pointer_v45.main(["--resume", str(out), *args]), capsys.readouterr().err)
    assert f"--resume {out}: {args[0]} cannot change a sweep" in err
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


def test_a_one_row_compare_sweep_json_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    out = written_sweep(tmp_path / "s", rows=1)
    err = one_line(pointer_v45.main(["--resume", str(out)]), capsys.readouterr().err)
    assert f"{out / 'sweep.json'}: field 'rows': a compare sweep needs exactly 2 rows, got 1" in err


# ------------------------------------------------------------------------- the real CLI
TINY = """\
data: {synthetic_users: 4, synthetic_days: 40}
model: {d_model: 16, nhead: 2, num_layers: 1, dim_feedforward: 32}
training: {batch_size: 64, precision: fp32, log_every: 1}
proposed: {warmup: 0}
"""


@pytest.mark.slow
def test_a_sweep_killed_before_its_first_run_resumes(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "runs"
    proc = run_cli(
        "--recipe", "compare", "--seeds", "1", "--epochs", "1", "--config", str(config),
        "--out", str(out), "--device", "cpu", "--no-progress", "--jobs", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sweep,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for name in recipes.NAMES:  # as a kill right after sweep.json leaves it
        shutil.rmtree(sweep / name)
    (sweep / "report.md").unlink()
    proc = run_cli("--resume", str(sweep), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run 2/2: proposed seed 42 started" in proc.stdout and (sweep / "report.md").is_file()


@pytest.mark.slow
def test_cli_compare_two_seeds_two_jobs_end_to_end_and_resume(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "runs"
    proc = run_cli(
        "--recipe", "compare", "--seeds", "2", "--epochs", "2", "--config", str(config),
        "--out", str(out), "--device", "cpu", "--no-progress", "--jobs", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sweep,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert f"report: {sweep / 'report.md'}" in proc.stdout
    assert "4/4 this session, all done" in proc.stdout
    for name in recipes.NAMES:
        for seed in (42, 43):
            results = json.loads((sweep / name / f"seed{seed}" / "results.json").read_text())
            assert (results["recipe"], results["seed"], results["epochs_run"]) == (name, seed, 2)
            record = json.loads((sweep / name / f"seed{seed}" / RESULT_FILE).read_text())
            assert record["result"]["test.acc@1"] == results["test"]["acc@1"]
    report = (sweep / "report.md").read_text()
    assert report.startswith("# pointer_v45: original vs proposed, 2 seeds")
    assert "N = 2: no confidence interval" in report and (sweep / "curves.png").is_file()

    (sweep / "report.md").unlink()
    for name in ("results.json", RESULT_FILE):  # as if killed before its final evaluation
        (sweep / "proposed" / "seed43" / name).unlink()
    proc = run_cli("--resume", str(sweep), "--no-progress", "--jobs", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run 3/4: original seed 43 finished already" in proc.stdout
    assert "run 4/4: proposed seed 43 resumed" in proc.stdout
    assert "Resumed from" in (sweep / "proposed" / "seed43" / "train.log").read_text()
    assert (sweep / "report.md").is_file()

    bad = sweep / "original" / "seed42" / RESULT_FILE
    bad.write_text("{")
    proc = run_cli("--resume", str(sweep), "--no-progress")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad} is not readable JSON")
