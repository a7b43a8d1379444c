"""The configuration of examples/pointer_v45.py: one recipe of ``trainkit.recipes`` plus these
model, data and run settings, changed by a YAML file and then by flags (docs/recipes.md).

A YAML file has up to five sections, each optional:

    data: {path: ..., max_len: ...}           # DataConfig
    model: {d_model: 64, ...}                 # ModelConfig
    training: {epochs: 10, device: cpu, ...}  # RunConfig fields, and recipe fields for every recipe
    original: {lr: 0.1}                       # recipe fields for that recipe only
    proposed: {lr: 5.0e-4}

Every key is checked (``trainkit.recipes.replace_checked``): an unknown key is refused with
the closest known one, a wrong type (``compile: "no"``, ``num_layers: 1.0``) in one line.
A run's ``config.json`` holds the same sections with every value spelled out.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import run_dir as rd
from trainkit import recipes
from trainkit.recipes import Recipe, replace_checked

log = logging.getLogger("pointer_v45")
__all__ = [
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "Settings",
    "change_recipe",
    "check_same_run",
    "config_sections",
    "configure",
    "configure_new_run",
    "read_run_config",
    "read_yaml",
    "resume_settings",
    "seeds_of",
]


@dataclass(frozen=True)
class ModelConfig:
    """PointerV45's sizes (the reference's GeoLife settings)."""

    d_model: int = 64
    nhead: int = 4
    num_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.15

    def __post_init__(self) -> None:
        for name, high in (
            ("d_model", 4096),
            ("nhead", 64),
            ("num_layers", 48),
            ("dim_feedforward", 65536),
        ):
            if not 1 <= getattr(self, name) <= high:
                raise ValueError(
                    f"model.{name} must be between 1 and {high}, got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class DataConfig:
    """Where the staypoints come from; ``path: None`` is the synthetic data (synthetic_data.py)."""

    path: str | None = None
    cache_dir: str | None = None  # None: $TRAINKIT_CACHE_DIR or ~/.cache/trainkit (docs/data.md)
    max_len: int | None = (
        None  # cap on history length (most recent kept); None: the longest history
    )
    synthetic_users: int = 20
    synthetic_days: int = 100
    synthetic_seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """How the run executes, the same for every recipe."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 50
    per_step_schedule: bool = False  # the reference sets the LR once per epoch
    compile: bool = (
        False  # torch.compile the model (inside the captured step on CUDA), static batch shapes
    )
    capture: bool = True  # the captured whole step and evaluation on CUDA (--no-capture: eager)
    progress: bool = True


@dataclass(frozen=True)
class Settings:
    """Everything but the recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)


def read_yaml(path: Path) -> dict[str, Any]:
    """The sections of a YAML config file (an empty section is an empty mapping)."""
    try:
        import yaml
    except ImportError:
        raise rd.UsageError(
            "reading --config needs PyYAML: pip install 'trainkit-pt[examples]'"
        ) from None
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise rd.UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise rd.UsageError(
            f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(loaded, dict):
        raise rd.UsageError(
            f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}"
        )
    return {key: value if value is not None else {} for key, value in loaded.items()}


def change_recipe(recipe: Recipe, changes: dict[str, Any], prefix: str) -> Recipe:
    """``recipe.replace`` with the changes; a new ``epochs`` also sets the cosine's length."""
    if (
        "epochs" in changes
        and "schedule_epochs" not in changes
        and recipe.schedule_epochs is not None
    ):
        changes = {**changes, "schedule_epochs": changes["epochs"]}
    return replace_checked(recipe, changes, prefix)


def configure(
    sections: dict[str, Any], base: dict[str, Recipe]
) -> tuple[Settings, dict[str, Recipe]]:
    """Apply config sections: ``data``, ``model``, ``training`` (run settings, and recipe fields
    for every recipe), then ``original`` / ``proposed`` (that recipe only)."""
    known = ("data", "model", "training", *recipes.NAMES)
    for name, values in sections.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            raise rd.UsageError(
                f"unknown section {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
        if not isinstance(values, dict):
            raise rd.UsageError(
                f"section {name!r} must be a mapping of keys to values, got {type(values).__name__}"
            )
    training = sections.get("training", {})
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = replace_checked(
        RunConfig(), {k: v for k, v in training.items() if k in run_fields}, "training."
    )
    shared = {k: v for k, v in training.items() if k not in run_fields}
    chosen = {
        name: change_recipe(
            change_recipe(recipe, shared, "training."), sections.get(name, {}), f"{name}."
        )
        for name, recipe in base.items()
    }
    settings = Settings(
        replace_checked(ModelConfig(), sections.get("model", {}), "model."),
        replace_checked(DataConfig(), sections.get("data", {}), "data."),
        run,
    )
    return settings, chosen


def configure_new_run(args: argparse.Namespace) -> tuple[Settings, dict[str, Recipe]]:
    """The recipe(s) and settings of a new run: defaults, then --config, then flags."""
    flags = {
        k: v
        for k, v in (("epochs", args.epochs), ("seed", args.seed), ("precision", args.precision))
        if v is not None
    }
    kind = args.recipe or "proposed"
    base = {
        name: recipes.by_name(name) for name in recipes.NAMES if kind in (name, "compare", "ablate")
    }
    settings, base = configure(read_yaml(args.config) if args.config else {}, base)
    base = {name: change_recipe(recipe, flags, "--") for name, recipe in base.items()}
    for name, recipe in base.items():
        if args.epochs is not None and recipe.warmup is not None and recipe.warmup >= args.epochs:
            base[name] = recipe.replace(warmup=args.epochs // 10)
            log.info(
                "warmup of %d epochs does not fit %d epochs: reduced to %d",
                recipe.warmup,
                args.epochs,
                args.epochs // 10,
            )
    data = (
        dataclasses.replace(settings.data, path=str(args.data.resolve()))
        if args.data
        else settings.data
    )
    run = dataclasses.replace(
        settings.run,
        device=args.device or settings.run.device,
        compile=args.compile or settings.run.compile,
        capture=settings.run.capture and not args.no_capture,
        progress=not args.no_progress,
    )
    settings = Settings(settings.model, data, run)
    return settings, base


def config_sections(recipe: Recipe, settings: Settings) -> dict[str, Any]:
    """The run's config.json: the same sections as a YAML file, every value spelled out."""
    training = {k: v for k, v in recipe.to_dict().items() if k != "name"} | dataclasses.asdict(
        settings.run
    )
    return {
        "recipe": recipe.name,
        "training": training,
        "model": dataclasses.asdict(settings.model),
        "data": dataclasses.asdict(settings.data),
    }


def read_run_config(path: Path) -> tuple[Recipe, Settings]:
    """The recipe and settings saved in a run directory's ``config.json``."""
    saved = rd.read_json(path, " (not a run directory?)")
    try:
        if not isinstance(saved, dict) or not isinstance(saved.get("training"), dict):
            raise ValueError("it holds no training section")
        run_fields = {f.name for f in dataclasses.fields(RunConfig)}
        recipe = recipes.from_dict(
            {
                "name": saved.get("recipe"),
                **{k: v for k, v in saved["training"].items() if k not in run_fields},
            }
        )
        settings, _ = configure(
            {k: v for k, v in saved.items() if k != "recipe"}
            | {"training": {k: v for k, v in saved["training"].items() if k in run_fields}},
            {},
        )
    except ValueError as exc:
        raise rd.UsageError(f"{path}: {exc} (not a run directory?)") from None
    return recipe, settings


def seeds_of(text: str | None, first: int, many: bool) -> list[int]:
    """``--seeds``: a count N (``first``..``first+N-1``) or a comma list; default 5 for compare/ablate."""
    try:
        seeds = (
            [int(s) for s in text.split(",")]
            if text and "," in text
            else list(range(first, first + int(text or (5 if many else 1))))
        )
    except ValueError:
        raise rd.UsageError(
            f"--seeds must be a count or a comma-separated list of integers, got {text!r}"
        ) from None
    if not seeds or min(seeds) < 0:
        raise rd.UsageError(f"--seeds must name at least one seed >= 0, got {text!r}")
    return seeds


def check_same_run(run_dir: Path, recipe: Recipe, settings: Settings) -> None:
    """Refuse to resume ``run_dir`` with another recipe (a longer run is fine) or model/data."""
    saved_recipe, saved = read_run_config(run_dir / "config.json")
    ours, theirs = recipe.to_dict(), saved_recipe.to_dict()
    differ = [key for key in ours if key not in rd.RESUME_MAY_CHANGE and ours[key] != theirs[key]]
    if differ or (saved.model, saved.data) != (settings.model, settings.data):
        raise rd.UsageError(
            f"{run_dir / 'config.json'} holds other settings than this run's "
            f"({', '.join(differ) or 'model/data'})"
        )


def resume_settings(args: argparse.Namespace) -> tuple[Recipe, Settings, list[Path]]:
    """``--resume``: the run's recipe and settings from its config.json (a comparison: its first
    run's), the config.json files of a comparison's runs (empty for one run).

    Raises:
        UsageError: no config.json, or a flag that conflicts with the saved settings.
    """
    path: Path = args.resume
    found = (
        []
        if (path / "config.json").is_file()
        else sorted(path.glob("*/config.json")) + sorted(path.glob("*/*/config.json"))
    )
    if not found and not (path / "config.json").is_file():
        raise rd.missing_config(path)
    recipe, settings = read_run_config(found[0] if found else path / "config.json")
    sweep = bool(found) and args.recipe in ("compare", "ablate")
    rd.check_resume_flags(
        path,
        {
            "--config": args.config and str(args.config),
            "--recipe": None if sweep else args.recipe,
            "--seed": args.seed,
            "--precision": args.precision,
            "--data": args.data and str(args.data.resolve()),
        },
        {
            "--recipe": recipe.name,
            "--seed": recipe.seed,
            "--precision": recipe.precision,
            "--data": settings.data.path,
        },
    )
    run = dataclasses.replace(
        settings.run, device=args.device or settings.run.device, progress=not args.no_progress
    )
    if args.epochs is not None:  # a longer (or shorter) run
        recipe = change_recipe(recipe, {"epochs": args.epochs}, "--")
    return recipe, dataclasses.replace(settings, run=run), found
