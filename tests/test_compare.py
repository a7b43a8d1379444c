"""examples/pointer_v45.py --recipe compare: both recipes on the same data, one report."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from test_cli import run_cli

from trainkit import recipes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = ("lr.png", "loss.png", "acc1.png")
METRIC_ROWS = {"Acc@1": "acc@1", "Acc@5": "acc@5", "Acc@10": "acc@10", "MRR": "mrr", "NDCG": "ndcg", "F1": "f1",
               "Acc@1, seen targets": "acc@1_seen"}
# Smaller than the synthetic default (20 users x 100 days) to keep two recipes x 2 epochs quick;
# lr replaces the proposed recipe's default, so the report must show the value used.
SMALL_CONFIG = """\
data:
  synthetic_users: 8
  synthetic_days: 60
model:
  d_model: 32
  dim_feedforward: 64
proposed:
  lr: 5.0e-4
"""
USED_LR = 5.0e-4


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = out / "small.yaml"
    config.write_text(SMALL_CONFIG)
    proc = run_cli("--recipe", "compare", "--epochs", "2", "--config", str(config), "--out", str(out),
                   "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert run_dir.name.startswith("pointer_v45-compare-seed42-")
    assert f"comparison report: {run_dir / 'report.md'}" in proc.stdout
    return run_dir


def report_rows(report: str) -> dict[str, list[str]]:
    """Markdown table rows of the report: first cell -> the other cells."""
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def results_of(compare_dir: Path, name: str) -> dict:
    return json.loads((compare_dir / name / "results.json").read_text())


def test_each_recipe_runs_in_its_own_directory_on_the_same_data(compare_dir: Path) -> None:
    for name in recipes.NAMES:
        results = results_of(compare_dir, name)
        assert results["recipe"] == name
        assert results["epochs_run"] == 2
        assert json.loads((compare_dir / name / "config.json").read_text())["recipe"] == name
        assert len((compare_dir / name / "metrics.jsonl").read_text().splitlines()) == 2
    assert (compare_dir / "original" / "checkpoints" / "bestmodel.pt").is_file()
    assert (compare_dir / "proposed" / "checkpoints" / "best.pt").is_file()
    original, proposed = (results_of(compare_dir, name) for name in recipes.NAMES)
    assert original["num_samples"] == proposed["num_samples"] and original["seed"] == proposed["seed"]


def test_report_shows_both_recipes_settings(compare_dir: Path) -> None:
    rows = report_rows((compare_dir / "report.md").read_text())
    o, p = recipes.original(), recipes.proposed()
    assert rows["setting"] == ["original", "proposed"]
    assert f"`{o.optimizer}`" in rows["optimizer"][0] and f"`{p.optimizer}`" in rows["optimizer"][1]
    assert rows["learning rate"] == [repr(o.lr), f"{USED_LR:.1e} (recipe: {p.lr:.1e})"]  # 0.15 | 5.0e-04 (recipe: 6.5e-04)
    assert f"initial_accumulator_value {o.initial_accumulator_value!r}" in rows["optimizer settings"][0]
    assert f"betas {p.betas}" in rows["optimizer settings"][1] and f"eps {p.eps:.1e}" in rows["optimizer settings"][1]
    assert f"weight_decay {p.weight_decay!r}" in rows["optimizer settings"][1]
    assert rows["LR schedule"][0] == o.schedule
    assert f"cosine to {p.min_lr:.1e} over 2 epochs" in rows["LR schedule"][1]  # --epochs 2 replaced 50
    assert f"warmup {p.warmup} + cosine" in rows["LR schedule"][1]
    assert rows["grad clip (global norm)"] == [repr(o.max_grad_norm), repr(p.max_grad_norm)]
    assert "masked NLL" in rows["loss"][0] and f"smoothing {p.label_smoothing!r}" in rows["loss"][1]
    assert f"decay {o.running_avg_decay!r}" in rows["model selection"][0] and "no early stopping" in rows["model selection"][0]
    assert f"patience {p.patience}" in rows["model selection"][1] and f"min_epochs {p.min_epochs}" in rows["model selection"][1]
    assert rows["precision / AMP"][0].startswith(o.precision) and "AMP" in rows["precision / AMP"][1]
    assert f"every {int(o.checkpoint_every_seconds)} s, keep {o.keep_last}" in rows["checkpointing"][0]
    assert f"`{p.best_name}`" in rows["checkpointing"][1]
    assert rows["epochs"][0].startswith(f"2 (recipe: {o.epochs})") and rows["epochs"][1] == f"up to 2 (recipe: {p.epochs})"
    assert rows["non-finite loss"] == ["raise, stop the run"] * 2


def test_report_metrics_equal_the_runs_results(compare_dir: Path) -> None:
    rows = report_rows((compare_dir / "report.md").read_text())
    runs = [results_of(compare_dir, name) for name in recipes.NAMES]
    assert rows["metric"] == [*recipes.NAMES, "difference"]
    for block, prefix in (("validation", "val"), ("test", "test")):
        for label, key in METRIC_ROWS.items():
            values = [run[block][key] for run in runs]
            assert rows[f"{prefix} {label}"][:2] == [f"{v:.2f}" for v in values], (block, key)
        assert rows[f"{prefix} loss"][:2] == [f"{run[block]['loss']:.4f}" for run in runs]
    test_acc = [run["test"]["acc@1"] for run in runs]
    assert rows["test Acc@1"][2] == f"{test_acc[1] - test_acc[0]:+.2f}"
    assert rows["epochs run"][:2] == ["2", "2"]
    assert rows["best epoch"][:2] == [str(run["best_epoch"]) for run in runs]
    assert rows["train seconds"][:2] == [f"{run['train_seconds']:.1f}" for run in runs]
    assert rows["device"][:2] == ["cpu", "cpu"]


def test_report_embeds_three_small_pngs(compare_dir: Path) -> None:
    report = (compare_dir / "report.md").read_text()
    for name in PICTURES:
        data = (compare_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert (width, height) == (600, 400), name  # figsize 6x4 at dpi 100
        assert len(data) < 100_000, name
        assert f"]({name})" in report, name


def test_report_notes_the_loss_scales_and_the_missing_early_stopping(compare_dir: Path) -> None:
    report = (compare_dir / "report.md").read_text()
    assert "not on exactly the same scale" in report
    assert "no early stopping" in report and "runs all epochs" in report


def test_resume_of_a_compare_directory(compare_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / compare_dir.name
    shutil.copytree(compare_dir, copy)
    (copy / "report.md").unlink()
    (copy / "proposed" / "results.json").unlink()  # as if stopped before the proposed run's final evaluation
    proc = run_cli("--resume", str(copy), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished already" in (copy / "original" / "train.log").read_text()
    assert "Resumed from" in (copy / "proposed" / "train.log").read_text()
    assert results_of(copy, "proposed")["recipe"] == "proposed"
    assert "](loss.png)" in (copy / "report.md").read_text()


def test_resume_of_a_directory_without_runs_is_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("--resume", str(tmp_path), "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --resume {tmp_path}: no config.json there (not a run directory?)"]
