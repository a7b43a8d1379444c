"""Train pointer_v45 on next-location prediction with trainkit's components.

    python examples/pointer_v45.py                       # synthetic data, proposed recipe
    python examples/pointer_v45.py --data ../shared/data/geolife/dataSet_geolife.csv
    python examples/pointer_v45.py --recipe original --epochs 10
    python examples/pointer_v45.py --resume runs/pointer_v45-proposed-...

Reads top to bottom: parse the command line, resolve the config, build the data
(staypoint CSV -> cached GeoLife-protocol splits -> batches), the model, the recipe's
optimizer / schedule / loss / selection rule, then hand them to ``trainkit.Trainer`` and
write ``results.json`` into the run directory.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the example's own modules

import compare  # noqa: E402
import geolife_data  # noqa: E402
from pointer_v45_model import PointerV45  # noqa: E402

from trainkit import (  # noqa: E402
    AMPStep,
    CheckpointManager,
    EarlyStopper,
    LabelSmoothedNLLLoss,
    RunningAverage,
    WarmupCosineSchedule,
    build_optimizer,
    masked_nll,
    recipes,
)
from trainkit import distributed  # noqa: E402
from trainkit.batching import TensorBatches  # noqa: E402
from trainkit.checkpoint import CheckpointError  # noqa: E402
from trainkit.rng import seed_everything  # noqa: E402
from trainkit.trainer import NonFiniteLossError, Trainer  # noqa: E402

log = logging.getLogger("pointer_v45")

# The seed's GeoLife settings; examples/configs/pointer_v45.yaml holds the same values.
DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "data": {
        "path": None,
        "cache_dir": None,
        "max_len": None,
        "synthetic_users": 20,
        "synthetic_days": 100,
        "synthetic_seed": 0,
    },
    "model": {"d_model": 64, "nhead": 4, "num_layers": 2, "dim_feedforward": 128, "dropout": 0.15},
    "training": {
        "batch_size": 128,
        "epochs": 50,
        "lr": 6.5e-4,
        "weight_decay": 0.015,
        "label_smoothing": 0.03,
        "grad_clip": 0.8,
        "patience": 5,
        "min_epochs": 8,
        "warmup_epochs": 5,
        "min_lr": 1e-6,
        "precision": "auto",
        "per_step_schedule": False,
        "nonfinite": "raise",
        "seed": 42,
        "device": "auto",
        "log_every": 50,
        "checkpoint_every_seconds": 60,
        "compile": False,
    },
}
X_DICT_KEYS = ("time", "weekday", "diff", "duration", "user", "len")


class UsageError(Exception):
    """Bad command-line or config input: printed as one line, exit status 2."""


# ------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config (default: the seed's GeoLife settings)")
    parser.add_argument("--data", type=Path, help="staypoint CSV (default: synthetic data)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: config, 50)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default: auto")
    parser.add_argument("--seed", type=int, help="default: 42")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="the run directory is created inside (default: runs)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--recipe", choices=("proposed", "original", "compare"), default="proposed")
    parser.add_argument("--seeds", metavar="N|S1,S2,...",
                        help="compare: N seeds (--seed, --seed+1, ...) or a list of seeds (default 5)")
    parser.add_argument("--compile", action="store_true", help="captured step: torch.compile (CUDA graphs on GPU), static shapes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def seeds_of(text: str | None, first: int) -> list[int]:
    """``--seeds``: ``"N"`` gives N seeds ``first, first+1, ...``; ``"1,2,3"`` those seeds; None gives 5."""
    try:
        values = [int(part) for part in (text or "5").split(",")]
    except ValueError:
        raise UsageError(f"--seeds: expected N or a list like 1,2,3, got {text!r}") from None
    if text is None or "," not in text:
        if values[0] < 1:
            raise UsageError(f"--seeds: N must be >= 1, got {text!r}")
        return list(range(first, first + values[0]))
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise UsageError(f"--seeds: seeds must be distinct integers >= 0, got {text!r}")
    return values


def resolve_config(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Defaults, then the YAML file, then command-line flags; every value checked."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if args.config is not None:
        merge_config(config, read_yaml(args.config), str(args.config))
    check_config(config)  # the file's own epochs must fit its warmup
    training = config["training"]
    for flag, key in (("epochs", "epochs"), ("device", "device"), ("precision", "precision"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            training[key] = getattr(args, flag)
    if args.data is not None:
        config["data"]["path"] = str(args.data)
    if args.compile:
        training["compile"] = True
    check_config(config, warmup_fits=False)  # a shorter --epochs reduces the warmup instead
    return config


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        import yaml
    except ImportError:
        raise UsageError("reading --config needs PyYAML: pip install 'trainkit[examples]'") from None
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded


def merge_config(config: dict[str, dict[str, Any]], update: dict[str, Any], source: str) -> None:
    """Copy ``update`` into ``config``, refusing unknown sections/keys (with a suggestion)."""
    for section, values in update.items():
        if section not in config:
            raise UsageError(f"{source}: unknown section {section!r}{_suggest(section, config)}")
        if not isinstance(values, dict):
            raise UsageError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            if key not in config[section]:
                raise UsageError(f"{source}: unknown key {section}.{key}{_suggest(key, config[section])}")
            config[section][key] = value


def _suggest(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def check_config(config: dict[str, dict[str, Any]], warmup_fits: bool = True) -> None:
    """Refuse values that would fail later with a less clear message.

    ``warmup_fits``: also require ``warmup_epochs <= epochs`` (a config file must be
    consistent; ``--epochs`` may be shorter, and the warmup is then reduced).
    """
    t, m = config["training"], config["model"]

    def number(section: dict[str, Any], key: str, low: float, *, strict: bool = False, integer: bool = False) -> None:
        value = section[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if strict else value >= low) and (not integer or float(value).is_integer())
        if not ok:
            kind = "an integer" if integer else "a finite number"
            raise UsageError(f"{key} must be {kind} {'>' if strict else '>='} {low}, got {value!r}")

    number(t, "epochs", 1, integer=True)
    number(t, "batch_size", 1, integer=True)
    number(t, "lr", 0, strict=True)
    number(t, "weight_decay", 0)
    number(t, "grad_clip", 0, strict=True)
    number(t, "patience", 0, integer=True)
    number(t, "min_epochs", 0, integer=True)
    number(t, "warmup_epochs", 0, integer=True)
    number(t, "min_lr", 0)
    number(t, "seed", 0, integer=True)
    number(t, "log_every", 1, integer=True)
    number(t, "checkpoint_every_seconds", 0, strict=True)
    number(m, "d_model", 4, integer=True)
    number(m, "nhead", 1, integer=True)
    number(m, "num_layers", 1, integer=True)
    number(m, "dim_feedforward", 1, integer=True)
    if not (isinstance(t["label_smoothing"], (int, float)) and 0 <= t["label_smoothing"] < 1):
        raise UsageError(f"label_smoothing must be in [0, 1), got {t['label_smoothing']!r}")
    if not (isinstance(m["dropout"], (int, float)) and 0 <= m["dropout"] < 1):
        raise UsageError(f"dropout must be in [0, 1), got {m['dropout']!r}")
    if t["min_lr"] > t["lr"]:
        raise UsageError(f"min_lr ({t['min_lr']!r}) must not exceed lr ({t['lr']!r})")
    if warmup_fits and t["warmup_epochs"] > t["epochs"]:
        raise UsageError(f"warmup_epochs ({t['warmup_epochs']}) must not exceed epochs ({t['epochs']})")
    if t["precision"] not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"precision must be auto, fp32, bf16 or fp16, got {t['precision']!r}")
    if t["nonfinite"] not in ("raise", "skip"):
        raise UsageError(f"nonfinite must be raise or skip, got {t['nonfinite']!r}")
    if t["device"] not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu or cuda, got {t['device']!r}")
    if config["data"]["path"] is not None and not Path(config["data"]["path"]).is_file():
        raise UsageError(f"data file not found: {config['data']['path']}")


# ------------------------------------------------------------------------------ data
def load_data(config: dict[str, dict[str, Any]], out: Path) -> geolife_data.GeoLifeSplits:
    """Staypoint CSV (or the synthetic one) -> GeoLife-protocol splits, cached on disk."""
    data = config["data"]
    cache_dir = Path(data["cache_dir"]) if data["cache_dir"] else out / ".cache"
    csv_path = data["path"]
    if csv_path is None:
        csv_path = cache_dir / (
            f"{geolife_data.SYNTHETIC_VERSION}-u{data['synthetic_users']}-d{data['synthetic_days']}"
            f"-s{data['synthetic_seed']}.csv"
        )
        if not csv_path.is_file():  # written under a temporary name: a kill never leaves half a CSV
            partial = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
            geolife_data.generate_synthetic_staypoints(
                partial, num_users=data["synthetic_users"], num_days=data["synthetic_days"], seed=data["synthetic_seed"]
            )
            os.replace(partial, csv_path)
    splits = geolife_data.load_or_build_splits(csv_path, cache_dir, max_len=data["max_len"])
    for line in splits.warnings:
        log.warning("data: %s", line)
    for name in geolife_data.SPLITS:
        if len(splits.split(name)["y"]) == 0:
            raise UsageError(f"the {name} split has no samples: the data has too few days per user")
    return splits


def make_batches(
    split: dict[str, Any], batch_size: int, shuffle: bool, seed: int, device: torch.device, static: bool = False
) -> TensorBatches:
    """Batches in the seed's ``(x, y, x_dict)`` format, built by indexing (GPU-resident on CUDA).

    ``static``: every batch has the same shape (for a captured step): the last batch is
    padded with target 0, which the loss and the metrics ignore.
    """
    trim = device.type == "cpu" and not static  # on CPU, drop columns that are padding in the whole batch

    def to_seed_format(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if trim:
            length = int(batch["len"].max())
            batch = {k: (v[:, :length] if v.dim() == 2 else v) for k, v in batch.items()}
        return batch["x"], batch["y"], {key: batch[key] for key in X_DICT_KEYS}

    return TensorBatches(
        geolife_data.splits_to_tensors(split), batch_size, shuffle=shuffle, seed=seed, device=device,
        transform=to_seed_format, pad_to_full_batch=static, pad_values={"y": 0},
    )


# ---------------------------------------------------------------------------- recipes
def original_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The original pipeline's masked NLL, one decoder step per sample (padding id 0 masked)."""
    return masked_nll(log_probs.unsqueeze(1), targets.unsqueeze(1), (targets != 0).unsqueeze(1))


def build_trainer(
    recipe: recipes.Recipe,
    config: dict[str, dict[str, Any]],
    splits: geolife_data.GeoLifeSplits,
    run_dir: Path,
    device: torch.device,
    progress: bool,
) -> Trainer:
    """Model, optimizer, schedule, loss, selection rule and checkpoints for one recipe."""
    t, m = config["training"], config["model"]
    seed_everything(int(t["seed"]))
    model = PointerV45(splits.num_locations, splits.num_users, max_len=splits.max_len, **m).to(device)
    static = bool(t["compile"])
    train = make_batches(splits.train, t["batch_size"], True, t["seed"], device, static)
    val = make_batches(splits.validation, t["batch_size"], False, t["seed"], device, static)
    test = make_batches(splits.test, t["batch_size"], False, t["seed"], device, static)
    epochs = int(t["epochs"])
    if recipe.name == "proposed":
        optimizer = build_optimizer(model, "adamw", lr=t["lr"], weight_decay=t["weight_decay"],
                                    betas=recipe.betas, eps=recipe.eps)
        warmup = int(t["warmup_epochs"])
        if warmup >= epochs:  # only when --epochs is shorter than the config's warmup
            reduced = epochs // 10
            log.info("warmup of %d epochs does not fit %d epochs: reduced to %d", warmup, epochs, reduced)
            warmup = reduced
        schedule = WarmupCosineSchedule(t["lr"], warmup, epochs, t["min_lr"])
        loss_fn: Any = LabelSmoothedNLLLoss(t["label_smoothing"], ignore_index=0)
        amp = AMPStep(optimizer, precision=t["precision"], max_grad_norm=t["grad_clip"], device_type=device.type)
        stopper, running_average = EarlyStopper(patience=t["patience"], min_epochs=t["min_epochs"]), None
        checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=recipe.checkpoint_keep)
    else:  # original: Adagrad, fixed LR, clip 2.0, masked NLL, fp32, running-average selection
        optimizer = build_optimizer(model, "adagrad", **recipe.optimizer_kwargs())
        schedule = None
        loss_fn = original_loss
        amp = AMPStep(optimizer, precision="fp32", max_grad_norm=recipe.grad_clip, device_type=device.type)
        stopper = None
        running_average = RunningAverage(recipe.running_avg_decay or 0.99, recipe.running_avg_clip or 12.0)
        checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=recipe.checkpoint_keep,
                                        every_seconds=t["checkpoint_every_seconds"], pinned=(recipe.best_name,))
        log.info("original recipe: the original loop never ends on its own; running %d epochs", epochs)
    log.info("model: %s parameters | optimizer: %s | precision: %s | device: %s",
             f"{model.count_parameters():,}", type(optimizer).__name__, amp.precision, device)
    step_model: Any = model
    if static:  # the captured step: CUDA graphs on a GPU, plain compilation on CPU
        step_model = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
        log.info("captured step: torch.compile(%s), batches padded to %d", "reduce-overhead" if device.type == "cuda"
                 else "default", t["batch_size"])
    return Trainer(
        step_model, optimizer, loss_fn, train, val, test_loader=test, epochs=epochs, schedule=schedule,
        per_step_schedule=bool(t["per_step_schedule"]), amp=amp, stopper=stopper, running_average=running_average,
        checkpoints=checkpoints, best_name=recipe.best_name, epoch_checkpoints=True, device=device,
        nonfinite=t["nonfinite"],
        log_every=int(t["log_every"]), metrics_log=run_dir / "metrics.jsonl", step_log=run_dir / "steps.jsonl",
        tensorboard_dir=run_dir / "tensorboard", progress=progress,
        config={"recipe": recipe.name, **config},
    )


# ------------------------------------------------------------------------------- main
def pick_device(name: str) -> torch.device:
    """cpu, cuda or auto; under torchrun each process takes the GPU of its local rank."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def setup_logging(run_dir: Path, main_process: bool = True) -> None:
    """Log to stdout and run_dir/train.log; other ranks of a torchrun job log warnings only."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if main_process else logging.WARNING)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if main_process:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def run_one(recipe_name: str, config: dict[str, dict[str, Any]], run_dir: Path, resume: bool, progress: bool) -> dict[str, Any]:
    """Train one recipe in ``run_dir`` and write its ``results.json``."""
    start = time.perf_counter()
    device = pick_device(config["training"]["device"])
    dist = distributed.init_from_env(device.type)  # a no-op without torchrun
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's name (its timestamp) for all
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {"recipe": recipe_name, **config})
        splits = load_data(config, run_dir.parent)  # rank 0 writes the data cache ...
    distributed.barrier()
    setup_logging(run_dir, dist.is_main)
    if not dist.is_main:
        splits = load_data(config, run_dir.parent)  # ... the others read it
    counts = {name: len(splits.split(name)["y"]) for name in geolife_data.SPLITS}
    baseline = geolife_data.most_frequent_baseline(splits)
    log.info("data: %s samples | %d locations (with padding and unseen) | %d users",
             counts, splits.num_locations, splits.num_users - 1)
    log.info("baseline (most frequent train location): test Acc@1 %.2f%%", baseline)
    recipe = recipes.by_name(recipe_name)
    trainer = build_trainer(recipe, config, splits, run_dir, device, progress)
    if resume:
        resume_run(trainer, run_dir)
    outcome = trainer.fit()
    results = {
        "recipe": recipe_name,
        "validation": outcome["validation"],
        "test": outcome["test"],
        "baseline_test_acc@1": baseline,
        "num_samples": counts,
        "num_locations": splits.num_locations,
        "seed": config["training"]["seed"],
        "best_epoch": outcome["best_epoch"],
        "epochs_run": outcome["epochs_run"],
        "stopped_early": outcome["stopped_early"],
        "skipped_steps": outcome["skipped_steps"],
        "world_size": dist.world_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": trainer.amp.precision,
        "train_seconds": outcome["train_seconds"],
        "wall_time_s": time.perf_counter() - start,
        "data": config["data"]["path"] or "synthetic",
    }
    if dist.is_main:
        write_json(run_dir / "results.json", results)
    test = outcome["test"]
    log.info("test: Acc@1 %.2f%% (seen targets %.2f%%) | Acc@5 %.2f%% | Acc@10 %.2f%% | MRR %.2f%% | NDCG %.2f%% | "
             "baseline Acc@1 %.2f%%", test["acc@1"], test["acc@1_seen"], test["acc@5"], test["acc@10"], test["mrr"],
             test["ndcg"], baseline)
    log.info("results: %s", run_dir / "results.json")
    return results


def write_json(path: Path, value: Any) -> None:
    """Write ``path`` atomically (temporary file + ``os.replace``): a kill never truncates it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)


def resume_run(trainer: Trainer, run_dir: Path) -> None:
    """Continue from the newest loadable checkpoint, or start over if none was written yet.

    Unloadable checkpoints that are skipped are logged (one line each, naming the file).
    """
    manager = trainer.checkpoints
    if manager is not None and not manager.checkpoints():  # killed before its first save
        log.warning("resume: no checkpoint in %s yet: starting the run from the beginning", manager.directory)
        for name in ("metrics.jsonl", "steps.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.resume()
        finally:
            for warning in caught:
                log.warning("resume: %s", warning.message)


def read_run_config(path: Path) -> tuple[str, dict[str, Any]]:
    """A run directory's ``config.json``: ``(recipe name, the other sections)``."""
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}): not a run directory?") from None
    if not isinstance(saved, dict) or saved.get("recipe") not in recipes.NAMES:
        raise UsageError(f"{path} names no recipe ({' or '.join(recipes.NAMES)}): not a run directory?")
    recipe_name = saved.pop("recipe")
    return recipe_name, saved


def sweep_runner(config: dict[str, dict[str, Any]], progress: bool) -> compare.RunOne:
    """``run_one(recipe, run_dir, resume)`` for ``compare.py``: the recipe's seed and epochs
    replace the config's; all runs of a sweep share one data cache in the sweep directory."""

    def run(recipe: recipes.Recipe, run_dir: Path, resume: bool) -> dict[str, Any]:
        run_config = copy.deepcopy(config)
        run_config["training"].update(seed=recipe.seed, epochs=recipe.epochs)
        run_config["data"]["cache_dir"] = run_config["data"]["cache_dir"] or str(run_dir.parent.parent / ".cache")
        return run_one(recipe.name, run_config, run_dir, resume, progress)

    return run


def recipe_from_dict(values: dict[str, Any]) -> recipes.Recipe:
    """A recipe from ``Recipe.to_dict()`` (lists back to tuples)."""
    return recipes.Recipe(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})


def run_compare(config: dict[str, dict[str, Any]], run_dir: Path, seeds: list[int], progress: bool) -> Path:
    """Both recipes with the same seeds in ``run_dir`` (``compare.run_compare``); the report's path."""
    epochs = int(config["training"]["epochs"])
    base = {name: recipes.by_name(name).replace(epochs=epochs, seed=seeds[0]) for name in recipes.NAMES}
    return compare.run_compare(base, run_dir, seeds, sweep_runner(config, progress))


def resume_compare(sweep_dir: Path, progress: bool) -> Path:
    """Finish a killed ``--recipe compare`` sweep; the config comes from a run that started."""
    started = sorted(sweep_dir.glob("*/seed*/config.json"))
    if not started:
        raise UsageError(f"--resume {sweep_dir}: no run of this sweep started yet; start it again")
    _, saved = read_run_config(started[0])
    config = copy.deepcopy(DEFAULT_CONFIG)
    merge_config(config, saved, str(started[0]))
    return compare.resume_sweep(sweep_dir, sweep_runner(config, progress), recipe_from_dict)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume is not None and compare.is_sweep_dir(args.resume):
            if args.epochs is not None:
                raise UsageError("--epochs cannot change a compare sweep (its recipes are in sweep.json)")
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                                stream=sys.stdout)
            report = resume_compare(args.resume, progress=not args.no_progress)
            print(f"comparison report: {report}")
            return 0
        if args.resume is not None:
            config_path = args.resume / "config.json"
            if not config_path.is_file():
                raise UsageError(f"--resume {args.resume}: no config.json there (not a run directory?)")
            recipe_name, saved = read_run_config(config_path)
            config = copy.deepcopy(DEFAULT_CONFIG)
            merge_config(config, saved, str(config_path))
            if args.epochs is not None:
                config["training"]["epochs"] = args.epochs
            check_config(config, warmup_fits=False)
            run_one(recipe_name, config, args.resume, resume=True, progress=not args.no_progress)
            return 0
        config = resolve_config(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = args.out / f"pointer_v45-{args.recipe}-seed{config['training']['seed']}-{stamp}"
        if args.recipe == "compare":
            seeds = seeds_of(args.seeds, int(config["training"]["seed"]))
            run_dir = args.out / f"pointer_v45-compare-{len(seeds)}seeds-{stamp}"
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                                stream=sys.stdout)
            report = run_compare(config, run_dir, seeds, progress=not args.no_progress)
            print(f"comparison report: {report}")
            return 0
        run_one(args.recipe, config, run_dir, resume=False, progress=not args.no_progress)
        return 0
    except (UsageError, ValueError, OSError, CheckpointError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    status = main()
    distributed.shutdown()  # no-op without torchrun
    logging.shutdown()
    distributed.exit_process(status)
