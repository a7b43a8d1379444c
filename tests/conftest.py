"""Shared test setup: ``src/`` first on sys.path, and the tiny Trainer job many tests build.

Helpers are handed to tests as fixtures (``build_trainer``, ``tiny_data``, ``poisoned_loss``,
``fake_clock``); test modules never import each other. The example's split cache goes to a temporary
directory, never the user's home.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
# TRAINKIT_TEST_INSTALLED=1 (`make test`): test the installed wheel, never src/.
INSTALLED = os.environ.get("TRAINKIT_TEST_INSTALLED") == "1"
if not INSTALLED and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainkit import (  # noqa: E402
    AMPStep,
    CheckpointManager,
    EarlyStopper,
    JSONLinesLogger,
    LabelSmoothedNLLLoss,
    RunningAverage,
    TensorBatches,
    Trainer,
    WarmupCosineSchedule,
    build_optimizer,
)

NUM_CLASSES = 7


class TinyModel(nn.Module):
    """``model(x, x_dict) -> log-probabilities``, with dropout (resume must restore the RNG)
    and a parameter that takes no part in the loss."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(NUM_CLASSES, hidden)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(hidden, NUM_CLASSES)
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, x_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.drop(self.emb(x[:, -1]) + 0.1 * self.emb(x).mean(1)) * x_dict[
            "scale"
        ].unsqueeze(1)
        return torch.log_softmax(self.head(hidden), dim=-1)


def make_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` samples whose target is the last input (learnable); ~20% padding targets (id 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, NUM_CLASSES, (n, 4), generator=g)
    y = x[:, -1].clone()
    y[torch.rand(n, generator=g) < 0.2] = 0
    return {"x": x, "y": y, "scale": torch.ones(n)}


def to_batch(
    batch: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    return batch["x"], batch["y"], {"scale": batch["scale"]}


class FakeClock:
    """Every call advances one "second" (for time-based checkpoints)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def build(
    directory: Path,
    epochs: int = 4,
    *,
    loss_fn: Any = None,
    precision: str = "fp32",
    hidden: int = 8,
    selector: str | Any = "stopper",
    patience: int = 50,
    min_epochs: int = 0,
    every_seconds: float | None = None,
    clock: Callable[[], float] | None = None,
    best_name: str = "best.pt",
    device: str = "cpu",
    accumulation_steps: int = 1,
    optimizer: str = "adamw",
    max_grad_norm: float | None = 0.8,
    **kwargs: Any,
) -> Trainer:
    """A seeded 96-sample, 6-steps-per-epoch run: checkpoints in ``directory/ckpt``, epoch records
    in ``directory/metrics.jsonl``. ``selector``: "stopper", "running_average", "best" or an object.
    ``device="cuda"``: model and data on the GPU, batches padded to full size (padding target 0)."""
    torch.manual_seed(0)
    model = TinyModel(hidden).to(device)
    lr = 3e-2 if optimizer == "adamw" else 0.15
    built_optimizer = build_optimizer(model, optimizer, lr=lr)
    if isinstance(selector, str):
        selector = {
            "stopper": lambda: EarlyStopper(patience=patience, min_epochs=min_epochs),
            "running_average": RunningAverage,
            "best": lambda: None,
        }[selector]()
    checkpoints = CheckpointManager(
        directory / "ckpt",
        keep_last=3,
        every_seconds=every_seconds,
        pinned=(best_name,),
        **({} if clock is None else {"clock": clock}),
    )
    options: dict[str, Any] = {
        "loggers": [JSONLinesLogger(directory / "metrics.jsonl")],
        "progress": False,
        "log_every": 2,
        "config": {"name": "tiny"},
        **kwargs,
    }
    options.setdefault("ignore_index", 0)  # make_data's padding target
    padding: dict[str, Any] = {}
    if device != "cpu":
        padding = {"pad_to_full_batch": True, "pad_values": {"y": 0}}
        options.setdefault("device", device)

    def loader(n: int, data_seed: int, **extra: Any) -> TensorBatches:
        tensors = {k: v.to(device) for k, v in make_data(n, data_seed).items()}
        return TensorBatches(tensors, 16, transform=to_batch, **padding, **extra)

    return Trainer(
        model,
        built_optimizer,
        loss_fn or LabelSmoothedNLLLoss(0.03),
        loader(96, 1, shuffle=True, seed=3),
        loader(40, 2, shuffle=False),
        test_loader=loader(40, 4, shuffle=False),
        epochs=epochs,
        schedule=WarmupCosineSchedule(lr, 1, epochs, 1e-4),
        amp=AMPStep(
            built_optimizer,
            precision,
            max_grad_norm=max_grad_norm,
            device_type=device,
            accumulation_steps=accumulation_steps,
        ),
        selector=selector,
        checkpoints=checkpoints,
        best_name=best_name,
        **options,
    )


def poisoned(
    is_bad: Callable[[int], bool], factor: float = float("nan")
) -> Callable[..., torch.Tensor]:
    """The label-smoothed loss, multiplied by ``factor`` on the training steps n (1-based) where
    ``is_bad(n)``: NaN/inf for non-finite losses, a huge finite factor for fp16 overflow."""
    criterion = LabelSmoothedNLLLoss(0.03)
    calls = {"n": 0}

    def loss_fn(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = criterion(log_probs, targets)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if is_bad(calls["n"]):
                return loss * factor
        return loss

    return loss_fn


@pytest.fixture
def build_trainer() -> Callable[..., Trainer]:
    """:func:`build`: a tiny seeded Trainer job writing into the directory it is given."""
    return build


@pytest.fixture
def tiny_data() -> Callable[[int, int], dict[str, torch.Tensor]]:
    """:func:`make_data`: ``tiny_data(n, seed)``."""
    return make_data


@pytest.fixture
def tiny_model() -> type[TinyModel]:
    """The :class:`TinyModel` class."""
    return TinyModel


@pytest.fixture
def poisoned_loss() -> Callable[..., Callable[..., torch.Tensor]]:
    """:func:`poisoned`: ``poisoned_loss(is_bad, factor=nan)``."""
    return poisoned


@pytest.fixture
def fake_clock() -> type[FakeClock]:
    """The :class:`FakeClock` class."""
    return FakeClock


@pytest.fixture(scope="session", autouse=True)
def _data_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """The example's split cache goes to a temporary directory, never the user's ~/.cache
    (subprocesses inherit the variable)."""
    previous = os.environ.get("TRAINKIT_CACHE_DIR")
    os.environ["TRAINKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("trainkit-cache"))
    yield
    if previous is None:
        os.environ.pop("TRAINKIT_CACHE_DIR", None)
    else:
        os.environ["TRAINKIT_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Every test: pointer_v45.main() points the root logger at this test's stdout; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files that hold ``slow`` tests first (stable order otherwise).

    ``make test`` hands whole files to its 2 processes (``--dist loadfile``); a long file
    handed out last kept one process busy while the other sat idle (about 40 s of a 3.5 min
    run). Started first, the long files overlap the many short ones.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
