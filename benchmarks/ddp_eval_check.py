"""Under torchrun: the Trainer's captured evaluation equals the eager, all-reduced one (uneven shards).

    torchrun --standalone --nproc_per_node=2 benchmarks/ddp_eval_check.py

One training epoch, then the validation set (1,001 samples: uneven shards) evaluated both ways
on the same weights; each rank prints one JSON line with the largest difference.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch

from throughput import BATCH, make_tensors, new_model, to_seed
from trainkit import AMPStep, LabelSmoothedNLLLoss, build_optimizer, distributed
from trainkit.batching import TensorBatches
from trainkit.evaluation import evaluate
from trainkit.trainer import Trainer

ctx = distributed.init_from_env("cuda")
device = torch.device("cuda", ctx.local_rank)
model = new_model(device)
optimizer = build_optimizer(model, "adamw", lr=6.5e-4)
train = TensorBatches(
    make_tensors(7424),
    BATCH,
    shuffle=True,
    seed=0,
    device=device,
    transform=to_seed,
    pad_to_full_batch=True,
    pad_values={"y": 0},
)
val = TensorBatches(
    make_tensors(1001, seed=5),
    BATCH,
    shuffle=False,
    device=device,
    transform=to_seed,
    pad_to_full_batch=True,
    pad_values={"y": 0},
)
trainer = Trainer(
    model,
    optimizer,
    LabelSmoothedNLLLoss(0.03),
    train,
    val,
    epochs=2,
    device=device,
    amp=AMPStep(optimizer, "auto", max_grad_norm=0.8, device_type="cuda"),
    progress=False,
)
trainer.epoch = 0
trainer.train_epoch()
captured = trainer.evaluate(trainer.val_loader)
eager = evaluate(
    trainer.model,
    trainer.val_loader,
    trainer.loss_fn,
    metrics=trainer.metrics,
    device=device,
    forward=trainer.forward,
    autocast=trainer.amp.autocast,
)
keys = [k for k in eager if k != "batch_losses"]
out = {
    "rank": ctx.rank,
    "eval_captured": bool(trainer._eval_steps)
    and all(step.captured for step in trainer._eval_steps.values()),
    "max_abs_diff": max(abs(captured[k] - eager[k]) for k in keys),
    "batch_losses": [len(captured["batch_losses"]), len(eager["batch_losses"])],
    "max_batch_loss_diff": max(
        abs(a - b) for a, b in zip(captured["batch_losses"], eager["batch_losses"])
    ),
    "acc@1": [captured["acc@1"], eager["acc@1"]],
    "count": [captured.get("count"), eager.get("count")],
}
print(json.dumps(out), flush=True)
distributed.shutdown()
distributed.exit_process(0)
