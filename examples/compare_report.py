"""The comparison report of ``pointer_v45.py --recipe compare``.

    write_report(compare_dir, {"original": compare_dir / "original",
                               "proposed": compare_dir / "proposed"})  # -> compare_dir / "report.md"

Reads each recipe's run directory (``config.json``, ``metrics.jsonl``, ``results.json``)
and writes ``report.md`` next to three pictures: ``lr.png`` (the learning rate of each
epoch), ``loss.png`` (train and validation loss) and ``acc1.png`` (validation Acc@1).
The settings table starts from ``trainkit.recipes.original()`` / ``proposed()`` and shows
the value the run actually used wherever its config replaced the recipe's default.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from trainkit import recipes  # noqa: E402

__all__ = ["write_report"]

COLORS = {"original": "tab:blue", "proposed": "tab:orange"}
METRICS = (  # (results.json key, label); all percentages except the loss
    ("acc@1", "Acc@1"),
    ("acc@5", "Acc@5"),
    ("acc@10", "Acc@10"),
    ("mrr", "MRR"),
    ("ndcg", "NDCG"),
    ("f1", "F1"),
    ("acc@1_seen", "Acc@1, seen targets"),
    ("loss", "loss"),
)
LOSS_NAMES = {"masked_nll": "masked NLL", "label_smoothed_nll": "label-smoothed NLL"}
OPTIMIZER_NAMES = {"adagrad": "Adagrad", "adamw": "AdamW"}


# ---------------------------------------------------------------------------- reading
def read_run(run_dir: Path) -> dict[str, Any]:
    """One run directory: its config, its per-epoch records and its results."""
    config = json.loads((run_dir / "config.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    return {"dir": run_dir, "config": config, "results": results, "epochs": read_metrics(run_dir / "metrics.jsonl")}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records, one per epoch in order (a resumed run may repeat an epoch: last wins)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                by_epoch[int(record["epoch"])] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


# --------------------------------------------------------------------------- settings
def fmt(value: Any) -> str:
    """A setting as text: floats below 0.01 as ``6.5e-04``, others as Python writes them."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 1e-2 else repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return str(value)


def used(value: Any, default: Any) -> str:
    """The value a run used, with the recipe's default beside it when they differ."""
    if default is None or value == default:
        return fmt(value)
    return f"{fmt(value)} (recipe: {fmt(default)})"


def settings_rows(recipe: recipes.Recipe, training: dict[str, Any], results: dict[str, Any]) -> dict[str, str]:
    """One recipe's settings as run: the recipe's values, and the config's values where
    ``build_trainer`` in ``examples/pointer_v45.py`` takes them from the config."""

    def config(key: str) -> str:  # the config's value of a recipe field, the recipe's beside it
        default = getattr(recipe, key)
        return used(training.get(key, default), default)

    epochs = int(training.get("epochs", recipe.epochs))
    nonfinite_text = {"raise": "raise, stop the run", "skip": "skip the step"}
    nonfinite = training.get("nonfinite", recipe.nonfinite)
    rows = {"optimizer": f"{OPTIMIZER_NAMES[recipe.optimizer]} (`{recipe.optimizer}`)"}
    if recipe.name == "original":  # everything from the recipe but the epochs and the save interval
        rows["learning rate"] = fmt(recipe.lr)
        rows["optimizer settings"] = f"initial_accumulator_value {fmt(recipe.initial_accumulator_value)}"
        rows["LR schedule"] = recipe.schedule
        rows["grad clip (global norm)"] = fmt(recipe.max_grad_norm)
        rows["loss"] = (f"{LOSS_NAMES[recipe.loss]} (the optional coverage term, weight {fmt(recipe.cov_loss_wt)}, "
                        "is not used: with one decoder step per sample it is zero)")
        rows["model selection"] = (f"running average of val loss (decay {fmt(recipe.running_avg_decay)}, clip "
                                   f"{fmt(recipe.running_avg_clip)}) improves -> `{recipe.best_name}`; no early stopping")
        rows["epochs"] = f"{used(epochs, recipe.epochs)}, all of them (the seed's loop never ends on its own)"
        rows["precision / AMP"] = f"{recipe.precision}, no AMP"
        seconds = [int(v) if isinstance(v, float) and v.is_integer() else v  # 60.0 -> 60
                   for v in (training.get("checkpoint_every_seconds", recipe.checkpoint_every_seconds),
                             recipe.checkpoint_every_seconds)]
        rows["checkpointing"] = (f"every {used(*seconds)} s, keep {recipe.keep_last}; "
                                 f"`{recipe.best_name}` and `last.pt` each epoch")
    else:  # proposed: lr, weight decay, schedule, clip, smoothing, stopping and precision come from the config
        warmup, warmup_note = int(training.get("warmup", recipe.warmup) or 0), ""
        if warmup >= epochs:  # build_trainer's rule when --epochs is shorter than the warmup
            warmup, warmup_note = epochs // 10, f" (config: {training['warmup']}, reduced to fit {epochs} epochs)"
        per = "step" if training.get("per_step_schedule") else "epoch"
        precision = training.get("precision", recipe.precision)
        resolved = results.get("precision", precision)
        rows["learning rate"] = config("lr")
        rows["optimizer settings"] = (f"betas {fmt(recipe.betas)}, eps {fmt(recipe.eps)}, "
                                      f"weight_decay {config('weight_decay')}")
        min_lr = fmt(training.get("min_lr", recipe.min_lr))
        rows["LR schedule"] = (f"linear warmup {warmup} epochs{warmup_note} + cosine to {min_lr} over {epochs} epochs, "
                               f"set per {per} (recipe: warmup {recipe.warmup} + cosine to "
                               f"{fmt(recipe.min_lr)} over {recipe.schedule_epochs})")
        rows["grad clip (global norm)"] = config("max_grad_norm")
        rows["loss"] = (f"{LOSS_NAMES[recipe.loss]} (smoothing {config('label_smoothing')}, "
                        f"ignore_index {recipe.ignore_index})")
        rows["model selection"] = (f"best val loss -> `{recipe.best_name}`; early stopping, patience "
                                   f"{config('patience')}, min_epochs {config('min_epochs')}")
        rows["epochs"] = f"up to {used(epochs, recipe.epochs)}"
        rows["precision / AMP"] = f"AMP, {config('precision')}" + (f" -> {resolved} here" if resolved != precision else "")
        rows["checkpointing"] = f"`{recipe.best_name}` when val loss improves, `last.pt` each epoch"
    rows["batch size"] = config("batch_size")
    rows["seed"] = config("seed")
    rows["non-finite loss"] = used(nonfinite_text.get(nonfinite, nonfinite), nonfinite_text[recipe.nonfinite])
    return rows


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# ---------------------------------------------------------------------------- metrics
def number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def metric_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Validation and test metrics of each best model, with proposed minus original."""
    rows = []
    for block, block_name in (("validation", "val"), ("test", "test")):
        for key, label in METRICS:
            digits = 4 if key == "loss" else 2
            values = [(run["results"].get(block) or {}).get(key) for run in runs.values()]
            delta = "-"
            if key != "loss" and len(values) == 2 and None not in values:  # the losses are not comparable
                delta = f"{values[1] - values[0]:+.2f}"
            rows.append([f"{block_name} {label}", *(number(v, digits) for v in values), delta])
    return rows


def run_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """How each run went: epochs, best epoch, time, device."""
    def each(fn: Any) -> list[str]:
        return [fn(run["results"]) for run in runs.values()]

    return [
        ["epochs run", *each(lambda r: str(r.get("epochs_run", "-"))), ""],
        ["stopped early", *each(lambda r: "yes" if r.get("stopped_early") else "no"), ""],
        ["best epoch", *each(lambda r: str(r.get("best_epoch", "-"))), ""],
        ["train seconds", *each(lambda r: number(r.get("train_seconds"), 1)), ""],
        ["wall time (s)", *each(lambda r: number(r.get("wall_time_s"), 1)), ""],
        ["device", *each(lambda r: str(r.get("device", "-"))), ""],
        ["precision", *each(lambda r: str(r.get("precision", "-"))), ""],
        ["skipped steps", *each(lambda r: str(r.get("skipped_steps", "-"))), ""],
    ]


# --------------------------------------------------------------------------- pictures
def plot_curves(compare_dir: Path, runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Write lr.png, loss.png and acc1.png; return {file name: caption}."""
    pictures = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        points = [r for r in run["epochs"] if _positive(r.get("lr"))]  # a log axis shows no zero
        _line(ax, points, "lr", color=COLORS.get(name), label=name, marker="o", markersize=3)
    ax.set_yscale("log")
    _finish(ax, "learning rate (log scale)", "Learning rate per epoch")
    pictures["lr.png"] = _save(fig, compare_dir / "lr.png", "Learning rate of each epoch (the value set at its start).")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        _line(ax, run["epochs"], "train_loss", color=COLORS.get(name), label=f"{name} train", linestyle="--")
        _line(ax, run["epochs"], "val_loss", color=COLORS.get(name), label=f"{name} val", marker="o", markersize=3)
    _finish(ax, "loss", "Train and validation loss")
    pictures["loss.png"] = _save(fig, compare_dir / "loss.png", "Train (dashed) and validation (solid) loss, each "
                                 "recipe with its own loss (see the notes: not exactly the same scale).")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        _line(ax, run["epochs"], "val_acc@1", color=COLORS.get(name), label=name, marker="o", markersize=3)
        best = [r for r in run["epochs"] if r["epoch"] == run["results"].get("best_epoch")]
        _line(ax, best, "val_acc@1", color=COLORS.get(name), marker="*", markersize=12, linestyle="none")
    _finish(ax, "validation Acc@1 (%)", "Validation Acc@1 per epoch (star: the selected epoch)")
    pictures["acc1.png"] = _save(fig, compare_dir / "acc1.png",
                                 "Validation Acc@1 of each epoch; the star marks the epoch each selection rule kept.")
    return pictures


def _line(ax: Any, records: list[dict[str, Any]], key: str, **style: Any) -> None:
    ax.plot([r["epoch"] for r in records], [r.get(key, math.nan) for r in records], **style)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _finish(ax: Any, ylabel: str, title: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path, caption: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return caption


# ----------------------------------------------------------------------------- report
def write_report(compare_dir: Path, run_dirs: dict[str, Path]) -> Path:
    """Write ``compare_dir/report.md`` (and its three PNGs) from the recipes' run directories.

    Args:
        compare_dir: The comparison directory; the report and pictures are written here.
        run_dirs: Recipe name (``"original"``, ``"proposed"``) -> its run directory, each
            holding ``config.json``, ``metrics.jsonl`` and ``results.json``.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: a run directory lacks ``config.json`` or ``results.json``.
        ValueError: an unknown recipe name.
    """
    compare_dir = Path(compare_dir)
    compare_dir.mkdir(parents=True, exist_ok=True)
    runs = {name: read_run(Path(path)) for name, path in run_dirs.items()}
    names = list(runs)
    recipe_of = {name: recipes.by_name(runs[name]["config"].get("recipe", name)) for name in names}
    first = runs[names[0]]

    lines = [f"# pointer_v45: {' vs '.join(names)} recipe", ""]
    results = first["results"]
    data_config = first["config"].get("data", {})
    data = results.get("data", "synthetic")
    if data == "synthetic":
        data += f" ({data_config.get('synthetic_users')} users x {data_config.get('synthetic_days')} days)"
    samples = results.get("num_samples", {})
    differences = _config_differences([runs[name]["config"] for name in names])
    lines += [
        f"{'Both recipes ran on the same data, seed and model' if not differences else f'The {names[0]} run'}: "
        f"data {data}; "
        f"samples {', '.join(f'{k} {v}' for k, v in samples.items())}; {results.get('num_locations')} locations; "
        f"seed {results.get('seed')}; model {_model_text(first['config'].get('model', {}))}. Most-frequent-location "
        f"baseline: test Acc@1 {number(results.get('baseline_test_acc@1'))}%.",
        "",
        "Run directories: " + ", ".join(f"[`{name}/`]({_relative(run['dir'], compare_dir)}/)" for name, run in runs.items())
        + ".",
        "",
    ]
    if differences:
        lines += [f"**Warning:** the runs' configs differ in {', '.join(differences)}: not a like-for-like comparison.",
                  ""]

    lines += ["## Settings", "",
              "Each recipe's settings from `trainkit.recipes`; where the run's config replaced a recipe default, "
              "the value used is shown with the recipe's value in brackets.", ""]
    settings = {name: settings_rows(recipe_of[name], runs[name]["config"].get("training", {}), runs[name]["results"])
                for name in names}
    keys = list(dict.fromkeys(key for rows in settings.values() for key in rows))
    lines += table(["setting", *names], [[key, *(settings[name].get(key, "-") for name in names)] for key in keys])

    lines += ["", "## Results", "",
              "Metrics of each recipe's selected model (percent; loss in nats). The last column is "
              f"{names[-1]} minus {names[0]} in percentage points.", ""]
    lines += table(["metric", *names, "difference"], metric_rows(runs) + run_rows(runs))

    lines += ["", "## Curves", ""]
    for file_name, caption in plot_curves(compare_dir, runs).items():
        lines += [f"![{caption}]({file_name})", "", caption, ""]

    lines += [
        "## Notes",
        "",
        "- The two recipes train on different losses: the original on masked NLL, the proposed on NLL with "
        f"label smoothing {fmt(recipes.proposed().label_smoothing)}. The smoothed loss has a floor above zero and "
        "also penalises over-confident correct predictions, so the loss curves and the loss rows are not on exactly the same "
        "scale; compare the ranking metrics instead.",
        "- The original recipe has no early stopping: it runs all epochs (the seed's loop never ends on its own), and "
        "its best model is the epoch where the running average of the validation loss "
        f"(decay {fmt(recipes.original().running_avg_decay)}, clip {fmt(recipes.original().running_avg_clip)}) "
        "improved last, which lags the raw validation loss.",
        "- The proposed recipe keeps the epoch with the lowest validation loss and stops early once it has not "
        "improved for `patience` epochs and at least `min_epochs` have run (values in the settings table).",
        "",
    ]
    path = compare_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _model_text(model: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in model.items()) or "-"


def _relative(path: Path, start: Path) -> str:
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _config_differences(configs: list[dict[str, Any]]) -> list[str]:
    """``section.key`` names whose values differ between the runs (the recipe name aside)."""
    keys = {(section, key) for config in configs for section, values in config.items() if isinstance(values, dict)
            for key in values}
    return sorted(f"{section}.{key}" for section, key in keys
                  if len({json.dumps(config.get(section, {}).get(key)) for config in configs}) > 1)
