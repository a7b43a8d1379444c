"""Data-parallel scaling of the Trainer: training samples/s with 1 vs N processes.

    torchrun --standalone --nproc_per_node=1 benchmarks/ddp_scaling.py --scale 1
    torchrun --standalone --nproc_per_node=2 benchmarks/ddp_scaling.py --scale 10

Trains pointer_v45 (GeoLife size: d_model 64, batch 128 per process) on GeoLife-shaped
synthetic tensors (7,424 samples x ``--scale``) with ``Trainer.train_epoch`` under DDP, and
prints one JSON line (rank 0): world size, samples, median epoch seconds, samples/s over
all processes. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from throughput import BATCH, make_tensors, new_model, to_seed
from trainkit import (
    AMPStep,
    LabelSmoothedNLLLoss,
    TensorBatches,
    Trainer,
    build_optimizer,
    distributed,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=int, default=1, help="dataset size as a multiple of GeoLife's 7,424"
    )
    parser.add_argument(
        "--epochs", type=int, default=4, help="timed epochs (after one warm-up epoch)"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--samples", type=int, default=None, help="dataset size override (smoke tests)"
    )
    parser.add_argument(
        "--capture",
        choices=("on", "off"),
        default="off",
        help="on: Trainer(capture=True), the step in one CUDA graph with the all-reduce inside "
        "(experimental under torchrun: docs/captured.md); off: the eager step",
    )
    args = parser.parse_args()
    ctx = distributed.init_from_env(args.device)
    device = torch.device("cuda", ctx.local_rank) if args.device == "cuda" else torch.device("cpu")
    tensors = make_tensors(args.samples or 7424 * args.scale)
    model = new_model(device)
    optimizer = build_optimizer(model, "adamw", lr=6.5e-4)
    train = TensorBatches(
        tensors,
        BATCH,
        shuffle=True,
        seed=0,
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
        [],
        epochs=10**6,
        device=device,
        amp=AMPStep(optimizer, "auto", max_grad_norm=0.8, device_type=device.type),
        progress=False,
        capture=args.capture == "on",
    )
    times = []
    for epoch in range(args.epochs + 1):
        distributed.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer.epoch = epoch
        trainer.train_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        distributed.barrier()
        if epoch:
            times.append(time.perf_counter() - start)
    samples = train._shard_size() * ctx.world_size  # every process's share (even shards)
    checksums = distributed.all_gather_object(
        float(sum(p.detach().double().sum() for p in model.parameters()))
    )
    if ctx.is_main:
        print(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else "cpu",
                    "world_size": ctx.world_size,
                    "dataset": len(tensors["y"]),
                    "samples_per_epoch": samples,
                    "epoch_seconds": statistics.median(times),
                    "samples_per_s": round(samples / statistics.median(times), 1),
                    "step": "captured" if trainer.step.captured else "eager",
                    "reason": trainer.capture_reason,
                    "ranks_identical": len(set(checksums)) == 1,
                }
            )
        )
    distributed.shutdown()


if __name__ == "__main__":
    main()
    distributed.exit_process(0)
