"""trainkit.sweep: rows x seeds of a training function, resume, checks, report, process pool, Ray.

The training functions are defined here and referenced as ``test_sweep:<name>`` (pytest puts
tests/ on sys.path; the pool's spawned workers inherit it).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainkit import stats
from trainkit.sweep import (
    RESULT_FILE,
    Execution,
    Metric,
    RunFailed,
    Sweep,
    SweepError,
    ablation_rows,
    locked,
    parse_seeds,
    read_epochs,
    resume_sweep,
    run_sweep,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
INLINE = Execution(jobs=1)


class Killed(Exception):
    """Stands for a kill in the middle of a run."""


def fake_train(config: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    """Writes metrics.jsonl and returns ``score``: a per-seed term every row shares + effect.

    ``config["values"]``: exact scores per seed (as strings of the seed) instead.
    $SWEEP_TEST_KILL = "row/seedS": that run raises Killed after writing a file.
    """
    assert (run_dir.parent.parent / "sweep.json").is_file()  # written before any run
    (run_dir / "attempts").open("a").write("x")
    if os.environ.get("SWEEP_TEST_KILL") == f"{run_dir.parent.name}/{run_dir.name}":
        raise Killed(str(run_dir))
    if "values" in config:
        score = float(config["values"][str(seed)])
    else:
        shared = float(np.random.default_rng(seed).normal())
        own = float(np.random.default_rng([seed, len(run_dir.parent.name)]).normal())
        score = 50.0 + shared + config.get("effect", 0.0) + config.get("noise", 0.0) * own
    records = [{"epoch": e, "loss": 3.0 / e} for e in range(1, 4)]
    records.append({"step": 7, "loss": 1.0})  # a record of another kind: no epoch
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 4, "lo'  # torn line
    (run_dir / "metrics.jsonl").write_text(text)
    return {"score": score, "other": score / 2, "device": "cpu"}


def torch_train(config: dict[str, Any], seed: int, run_dir: Path) -> dict[str, float]:
    """A tiny real model: every run uses torch's kernels, so threads and jobs could matter."""
    torch.manual_seed(seed)
    x = torch.randn(256, 16)
    y = x @ torch.linspace(-1, 1, 16) + 0.1 * torch.randn(256)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    for _ in range(config["steps"]):
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"loss": loss.item(), "weight_sum": float(model[0].weight.detach().sum())}


def checkpointing_train(config: dict[str, Any], seed: int, run_dir: Path) -> dict[str, float]:
    """Holds its run directory's lock and checkpoints every step, like a real Trainer."""
    with locked(run_dir):
        state_path = run_dir / "state.pt"
        if state_path.is_file():
            state = torch.load(state_path, weights_only=True)
        else:
            torch.manual_seed(seed)
            state = {"step": 0, "w": torch.randn(8, dtype=torch.float64)}
        while state["step"] < config["steps"]:
            state["w"] = state["w"] * 0.9 + torch.sin(state["w"] + state["step"]) * config["lr"]
            state["step"] += 1
            torch.save(state, run_dir / "tmp.pt")
            os.replace(run_dir / "tmp.pt", state_path)
            time.sleep(config.get("sleep", 0.0))
        return {"w": float(state["w"].sum())}


def compare_sweep(seeds: list[int], **rows: dict[str, Any]) -> Sweep:
    rows = rows or {"a": {}, "b": {"effect": 0.0}}
    return Sweep(train="test_sweep:fake_train", rows=rows, seeds=seeds, kind="compare")


def scores(out: Path, row: str, seeds: list[int]) -> list[float]:
    return [
        json.loads((out / row / f"seed{s}" / RESULT_FILE).read_text())["result"]["score"]
        for s in seeds
    ]


def table_rows(report: str, heading: str) -> dict[str, list[str]]:
    """The markdown table under ``heading``: first cell -> the others."""
    section = report.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


# ---------------------------------------------------------------------------- statistics
def test_holm_matches_the_step_down_rule_by_hand() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, then max(0.06, 0.04*1) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1 (0.5*2), monotone
    adjusted = stats.holm([0.01, math.nan, 0.02])  # NaN counts in m = 3, stays NaN
    assert adjusted[0] == pytest.approx(0.03) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="p_values must be in"):
        stats.holm([1.5])


def test_p_value_is_the_t_distribution_tail_at_the_interval_edge() -> None:
    d = np.array([0.3, -0.1, 0.8, 0.4, 0.1])
    n, sd = d.size, float(np.std(d, ddof=1))
    # shift d so that t = mean / (sd / sqrt n) equals the 97.5% quantile: p must be 0.05
    shifted = d - d.mean() + stats.t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    assert stats.paired_t_p_value(shifted) == pytest.approx(0.05, abs=1e-9)
    assert stats.paired_t_p_value(-shifted) == pytest.approx(0.05, abs=1e-9)
    assert math.isnan(stats.paired_t_p_value([1.0, 1.0, 1.0]))  # zero variance: undefined


def test_detectable_effect_is_the_power_formula() -> None:
    sd, n = 0.6, 5
    by_hand = (stats.t_quantile(1 - 0.05 / 6 / 2, 4) + stats.t_quantile(0.8, 4)) * sd / math.sqrt(n)
    assert stats.detectable_effect(sd, n, comparisons=6) == pytest.approx(by_hand)
    assert stats.detectable_effect(sd, 20) < stats.detectable_effect(sd, 5)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        stats.detectable_effect(sd, 1)


# ------------------------------------------------------------------------- seeds, names
def test_a_huge_seed_count_is_refused_without_building_it() -> None:
    with pytest.raises(SweepError, match=r"count must be in \[1, 10000\], got 1000000000000"):
        parse_seeds("1000000000000")
    with pytest.raises(SweepError, match="every seed must be an int in"):
        parse_seeds("99999999999999999999,1")
    with pytest.raises(SweepError, match="must be distinct"):
        parse_seeds("3,4,3")
    assert parse_seeds("3", first=42) == [42, 43, 44]


@pytest.mark.parametrize(
    "seeds, rows, message",
    [
        ([99999999999999999999, 1], None, "field 'seeds': every seed must be an int"),
        ([1, 1, 2], None, "field 'seeds': seeds must be distinct"),
        ([1, 2, 3], {"a": {}, "../escaped": {}}, "field 'rows': a row name must be"),
        ([1, 2, 3], {"a": {}}, "field 'rows': a compare sweep needs exactly 2 rows, got 1"),
    ],
)
def test_a_bad_new_sweep_is_refused_before_anything_is_written(
    tmp_path: Path, seeds: list[int], rows: dict[str, Any] | None, message: str
) -> None:
    sweep = Sweep("test_sweep:fake_train", rows or {"a": {}, "b": {}}, seeds, kind="compare")
    with pytest.raises(SweepError, match=message):
        run_sweep(tmp_path / "s", sweep, INLINE)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------- run and report
def test_runs_go_seed_by_seed_and_the_report_holds_the_paired_statistics(tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4, 5]
    out = tmp_path / "s"
    report = run_sweep(out, compare_sweep(seeds, a={}, b={"effect": 0.4, "noise": 0.5}), INLINE)
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["kind"] == "compare" and spec["seeds"] == seeds and list(spec["rows"]) == ["a", "b"]
    a, b = scores(out, "a", seeds), scores(out, "b", seeds)
    diff = stats.paired_difference(a, b, rng_seed=0)
    d = [y - x for x, y in zip(a, b)]
    other = [y / 2 - x / 2 for x, y in zip(a, b)]
    p = [stats.paired_t_p_value(d), stats.paired_t_p_value(other)]
    adjusted = stats.holm(p)  # the family: both numbers the runs returned
    rows = table_rows(report.read_text(), "## Per metric (b − a)")
    assert diff.t is not None and diff.bootstrap is not None and diff.sd is not None
    assert rows["score"][:5] == [
        stats.summarize(a).text(3),
        stats.summarize(b).text(3),
        f"{diff.mean:+.3f} ± {diff.sd:.3f}",
        diff.t.text(3),
        diff.bootstrap.text(3),
    ]
    assert rows["score"][5:7] == [f"{p[0]:.4f}", f"{adjusted[0]:.4f}"]
    detectable = stats.detectable_effect(diff.sd, 5, comparisons=2)
    assert rows["score"][7] == f"±{detectable:.3f}"
    assert rows["score"][8] == ("differs" if adjusted[0] < 0.05 else "no difference detected")
    log = (out / "sweep.log").read_text().splitlines()
    assert log[0] == "run 1/10: a seed 1 started" and log[2] == "run 2/10: b seed 1 started"
    assert log[1].startswith(f"run 1/10: a seed 1 finished: score {a[0]:.4g}, ")
    assert "1/10 this session, ETA " in log[1] and "10/10 this session, all done" in log[-2]
    assert log[-1] == f"report: {report}"


def test_holm_can_turn_an_unadjusted_difference_into_none(tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4, 5]
    zero = {str(s): 0.0 for s in seeds}
    rows = {"base": {"values": zero}}
    steps = {"r1": [1.0, 1.2, 0.3, 0.9, 1.6]}  # p ~ 0.02 alone
    for k in range(2, 7):
        steps[f"r{k}"] = [0.5, -0.4, 0.2, -0.6, 0.1]  # nothing
    for row, values in steps.items():
        rows[row] = {"values": {str(s): v for s, v in zip(seeds, values)}}
    sweep = Sweep("test_sweep:fake_train", rows, seeds, kind="grid", metrics=[Metric("score")])
    report = run_sweep(tmp_path / "s", sweep, INLINE).read_text()
    p = stats.paired_t_p_value(steps["r1"])
    assert p < 0.05 < min(1.0, 6 * p)
    cells = table_rows(report, "## score: each row against `base`")["`r1`"]
    assert cells[4:6] == [f"{p:.4f}", f"{min(1.0, 6 * p):.4f}"]
    assert cells[-1] == "no difference detected"
    assert (
        "no row's score differs detectably from `base` after Holm's adjustment over the 6 rows"
        in report
    )


def test_identical_differences_give_no_interval_and_no_verdict(tmp_path: Path) -> None:
    seeds = [1, 2, 3]
    a = {"values": {"1": 50.0, "2": 51.0, "3": 52.0}}
    b = {"values": {"1": 30.0, "2": 31.0, "3": 32.0}}  # -20 for every seed
    report = run_sweep(tmp_path / "s", compare_sweep(seeds, a=a, b=b), INLINE).read_text()
    cells = table_rows(report, "## Per metric (b − a)")["score"]
    assert cells[3:] == ["no interval", "no interval", "—", "—", "—", "no interval (zero variance)"]
    assert (
        "**differs**" not in report
        and "- score (b − a): -20.000, 95% t-interval no interval" in report
    )


def test_too_few_seeds_give_a_statement_not_intervals(tmp_path: Path) -> None:
    report = run_sweep(tmp_path / "s", compare_sweep([1, 2]), INLINE).read_text()
    assert "N = 2: no confidence interval" in report and "anecdotes, not evidence" in report
    assert table_rows(report, "## Per metric (b − a)")["score"][-1] == "too few seeds"


def test_curves_skip_records_without_an_epoch(tmp_path: Path) -> None:
    sweep = Sweep(
        "test_sweep:fake_train",
        {"a": {}, "b": {}},
        [1, 2, 3],
        kind="compare",
        curves=[("loss", "loss")],
    )
    report = run_sweep(tmp_path / "s", sweep, INLINE).read_text()
    assert "](curves.png)" in report and (tmp_path / "s" / "curves.png").stat().st_size > 1000
    epochs = read_epochs(tmp_path / "s" / "a" / "seed1" / "metrics.jsonl")
    assert [record["epoch"] for record in epochs] == [1, 2, 3]


def test_ablation_rows_take_one_group_each_and_refuse_a_group_that_changes_nothing() -> None:
    start = {"lr": 0.1, "clip": 2.0, "loss": "nll", "smooth": 0.0}
    source = {"lr": 0.5, "clip": 0.8, "loss": "ls", "smooth": 0.03}
    groups = {"lr": ["lr"], "loss": ["loss", "smooth"]}
    rows, changed = ablation_rows(start, source, groups, all_name="all")
    assert rows == {
        "base": start,
        "lr": {**start, "lr": 0.5},
        "loss": {**start, "loss": "ls", "smooth": 0.03},
        "all": {**start, "lr": 0.5, "loss": "ls", "smooth": 0.03},
    }
    assert changed == {"lr": ["lr"], "loss": ["loss", "smooth"], "all": ["lr", "loss", "smooth"]}
    with pytest.raises(ValueError, match="ablation row 'clip' changes nothing"):
        ablation_rows(start, {**source, "clip": 2.0}, {"clip": ["clip"]})


# --------------------------------------------------------------------------------- resume
def test_a_killed_sweep_resumes_keeping_finished_runs(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "s"
    monkeypatch.setenv("SWEEP_TEST_KILL", "b/seed2")
    with pytest.raises(Killed):
        run_sweep(out, compare_sweep([1, 2, 3]), INLINE)
    before = {p: p.read_text() for p in out.glob("*/seed*/" + RESULT_FILE)}
    assert len(before) == 3 and not (out / "report.md").exists()
    monkeypatch.delenv("SWEEP_TEST_KILL")
    report = resume_sweep(out, INLINE)
    assert all(p.read_text() == text for p, text in before.items())
    assert (out / "b" / "seed2" / "attempts").read_text() == "xx"  # run again in its directory
    assert (out / "a" / "seed1" / "attempts").read_text() == "x"  # never again
    log = (out / "sweep.log").read_text()
    assert "run 1/6: a seed 1 finished already" in log and "run 4/6: b seed 2 resumed" in log
    assert "run 5/6: a seed 3 started" in log and report.is_file()


def test_a_sweep_killed_before_its_first_run_resumes(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "s"
    monkeypatch.setenv("SWEEP_TEST_KILL", "a/seed1")
    with pytest.raises(Killed):
        run_sweep(out, compare_sweep([1, 2, 3]), INLINE)
    monkeypatch.delenv("SWEEP_TEST_KILL")
    assert resume_sweep(out, INLINE).is_file()


def edit_spec(out: Path, change: Any) -> None:
    spec = json.loads((out / "sweep.json").read_text())
    change(spec)
    (out / "sweep.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(seeds=[1, 1, 1]), "sweep.json: field 'seeds': seeds must be distinct"),
        (
            lambda s: s.update(seeds=[2**40]),
            "sweep.json: field 'seeds': every seed must be an int in",
        ),
        (
            lambda s: s["rows"].update({"../escaped": s["rows"].pop("b")}),
            "sweep.json: field 'rows': a row name must be",
        ),
        (lambda s: s["rows"].pop("b"), "field 'rows': a compare sweep needs exactly 2 rows, got 1"),
        (lambda s: s.update(train="os.system"), "field 'train' must be 'module:function'"),
        (lambda s: s.pop("reference"), "sweep.json: field 'reference' is missing"),
    ],
)
def test_resume_checks_sweep_json_as_creation_does(
    tmp_path: Path, change: Any, message: str
) -> None:
    out = tmp_path / "s"
    run_sweep(out, compare_sweep([1, 2, 3]), INLINE)
    edit_spec(out, change)
    with pytest.raises(SweepError, match=message) as caught:
        resume_sweep(out, INLINE)
    assert "\n" not in str(caught.value) and not (tmp_path / "escaped").exists()


def test_a_row_edited_after_its_runs_finished_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_sweep(out, compare_sweep([1, 2, 3], a={"epochs": 3}, b={"epochs": 3}), INLINE)
    edit_spec(out, lambda s: s["rows"]["b"].update(epochs=5))
    with pytest.raises(SweepError) as caught:
        resume_sweep(out, INLINE)
    message = str(caught.value)
    assert message.startswith(str(out / "b" / "seed1" / RESULT_FILE))
    assert "field 'config' differs from row 'b' of sweep.json in epochs" in message


def test_a_malformed_result_file_is_one_line_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_sweep(out, compare_sweep([1, 2, 3]), INLINE)
    bad = out / "b" / "seed2" / RESULT_FILE
    bad.write_text("{")
    with pytest.raises(SweepError, match=f"^{bad} is not readable JSON"):
        write_report(out)


def test_a_different_sweep_in_the_directory_is_refused(tmp_path: Path) -> None:
    run_sweep(tmp_path / "s", compare_sweep([1, 2, 3]), INLINE)
    with pytest.raises(SweepError, match="holds a different sweep"):
        run_sweep(tmp_path / "s", compare_sweep([1, 2, 3, 4]), INLINE)


def test_a_failing_run_names_itself(tmp_path: Path) -> None:
    sweep = Sweep("test_sweep:torch_train", {"a": {"lr": 0.1}}, [1, 2], kind="grid")
    with pytest.raises(KeyError):  # in this process: the training function's own error
        run_sweep(tmp_path / "inline", sweep, INLINE)
    with pytest.raises(RunFailed, match=r"run a seed [12] failed: KeyError: 'steps' \(see "):
        run_sweep(tmp_path / "pool", sweep, Execution(jobs=2))


# --------------------------------------------------------------------------- process pool
def test_results_do_not_depend_on_jobs(tmp_path: Path) -> None:
    rows = {"slow": {"lr": 0.003, "steps": 40}, "fast": {"lr": 0.03, "steps": 40}}
    seeds = [1, 2, 3]
    outs = {}
    for jobs in (1, 4):
        sweep = Sweep("test_sweep:torch_train", rows, seeds, kind="compare")
        outs[jobs] = tmp_path / f"jobs{jobs}"
        run_sweep(outs[jobs], sweep, Execution(jobs=jobs))
    for row in rows:
        for seed in seeds:
            results = [
                json.loads((outs[jobs] / row / f"seed{seed}" / RESULT_FILE).read_text())["result"]
                for jobs in (1, 4)
            ]
            assert results[0] == results[1], (row, seed)  # bit-identical floats
    assert (outs[4] / "workers" / "worker3.log").is_file()  # 4 processes, 6 runs


@pytest.mark.slow
def test_a_whole_sweep_killed_resumes_exactly(tmp_path: Path) -> None:
    rows = {
        "a": {"lr": 0.1, "steps": 60, "sleep": 0.02},
        "b": {"lr": 0.3, "steps": 60, "sleep": 0.02},
    }
    command = [
        sys.executable, "-m", "trainkit", "sweep", "--train", "test_sweep:checkpointing_train",
        "--row", f"a={json.dumps(rows['a'])}", "--row", f"b={json.dumps(rows['b'])}",
        "--seeds", "3", "--jobs", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*/seed*/" + RESULT_FILE)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the whole sweep: its workers die with it
    proc.wait()
    assert not (killed / "report.md").exists()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # SIGTERM reaches the workers asynchronously
        try:
            for lock_dir in [killed, *killed.glob("*/seed*")]:
                with locked(lock_dir):
                    pass
            break
        except SweepError:
            time.sleep(0.1)
    resumed = subprocess.run(
        [sys.executable, "-m", "trainkit", "sweep", "--resume", str(killed), "--jobs", "2"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    clean = tmp_path / "clean"
    sweep = Sweep("test_sweep:checkpointing_train", rows, [0, 1, 2], kind="compare")
    run_sweep(clean, sweep, INLINE)
    for row in rows:
        for seed in (0, 1, 2):
            results = [
                json.loads((out / row / f"seed{seed}" / RESULT_FILE).read_text())["result"]
                for out in (killed, clean)
            ]
            assert results[0] == results[1], (row, seed)


# ------------------------------------------------------------------------------------ Ray
@pytest.mark.slow
def test_the_ray_backend_gives_the_same_results(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'trainkit-pt[ray]')")
    rows = {"slow": {"lr": 0.003, "steps": 20}, "fast": {"lr": 0.03, "steps": 20}}
    sweep = Sweep("test_sweep:torch_train", rows, [1, 2, 3], kind="compare")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_sweep(tmp_path / "ray", sweep, Execution(backend="ray"))
    finally:
        ray.shutdown()
    run_sweep(tmp_path / "local", sweep, INLINE)
    for row in rows:
        for seed in (1, 2, 3):
            results = [
                json.loads((tmp_path / out / row / f"seed{seed}" / RESULT_FILE).read_text())[
                    "result"
                ]
                for out in ("ray", "local")
            ]
            assert results[0] == results[1], (row, seed)
    assert report.is_file()
