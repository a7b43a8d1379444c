"""examples/compare.py: multi-seed sweeps, their resume and their report.

The sweep, resume and report logic is driven by a fake ``run_one`` that writes plausible
run directories in milliseconds; one slow test runs the real CLI end to end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import compare  # noqa: E402
from test_cli import run_cli  # noqa: E402
from trainkit import recipes, stats  # noqa: E402
from trainkit.recipes import Recipe  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = [1, 2, 3, 4, 5]


class Killed(Exception):
    """Stands for a kill in the middle of a run."""


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    return Recipe(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})


def short(recipe: Recipe) -> Recipe:
    return recipe.replace(epochs=4)


class FakeRun:
    """A ``run_one`` that writes config.json, metrics.jsonl and results.json at once.

    Test Acc@1 = 50 + a per-seed term shared by every row (so pairs share it) + ``effect(recipe)``
    + ``noise * N(0, 1)`` drawn per (seed, row). ``kill_at``: the call number (1-based) that
    writes its config.json and then raises :class:`Killed`.
    """

    def __init__(
        self,
        effect: Callable[[Recipe], float] = lambda r: 0.0,
        noise: float = 0.0,
        kill_at: int | None = None,
    ) -> None:
        self.effect, self.noise, self.kill_at = effect, noise, kill_at
        self.calls: list[tuple[Recipe, Path, bool]] = []

    def __call__(self, recipe: Recipe, run_dir: Path, resume: bool) -> dict:
        self.calls.append((recipe, run_dir, resume))
        assert (run_dir.parent.parent / "sweep.json").is_file()  # written before any run
        run_dir.mkdir(parents=True, exist_ok=True)  # run_one makes its own run directory
        (run_dir / "config.json").write_text(
            json.dumps({"recipe": recipe.name, "data": {"path": None}, "model": {"d_model": 8}})
        )
        if self.kill_at == len(self.calls):
            raise Killed(str(run_dir))
        shared = np.random.default_rng(recipe.seed).normal(0.0, 1.0)
        own = np.random.default_rng([recipe.seed, *run_dir.parent.name.encode()]).normal(0.0, 1.0)
        acc = 50.0 + shared + self.effect(recipe) + self.noise * own
        best = 1 + recipe.seed % recipe.epochs
        epochs = [
            {
                "epoch": e,
                "lr": recipe.lr,
                "train_loss": 3.0 / e,
                "val_loss": 2.5 / e + 0.01 * recipe.seed,
                "val_acc@1": acc - 5 + e,
            }
            for e in range(1, recipe.epochs + 1)
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
        results = {
            "recipe": recipe.name,
            "seed": recipe.seed,
            "best_epoch": best,
            "wall_time_s": 10.0 + recipe.seed,
            "test": {"acc@1": acc, "acc@5": acc + 30, "mrr": acc + 12, "acc@1_seen": acc + 2},
            "data": "synthetic",
            "device": "cpu",
        }
        (run_dir / "results.json").write_text(json.dumps(results))
        return results


def report_rows(report: str, heading: str | None = None) -> dict[str, list[str]]:
    """Markdown table rows of the report (or of the section under ``heading``): first cell -> the others."""
    if heading is not None:
        report = report.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def acc_of(out: Path, row: str, seed: int) -> float:
    return json.loads((out / row / f"seed{seed}" / "results.json").read_text())["test"]["acc@1"]


def base() -> dict[str, Recipe]:
    return {"original": short(recipes.original()), "proposed": short(recipes.proposed())}


# ------------------------------------------------------------------------------- compare
def test_compare_runs_both_recipes_with_the_same_seeds_seed_by_seed(tmp_path: Path) -> None:
    fake = FakeRun()
    report = compare.run_compare(base(), tmp_path, SEEDS[:3], fake)
    assert report == tmp_path / "report.md" and report.is_file()
    assert [(r.name, r.seed, d, resume) for r, d, resume in fake.calls] == [
        (name, seed, tmp_path / name / f"seed{seed}", False)
        for seed in SEEDS[:3]
        for name in ("original", "proposed")
    ]
    assert all(r.epochs == 4 for r, _, _ in fake.calls)
    spec = json.loads((tmp_path / "sweep.json").read_text())
    assert spec["kind"] == "compare" and spec["seeds"] == SEEDS[:3]
    assert spec["rows"] == {name: recipe.to_dict() for name, recipe in base().items()}
    assert compare.is_sweep_dir(tmp_path) and not compare.is_sweep_dir(tmp_path / "original")


def test_progress_is_one_line_per_run_started_and_finished(tmp_path: Path) -> None:
    compare.run_compare(base(), tmp_path, [7, 8], FakeRun())
    lines = (tmp_path / "sweep.log").read_text().splitlines()
    assert lines[0] == "run 1/4: original seed 7 started"
    assert (
        lines[1]
        == f"run 1/4: original seed 7 finished: test Acc@1 {acc_of(tmp_path, 'original', 7):.2f}, 17.0 s"
    )
    assert lines[6] == "run 4/4: proposed seed 8 started"
    assert lines[-1] == f"report: {tmp_path / 'report.md'}"


def test_report_numbers_are_the_paired_statistics_of_the_runs(tmp_path: Path) -> None:
    compare.run_compare(
        base(), tmp_path, SEEDS, FakeRun(effect=lambda r: 0.3 * (r.optimizer == "adamw"), noise=0.4)
    )
    rows = report_rows((tmp_path / "report.md").read_text())
    a = [acc_of(tmp_path, "original", s) for s in SEEDS]
    b = [acc_of(tmp_path, "proposed", s) for s in SEEDS]
    diff = stats.paired_difference(a, b, rng_seed=0)
    assert diff.t is not None and diff.bootstrap is not None
    assert rows["test Acc@1"] == [
        stats.summarize(a).text(),
        stats.summarize(b).text(),
        f"{diff.mean:+.2f} ± {diff.sd:.2f}",
        diff.t.text(),
        diff.bootstrap.text(),
        diff.verdict,
    ]
    for i, seed in enumerate(SEEDS):
        assert rows[str(seed)][:3] == [f"{a[i]:.2f}", f"{b[i]:.2f}", f"{b[i] - a[i]:+.2f}"]
    report = (tmp_path / "report.md").read_text()
    assert f"- test Acc@1: {diff.statement} (proposed − original" in report
    assert "t-interval** of the mean paired difference (it decides the verdict)" in report


def test_a_clear_difference_is_reported_as_one_and_none_as_none(tmp_path: Path) -> None:
    compare.run_compare(
        base(),
        tmp_path / "clear",
        SEEDS,
        FakeRun(effect=lambda r: 2.0 * (r.optimizer == "adamw"), noise=0.1),
    )
    rows = report_rows((tmp_path / "clear" / "report.md").read_text())
    assert rows["test Acc@1"][-1] == "differs"
    compare.run_compare(
        base(), tmp_path / "none", SEEDS, FakeRun()
    )  # the pairs are equal: every difference is 0
    report = (tmp_path / "none" / "report.md").read_text()
    assert report_rows(report)["test Acc@1"][-1] == "no spread"
    assert "- test Acc@1: no spread at N = 5: every difference is +0.00" in report


@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_seeds_give_a_statement_instead_of_intervals(tmp_path: Path, n: int) -> None:
    compare.run_compare(base(), tmp_path, SEEDS[:n], FakeRun(noise=1.0))
    report = (tmp_path / "report.md").read_text()
    assert f"N = {n}: no confidence interval" in report and "are anecdotes, not evidence" in report
    assert report_rows(report)["test Acc@1"][3:] == ["—", "—", "too few seeds"]


def test_report_has_two_pngs_and_curves_from_metrics(tmp_path: Path) -> None:
    compare.run_compare(base(), tmp_path, SEEDS[:3], FakeRun(noise=0.5))
    report = (tmp_path / "report.md").read_text()
    for name in ("seeds.png", "curves.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 800 and height >= 400, name
        assert f"]({name})" in report, name


def test_settings_table_lists_the_fields_that_differ(tmp_path: Path) -> None:
    compare.run_compare(base(), tmp_path, [1], FakeRun())
    rows = report_rows((tmp_path / "report.md").read_text())
    assert rows["`optimizer`"] == ["adagrad", "adamw"]
    assert rows["`lr`"] == ["0.15", "6.5e-04"]
    assert "`epochs`" not in rows and "`seed`" not in rows and "`batch_size`" not in rows


# ------------------------------------------------------------------------------ ablation
def adagrad_matters(recipe: Recipe) -> float:
    return -2.0 if recipe.optimizer == "adagrad" else 0.0


def test_ablation_reverts_one_group_of_fields_per_row(tmp_path: Path) -> None:
    proposed, original = short(recipes.proposed()), recipes.original()
    fake = FakeRun()
    compare.run_ablation(proposed, original, tmp_path, [1, 2, 3], fake)
    spec = json.loads((tmp_path / "sweep.json").read_text())
    assert spec["kind"] == "ablation"
    assert list(spec["rows"]) == ["base", *compare.ABLATION_ROWS]
    assert len(fake.calls) == 7 * 3
    by_row = {d.parent.name: r for r, d, _ in fake.calls if r.seed == 1}
    assert by_row["base"] == proposed.replace(seed=1)
    for row, fields in compare.ABLATION_ROWS.items():
        recipe = by_row[row]
        changed = {
            f.name
            for f in dataclasses.fields(Recipe)
            if getattr(recipe, f.name) != getattr(proposed, f.name) and f.name != "seed"
        }
        assert changed == {f for f in fields if getattr(original, f) != getattr(proposed, f)}, row
        assert all(getattr(recipe, f) == getattr(original, f) for f in fields), row
    assert by_row["optimizer"].optimizer == "adagrad" and by_row["optimizer"].lr == 0.15
    assert (
        by_row["optimizer"].initial_accumulator_value == 0.1
        and by_row["optimizer"].weight_decay is None
    )
    assert by_row["schedule"].schedule == "fixed"
    assert by_row["clip"].max_grad_norm == 2.0
    assert by_row["loss"].label_smoothing == 0.0 and by_row["loss"].loss == "masked_nll"
    assert (
        by_row["selection"].selection == "running_average" and by_row["selection"].patience is None
    )
    assert by_row["precision"].precision == "fp32" and by_row["precision"].amp is False


def test_ablation_report_marks_the_rows_that_matter(tmp_path: Path) -> None:
    compare.run_ablation(
        short(recipes.proposed()),
        recipes.original(),
        tmp_path,
        SEEDS,
        FakeRun(effect=adagrad_matters, noise=0.001),
    )
    report = (tmp_path / "report.md").read_text()
    rows = report_rows(report, "## test Acc@1: each row against `base`")
    base_acc = [acc_of(tmp_path, "base", s) for s in SEEDS]
    assert rows["`base`"][0] == stats.summarize(base_acc).text()
    assert rows["`optimizer`"][-1] == "**matters**" and rows["`optimizer`"][1] == "-2.00"
    for row in ("schedule", "clip", "loss", "selection", "precision"):
        assert rows[f"`{row}`"][-1] == "no difference detected", row
    assert "reverting `optimizer` changes test Acc@1" in report
    per_seed = report_rows(report, "## Per seed: test Acc@1")
    assert per_seed["seed"] == ["`base`", *(f"`{row}`" for row in compare.ABLATION_ROWS)]
    assert per_seed["3"][1] == f"{acc_of(tmp_path, 'optimizer', 3):.2f}"
    others = report_rows(report, "## Other metrics: difference from `base` (mean, 95% t-interval)")
    assert others["`optimizer`"][0].startswith(
        "-2.00 [-2.00, -2.00]"
    )  # Acc@5 moves with Acc@1 in the fake


def test_ablation_refuses_a_row_that_changes_nothing(tmp_path: Path) -> None:
    proposed = short(recipes.proposed())
    with pytest.raises(ValueError, match="ablation row 'optimizer' changes nothing"):
        compare.run_ablation(
            proposed, proposed.replace(schedule="fixed"), tmp_path, SEEDS, FakeRun()
        )
    assert not (tmp_path / "sweep.json").exists()


# -------------------------------------------------------------------------------- resume
def test_a_killed_sweep_resumes_keeps_finished_runs_and_reports_all(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        compare.run_compare(
            base(), tmp_path, [1, 2, 3], FakeRun(kill_at=4)
        )  # proposed seed 2 killed mid-run
    assert not (tmp_path / "report.md").exists()
    before = {p: p.read_text() for p in tmp_path.glob("*/seed*/results.json")}
    assert len(before) == 3
    fake = FakeRun()
    report = compare.resume_sweep(tmp_path, fake, recipe_from_dict)
    assert [(d.relative_to(tmp_path).as_posix(), resume) for _, d, resume in fake.calls] == [
        ("proposed/seed2", True),
        ("original/seed3", False),
        ("proposed/seed3", False),
    ]
    assert all(
        p.read_text() == text for p, text in before.items()
    )  # finished runs kept as they were
    assert report.is_file() and len(report_rows(report.read_text())["test Acc@1"]) == 6
    log = (tmp_path / "sweep.log").read_text()
    assert (
        "run 1/6: original seed 1 finished already" in log
        and "run 4/6: proposed seed 2 resumed" in log
    )
    assert "run 5/6: original seed 3 started" in log


def test_resume_of_a_finished_sweep_only_rewrites_the_report(tmp_path: Path) -> None:
    compare.run_compare(base(), tmp_path, [1, 2, 3], FakeRun())
    (tmp_path / "report.md").unlink()
    fake = FakeRun()
    compare.resume_sweep(tmp_path, fake, recipe_from_dict)
    assert fake.calls == [] and (tmp_path / "report.md").is_file()


def test_malformed_results_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    compare.run_compare(base(), tmp_path, [1, 2, 3], FakeRun())
    bad = tmp_path / "proposed" / "seed2" / "results.json"
    bad.write_text('{"test": {"acc@1": 50.0')
    (
        tmp_path / "original" / "seed3" / "results.json"
    ).unlink()  # a run that would otherwise be trained
    fake = FakeRun()
    with pytest.raises(compare.SweepError) as caught:
        compare.resume_sweep(tmp_path, fake, recipe_from_dict)
    message = str(caught.value)
    assert message.startswith(f"{bad}: not valid JSON") and "\n" not in message
    assert fake.calls == []  # checked before anything trains
    bad.write_text(json.dumps({"test": {"acc@1": 50.0}, "best_epoch": 2}))
    with pytest.raises(
        compare.SweepError, match="missing or not a finite number: test.acc@5, test.mrr"
    ):
        compare.resume_sweep(tmp_path, fake, recipe_from_dict)


def test_a_different_sweep_in_the_directory_is_refused(tmp_path: Path) -> None:
    compare.run_compare(base(), tmp_path, [1, 2], FakeRun())
    with pytest.raises(ValueError, match="holds a different sweep"):
        compare.run_compare(base(), tmp_path, [1, 2, 3], FakeRun())


@pytest.mark.parametrize("seeds", [[], [1, 1], [-1], [1.5]])
def test_bad_seeds_are_refused(tmp_path: Path, seeds: list) -> None:
    with pytest.raises(ValueError, match="seeds must be a non-empty list of distinct integers"):
        compare.run_compare(base(), tmp_path, seeds, FakeRun())


def test_compare_needs_two_recipes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base must hold exactly two recipes, got 1"):
        compare.run_compare({"proposed": recipes.proposed()}, tmp_path, SEEDS, FakeRun())


# ------------------------------------------------------------------------- the real CLI
SMALL_CONFIG = """\
data:
  synthetic_users: 8
  synthetic_days: 60
model:
  d_model: 32
  dim_feedforward: 64
"""


@pytest.mark.slow
def test_cli_compare_two_seeds_end_to_end_and_resume(tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG)
    out = tmp_path / "runs"
    proc = run_cli(
        "--recipe",
        "compare",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--config",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sweep,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert f"report: {sweep / 'report.md'}" in proc.stdout
    assert "run 4/4: proposed seed 43 finished" in proc.stdout
    for name in recipes.NAMES:
        for seed in (42, 43):
            results = json.loads((sweep / name / f"seed{seed}" / "results.json").read_text())
            assert (
                results["recipe"] == name and results["seed"] == seed and results["epochs_run"] == 2
            )
    rows = report_rows((sweep / "report.md").read_text())
    assert rows["42"][:2] == [f"{acc_of(sweep, name, 42):.2f}" for name in recipes.NAMES]
    assert rows["test Acc@1"][-1] == "too few seeds"

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    (copy / "report.md").unlink()
    (
        copy / "proposed" / "seed43" / "results.json"
    ).unlink()  # as if killed before its final evaluation
    proc = run_cli("--resume", str(copy), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run 3/4: original seed 43 finished already" in proc.stdout
    assert "run 4/4: proposed seed 43 resumed" in proc.stdout
    assert "Resumed from" in (copy / "proposed" / "seed43" / "train.log").read_text()
    assert (copy / "report.md").is_file()

    (copy / "original" / "seed42" / "results.json").write_text("{")
    proc = run_cli("--resume", str(copy), "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {copy / 'original' / 'seed42' / 'results.json'}: not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
