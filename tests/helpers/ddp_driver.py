"""Run under torchrun by tests/test_distributed.py: a tiny Trainer job on gloo.

Usage: torchrun --standalone --nproc_per_node=2 ddp_driver.py OUT_DIR STOP_RANK [fail-save]
STOP_RANK (-1 for none) is the rank whose own stopper claims "stop" after the first epoch.
"fail-save": rank 0's checkpoint writes fail from the second epoch on (a full disk).
Each rank writes OUT_DIR/rank{r}.json with what it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from trainkit import (
    CheckpointError,
    CheckpointManager,
    EarlyStopper,
    LabelSmoothedNLLLoss,
    RankingMetrics,
    TensorBatches,
    Trainer,
    build_optimizer,
    distributed,
)

NUM_CLASSES = 9


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(NUM_CLASSES, 8)
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor, x_dict: dict) -> torch.Tensor:
        return torch.log_softmax(self.head(self.emb(x[:, -1])), dim=-1)


class FailingCheckpoints(CheckpointManager):
    """Saves fail once a second epoch has been trained, as on a disk that filled up."""

    def save(self, name, state):  # type: ignore[override]
        if state["epoch"] >= 2:
            raise CheckpointError(
                f"could not save checkpoint {self.directory / name}: [Errno 28] No space left"
            )
        return super().save(name, state)


class StopsAfterFirst(EarlyStopper):
    """A stopper that, on its own rank only, says "stop" after the first value."""

    def step(self, value: float) -> bool:
        improved = super().step(value)
        self.should_stop = True
        return improved


def data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, NUM_CLASSES, (n, 3), generator=g)
    return {"x": x, "y": x[:, -1].clone()}


def to_seed(batch: dict[str, torch.Tensor]):
    return batch["x"], batch["y"], {}


def main() -> None:
    out, stop_rank = Path(sys.argv[1]), int(sys.argv[2])
    fail_save = sys.argv[3:] == ["fail-save"]
    ctx = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    model = Tiny()
    optimizer = build_optimizer(model, "adamw", lr=1e-2)
    train = TensorBatches(data(70, 1), 8, shuffle=True, seed=5, transform=to_seed)
    val = TensorBatches(data(37, 2), 8, shuffle=False, transform=to_seed)  # odd size: shards differ
    stopper = StopsAfterFirst(patience=100) if ctx.rank == stop_rank else EarlyStopper(patience=100)
    trainer = Trainer(
        model,
        optimizer,
        LabelSmoothedNLLLoss(),
        train,
        val,
        test_loader=val,
        epochs=3,
        selector=stopper,
        progress=False,
        checkpoints=(FailingCheckpoints if fail_save else CheckpointManager)(out / "ckpt"),
    )
    result = trainer.fit()
    # single-process evaluation of the same weights over the whole validation set
    weights = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    full = data(37, 2)
    metrics = RankingMetrics()
    with torch.no_grad():
        weights.eval()
        metrics.update(weights(full["x"], {}), full["y"])
    record = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "epochs_run": result["epochs_run"],
        "stopped_early": result["stopped_early"],
        "validation": result["validation"],
        "single_process_validation": metrics.compute(),
        "train_batches": len(train),
        "val_batches": len(val),
    }
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(record))
    distributed.shutdown()


if __name__ == "__main__":
    main()
    distributed.exit_process(0)
