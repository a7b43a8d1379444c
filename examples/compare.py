"""``--recipe compare`` and ``--recipe ablate`` of ``pointer_v45.py``: a user of ``trainkit.sweep``.

    python examples/pointer_v45.py --recipe compare --seeds 5          # original vs proposed
    python examples/pointer_v45.py --recipe ablate --seeds 5           # revert ladder
    python examples/pointer_v45.py --recipe ablate --design add-one    # add-one ladder
    python examples/pointer_v45.py --resume runs/pointer_v45-ablate-seed42-...

A row is a recipe (``Recipe.to_dict()`` without its seed); the settings every row shares
(model, data, run) are the sweep's ``shared`` values. :func:`train` is the sweep's training
function (``compare:train``): it rebuilds the recipe and settings, runs
``pointer_v45.run_one`` in the run directory (resuming it when an earlier attempt wrote its
config.json) and returns the numbers the report shows. docs/compare.md has the layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

from trainkit import recipes
from trainkit.recipes import Recipe
from trainkit.sweep import (
    Execution,
    Metric,
    Sweep,
    ablation_rows,
    parse_seeds,
    resume_sweep,
    run_sweep,
)

__all__ = ["CURVES", "DESIGNS", "METRICS", "check_flags", "resume", "run", "sweep_of", "train"]

TRAIN = "compare:train"
TITLE = "pointer_v45"
DESIGNS = ("revert", "add-one")
METRICS = (
    Metric("test.acc@1", "test Acc@1", 2, True),
    Metric("test.acc@5", "test Acc@5", 2, True),
    Metric("test.mrr", "test MRR", 2, True),
    Metric("test.acc@1_seen", "test Acc@1, seen targets", 2, True),
    Metric("best_epoch", "best epoch", 1, False),
    Metric("wall_time_s", "wall time (s)", 1, False),
)
CURVES = (
    ("train_loss", "train loss"),
    ("val_loss", "validation loss"),
    ("val_acc@1", "validation Acc@1 (%)"),
    ("lr", "learning rate"),
)
NOT_SETTINGS = ("name", "framework", "lr_range")  # recipe fields that describe, not set
SWEEP_ONLY = ("seeds", "design", "jobs")  # flags that mean nothing for one run


def _row(recipe: Recipe) -> dict[str, Any]:
    """A recipe as a sweep row: every field but the seed (each run gets its own)."""
    values = recipe.to_dict()
    del values["seed"]
    return values


def sweep_of(
    kind: str, base: dict[str, Recipe], settings: Any, seeds: list[int], design: str
) -> Sweep:
    """The sweep of ``--recipe compare`` or ``--recipe ablate``.

    Args:
        kind: ``"compare"`` or ``"ablate"``.
        base: ``{"original": ..., "proposed": ...}`` after the config file and flags.
        settings: The model, data and run settings (``pointer_v45_config.Settings``).
        seeds: The RNG seeds.
        design: The ablation's ``"revert"`` (start from proposed, take one group of the
            original's fields per row) or ``"add-one"`` (start from original, add one group
            of the proposed's per row, and a row ``all`` with every group).
    """
    training = dataclasses.asdict(settings.run)
    del training["progress"]  # no part of a result: chosen per process (see train)
    shared = {
        "settings": {
            "model": dataclasses.asdict(settings.model),
            "data": dataclasses.asdict(settings.data),
            "training": training,
        }
    }
    common = {
        "train": TRAIN,
        "seeds": seeds,
        "shared": shared,
        "title": TITLE,
        "metrics": METRICS,
        "curves": CURVES,
        "not_settings": NOT_SETTINGS,
    }
    if kind == "compare":
        rows = {name: _row(base[name]) for name in recipes.NAMES}
        return Sweep(rows=rows, kind="compare", **common)
    original, proposed = _row(base["original"]), _row(base["proposed"])
    if design == "revert":
        rows, changed = ablation_rows(proposed, original, recipes.ABLATION_GROUPS)
    else:
        rows, changed = ablation_rows(original, proposed, recipes.ABLATION_GROUPS, all_name="all")
    return Sweep(rows=rows, kind="ablation", design=design, changed=changed, **common)


def train(config: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    """One run of the sweep: ``pointer_v45.run_one`` with the row's recipe and the shared settings.

    Returns:
        The report's numbers (test metrics, best epoch, wall time) and, as text, the data,
        model and device.
    """
    import pointer_v45
    from pointer_v45_config import configure

    sections = dict(config["settings"])
    recipe_fields = {key: value for key, value in config.items() if key != "settings"}
    recipe = recipes.from_dict({**recipe_fields, "seed": seed})
    progress = sys.stdout.isatty()  # a worker's output is a file: no progress bar there
    training = {**sections["training"], "progress": progress}
    settings, _ = configure({**sections, "training": training}, {})
    resume = (run_dir / "config.json").is_file()
    if not resume:  # a fresh run, or one killed before its config.json: nothing to keep
        shutil.rmtree(run_dir)
    results = pointer_v45.run_one(recipe, run_dir, resume, settings)
    samples = ", ".join(f"{k} {v}" for k, v in results["num_samples"].items())
    model = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(settings.model).items())
    return {
        **{f"test.{key}": results["test"][key] for key in ("acc@1", "acc@5", "mrr", "acc@1_seen")},
        "best_epoch": results["best_epoch"],
        "wall_time_s": results["wall_time_s"],
        "data": f"{results['data']} ({samples} samples)",
        "model": model,
        "device": results["device"],
    }


def check_flags(args: argparse.Namespace) -> None:
    """Refuse the sweep-only flags for one run (they would be ignored).

    Raises:
        ValueError: ``--seeds``, ``--design`` or ``--jobs`` without compare/ablate.
    """
    kind = args.recipe or "proposed"
    given = [f"--{flag}" for flag in SWEEP_ONLY if getattr(args, flag, None) is not None]
    if kind not in ("compare", "ablate") and given:
        raise ValueError(
            f"{', '.join(given)}: only for --recipe compare or ablate (one run takes --seed)"
        )
    if kind == "compare" and args.design is not None:
        raise ValueError("--design: only for --recipe ablate")


def run(
    kind: str, args: argparse.Namespace, base: dict[str, Recipe], settings: Any, out_dir: Path
) -> Path:
    """``--recipe compare|ablate``: the sweep in ``out_dir``; the report's path."""
    first = next(iter(base.values())).seed
    seeds = parse_seeds(args.seeds or "5", first)
    sweep = sweep_of(kind, base, settings, seeds, args.design or "revert")
    return run_sweep(out_dir, sweep, Execution(jobs=args.jobs))


def resume(args: argparse.Namespace, defaults: argparse.Namespace) -> Path:
    """``--resume SWEEP_DIR``: finish the sweep as its sweep.json says.

    Raises:
        ValueError: a flag that would change the sweep (only ``--jobs`` and
            ``--no-progress`` may be given), or anything ``resume_sweep`` refuses.
    """
    allowed = ("resume", "jobs", "no_progress")
    given = [
        "--" + name.replace("_", "-")
        for name, value in vars(args).items()
        if name not in allowed and value != getattr(defaults, name, None)
    ]
    if given:
        raise ValueError(
            f"--resume {args.resume}: {', '.join(given)} cannot change a sweep (its sweep.json "
            "fixes every run); leave it out"
        )
    return resume_sweep(args.resume, Execution(jobs=args.jobs))
