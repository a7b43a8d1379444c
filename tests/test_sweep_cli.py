"""The ``trainkit`` command on a user's own 20-line training file.

Under ``make test`` (``TRAINKIT_TEST_INSTALLED=1``) the command is the console script that
``pip install`` of the built wheel put beside the test venv's python, so the docs' promise
(``pip install trainkit-pt`` then ``trainkit sweep ...``) is run as written; elsewhere it is
``python -m trainkit`` against ``src/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainkit.sweep.cli import main

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = os.environ.get("TRAINKIT_TEST_INSTALLED") == "1"
USER_FILE = """\
import torch


def train(config, seed, run_dir):
    torch.manual_seed(seed)
    x = torch.randn(512, 8)
    y = x @ torch.arange(8.0) + 0.3 * torch.randn(512)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    for _ in range(config["steps"]):
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"loss": loss.item()}
"""


def command() -> list[str]:
    """The installed ``trainkit`` script under ``make test``, else ``python -m trainkit``."""
    if INSTALLED:
        script = Path(sys.executable).parent / "trainkit"
        assert script.is_file(), f"pip install of the wheel put no trainkit command at {script}"
        return [str(script)]
    return [sys.executable, "-m", "trainkit"]


def trainkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if INSTALLED:
        env.pop("PYTHONPATH")  # only the wheel
    return subprocess.run(
        [*command(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_docs_show_the_same_user_file() -> None:
    assert USER_FILE in (ROOT / "docs" / "sweep.md").read_text()


def test_help_shows_a_complete_example(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert (
        "def train(config, seed, run_dir):" in text
        and "trainkit sweep --train mytrain:train" in text
    )
    assert "--resume" in text and "trainkit report" in text


@pytest.mark.slow
def test_sweep_a_user_file_with_two_jobs_then_resume_and_report(tmp_path: Path) -> None:
    (tmp_path / "mytrain.py").write_text(USER_FILE)
    args = ["sweep", "--train", "mytrain:train", "--shared", '{"steps": 30}']
    rows = ["--row", 'slow={"lr": 0.01}', "--row", 'fast={"lr": 0.05}']
    proc = trainkit(*args, *rows, "--seeds", "3", "--out", "runs/lr", "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "runs" / "lr"
    assert f"report: {out / 'report.md'}" in proc.stdout
    where = "GPUs 0" if torch.cuda.is_available() else "CPU, 1 thread each"
    assert f"6 runs on 2 processes ({where}" in proc.stdout
    assert "6/6 this session, all done" in proc.stdout
    report = (out / "report.md").read_text()
    assert "# sweep: slow vs fast, 3 seeds" in report and "| loss |" in report
    record = json.loads((out / "fast" / "seed2" / "sweep_result.json").read_text())
    assert record["config"] == {"steps": 30, "lr": 0.05} and record["seed"] == 2

    (out / "report.md").unlink()
    (out / "slow" / "seed1" / "sweep_result.json").unlink()  # as if killed in that run
    proc = trainkit("sweep", "--resume", "runs/lr", "--jobs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run 1/6: slow seed 0 finished already" in proc.stdout
    assert "run 3/6: slow seed 1 started" in proc.stdout and (out / "report.md").is_file()
    assert proc.stdout.count("report: ") == 1

    proc = trainkit("report", "runs/lr", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("report.md")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "1000000000000"], "--seeds: the count must be in [1, 10000]"),
        (["--seeds", "99999999999999999999,1"], "every seed must be an int in [0, 4294967295]"),
        (["--row", "../escaped={}"], "a row name must be"),
        (["--row", "a=[1]"], "--row a must be a JSON object, got list"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str, capsys
) -> None:
    rows = [] if any(a.startswith("--row") for a in args) else ["--row", "a={}", "--row", "b={}"]
    out = tmp_path / "out"
    code = main(["sweep", "--train", "mytrain:train", *rows, *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_resume_refuses_flags_that_would_change_the_sweep(tmp_path: Path, capsys) -> None:
    (tmp_path / "sweep.json").write_text("{}")
    code = main(["sweep", "--resume", str(tmp_path), "--seeds", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"error: --resume {tmp_path}: --seeds cannot change a sweep (its sweep.json fixes it); "
        "leave it out, or start a new sweep"
    )
