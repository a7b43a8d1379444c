"""Crash-safe training state (issue 5): exact resume after SIGKILL, fallback past damaged
checkpoints, faults as policy (non-finite loss, fp16 overflow, disk full), bad input refused.

docs/reliability.md lists each guarantee with the tests here that back it.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainkit.atomic as atomic_module
from trainkit import (
    CheckpointError,
    CheckpointManager,
    LabelSmoothedNLLLoss,
    WarmupCosineSchedule,
    load_model_state,
)
from trainkit.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import pointer_v45  # noqa: E402
import pointer_v45_config  # noqa: E402
import synthetic_data  # noqa: E402

# --------------------------------------------------------------------------- a tiny Trainer
NUM_CLASSES = 7  # the classes of conftest's tiny job


@pytest.fixture
def build(build_trainer: Any) -> Any:
    """conftest's tiny seeded job (6 steps an epoch), with rotating epoch checkpoints."""

    def make(directory: Path, epochs: int = 4, **kwargs: Any) -> Trainer:
        return build_trainer(directory, epochs, epoch_checkpoints=True, **kwargs)

    return make


@pytest.fixture
def nan_every(poisoned_loss: Any) -> Any:
    """``nan_every(period, factor=nan)``: the loss times ``factor`` on every ``period``-th training step."""
    return lambda period, factor=float("nan"): poisoned_loss(lambda n: n % period == 0, factor)


class Killed(Exception):
    """Stands in for a crash right after an epoch's checkpoints were written."""


def kill_after(epoch: int):
    def on_epoch_end(record: dict[str, Any]) -> None:
        if record["epoch"] == epoch:
            raise Killed

    return on_epoch_end


def assert_same_tensors(a: Any, b: Any, where: str = "state") -> None:
    """Every tensor bit-identical (torch.equal, same dtype), every plain value equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{index}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


TIMING_KEYS = ("epoch_seconds", "checkpoint_seconds")


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A Trainer checkpoint without what legitimately differs between runs (wall-clock timings)."""
    state = dict(state)
    state.pop("checkpoints", None)  # seconds since the last save
    state["history"] = [
        {k: v for k, v in record.items() if k not in TIMING_KEYS} for record in state["history"]
    ]
    return state


# =========================================================================== 1. exact resume
# The example CLI in a subprocess, SIGKILLed at several seeded-random moments (mid-epoch,
# mid-validation, mid-save, during the final evaluation), resumed each time with
# --resume RUN_DIR, must end bit-identical to a run that was never interrupted.

TINY_CONFIG = """\
data: {synthetic_users: 4, synthetic_days: 40}
model: {d_model: 16, nhead: 2, num_layers: 1, dim_feedforward: 32, dropout: 0.15}
training: {batch_size: 16, epochs: 4, warmup: 1, log_every: 4, precision: fp32}
"""
STEPS_PER_EPOCH = 12  # 189 training samples of the 4x40 synthetic data, batch 16

# Runs examples/pointer_v45.py's main() with hooks that print a marker at a chosen moment
# (KILL_AT="mode kind epoch index") and, in "pause" mode, stop there until killed.
DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)  # the same reduction order in every process
    sys.path.insert(0, sys.argv[1])
    import pointer_v45
    from trainkit import metrics, train_step, trainer

    spec = os.environ.get("KILL_AT", "").split()
    where = {"phase": "", "epoch": 0, "count": 0}

    def hit(kind, epoch, index):
        if spec and spec[1:] == [kind, str(epoch), str(index)]:
            print(f"@{spec[0]} {kind} {epoch} {index}", flush=True)
            if spec[0] == "pause":
                time.sleep(600)

    def wrap(cls, name, before=None, after=None):
        original = getattr(cls, name)
        def wrapper(*args, **kwargs):
            if before: before(*args)
            out = original(*args, **kwargs)
            if after: after(*args)
            return out
        setattr(cls, name, wrapper)

    def start_epoch(self):
        where.update(phase="train", epoch=self.progress.epoch + 1, count=0)
    def end_epoch(self):
        where.update(phase="val", count=0)
    def step_done(*_):
        where["count"] += 1
        hit("step", where["epoch"], where["count"])
    def batch_done(*_):
        where["count"] += 1
        hit(where["phase"], where["epoch"], where["count"])
    def final(*_):
        where.update(phase="final", epoch="end", count=0)

    wrap(trainer.Trainer, "train_epoch", before=start_epoch, after=end_epoch)
    wrap(trainer.Trainer, "final_evaluation", before=final)
    wrap(train_step.TrainStep, "__call__", after=step_done)
    wrap(metrics.RankingMetrics, "update", after=batch_done)

    torch_save = torch.save
    def save(obj, handle, *args, **kwargs):  # the temp file is written; not yet renamed
        torch_save(obj, handle, *args, **kwargs)
        name = os.path.basename(getattr(handle, "name", "")).split(".trainkit-tmp-")[-1].rsplit(".", 2)[0]
        if isinstance(obj, dict) and "epoch" in obj:
            hit("save", obj["epoch"], name)
    torch.save = save
    sys.exit(pointer_v45.main(sys.argv[2:]))
    """
)


class Driver:
    """Start the CLI under the driver; kill it at a marker, or let it finish."""

    def __init__(self, tmp: Path, recipe: str = "proposed") -> None:
        self.recipe = recipe
        self.script = tmp / "driver.py"
        self.script.write_text(DRIVER)
        self.config = tmp / "tiny.yaml"
        # original: a time-based step checkpoint after every step, so kills resume mid-epoch
        text = TINY_CONFIG
        if recipe == "original":
            text = text.replace("training: {", "training: {checkpoint_every_seconds: 0.000001, ")
        self.config.write_text(text)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}

    def start(self, args: list[str], kill_at: str = "") -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                str(self.script),
                str(EXAMPLES),
                *args,
                "--device",
                "cpu",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, "KILL_AT": kill_at},
        )

    def fresh_args(self, out: Path) -> list[str]:
        return ["--config", str(self.config), "--out", str(out), "--recipe", self.recipe]

    @staticmethod
    def run(
        proc: subprocess.Popen[str],
        delay: float = 0.0,
        timeout: float = 240.0,
        signum: int = signal.SIGKILL,
    ) -> tuple[bool, str]:
        """Read output until a marker line (then send ``signum`` after ``delay``) or the end.

        Returns ``(killed, output)``: killed when the process died of SIGKILL. With another
        signal, the output is read on to the end.
        """
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if line is None:
                    proc.wait(timeout=60)
                    return False, "".join(output)
                output.append(line)
                if line.startswith("@") and signum != signal.SIGKILL:
                    time.sleep(delay)
                    os.kill(proc.pid, signum)
                elif line.startswith("@"):
                    time.sleep(delay)
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    return proc.returncode == -signal.SIGKILL, "".join(output)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)


def run_dir_in(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


class ReferenceRun:
    """An uninterrupted run, started in the background when first asked for."""

    def __init__(self, tmp: Path, recipe: str) -> None:
        self.driver = Driver(tmp, recipe)
        self.out = tmp / "reference"
        self.proc = self.driver.start(self.driver.fresh_args(self.out))
        self._dir: Path | None = None

    def dir(self) -> Path:
        if self._dir is None:
            killed, output = Driver.run(self.proc)
            assert not killed and self.proc.returncode == 0, output
            self._dir = run_dir_in(self.out)
        return self._dir

    def copy(self, target: Path) -> Path:
        """A copy of the finished run directory (and its data cache) to damage in a test."""
        self.dir()
        shutil.copytree(self.out, target)
        return run_dir_in(target)


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory):
    runs: dict[str, ReferenceRun] = {}

    def get(recipe: str) -> ReferenceRun:
        if recipe not in runs:
            runs[recipe] = ReferenceRun(tmp_path_factory.mktemp(f"reference-{recipe}"), recipe)
        return runs[recipe]

    yield get
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.fixture
def reference(references: Any) -> ReferenceRun:
    """The uninterrupted proposed-recipe run of TINY_CONFIG."""
    return references("proposed")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["proposed", "original"])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(
    recipe: str, references: Any, tmp_path: Path
) -> None:
    reference = references(recipe)  # runs alongside the killed one
    # the moments are random, and the same in every run of the test
    rng = random.Random(f"issue-5-{recipe}")
    kills = [  # (mode, kind, epoch, index), delay after the marker
        # mid-epoch, before any epoch checkpoint
        (("pause", "step", 1, rng.randint(2, STEPS_PER_EPOCH)), 0.0),
        # mid-validation
        (("pause", "val", 2, 1), 0.0),
        # any instant shortly after a random step of epoch 3 (its steps, validation or saves)
        (("mark", "step", 3, rng.randint(1, STEPS_PER_EPOCH)), rng.uniform(0.0, 0.05)),
        # mid-save: epoch-0004.pt written, last.pt not yet replaced
        (("pause", "save", 4, "last.pt"), 0.0),
        # during the final evaluation of the best model
        (("pause", "final", "end", rng.randint(1, 2)), 0.0),
    ]
    driver = Driver(tmp_path, recipe)
    out = tmp_path / "runs"
    args = driver.fresh_args(out)
    outputs = []
    for (mode, kind, epoch, index), delay in kills:
        killed, output = Driver.run(driver.start(args, f"{mode} {kind} {epoch} {index}"), delay)
        outputs.append(output)
        assert killed, f"expected a kill at {kind} {epoch} {index}:\n{output}"
        run_dir = run_dir_in(out)
        args = ["--resume", str(run_dir)]
        if kind == "save":  # the kill left the new file's temporary copy, last.pt one behind
            checkpoints = run_dir / "checkpoints"
            assert any(n.startswith(".trainkit-tmp-last.pt") for n in os.listdir(checkpoints))
            assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 3
            assert torch.load(checkpoints / "epoch-0004.pt", weights_only=True)["epoch"] == 4
    killed, output = Driver.run(driver.start(args))
    assert not killed, output
    outputs.append(output)
    if recipe == "proposed":  # epoch checkpoints only: killed before the first one, it starts over
        assert "starting the run from the beginning" in outputs[1]
    else:  # a step checkpoint from the middle of epoch 1
        assert (
            "Resumed from" in outputs[1]
            and "step-" in outputs[1]
            and "(epoch 0, step" in outputs[1]
        )
    assert all("Resumed from" in text for text in outputs[2:]), outputs

    expected_dir, run_dir = reference.dir(), run_dir_in(out)
    best = "best.pt" if recipe == "proposed" else "bestmodel.pt"
    for name in ("last.pt", best, "epoch-0004.pt"):
        expected = torch.load(expected_dir / "checkpoints" / name, weights_only=True)
        actual = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert_same_tensors(comparable(actual), comparable(expected), name)
    expected = json.loads((expected_dir / "results.json").read_text())
    actual = json.loads((run_dir / "results.json").read_text())
    for key in (
        "validation",
        "test",
        "best_epoch",
        "epochs_run",
        "fp16_overflow_steps",
        "evaluated",
    ):
        assert actual[key] == expected[key], key

    def metrics(directory: Path) -> list[dict[str, Any]]:
        lines = (directory / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines
        ]

    assert metrics(run_dir) == metrics(expected_dir)  # one record per epoch, none repeated
    steps = [(run_dir / "steps.jsonl").read_text(), (expected_dir / "steps.jsonl").read_text()]
    assert (
        steps[0] == steps[1] and steps[0].count("\n") == 12
    )  # 4 epochs x 12 steps, one record per 4
    names = sorted(os.listdir(run_dir / "checkpoints"))
    assert not [n for n in names if n.startswith(".")], names  # no temporary file survives
    assert len([n for n in names if n not in ("best.pt", "bestmodel.pt", "last.pt")]) == 3, (
        names
    )  # keep_last=3
    assert "epoch-0004.pt" in names


def test_checkpoint_holds_the_whole_state_and_loads_weights_only(
    tmp_path: Path, build: Any
) -> None:
    trainer = build(tmp_path, epochs=2, precision="fp16")
    trainer.fit()
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "amp",
        "schedule",
        "selector",
        "checkpoints",
        "epoch",
        "global_step",
        "step_in_epoch",
        "epoch_sums",
        "history",
        "config",
        "fp16_overflow_steps",
        "nonfinite_steps",
    ):
        assert key in state, key
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["amp"]["scaler"]["scale"] > 0  # the GradScaler
    assert state["selector"]["epoch"] == 2 and state["epoch"] == 2


# =========================================================================== 2. fallback


def test_damaged_newest_checkpoints_fall_back_and_resume_stays_exact(
    tmp_path: Path, build: Any
) -> None:
    full = build(tmp_path / "full")
    full.fit()
    expected = torch.load(tmp_path / "full" / "ckpt" / "last.pt", weights_only=True)

    first = build(tmp_path / "split", on_epoch_end=kill_after(3))
    with pytest.raises(Killed):
        first.fit()
    ckpt = tmp_path / "split" / "ckpt"
    assert sorted(os.listdir(ckpt)) == [
        "best.pt",
        "epoch-0001.pt",
        "epoch-0002.pt",
        "epoch-0003.pt",
        "last.pt",
    ]
    for name in ("epoch-0003.pt", "last.pt"):  # a torn write and a garbage file, newest of all
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(
            data[: len(data) // 2] if name == "last.pt" else b"\0garbage" * 64
        )
        time.sleep(0.01)
        os.utime(ckpt / name)

    torch.manual_seed(123)  # resume must restore the saved RNG, not use this one
    second = build(tmp_path / "split")
    with pytest.warns(RuntimeWarning) as caught:
        chosen = second.resume()
    reported = [str(w.message) for w in caught]
    assert len(reported) == 2 and "last.pt" in reported[0] and "epoch-0003.pt" in reported[1], (
        reported
    )
    assert chosen.name == "epoch-0002.pt" and second.progress.epoch == 2
    assert (
        torch.load(ckpt / "last.pt", weights_only=True)["epoch"] == 2
    )  # renewed from the fallback
    assert (
        len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    )  # epoch 3 is redone
    second.fit()
    actual = torch.load(ckpt / "last.pt", weights_only=True)
    assert_same_tensors(comparable(actual), comparable(expected))


@pytest.mark.slow
def test_cli_resume_skips_a_truncated_last_pt_with_one_warning(
    reference: ReferenceRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = reference.copy(tmp_path / "runs")
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert pointer_v45.main(["--resume", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    warned = [line for line in out.splitlines() if "unloadable" in line]
    assert len(warned) == 1 and str(last) in warned[0], out
    assert f"Resumed from {run_dir / 'checkpoints' / 'epoch-0004.pt'}" in out
    assert torch.load(last, weights_only=True)["epoch"] == 4  # renewed


def test_best_pt_never_holds_non_finite_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, build: Any
) -> None:
    trainer = build(tmp_path, epochs=3)

    def poison(record: dict[str, Any]) -> None:  # a parameter outside the loss turns NaN
        if record["epoch"] == 1:
            with torch.no_grad():
                trainer.model.unused.fill_(float("nan"))

    trainer.on_epoch_end = poison
    with caplog.at_level(logging.WARNING, logger="trainkit.trainer"):
        trainer.fit()
    assert any(r["improved"] for r in trainer.progress.history[1:])  # later epochs did improve ...
    assert "weights are not finite: best.pt not written" in caplog.text
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert best["epoch"] == 1  # ... but best.pt kept the last finite best model
    assert all(torch.isfinite(t).all() for t in best["model"].values())


# =========================================================================== safe loading


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_checkpoint_is_refused_by_resume(tmp_path: Path, build: Any) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil(marker)}, evil)
    trainer = build(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="safely"):
        trainer.resume(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_cli_resume_refuses_a_malicious_last_pt_and_falls_back(
    reference: ReferenceRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = reference.copy(tmp_path / "runs")
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": Evil(marker)}, run_dir / "checkpoints" / "last.pt")
    assert pointer_v45.main(["--resume", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    assert "skipping unloadable checkpoint" in out and "last.pt" in out
    assert "Resumed from" in out and "epoch-0004.pt" in out


# =========================================================================== 3. faults as policy


def test_nonfinite_skip_is_counted_in_the_log_and_capped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, build: Any, nan_every: Any
) -> None:
    trainer = build(tmp_path / "counted", epochs=2, loss_fn=nan_every(4), nonfinite="skip")
    with caplog.at_level(logging.INFO, logger="trainkit.trainer"):
        trainer.fit()
    assert "Epoch 1/2" in caplog.text and "| skipped: 1 (non-finite loss)" in caplog.text
    records = [
        json.loads(line)
        for line in (tmp_path / "counted" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["nonfinite_steps"] for r in records] == [1, 2]  # steps 4, 8 and 12 of 12

    capped = build(
        tmp_path / "capped", epochs=3, loss_fn=nan_every(4), nonfinite="skip", max_nonfinite_steps=2
    )
    with pytest.raises(
        NonFiniteLossError,
        # counted at the next sync point (here the epoch's end): names the epoch's first
        match=r"3 steps skipped, more than max_nonfinite_steps=2 \(the first of epoch 2, step 2\)",
    ):
        capped.fit()


def test_fp16_overflow_skips_the_step_counts_it_and_leaves_the_schedule_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, build: Any, nan_every: Any
) -> None:
    epochs = 3
    # every 8th step's loss is huge but finite: the scaled gradients overflow, the scaler skips
    trainer = build(tmp_path, epochs=epochs, precision="fp16", loss_fn=nan_every(8, factor=1e36))
    assert trainer.amp.scaler is not None
    with caplog.at_level(logging.INFO, logger="trainkit.trainer"):
        result = trainer.fit()
    assert result["fp16_overflow_steps"] == 2  # steps 8 and 16 of 18 (6 per epoch)
    assert [r["fp16_overflow_steps"] for r in result["history"]] == [0, 1, 1]
    assert "| skipped: 1 (fp16 overflow)" in caplog.text
    schedule = WarmupCosineSchedule(3e-2, 1, epochs, 1e-4)
    assert [r["lr"] for r in result["history"]] == [schedule(e) for e in range(epochs)]
    assert trainer.progress.global_step == 18  # skipped updates still count as steps of the epoch
    assert trainer.amp.scaler.get_scale() == 2.0**16 / 4  # halved once per overflow
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_fp16_resume_restores_the_grad_scaler_exactly(
    tmp_path: Path, build: Any, nan_every: Any
) -> None:
    full = build(tmp_path / "full", epochs=3, precision="fp16", loss_fn=nan_every(5, factor=1e36))
    full.fit()
    first = build(
        tmp_path / "split",
        epochs=3,
        precision="fp16",
        loss_fn=nan_every(5, factor=1e36),
        on_epoch_end=kill_after(1),
    )
    with pytest.raises(Killed):
        first.fit()
    # a new process: the loss function's call counter continues from epoch 1's 6 steps
    second = build(
        tmp_path / "split",
        epochs=3,
        precision="fp16",
        loss_fn=_shifted(nan_every(5, factor=1e36), 6),
    )
    second.resume()
    second.fit()
    assert second.amp.scaler.get_scale() == full.amp.scaler.get_scale() < 2.0**16
    assert second.progress.fp16_overflow_steps == full.progress.fp16_overflow_steps == 3
    assert_same_tensors(comparable(second.state_dict()), comparable(full.state_dict()))


def _shifted(loss_fn: Any, calls: int) -> Any:
    """``loss_fn`` as if it had already been called ``calls`` times in training."""
    fake = torch.zeros(1, NUM_CLASSES).log_softmax(-1)
    with torch.enable_grad():
        for _ in range(calls):
            loss_fn(fake, torch.ones(1, dtype=torch.long))
    return loss_fn


@pytest.mark.parametrize("failing", ["torch.save", "os.fsync", "os.replace"])
def test_disk_full_during_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save("last.pt", {"step": 1, "w": torch.ones(3)})
    before = sorted(os.listdir(tmp_path))

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    module, name = failing.split(".")
    monkeypatch.setattr(torch if module == "torch" else os, name, no_space)
    with pytest.raises(
        CheckpointError, match=r"could not save checkpoint .*last\.pt: .*No space left on device"
    ):
        manager.save("last.pt", {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind
    state = manager.load("last.pt")
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_unwritable_checkpoint_directory_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: Any
) -> None:
    trainer = build(tmp_path, epochs=3, on_epoch_end=kill_after(1))
    with pytest.raises(Killed):
        trainer.fit()

    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(
        atomic_module, "open", denied, raising=False
    )  # as a read-only directory would
    trainer.on_epoch_end = None
    with pytest.raises(CheckpointError, match="Permission denied"):
        trainer.fit()
    monkeypatch.undo()
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        CheckpointManager(tmp_path / "metrics.jsonl" / "ckpt")  # a file where a directory should be


@pytest.mark.slow
def test_cli_disk_full_is_one_line_and_the_previous_checkpoint_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.replace("epochs: 4", "epochs: 2"))
    torch_save, calls = torch.save, {"n": 0}

    def fills_up(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if (
            calls["n"] > 3
        ):  # epoch 1 wrote best.pt, epoch-0001.pt and last.pt; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        torch_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    code = pointer_v45.main(
        [
            "--config",
            str(config),
            "--out",
            str(tmp_path / "runs"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: could not save checkpoint") and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.undo()
    checkpoints = run_dir_in(tmp_path / "runs") / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["best.pt", "epoch-0001.pt", "last.pt"]
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1


# =========================================================================== 4. bad input


def test_checkpoint_of_another_model_is_refused_with_the_keys_listed(
    tmp_path: Path, build: Any
) -> None:
    small = build(tmp_path / "small", epochs=1)
    small.fit()
    other = build(tmp_path / "other", epochs=1, hidden=6)
    with pytest.raises(ValueError) as info:
        other.resume(tmp_path / "small" / "ckpt" / "last.pt")
    message = str(info.value)
    assert "\n" not in message and "does not match the model" in message
    assert "mis-shaped" in message and "emb.weight [7, 8] vs [7, 6]" in message

    target = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"missing keys: 0\.weight, 0\.bias; unexpected keys: w"):
        load_model_state(target, {"w": torch.zeros(1)})
    with pytest.raises(
        ValueError, match="not a Trainer checkpoint state: it lacks 'optimizer', 'amp'"
    ):
        other.load_state_dict({"model": other.model.state_dict()})


@pytest.mark.slow
def test_cli_resume_with_a_checkpoint_of_another_model(
    reference: ReferenceRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = reference.copy(tmp_path / "runs")
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["num_layers"] = 2
    (run_dir / "config.json").write_text(json.dumps(config))
    assert pointer_v45.main(["--resume", str(run_dir), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "does not match the model (PointerV45): missing keys: encoder.layers.1." in err


def _write_config(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return ["--config", str(path)]


def _write_csv(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return ["--data", str(path)]


HEADER = "id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: ["--epochs", "-3"], "--epochs must be an integer >= 1, got -3"),
        (lambda tmp: ["--seed", "-1"], "seed must be an int >= 0, got -1"),
        (
            lambda tmp: _write_config(tmp, "training:\n  lr: -0.001\n"),
            "Invalid learning rate: -0.001",
        ),
        (
            lambda tmp: _write_config(tmp, "training:\n  weight_decay: -1\n"),
            "Invalid weight_decay value: -1.0",
        ),
        (
            lambda tmp: _write_config(tmp, "training:\n  max_grad_norm: .nan\n"),
            "training.max_grad_norm must be a finite number, got nan",
        ),
        (
            lambda tmp: _write_config(tmp, "training:\n  min_lr: .inf\n"),
            "training.min_lr must be a finite number or null, got inf",
        ),
        (
            lambda tmp: _write_config(tmp, "training:\n  warmup_epochs: 3\n"),
            "unknown key training.warmup_epochs (did you mean 'warmup'?)",
        ),
        (
            lambda tmp: _write_config(tmp, "trainng:\n  lr: 0.001\n"),
            "unknown section 'trainng' (did you mean 'training'?)",
        ),
        (
            lambda tmp: _write_csv(tmp, HEADER + "0,1,5,30.0,0,0,60,90,abc\n"),
            "column 'weekday': non-numeric value 'abc'",
        ),
        (lambda tmp: _write_csv(tmp, ""), "staypoint file is empty"),
        (lambda tmp: _write_csv(tmp, HEADER), "staypoint file has no rows"),
        (lambda tmp: ["--out", str(_write_csv(tmp, "x")[1])], "Not a directory"),
    ],
    ids=[
        "negative-epochs",
        "negative-seed",
        "negative-lr",
        "negative-weight-decay",
        "nan-grad-clip",
        "inf-min-lr",
        "unknown-key",
        "unknown-section",
        "non-numeric-csv",
        "empty-csv",
        "header-only-csv",
        "out-is-a-file",
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    make_args: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = make_args(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "runs")]
    code = pointer_v45.main([*args, "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert (
        err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    )


@pytest.mark.parametrize("content", ["{not json", '{"training": {}}'], ids=["corrupt", "no-recipe"])
def test_resume_of_a_directory_with_a_bad_config_json(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(content)
    assert pointer_v45.main(["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "config.json" in err
        and "not a run directory?" in err
        and len(err.strip().splitlines()) == 1
    )


def test_user_with_too_few_days_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = synthetic_data.generate_synthetic_staypoints(
        tmp_path / "data.csv", num_users=4, num_days=40
    )
    rows = "".join(
        f"{9000 + d},99,{d % 3},60.0,{d},{d},480,540,{d % 7}\n" for d in range(3)
    )  # 3 days only
    csv.write_text(csv.read_text() + rows)
    data = pointer_v45_config.DataConfig(path=str(csv), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="pointer_v45"):
        splits = pointer_v45.load_data(data)
    assert "data: user 99: no train samples" in caplog.text
    assert 99 in splits.skipped_users and len(splits.train["y"]) > 0


# =========================================================================== 5. resume gaps


def test_mid_epoch_resume_under_skip_keeps_the_epochs_full_nonfinite_count(
    tmp_path: Path, build: Any, nan_every: Any, fake_clock: Any
) -> None:
    # steps 2, 4, 6 of each epoch are dropped; a step checkpoint after every step lands mid-epoch
    full = build(tmp_path / "full", epochs=2, loss_fn=nan_every(2), nonfinite="skip")
    full.fit()
    split = build(
        tmp_path / "split",
        epochs=2,
        loss_fn=nan_every(2),
        nonfinite="skip",
        every_seconds=1.0,
        clock=fake_clock(),
    )
    split.fit()
    mid = [
        p
        for p in sorted((tmp_path / "split" / "ckpt").glob("step-*.pt"))
        if torch.load(p, weights_only=True)["epoch"] == 1
        and torch.load(p, weights_only=True)["step_in_epoch"] > 2
    ]
    assert mid, "expected a step checkpoint after a dropped step of epoch 2"
    state = torch.load(mid[0], weights_only=True)
    resumed = build(
        tmp_path / "resumed",
        epochs=2,
        loss_fn=_shifted(nan_every(2), 6 + state["step_in_epoch"]),
        nonfinite="skip",
    )
    resumed.resume(mid[0])
    result = resumed.fit()
    assert [r["nonfinite_steps"] for r in full.progress.history] == [3, 3]
    assert [r["nonfinite_steps"] for r in result["history"]] == [
        3,
        3,
    ]  # not 3 minus the steps before the checkpoint
    records = [
        json.loads(line)
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["epoch"] == 2 and records[-1]["nonfinite_steps"] == 3
    assert result["nonfinite_steps"] == 6


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_best_model_falls_back_to_the_best_epochs_checkpoint(
    tmp_path: Path, build: Any, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = build(tmp_path, epochs=3)
    best = tmp_path / "ckpt" / "best.pt"

    def damage_best(record: dict[str, Any]) -> None:
        if record["epoch"] == 3:
            best.unlink() if damage == "deleted" else best.write_bytes(best.read_bytes()[:500])

    trainer.on_epoch_end = damage_best
    with caplog.at_level(logging.WARNING, logger="trainkit.trainer"):
        result = trainer.fit()
    epoch = result["best_epoch"]
    assert result["evaluated"] == f"epoch-{epoch:04d}.pt (epoch {epoch})"
    assert f"evaluating epoch-{epoch:04d}.pt, the best epoch's checkpoint" in caplog.text
    expected = torch.load(tmp_path / "ckpt" / f"epoch-{epoch:04d}.pt", weights_only=True)["model"]
    assert_same_tensors(trainer.model.state_dict(), expected)


def test_without_best_model_or_its_epoch_checkpoint_the_final_weights_are_evaluated_and_said_so(
    tmp_path: Path, build_trainer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = build_trainer(tmp_path, epochs=2)  # no epoch checkpoints

    def delete_best(record: dict[str, Any]) -> None:
        if record["epoch"] == 2:
            (tmp_path / "ckpt" / "best.pt").unlink(missing_ok=True)

    trainer.on_epoch_end = delete_best
    with caplog.at_level(logging.WARNING, logger="trainkit.trainer"):
        result = trainer.fit()
    assert result["evaluated"] == "final weights (epoch 2): no best.pt"
    assert "evaluating the final weights" in caplog.text
    assert result["validation"] == {
        k: v for k, v in trainer.evaluate(trainer.val_loader).items() if k != "batch_losses"
    }


# =========================================================================== 6. SIGINT / SIGTERM


def signal_at_step(loss_fn: Any, step: int, signum: int, times: int = 1) -> Any:
    """``loss_fn`` that sends ``signum`` to this process ``times`` times during training step ``step``."""
    calls = {"n": 0}

    def wrapped(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == step:
                for _ in range(times):
                    os.kill(os.getpid(), signum)
        return loss_fn(log_probs, targets)

    return wrapped


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_writes_last_pt_and_resume_is_bit_identical(
    tmp_path: Path, build: Any, signum: int
) -> None:
    full = build(tmp_path / "full", epochs=3)
    full.fit()
    previous = signal.getsignal(signum)
    first = build(
        tmp_path / "split", epochs=3, loss_fn=signal_at_step(LabelSmoothedNLLLoss(0.03), 9, signum)
    )
    with pytest.raises(TrainingInterrupted) as info:
        first.fit()
    message = str(info.value)
    assert (
        "\n" not in message
        and f"interrupted by {signal.Signals(signum).name} at epoch 2, step 9" in message
    )
    assert "last.pt" in message and signal.getsignal(signum) is previous  # handlers restored
    state = torch.load(tmp_path / "split" / "ckpt" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (
        1,
        3,
        9,
    )  # step 9 finished
    second = build(tmp_path / "split", epochs=3)
    second.resume()
    second.fit()
    expected = torch.load(tmp_path / "full" / "ckpt" / "last.pt", weights_only=True)
    actual = torch.load(tmp_path / "split" / "ckpt" / "last.pt", weights_only=True)
    assert_same_tensors(comparable(actual), comparable(expected))


@pytest.mark.slow
def test_a_second_signal_ends_the_process_at_once(tmp_path: Path) -> None:
    script = tmp_path / "twice.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "src")!r})
        import torch
        from torch import nn
        from trainkit import CheckpointManager, Trainer

        model = nn.Sequential(nn.Linear(3, 4), nn.LogSoftmax(-1))
        batches = [(torch.randn(8, 3), torch.randint(1, 4, (8,))) for _ in range(4)]
        calls = [0]
        def loss_fn(scores, targets):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                print("still running", flush=True)
            return nn.functional.nll_loss(scores, targets)
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, batches, batches, epochs=2,
                progress=False, checkpoints=CheckpointManager({str(tmp_path / "ckpt")!r})).fit()
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGINT, proc.stderr
    assert "still running" not in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "ckpt" / "last.pt").exists()  # nothing was saved: it ended at once


@pytest.mark.slow
def test_cli_sigint_is_one_line_exit_130_and_resume_is_bit_identical(
    reference: ReferenceRun, tmp_path: Path
) -> None:
    driver = Driver(tmp_path, "proposed")
    out = tmp_path / "runs"
    proc = driver.start(driver.fresh_args(out), "mark step 2 5")
    interrupted, output = Driver.run(proc, signum=signal.SIGINT)
    assert not interrupted and proc.returncode == 130, output
    lines = [line for line in output.splitlines() if "interrupted by SIGINT" in line]
    assert len(lines) == 1 and "at epoch 2, step" in lines[0] and "Traceback" not in output, output
    run_dir = run_dir_in(out)
    killed, output = Driver.run(driver.start(["--resume", str(run_dir)]))
    assert not killed and "Resumed from" in output, output
    for name in ("last.pt", "best.pt"):
        expected = torch.load(reference.dir() / "checkpoints" / name, weights_only=True)
        actual = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert_same_tensors(comparable(actual), comparable(expected), name)


# =========================================================================== check, then change (issue 22)
# A resume checks every block of the checkpoint (each part's check_state_dict included) before
# it loads anything: a refused resume leaves the model, the optimizer, every component and
# every file as they were.


def _snapshot(trainer: Trainer, directory: Path) -> dict[str, Any]:
    """Everything a refused resume must leave alone: tensors cloned, files as bytes."""
    files = {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "selector": trainer.selector.state_dict(),
        "ema": None if trainer.ema is None else trainer.ema.state_dict(),
        "best": trainer.checkpoints.best_names(),
        "progress": (trainer.progress.epoch, trainer.progress.global_step),
        "files": files,
    }


def _edit_last(directory: Path, edit: Any) -> None:
    """Rewrite ``ckpt/last.pt`` with ``edit(state)`` applied (an edited or foreign checkpoint)."""
    path = directory / "ckpt" / "last.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _nan_k_best(state: dict[str, Any]) -> None:
    state["checkpoints"].update(keep_best=1, best=[["best-1.pt", math.nan]])


def _pinned_k_best(state: dict[str, Any]) -> None:
    state["checkpoints"].update(keep_best=1, best=[["last.pt", 0.5]])


def _truncate_last(directory: Path) -> None:
    last = directory / "ckpt" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])  # the resume falls back to epoch-0002.pt


REFUSED_RESUMES = {
    # name: (EMA decay of the saved run, of the resumed run, edit of last.pt, expected message)
    "ema-decay": (0.9, 0.5, None, "decay=0.9"),
    "ema-decay-after-fallback": (0.9, 0.5, "truncate", "decay=0.9"),
    "ema-shape": (
        0.9,
        0.9,
        lambda s: s["ema"]["module"].update(n_averaged=torch.ones(2)),
        "n_averaged",
    ),
    "stopper-counter": (None, None, lambda s: s["selector"].update(counter="x"), "counter"),
    "stopper-best": (None, None, lambda s: s["selector"].update(best="2.0"), "best"),
    "k-best-nan": (None, None, _nan_k_best, "best-1.pt"),
    "k-best-pinned": (None, None, _pinned_k_best, "last.pt"),
    "epoch-three": (
        None,
        None,
        lambda s: s.update(epoch="three"),
        "last.pt: checkpoint key 'epoch'",
    ),
    "model-shape": (
        None,
        None,
        lambda s: s["model"].update({"head.bias": torch.zeros(2)}),
        "head.bias",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_RESUMES))
def test_a_refused_resume_changes_nothing(tmp_path: Path, build: Any, case: str) -> None:
    from trainkit import EMA

    saved_decay, resumed_decay, edit, message = REFUSED_RESUMES[case]
    first = build(tmp_path, epochs=4, on_epoch_end=kill_after(3))
    if saved_decay is not None:
        first.ema = EMA(first.model, decay=saved_decay)
    with pytest.raises(Killed):
        first.fit()
    if edit == "truncate":
        _truncate_last(tmp_path)
    elif edit is not None:
        _edit_last(tmp_path, edit)

    torch.manual_seed(7)
    second = build(tmp_path, epochs=4)
    if resumed_decay is not None:
        second.ema = EMA(second.model, decay=resumed_decay)
    before = _snapshot(second, tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        second.resume()
    assert "\n" not in str(info.value)
    after = _snapshot(second, tmp_path)
    assert after["files"] == before["files"]  # no last.pt written, no log truncated
    assert_same_tensors(after["model"], before["model"], "model")
    assert_same_tensors(after["optimizer"], before["optimizer"], "optimizer")
    assert after["selector"] == before["selector"] and after["best"] == before["best"]
    assert after["progress"] == before["progress"] == (0, 0)
    if before["ema"] is not None:
        assert_same_tensors(after["ema"], before["ema"], "ema")


def test_a_resume_past_a_damaged_last_pt_renews_it_once_loaded(tmp_path: Path, build: Any) -> None:
    first = build(tmp_path, epochs=4, on_epoch_end=kill_after(3))
    with pytest.raises(Killed):
        first.fit()
    _truncate_last(tmp_path)
    second = build(tmp_path, epochs=4)
    with pytest.warns(RuntimeWarning, match="last.pt"):
        chosen = second.resume()
    assert chosen.name == "epoch-0003.pt"
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 3


def test_a_deleted_metrics_jsonl_is_rewritten_from_the_checkpoint_history(
    tmp_path: Path, build: Any
) -> None:
    full = build(tmp_path / "full", epochs=6)
    full.fit()
    expected = [
        json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]

    first = build(tmp_path / "split", epochs=6, on_epoch_end=kill_after(3))
    with pytest.raises(Killed):
        first.fit()
    metrics = tmp_path / "split" / "metrics.jsonl"
    metrics.unlink()
    second = build(tmp_path / "split", epochs=6)
    second.resume()
    restored = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in restored] == [1, 2, 3]
    second.fit()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(records, expected, strict=True):
        assert {k: v for k, v in got.items() if k not in TIMING_KEYS} == {
            k: v for k, v in want.items() if k not in TIMING_KEYS
        }


def test_seed_everything_refuses_a_seed_torch_cannot_take_with_one_line() -> None:
    from trainkit.rng import seed_everything

    before = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"seed must be below 2\*\*64") as info:
        seed_everything(2**64)
    assert "\n" not in str(info.value)
    assert torch.equal(torch.get_rng_state(), before)  # nothing was seeded
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        seed_everything(-1)
    seed_everything(2**64 - 1)  # the largest seed torch takes


@pytest.mark.parametrize(
    ("state", "named"),
    [
        ({"weight": [[0.0] * 4] * 2, "bias": torch.zeros(2)}, r"not tensors: weight \(list\)"),
        ({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, r"weight \[2, 3\] vs \[2, 4\]"),
    ],
    ids=["non-tensor", "wrong-shape"],
)
def test_load_model_state_is_one_line_naming_the_key(state: dict[str, Any], named: str) -> None:
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=named) as info:
        load_model_state(model, state)
    assert "\n" not in str(info.value)
    assert_same_tensors(model.state_dict(), before, "model")
