"""The public API of design section 3: top-level names, __all__, py.typed, layering."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

import trainkit

PACKAGE_DIR = Path(trainkit.__file__).resolve().parent
ROOT = Path(__file__).resolve().parent.parent

REQUIRED = [
    "WarmupCosineSchedule",
    "EarlyStopper",
    "RunningAverage",
    "CheckpointManager",
    "AMPStep",
    "masked_nll",
    "coverage_loss",
    "LabelSmoothedNLLLoss",
    "build_optimizer",
    "recipes",
]

COMPONENT_MODULES = [
    "schedule",
    "stopping",
    "checkpoint",
    "amp",
    "losses",
    "optim",
    "recipes",
    "loggers",
    "nonfinite",
    "progress",
    "evaluation",
    "interrupt",
    "_training_state",
    "distributed",
]


def test_top_level_import():
    from trainkit import (  # noqa: F401
        AMPStep,
        CheckpointManager,
        EarlyStopper,
        LabelSmoothedNLLLoss,
        RunningAverage,
        WarmupCosineSchedule,
        build_optimizer,
        coverage_loss,
        masked_nll,
        recipes,
    )

    assert callable(recipes.original) and callable(recipes.proposed)


def test_all_lists_the_public_names_and_each_resolves():
    assert isinstance(trainkit.__all__, (list, tuple))
    for name in REQUIRED:
        assert name in trainkit.__all__, name
    for name in trainkit.__all__:
        assert hasattr(trainkit, name), name
    assert len(set(trainkit.__all__)) == len(trainkit.__all__)


def test_top_level_names_are_the_module_objects():
    from trainkit import amp, checkpoint, losses, optim, schedule, stopping

    assert trainkit.WarmupCosineSchedule is schedule.WarmupCosineSchedule
    assert trainkit.EarlyStopper is stopping.EarlyStopper
    assert trainkit.RunningAverage is stopping.RunningAverage
    assert trainkit.CheckpointManager is checkpoint.CheckpointManager
    assert trainkit.AMPStep is amp.AMPStep
    assert trainkit.masked_nll is losses.masked_nll
    assert trainkit.coverage_loss is losses.coverage_loss
    assert trainkit.LabelSmoothedNLLLoss is losses.LabelSmoothedNLLLoss
    assert trainkit.build_optimizer is optim.build_optimizer
    assert inspect.ismodule(trainkit.recipes)


def test_constructor_signatures_match_the_contract():
    def params(obj):
        sig = inspect.signature(obj)
        return {n: p.default for n, p in sig.parameters.items() if n != "self"}

    p = params(trainkit.WarmupCosineSchedule)
    assert list(p)[:4] == ["base_lr", "warmup", "total", "min_lr"] and p["min_lr"] == 0.0
    p = params(trainkit.EarlyStopper)
    assert list(p)[:4] == ["patience", "min_epochs", "mode", "min_delta"]
    assert (p["patience"], p["min_epochs"], p["mode"], p["min_delta"]) == (5, 0, "min", 0.0)
    p = params(trainkit.RunningAverage)
    assert (p["decay"], p["clip"]) == (0.99, 12.0)
    p = params(trainkit.CheckpointManager)
    assert list(p)[:3] == ["directory", "keep_last", "every_seconds"]
    assert (p["keep_last"], p["every_seconds"]) == (3, None)
    p = params(trainkit.AMPStep)
    assert list(p)[:4] == ["optimizer", "precision", "max_grad_norm", "device_type"]
    assert (p["precision"], p["max_grad_norm"], p["device_type"]) == ("auto", None, None)
    p = params(trainkit.LabelSmoothedNLLLoss)
    assert (p["smoothing"], p["ignore_index"]) == (0.03, 0)
    assert list(params(trainkit.masked_nll))[:3] == ["log_probs", "targets", "mask"]
    assert list(params(trainkit.coverage_loss))[:2] == ["attn", "mask"]
    assert list(params(trainkit.build_optimizer))[:2] == ["params_or_model", "name"]
    p = params(trainkit.CheckpointManager.load)
    assert (p["name"], p["map_location"]) == ("best.pt", None)


def test_py_typed_ships():
    assert (PACKAGE_DIR / "py.typed").is_file()
    if sys.version_info >= (3, 11):
        import tomllib

        config = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert "py.typed" in config["tool"]["setuptools"]["package-data"]["trainkit"]


def test_components_do_not_import_the_trainer():
    # House rule: components never import the Trainer (or the example code).
    for mod in COMPONENT_MODULES:
        tree = ast.parse((PACKAGE_DIR / f"{mod}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                if node.level:
                    names += [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert "trainer" not in name.split("."), (mod, name)
                assert "examples" not in name.split("."), (mod, name)


def test_component_modules_import_alone():
    for mod in COMPONENT_MODULES:
        module = importlib.import_module(f"trainkit.{mod}")
        assert module.__doc__, f"trainkit.{mod} has no module docstring"


def test_trainer_constructor_keywords_and_loop_exports():
    from trainkit import interrupt, nonfinite

    params = inspect.signature(trainkit.Trainer).parameters
    expected = {
        "epochs": inspect.Parameter.empty,
        "test_loader": None,
        "schedule": None,
        "per_step_schedule": False,
        "amp": None,
        "selector": None,
        "checkpoints": None,
        "best_name": "best.pt",
        "epoch_checkpoints": False,
        "forward": trainkit.default_forward,
        "metrics": trainkit.RankingMetrics,
        "device": "cpu",
        "ignore_index": None,  # domain-neutral: every sample counts (issue 24)
        "nonfinite": "raise",
        "max_nonfinite_steps": 100,
        "log_every": 50,
        "loggers": (),
        "progress": True,
        "config": None,
        "on_epoch_end": None,
        "ema": None,
        "capture": "auto",
    }
    for name, default in expected.items():
        assert (
            params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default
        ), name
    for old in (
        "stopper",
        "running_average",
        "metrics_log",
        "step_log",
        "tensorboard_dir",
        "max_skipped",
    ):
        assert old not in params, old
    assert trainkit.NonFiniteLossError is nonfinite.NonFiniteLossError
    assert trainkit.TrainingInterrupted is interrupt.TrainingInterrupted
    assert not hasattr(trainkit, "seed_forward")
