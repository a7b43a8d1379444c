"""The reference's two training pipelines as plain data.

Every number in the reference's summary tables lives here once. ``original()`` is the TF1
pointer-generator pipeline (See et al.), ``proposed()`` the PyTorch pointer_v45 pipeline.
Field names are the parameter names they feed (``max_grad_norm``, ``keep_last``,
``nonfinite``, ``warmup``). The example reads these; ``tests/test_recipes.py`` checks each
number. :func:`replace_checked` is the one type check for changes from a config file or the
command line (docs/recipes.md). Fields that only one pipeline uses are ``None`` in the
other; the typed builders (:meth:`Recipe.lr_schedule`, :meth:`Recipe.label_smoothed_loss`,
:meth:`Recipe.early_stopper`, :meth:`Recipe.running_average`) pass them on checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

if TYPE_CHECKING:
    from trainkit.losses import LabelSmoothedNLLLoss
    from trainkit.schedule import WarmupCosineSchedule
    from trainkit.stopping import EarlyStopper, RunningAverage

__all__ = [
    "ABLATION_GROUPS",
    "NAMES",
    "Recipe",
    "by_name",
    "from_dict",
    "original",
    "proposed",
    "replace_checked",
]

NAMES = ("original", "proposed")
_INT_BOUND = 2**63  # ints must fit int64 (torch, numpy)
T = TypeVar("T")
# The groups of fields in which the two pipelines differ, one ablation row each (docs/compare.md):
# a row takes the whole group from the other recipe, so that it stays a recipe that trains
# (the add-one row "schedule" needs the warmup and lengths along with the schedule's name).
# The fields left out only describe or log (name, framework, loop, best_name), or
# are not used by the pointer model (coverage) or by training (checkpoint timing).
ABLATION_GROUPS: dict[str, tuple[str, ...]] = {
    "optimizer": (
        "optimizer",
        "lr",
        "lr_range",
        "initial_accumulator_value",
        "betas",
        "eps",
        "weight_decay",
    ),
    "schedule": ("schedule", "warmup", "schedule_epochs", "min_lr"),
    "clip": ("max_grad_norm",),
    "loss": ("loss", "label_smoothing", "ignore_index"),
    "selection": ("selection", "running_avg_decay", "running_avg_clip", "patience", "min_epochs"),
    "precision": ("precision", "amp"),
}
# Fields renamed in 0.2 to the parameter they feed: suggested when the old name is used.
RENAMED = {
    "grad_clip": "max_grad_norm",
    "checkpoint_keep": "keep_last",
    "non_finite_loss": "nonfinite",
    "warmup_epochs": "warmup",
}


@dataclass(frozen=True)
class Recipe:
    """All settings of one training pipeline.

    Attributes:
        name: ``"original"``, ``"proposed"`` or any label (an ablation row); the name
            never changes how a recipe trains.
        framework: What the reference ran it on.
        optimizer: ``build_optimizer`` name (``"adagrad"`` or ``"adamw"``).
        lr: Base learning rate.
        lr_range: Range of learning rates the reference quotes.
        betas, eps, weight_decay: AdamW settings (None for Adagrad).
        initial_accumulator_value: Adagrad's initial accumulator (None for AdamW).
        schedule: ``"fixed"`` or ``"warmup_cosine"``.
        warmup, schedule_epochs, min_lr: The warmup + cosine schedule.
        max_grad_norm: Global gradient-norm clip.
        loss: ``"masked_nll"`` or ``"label_smoothed_nll"``.
        label_smoothing, ignore_index: The proposed loss's settings.
        coverage_optional, cov_loss_wt: The original's optional coverage loss and its weight.
        selection: ``"running_average"`` (eval process) or ``"early_stopping"``.
        running_avg_decay, running_avg_clip: The running-average rule.
        patience, min_epochs: The early-stopping rule.
        precision: ``"fp32"`` or ``"auto"`` (AMP).
        amp: Whether the pipeline uses mixed precision.
        checkpoint_every_seconds, keep_last: Time-based checkpoints (original).
        best_name: File name of the best model.
        nonfinite: What a non-finite loss does (``"raise"``).
        loop: ``"infinite"`` (user stops it) or ``"epochs"``.
        epochs, batch_size: The proposed GeoLife training config.
        seed: The RNG seed.
    """

    name: str
    framework: str
    optimizer: Literal["adagrad", "adamw"]
    lr: float
    lr_range: tuple[float, float]
    betas: tuple[float, float] | None
    eps: float | None
    weight_decay: float | None
    initial_accumulator_value: float | None
    schedule: Literal["fixed", "warmup_cosine"]
    warmup: int | None
    schedule_epochs: int | None
    min_lr: float | None
    max_grad_norm: float
    loss: Literal["masked_nll", "label_smoothed_nll"]
    label_smoothing: float
    ignore_index: int | None
    coverage_optional: bool
    cov_loss_wt: float | None
    selection: Literal["running_average", "early_stopping"]
    running_avg_decay: float | None
    running_avg_clip: float | None
    patience: int | None
    min_epochs: int | None
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    amp: bool
    checkpoint_every_seconds: float | None
    keep_last: int
    best_name: str
    nonfinite: Literal["raise", "skip"]
    loop: Literal["infinite", "epochs"]
    epochs: int
    batch_size: int
    seed: int

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``build_optimizer(model, self.optimizer, **kwargs)``."""
        if self.optimizer == "adagrad":
            return {"lr": self.lr, "initial_accumulator_value": self.initial_accumulator_value}
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def describe(self) -> str:
        """One line naming the pipeline: its reference framework and what it trains with.

        Returns:
            For example ``"proposed (reference: PyTorch): adamw lr 0.00065, warmup_cosine,
            clip 0.8, label_smoothed_nll, early_stopping, AMP (precision auto)"``.
        """
        precision = f"AMP (precision {self.precision})" if self.amp else f"{self.precision}"
        coverage = (
            f", coverage loss optional (weight {self.cov_loss_wt})"
            if self.coverage_optional
            else ""
        )
        return (
            f"{self.name} (reference: {self.framework}): {self.optimizer} lr {self.lr:g}, "
            f"{self.schedule}, clip {self.max_grad_norm:g}, {self.loss}, {self.selection}, "
            f"{precision}{coverage}"
        )

    def departures(self) -> list[str]:
        """Where this recipe's settings leave the reference facts it also records.

        The descriptive fields (``lr_range``, ``amp``, ``coverage_optional``) state what the
        reference did; a recipe changed with :meth:`replace` (``--lr``, ``--set``) can leave
        them. Nothing is refused: the example logs each line, so a run's log says it.

        Returns:
            One sentence per departure (empty: the recipe is as the reference describes).
        """
        found = []
        low, high = self.lr_range
        if not low <= self.lr <= high:
            span = f"{low:g}" if low == high else f"{low:g} to {high:g}"
            found.append(f"lr {self.lr:g} is outside the {span} that the reference quotes")
        if self.amp != (self.precision != "fp32"):
            found.append(
                f"the reference {'used' if self.amp else 'did not use'} mixed precision, "
                f"this recipe's precision is {self.precision}"
            )
        if self.cov_loss_wt is not None and not self.coverage_optional:
            found.append(
                f"cov_loss_wt {self.cov_loss_wt:g} is set, but this pipeline has no coverage loss"
            )
        return found

    def _required(self, builder: str, *names: str) -> list[Any]:
        """The values of fields ``names``; ValueError naming those that are None."""
        values = [getattr(self, name) for name in names]
        missing = [name for name, value in zip(names, values) if value is None]
        if missing:
            raise ValueError(
                f"recipe {self.name!r} has no {', '.join(missing)} (None), which {builder} needs"
            )
        return values

    def lr_schedule(self) -> WarmupCosineSchedule:
        """``WarmupCosineSchedule(lr, warmup, schedule_epochs, min_lr)``.

        Returns:
            The schedule of this recipe's numbers.

        Raises:
            ValueError: ``warmup``, ``schedule_epochs`` or ``min_lr`` is None (the original
                recipe's fixed LR), naming the field.
        """
        from trainkit.schedule import WarmupCosineSchedule

        warmup, total, min_lr = self._required(
            "lr_schedule()", "warmup", "schedule_epochs", "min_lr"
        )
        return WarmupCosineSchedule(self.lr, warmup, total, min_lr)

    def label_smoothed_loss(self) -> LabelSmoothedNLLLoss:
        """``LabelSmoothedNLLLoss(label_smoothing, ignore_index)``.

        Returns:
            The loss module of this recipe's numbers.

        Raises:
            ValueError: ``ignore_index`` is None (the original recipe masks padding instead).
        """
        from trainkit.losses import LabelSmoothedNLLLoss

        (ignore_index,) = self._required("label_smoothed_loss()", "ignore_index")
        return LabelSmoothedNLLLoss(self.label_smoothing, ignore_index)

    def early_stopper(self) -> EarlyStopper:
        """``EarlyStopper(patience=patience, min_epochs=min_epochs)``.

        Returns:
            A fresh stopper.

        Raises:
            ValueError: ``patience`` or ``min_epochs`` is None (the original recipe), naming it.
        """
        from trainkit.stopping import EarlyStopper

        patience, min_epochs = self._required("early_stopper()", "patience", "min_epochs")
        return EarlyStopper(patience=patience, min_epochs=min_epochs)

    def running_average(self) -> RunningAverage:
        """``RunningAverage(running_avg_decay, running_avg_clip)``.

        Returns:
            A fresh running average.

        Raises:
            ValueError: ``running_avg_decay`` or ``running_avg_clip`` is None (the proposed
                recipe), naming it.
        """
        from trainkit.stopping import RunningAverage

        decay, clip = self._required("running_average()", "running_avg_decay", "running_avg_clip")
        return RunningAverage(decay, clip)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed, each checked against the field's type.

        Raises:
            ValueError: a field name that does not exist (with the closest name), or a value
                of the wrong type (``"no"`` for a bool, ``1.5`` for an int, NaN for a float).
        """
        return replace_checked(self, changes, prefix="Recipe.")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    names = {
        bool: "true or false",
        int: "a 64-bit integer",
        float: "a finite number",
        str: "a string",
        type(None): "null",
    }
    return names.get(hint, str(hint))


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(True, value converted to hint)`` if ``value`` fits the type ``hint``, else ``(False, None)``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, converted = _convert(value, arg)
            if ok:
                return True, converted
        return False, None
    if origin is Literal:
        return (value in args and not isinstance(value, bool)), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, None
        items = [_convert(item, arg) for item, arg in zip(value, args)]
        return all(ok for ok, _ in items), tuple(item for _, item in items)
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and -_INT_BOUND <= value < _INT_BOUND
        ), value
    if hint is float:
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        return ok, float(value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    raise TypeError(f"replace_checked does not handle the field type {hint!r}")


def replace_checked(instance: T, changes: typing.Mapping[str, Any], prefix: str = "") -> T:
    """``dataclasses.replace(instance, **changes)`` with every change checked against its field's type.

    Ints must fit 64 bits, floats must be finite (ints are accepted and made floats), lists
    become tuples, ``Literal`` fields take only their values. The instance's own
    ``__post_init__`` checks (if any) run too.

    Args:
        instance: A dataclass instance.
        changes: Field name -> new value (e.g. one section of a YAML file).
        prefix: Put before field names in messages (``"training."``).

    Returns:
        The changed copy.

    Raises:
        ValueError: an unknown field (naming the closest known one) or a wrong-typed value,
            in one line: ``training.compile must be true or false, got 'no'``.
    """
    if not isinstance(changes, typing.Mapping):
        raise ValueError(
            f"{prefix.rstrip('.') or 'changes'} must be a mapping of names to values, "
            f"got {type(changes).__name__}"
        )
    hints = typing.get_type_hints(type(instance), include_extras=False)
    known = [field.name for field in dataclasses.fields(instance)]  # type: ignore[arg-type]
    converted = {}
    for name, value in changes.items():
        if name not in known:
            close = (
                [RENAMED[name]]
                if RENAMED.get(name) in known
                else difflib.get_close_matches(str(name), known, n=1)
            )
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise ValueError(f"unknown key {prefix}{name}{hint}")
        ok, converted[name] = _convert(value, hints[name])
        if not ok:
            raise ValueError(
                f"{prefix}{name} must be {_describe(hints[name])}, got {_short(value)}"
            )
    return dataclasses.replace(instance, **converted)  # type: ignore[type-var]


def from_dict(values: typing.Mapping[str, Any]) -> Recipe:
    """The recipe whose fields are ``values`` (the inverse of :meth:`Recipe.to_dict`).

    Raises:
        ValueError: a missing, unknown or wrong-typed field.
    """
    if not isinstance(values, typing.Mapping):
        raise ValueError(f"a recipe must be a mapping of fields, got {type(values).__name__}")
    missing = [field.name for field in dataclasses.fields(Recipe) if field.name not in values]
    if missing:
        raise ValueError(f"recipe lacks field(s) {', '.join(missing)}")
    return replace_checked(proposed(), values, prefix="recipe.")


def original() -> Recipe:
    """The TF1 pointer-generator pipeline (the reference: "Original Training Pipeline")."""
    return Recipe(
        name="original",
        framework="TensorFlow 1.x",
        optimizer="adagrad",
        lr=0.15,
        lr_range=(0.15, 0.15),
        betas=None,
        eps=None,
        weight_decay=None,
        initial_accumulator_value=0.1,
        schedule="fixed",
        warmup=None,
        schedule_epochs=None,
        min_lr=None,
        max_grad_norm=2.0,
        loss="masked_nll",
        label_smoothing=0.0,
        ignore_index=None,
        coverage_optional=True,
        cov_loss_wt=1.0,
        selection="running_average",
        running_avg_decay=0.99,
        running_avg_clip=12.0,
        patience=None,
        min_epochs=None,
        precision="fp32",
        amp=False,
        checkpoint_every_seconds=60.0,
        keep_last=3,
        best_name="bestmodel.pt",
        nonfinite="raise",
        loop="infinite",
        epochs=50,
        batch_size=128,
        seed=42,
    )


def proposed() -> Recipe:
    """The PyTorch pointer_v45 pipeline (the reference: "Proposed Training Pipeline")."""
    return Recipe(
        name="proposed",
        framework="PyTorch",
        optimizer="adamw",
        lr=6.5e-4,
        lr_range=(3e-4, 6.5e-4),
        betas=(0.9, 0.98),
        eps=1e-9,
        weight_decay=0.015,
        initial_accumulator_value=None,
        schedule="warmup_cosine",
        warmup=5,
        schedule_epochs=50,
        min_lr=1e-6,
        max_grad_norm=0.8,
        loss="label_smoothed_nll",
        label_smoothing=0.03,
        ignore_index=0,
        coverage_optional=False,
        cov_loss_wt=None,
        selection="early_stopping",
        running_avg_decay=None,
        running_avg_clip=None,
        patience=5,
        min_epochs=8,
        precision="auto",
        amp=True,
        checkpoint_every_seconds=None,
        keep_last=3,
        best_name="best.pt",
        nonfinite="raise",
        loop="epochs",
        epochs=50,
        batch_size=128,
        seed=42,
    )


def by_name(name: str) -> Recipe:
    """Return ``original()`` or ``proposed()`` by name.

    Args:
        name: ``"original"`` or ``"proposed"``.

    Returns:
        A fresh recipe.

    Raises:
        ValueError: unknown name.
    """
    if name == "original":
        return original()
    if name == "proposed":
        return proposed()
    raise ValueError(f"unknown recipe {name!r}; choose one of {NAMES}")
