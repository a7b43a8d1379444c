"""trainkit: composable, typed, tested PyTorch training components.

Each component is usable on its own; :class:`Trainer` wires them into the reference's loop.
"""

from trainkit import recipes
from trainkit.amp import AMPStep, StepInfo
from trainkit.batching import TensorBatches
from trainkit.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    load_model_state,
)
from trainkit.ema import EMA
from trainkit.evaluation import EvalStep, default_forward, evaluate
from trainkit.export import load_safetensors, save_safetensors
from trainkit.interrupt import TrainingInterrupted
from trainkit.loggers import (
    CSVLogger,
    JSONLinesLogger,
    Logger,
    MLflowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from trainkit.losses import LabelSmoothedNLLLoss, coverage_loss, mask_and_avg, masked_nll
from trainkit.metrics import RankingMetrics
from trainkit.nonfinite import NonFiniteLossError, NonFinitePolicy
from trainkit.optim import build_optimizer
from trainkit.progress import TrainingProgress
from trainkit.rng import get_rng_state, seed_everything, set_rng_state
from trainkit.schedule import WarmupCosineSchedule
from trainkit.stopping import BestValue, EarlyStopper, RunningAverage
from trainkit.train_step import CaptureError, StepStats, TrainStep
from trainkit.trainer import Trainer

__version__ = "0.2.0"  # the one place the version is set (pyproject reads it)

__all__ = [
    "EMA",
    "AMPStep",
    "BestValue",
    "CSVLogger",
    "CaptureError",
    "CheckpointError",
    "CheckpointManager",
    "EarlyStopper",
    "EvalStep",
    "JSONLinesLogger",
    "LabelSmoothedNLLLoss",
    "Logger",
    "MLflowLogger",
    "NonFiniteLossError",
    "NonFinitePolicy",
    "RankingMetrics",
    "RunningAverage",
    "StepInfo",
    "StepStats",
    "TensorBatches",
    "TensorBoardLogger",
    "TrainStep",
    "Trainer",
    "TrainingInterrupted",
    "TrainingProgress",
    "WandbLogger",
    "WarmupCosineSchedule",
    "__version__",
    "build_optimizer",
    "coverage_loss",
    "default_forward",
    "evaluate",
    "get_rng_state",
    "load_checkpoint",
    "load_model_state",
    "load_safetensors",
    "mask_and_avg",
    "masked_nll",
    "recipes",
    "save_safetensors",
    "seed_everything",
    "set_rng_state",
]
