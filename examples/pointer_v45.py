"""Train pointer_v45 on next-location prediction with trainkit's components.

    python examples/pointer_v45.py                       # synthetic data, proposed recipe
    python examples/pointer_v45.py --data ../shared/data/geolife/dataSet_geolife.csv
    python examples/pointer_v45.py --recipe compare --seeds 3   # both recipes, RNG seeds 42..44
    python examples/pointer_v45.py --resume runs/pointer_v45-proposed-...

Reads top to bottom: configuration (a ``trainkit.recipes`` recipe plus the settings of
pointer_v45_config.py, changed by YAML and flags) -> data (staypoint CSV -> cached splits ->
batches) -> model -> the recipe's components -> Trainer -> ``results.json``. Beside it:
geolife_data.py, geolife_cache.py, synthetic_data.py, run_dir.py, run_curves.py (curves.png),
compare.py (sweeps).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

try:  # Ctrl-C while the slow imports run: one line and exit status 130, as anywhere else
    import torch

    import compare
    import geolife_cache
    import geolife_data
    import run_curves
    import run_dir as rd
    import synthetic_data
    import trainkit
    from pointer_v45_config import (
        DataConfig,
        RunConfig,
        Settings,
        check_same_run,
        config_sections,
        configure_new_run,
        resume_settings,
    )
    from pointer_v45_model import PointerV45
    from trainkit import (
        AMPStep,
        CheckpointError,
        CheckpointManager,
        JSONLinesLogger,
        NonFiniteLossError,
        RankingMetrics,
        TensorBoardLogger,
        Trainer,
        TrainingInterrupted,
        build_optimizer,
        distributed,
        masked_nll,
    )
    from trainkit._validate import check_float, check_int
    from trainkit.batching import TensorBatches
    from trainkit.recipes import Recipe
    from trainkit.rng import seed_everything
except KeyboardInterrupt:
    print("interrupted (Ctrl-C) while starting: nothing was written", file=sys.stderr)
    sys.exit(130)

IMPORT_SECONDS = rd.process_seconds()  # interpreter start-up and the imports above
log = logging.getLogger("pointer_v45")
X_DICT_KEYS = ("time", "weekday", "diff", "duration", "user", "len")


# ------------------------------------------------------------------------ configuration
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, help="YAML file (sections data, model, training, original, proposed)"
    )
    parser.add_argument("--data", type=Path, help="staypoint CSV (default: synthetic data)")
    parser.add_argument(
        "--epochs",
        type=int,
        help="maximum epochs (default: the recipe's 50); a warmup that does not fit and that no "
        "config sets is reduced to EPOCHS // 10 (logged): --epochs 3 trains without warmup",
    )
    parser.add_argument("--lr", type=float, help="base learning rate (= --set lr=LR)")
    parser.add_argument(
        "--batch-size", type=int, help="samples per batch (= --set batch_size=N; default 128)"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change any config field, typed by the field (repeatable; after --config, before "
        "the flags): --set lr=3e-4 --set model.d_model=128 --set proposed.patience=10 "
        "(KEY: a field of training, model or data, or SECTION.FIELD)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default: the recipe's"
    )
    parser.add_argument("--seed", type=int, help="RNG seed (default: 42)")
    parser.add_argument(
        "--seeds",
        help="compare/ablate: a count N (seeds SEED..SEED+N-1) or a list 1,2,3 (default 5)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="the run directory is created inside (default: runs)",
    )
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue the run (or comparison) in RUN_DIR"
    )
    parser.add_argument(
        "--recipe", choices=("proposed", "original", "compare", "ablate"), help="default: proposed"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (inside the captured step on CUDA)",
    )
    parser.add_argument(
        "--no-capture",
        action="store_true",
        help="eager step and evaluation on CUDA (no CUDA graphs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--design", choices=compare.DESIGNS, help="ablate: revert (default) or add-one ladder"
    )
    parser.add_argument("--jobs", type=int, help="compare/ablate: runs at once (default: all GPUs)")
    parser.add_argument(
        "--limit-batches",
        type=int,
        metavar="N",
        help="at most N batches per split and epoch (the first N * batch size samples)",
    )
    parser.add_argument(
        "--fast-dev-run",
        action="store_true",
        help="check a setup in seconds: one epoch of 2 batches per split, written to a run "
        "directory as usual (= --epochs 1 --limit-batches 2)",
    )
    parser.add_argument("--version", action="version", version=f"trainkit {trainkit.__version__}")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- data
def load_data(data: DataConfig) -> geolife_data.GeoLifeSplits:
    """Staypoint CSV (or the synthetic one) -> GeoLife-protocol splits, cached per CSV content."""
    cache = geolife_cache.cache_dir(data.cache_dir)
    csv_path = (
        Path(data.path)
        if data.path is not None
        else synthetic_data.cached_synthetic_csv(
            cache, data.synthetic_users, data.synthetic_days, data.synthetic_seed
        )
    )
    splits = geolife_cache.load_or_build_splits(csv_path, cache, max_len=data.max_len)
    for line in splits.warnings:
        log.warning("data: %s", line)
    for name in geolife_data.SPLITS:
        if len(splits.split(name)["y"]) == 0:
            raise rd.UsageError(
                f"the {name} split has no samples: the data has too few days per user"
            )
    return splits


def make_batches(
    split: dict[str, Any],
    batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    static: bool = False,
    limit_batches: int | None = None,
) -> TensorBatches:
    """``(x, y, x_dict)`` batches by indexing (GPU-resident on CUDA); ``static``: one shape (last
    padded); ``limit_batches``: only the first ``limit_batches * batch_size`` samples."""
    trim = (
        device.type == "cpu" and not static
    )  # on CPU, drop columns that are padding in the whole batch

    def to_reference_format(
        batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if trim:
            length = int(batch["len"].max())
            batch = {k: (v[:, :length] if v.dim() == 2 else v) for k, v in batch.items()}
        return batch["x"], batch["y"], {key: batch[key] for key in X_DICT_KEYS}

    tensors = geolife_data.splits_to_tensors(split)
    if limit_batches is not None:
        rows = limit_batches * batch_size
        tensors = {name: tensor[:rows] for name, tensor in tensors.items()}
    return TensorBatches(
        tensors,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        device=device,
        transform=to_reference_format,
        pad_to_full_batch=static,
        pad_values={"y": 0},
    )


# ------------------------------------------------------------------ components -> Trainer
def original_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The original pipeline's masked NLL, one decoder step per sample (padding id 0 masked)."""
    return masked_nll(log_probs.unsqueeze(1), targets.unsqueeze(1), (targets != 0).unsqueeze(1))


def build_trainer(
    recipe: Recipe,
    run: RunConfig,
    model: torch.nn.Module,
    loaders: list[Any],
    run_dir: Path,
    device: torch.device,
    config: dict[str, Any],
    on_epoch_end: Any = None,
) -> Trainer:
    """The recipe's optimizer, schedule, loss, precision, selection rule and checkpoints, from its
    fields alone (never its name, so an ablation row trains as its fields say)."""
    log.info("recipe: %s", recipe.describe())
    for departure in recipe.departures():  # e.g. --lr outside the reference's range
        log.info("recipe %s differs from its reference: %s", recipe.name, departure)
    optimizer = build_optimizer(model, recipe.optimizer, **recipe.optimizer_kwargs())
    # the recipe's checked builders: a field they need that is None is a one-line ValueError
    schedule = None if recipe.schedule == "fixed" else recipe.lr_schedule()
    loss_fn: Any = original_loss if recipe.loss == "masked_nll" else recipe.label_smoothed_loss()
    amp = AMPStep(
        optimizer,
        precision=recipe.precision,
        max_grad_norm=recipe.max_grad_norm,
        device_type=device.type,
    )
    selector: Any = (
        recipe.early_stopper() if recipe.selection == "early_stopping" else recipe.running_average()
    )
    if recipe.loop == "infinite":
        log.info("the original loop never ends on its own; running %d epochs", recipe.epochs)
    step_model: Any = model
    if (
        run.compile
    ):  # captured on CUDA: inductor's kernels inside the whole-step graph (docs/captured.md)
        inductor_graphs = (
            device.type == "cuda" and not run.capture
        )  # --no-capture on CUDA: inductor's own graphs
        step_model = (
            torch.compile(model, mode="reduce-overhead")
            if inductor_graphs
            else torch.compile(model, dynamic=False)
        )
    log.info(
        "model: %s parameters | optimizer: %s | precision: %s | device: %s | compile: %s | capture: %s",
        f"{model.count_parameters():,}",
        type(optimizer).__name__,
        amp.precision,
        device,
        run.compile,
        "auto" if run.capture else "off (--no-capture)",
    )
    checkpoints = CheckpointManager(
        run_dir / "checkpoints",
        keep_last=recipe.keep_last,
        every_seconds=recipe.checkpoint_every_seconds,
        pinned=(recipe.best_name,),
    )
    train, val, test = loaders
    return Trainer(
        step_model,
        optimizer,
        loss_fn,
        train,
        val,
        test_loader=test,
        epochs=recipe.epochs,
        schedule=schedule,
        per_step_schedule=run.per_step_schedule,
        amp=amp,
        selector=selector,
        checkpoints=checkpoints,
        best_name=recipe.best_name,
        epoch_checkpoints=True,
        metrics=functools.partial(RankingMetrics, unseen_id=geolife_data.UNSEEN_ID),
        device=device,
        ignore_index=geolife_data.PAD_ID,
        nonfinite=recipe.nonfinite,
        log_every=run.log_every,
        progress=run.progress,
        loggers=[
            JSONLinesLogger(run_dir / "metrics.jsonl"),
            JSONLinesLogger(run_dir / "steps.jsonl", kind="step"),
            TensorBoardLogger(run_dir / "tensorboard"),
        ],
        config=config,
        on_epoch_end=on_epoch_end,
        capture="auto" if run.capture else False,
    )


# ------------------------------------------------------------------------------- one run
def run_one(
    recipe: Recipe,
    run_dir: Path,
    resume: bool,
    settings: Settings = Settings(),  # noqa: B008 (frozen)
) -> dict[str, Any]:
    """Train ``recipe`` in ``run_dir`` (``resume``: continue it), write ``results.json``, return it."""
    with contextlib.ExitStack() as held:  # the run directory's lock, released at the end
        return _run(recipe, Path(run_dir), resume, settings, held)


def _run(
    recipe: Recipe, run_dir: Path, resume: bool, settings: Settings, held: contextlib.ExitStack
) -> dict[str, Any]:
    start, timings = time.perf_counter(), {"imports": IMPORT_SECONDS, "capture": 0.0}
    config = config_sections(recipe, settings)
    device = rd.pick_device(settings.run.device)
    dist, run_dir = (
        distributed.init_from_env(device.type),
        Path(distributed.broadcast_object(str(run_dir))),
    )  # torchrun: rank 0's name
    if resume and dist.is_main:
        held.enter_context(rd.locked(run_dir))
        check_same_run(run_dir, recipe, settings)
    for rank_builds_cache in (True, False):  # rank 0 writes the data cache, then the others read it
        if dist.is_main == rank_builds_cache:
            splits = load_data(settings.data)
        distributed.barrier()
    timings["data"], mark = time.perf_counter() - start, time.perf_counter()
    torch.empty(
        0, device=device
    )  # the device's context, so that "data" and "train" do not count it
    timings["device_init"] = time.perf_counter() - mark
    seed_everything(recipe.seed)
    model = PointerV45(
        splits.num_locations,
        splits.num_users,
        max_len=splits.max_len,
        **dataclasses.asdict(settings.model),
    ).to(device)
    static = settings.run.compile or (
        device.type == "cuda" and settings.run.capture
    )  # padded: one batch shape
    loaders: list[Any] = [
        make_batches(
            splits.split(name),
            recipe.batch_size,
            name == "train",
            recipe.seed,
            device,
            static,
            settings.run.limit_batches,
        )
        for name in geolife_data.SPLITS
    ]
    if settings.run.limit_batches is not None:
        log.info(
            "limit_batches: at most %d batches per split and epoch (a dry run)",
            settings.run.limit_batches,
        )
    loaders[1] = val_timer = rd.TimedLoader(loaders[1])
    eval_seconds = [
        0.0,
        0.0,
    ]  # validation passes, capture inside fit's epochs (read at each epoch's end)
    if not resume and dist.is_main:
        held.enter_context(rd.locked(run_dir, create=True))
        rd.write_json(run_dir / "config.json", config)
    distributed.barrier()
    if dist.is_main:
        rd.log_to_file(run_dir)
    counts = {name: len(splits.split(name)["y"]) for name in geolife_data.SPLITS}
    baseline = geolife_data.most_frequent_baseline(splits)
    log.info(
        "data: %s samples | %d locations (with padding and unseen) | %d users | baseline (most frequent train "
        "location): test Acc@1 %.2f%%",
        counts,
        splits.num_locations,
        splits.num_users - 1,
        baseline,
    )
    try:
        trainer = build_trainer(
            recipe,
            settings.run,
            model,
            loaders,
            run_dir,
            device,
            config,
            on_epoch_end=lambda record: eval_seconds.__setitem__(
                slice(None), [val_timer.seconds, trainer.capture_seconds]
            ),
        )
    except ValueError:
        if not resume and dist.is_main:  # refused before training: leave no run directory behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if resume:
        rd.resume(trainer, run_dir, config["training"])
    fit_start = time.perf_counter()
    outcome = trainer.fit()
    capture = outcome["capture"]  # {"step": "captured" | "eager", "reason", "seconds"}
    timings.update(
        capture=capture["seconds"],
        train=outcome["train_seconds"] - eval_seconds[0] - eval_seconds[1],
        eval=eval_seconds[0],
        final_eval=time.perf_counter()
        - fit_start
        - outcome["train_seconds"]
        - (capture["seconds"] - eval_seconds[1]),
    )
    timings["total_wall"] = rd.process_seconds()
    results = {
        "recipe": recipe.name,
        "validation": outcome["validation"],
        "test": outcome["test"],
        "baseline_test_acc@1": baseline,
        "num_samples": counts,
        "num_locations": splits.num_locations,
        "seed": recipe.seed,
        "best_epoch": outcome["best_epoch"],
        "epochs_run": outcome["epochs_run"],
        "stopped_early": outcome["stopped_early"],
        "fp16_overflow_steps": outcome["fp16_overflow_steps"],
        "nonfinite_steps": outcome["nonfinite_steps"],
        "evaluated": outcome["evaluated"],
        "world_size": dist.world_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": trainer.amp.precision,
        "capture": {"requested": settings.run.capture, **capture},
        "train_seconds": outcome["train_seconds"],
        "wall_time_s": time.perf_counter() - start,
        "timings": timings,
        "data": settings.data.path or "synthetic",
    }
    if dist.is_main:
        rd.write_json(run_dir / "results.json", results)
        run_curves.write_curves(outcome["history"], run_dir / "curves.png", outcome["best_epoch"])
    log.info(
        "test: Acc@1 %.2f%% (seen targets %.2f%%) | Acc@5 %.2f%% | Acc@10 %.2f%% | MRR %.2f%% | NDCG %.2f%% | baseline "
        "Acc@1 %.2f%%",
        *(outcome["test"][k] for k in ("acc@1", "acc@1_seen", "acc@5", "acc@10", "mrr", "ndcg")),
        baseline,
    )
    log.info("results: %s", run_dir / "results.json")
    return results


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad input, 130: interrupted)."""
    args = parse_args(argv)
    rd.setup_logging(int(os.environ.get("RANK", "0")) == 0)
    try:
        check_flags(args)
        if args.resume is not None:
            if (args.resume / "sweep.json").is_file():  # a sweep: trainkit.sweep resumes it
                compare.resume(args, parse_args([]))
                return 0
            return resume_main(args)
        compare.check_flags(args)
        settings, base = configure_new_run(args)
        kind, seed = args.recipe or "proposed", next(iter(base.values())).seed
        run_dir = args.out / f"pointer_v45-{kind}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        if kind in ("compare", "ablate"):
            compare.run(kind, args, base, settings, run_dir)
        else:
            run_one(base[kind], run_dir, False, settings)
        return 0
    except TrainingInterrupted as exc:  # inside fit(): SIGINT/SIGTERM, last.pt written
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside fit(): loading data, writing results, drawing a report
        print(
            "interrupted (Ctrl-C) outside training: what was written stays; a run with "
            "checkpoints continues with --resume RUN_DIR",
            file=sys.stderr,
        )
        return 130
    except (
        rd.UsageError,
        ValueError,
        OSError,
        CheckpointError,
        NonFiniteLossError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flag values that no config could make right, before anything is read or created.

    Raises:
        UsageError, ValueError: naming the flag.
    """
    if args.epochs is not None and args.epochs < 1:
        raise rd.UsageError(f"--epochs must be an integer >= 1, got {args.epochs}")
    if args.batch_size is not None:
        check_int("--batch-size", args.batch_size, minimum=1)
    if args.lr is not None:
        check_float("--lr", args.lr, above=0.0)
    if args.limit_batches is not None:
        check_int("--limit-batches", args.limit_batches, minimum=1)


def resume_main(args: argparse.Namespace) -> int:
    """``--resume RUN_DIR``: a run, or a comparison, with the settings saved in it."""
    recipe, settings, found = resume_settings(args)
    if found:  # run directories inside, but no sweep.json (the sweep's is read first)
        raise rd.UsageError(f"--resume {args.resume}: no sweep.json there (not a sweep directory?)")
    else:
        run_one(recipe, args.resume, True, settings)
    return 0


if __name__ == "__main__":
    status = main()
    distributed.shutdown()  # no-op without torchrun
    logging.shutdown()
    distributed.exit_process(status)
