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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import run_dir as rd
from trainkit import recipes
from trainkit._validate import check_int
from trainkit.recipes import Recipe, replace_checked
from trainkit.sweep import read_epochs

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
    "parse_set",
    "read_run_config",
    "read_yaml",
    "resume_settings",
    "seeds_of",
]

# Seeds must fit every RNG they feed: NumPy's legacy seed takes 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1


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

    def __post_init__(self) -> None:
        if self.max_len is not None:
            check_int("data.max_len", self.max_len, minimum=1)
        check_int("data.synthetic_users", self.synthetic_users, minimum=1)
        check_int("data.synthetic_days", self.synthetic_days, minimum=1)
        check_int("data.synthetic_seed", self.synthetic_seed, minimum=0, maximum=SEED_MAX)


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
    limit_batches: int | None = None  # at most this many batches per split and epoch (a dry run)

    def __post_init__(self) -> None:
        check_int("training.log_every", self.log_every, minimum=1)
        if self.limit_batches is not None:
            check_int("training.limit_batches", self.limit_batches, minimum=1)


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
    """The recipe(s) and settings of a new run: defaults, then --config, then --set, then flags.

    When the number of epochs is set (anywhere) and the warmup, set nowhere, does not fit it,
    the warmup becomes ``epochs // 10`` (logged). ``--fast-dev-run`` is one epoch of two
    batches per split.

    Raises:
        UsageError: a bad ``--set`` item, section or key.
        ValueError: a bad value, naming the key or flag (a seed outside ``[0, SEED_MAX]`` too).
    """
    sections = read_yaml(args.config) if args.config else {}
    for section, values in parse_set(args.set).items():
        existing = sections.get(section) or {}
        if isinstance(existing, dict):  # anything else is refused by configure()
            sections[section] = {**existing, **values}
    kind = args.recipe or "proposed"
    base = {
        name: recipes.by_name(name) for name in recipes.NAMES if kind in (name, "compare", "ablate")
    }
    settings, base = configure(sections, base)
    flags = {
        name: value
        for name, value in (
            ("epochs", 1 if args.fast_dev_run and args.epochs is None else args.epochs),
            ("seed", args.seed),
            ("precision", args.precision),
            ("lr", args.lr),
            ("batch_size", args.batch_size),
        )
        if value is not None
    }
    base = {name: change_recipe(recipe, flags, "--") for name, recipe in base.items()}
    for name, recipe in base.items():
        seed_name = "--seed" if args.seed is not None else "seed"
        check_int(seed_name, recipe.seed, minimum=0)  # a negative seed: seed_everything's message
        check_int(seed_name, recipe.seed, minimum=0, maximum=SEED_MAX)
        if "epochs" in flags or _is_set(sections, name, "epochs"):
            if not _is_set(sections, name, "warmup"):
                base[name] = fit_warmup(recipe)
    data = settings.data
    if args.data:
        data = dataclasses.replace(data, path=str(args.data.resolve()))
    limit_batches = settings.run.limit_batches
    if args.limit_batches is not None:
        limit_batches = args.limit_batches
    elif args.fast_dev_run:
        limit_batches = 2
    run = replace_checked(
        settings.run,
        {
            "device": args.device or settings.run.device,
            "compile": args.compile or settings.run.compile,
            "capture": settings.run.capture and not args.no_capture,
            "progress": not args.no_progress,
            "limit_batches": limit_batches,
        },
        "--",
    )
    return Settings(settings.model, data, run), base


def _is_set(sections: dict[str, Any], recipe_name: str, key: str) -> bool:
    """Whether ``key`` is given for the recipe ``recipe_name`` (in training or its own section)."""
    return key in sections.get("training", {}) or key in sections.get(recipe_name, {})


def fit_warmup(recipe: Recipe) -> Recipe:
    """``recipe`` with a warmup that does not fit its epochs reduced to ``epochs // 10`` (logged)."""
    if recipe.warmup is None or recipe.warmup < recipe.epochs:
        return recipe
    log.info(
        "warmup of %d epochs does not fit %d epochs: reduced to %d",
        recipe.warmup,
        recipe.epochs,
        recipe.epochs // 10,
    )
    return recipe.replace(warmup=recipe.epochs // 10)


# --set KEY=VALUE: a value is read as its field's type; true/false words as YAML spells them.
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("null", "none", "~")


def _set_fields() -> dict[str, dict[str, Any]]:
    """Section -> field name -> type, for every key ``--set`` can change."""
    recipe_fields = typing.get_type_hints(Recipe)
    recipe_fields.pop("name")
    return {
        "training": typing.get_type_hints(RunConfig) | recipe_fields,
        "model": typing.get_type_hints(ModelConfig),
        "data": typing.get_type_hints(DataConfig),
        **{name: recipe_fields for name in recipes.NAMES},
    }


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--set KEY=VALUE`` items as config sections, each value typed by its field.

    ``KEY`` is ``field`` (looked up in training, model and data) or ``section.field``
    (``proposed.lr`` changes only that recipe). ``null`` is None where a field allows it;
    tuples are comma-separated (``betas=0.9,0.99``).

    Returns:
        Section -> {field: value}, to apply like a YAML file's sections.

    Raises:
        UsageError: no ``=``, an unknown section or key, or a value that is not of the
            field's type, in one line naming the key.
    """
    fields = _set_fields()
    sections: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise rd.UsageError(f"--set expects KEY=VALUE (e.g. --set lr=0.001), got {item!r}")
        section, name = _locate(key, fields, item)
        try:
            value = _parse_value(text, fields[section][name])
        except ValueError as exc:
            raise rd.UsageError(f"--set {item}: {key} must be {exc}, got {text!r}") from None
        sections.setdefault(section, {})[name] = value
    return sections


def _locate(key: str, fields: dict[str, dict[str, Any]], item: str) -> tuple[str, str]:
    """The section and field that ``key`` (``field`` or ``section.field``) names."""
    section, dot, name = key.rpartition(".")
    if dot:
        if section not in fields:
            close = difflib.get_close_matches(section, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
            raise rd.UsageError(f"--set {item}: unknown section {section!r}{hint}")
        candidates = [section] if name in fields[section] else []
        known = list(fields[section])
    else:
        candidates = [where for where in ("training", "model", "data") if name in fields[where]]
        known = [field for where in ("training", "model", "data") for field in fields[where]]
    if not candidates:
        renamed = recipes.RENAMED.get(name)  # a field renamed in 0.2: its new name
        close = [renamed] if renamed in known else difflib.get_close_matches(name, known, n=1)
        hint = (
            f" (did you mean {close[0]!r}?)"
            if close
            else " (keys are those of a run's config.json: its training, model and data sections)"
        )
        raise rd.UsageError(f"--set {item}: unknown key {key!r}{hint}")
    if len(candidates) > 1:
        raise rd.UsageError(
            f"--set {item}: {name!r} is a key of {' and '.join(candidates)}: name the section "
            f"({candidates[0]}.{name}=...)"
        )
    return candidates[0], name


def _parse_value(text: str, hint: Any) -> Any:
    """``text`` read as a value of type ``hint``; ``str`` and ``Literal`` values stay text.

    Raises:
        ValueError: ``text`` is no such value; the message says what was expected.
    """
    stripped = text.strip()
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if stripped.lower() in _NULL:
            return None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        try:
            return _parse_value(text, inner)
        except ValueError as exc:
            raise ValueError(f"null or {exc}") from None
    if hint is bool:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError("true or false")
    if hint is int:
        try:
            return int(stripped)
        except ValueError:
            raise ValueError("an integer") from None
    if hint is float:
        try:
            return float(stripped)
        except ValueError:
            raise ValueError("a number") from None
    if typing.get_origin(hint) is tuple:
        parts = stripped.strip("[]()").split(",")
        kinds = typing.get_args(hint)
        if len(kinds) != len(parts):
            raise ValueError(f"{len(kinds)} comma-separated values")
        values = []
        for part, kind in zip(parts, kinds):
            try:
                values.append(_parse_value(part, kind))
            except ValueError as exc:
                raise ValueError(f"{len(kinds)} comma-separated values, each {exc}") from None
        return tuple(values)
    return text


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
    if max(seeds) > SEED_MAX:
        raise rd.UsageError(f"--seeds: seed {max(seeds)} is above {SEED_MAX} (NumPy's limit)")
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
        UsageError: no config.json, a flag that conflicts with the saved settings, or
            ``--epochs`` fewer than the epochs trained already or than the warmup.
    """
    path: Path = args.resume
    found = (
        []
        if (path / "config.json").is_file()
        else sorted(path.glob("*/config.json")) + sorted(path.glob("*/*/config.json"))
    )
    if not found and not (path / "config.json").is_file():
        raise missing_config(path)
    for flag, given in (("--set", args.set), ("--fast-dev-run", args.fast_dev_run)):
        if given:
            raise rd.UsageError(
                f"--resume {path}: {flag} cannot change a run that exists (its config.json "
                "holds its settings); leave it out"
            )
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
            "--lr": args.lr,
            "--batch-size": args.batch_size,
            "--limit-batches": args.limit_batches,
        },
        {
            "--recipe": recipe.name,
            "--seed": recipe.seed,
            "--precision": recipe.precision,
            "--data": settings.data.path,
            "--lr": recipe.lr,
            "--batch-size": recipe.batch_size,
            "--limit-batches": settings.run.limit_batches,
        },
    )
    run = dataclasses.replace(
        settings.run, device=args.device or settings.run.device, progress=not args.no_progress
    )
    if args.epochs is not None:  # a longer (or shorter) run
        if not found:
            check_resume_epochs(path, recipe, args.epochs)
        recipe = change_recipe(recipe, {"epochs": args.epochs}, "--")
    return recipe, dataclasses.replace(settings, run=run), found


def missing_config(run_dir: Path) -> rd.UsageError:
    """The error for ``--resume`` of a directory without ``config.json``: a deleted one beside
    checkpoints is named as such."""
    checkpoints = run_dir / "checkpoints"
    saved = sorted(checkpoints.glob("*.pt")) if checkpoints.is_dir() else []
    if saved:
        return rd.UsageError(
            f"--resume {run_dir}: its config.json is missing (deleted?) beside {len(saved)} "
            "checkpoint file(s): the run's settings are in config.json; restore it to resume"
        )
    return rd.missing_config(run_dir)


def epochs_trained(run_dir: Path) -> int:
    """The epochs a run has finished, from its ``metrics.jsonl`` (0 without one)."""
    records = read_epochs(run_dir / "metrics.jsonl")  # torn lines skipped, sorted by epoch
    return records[-1]["epoch"] if records else 0


def check_resume_epochs(run_dir: Path, recipe: Recipe, epochs: int) -> None:
    """Refuse ``--resume RUN --epochs N`` when the run has trained more than N epochs, or when N
    is shorter than the run's warmup (the schedule of the epochs trained would change)."""
    done = epochs_trained(run_dir)
    if epochs < done:
        finish = f" (or leave it out to finish its {recipe.epochs})" if recipe.epochs > done else ""
        raise rd.UsageError(
            f"--resume {run_dir} --epochs {epochs}: the run has trained {done} epochs already; "
            f"give --epochs {done} or more{finish}"
        )
    if recipe.schedule != "fixed" and recipe.warmup is not None and recipe.warmup > epochs:
        raise rd.UsageError(
            f"--resume {run_dir} --epochs {epochs}: shorter than the run's warmup of "
            f"{recipe.warmup} epochs; give --epochs {recipe.warmup} or more"
        )
