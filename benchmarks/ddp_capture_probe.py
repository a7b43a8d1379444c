"""Probe: can CapturedStep capture a DDP-wrapped model? (docs/performance.md, "Data parallel")

    MODE=global torchrun --standalone --nproc_per_node=2 benchmarks/ddp_capture_probe.py
    MODE=relaxed torchrun --standalone --nproc_per_node=2 benchmarks/ddp_capture_probe.py

Runs 5 epochs of the eager step under DDP (static_graph=True, gradient_as_bucket_view=True,
broadcast_buffers=False, TORCH_NCCL_ASYNC_ERROR_HANDLING=0, 15 warm-up steps: what
PyTorch's CUDA-graph notes ask of DDP), then tries to capture the same step with
``torch.cuda.graph(capture_error_mode=MODE)`` (one mode per process: a failed capture leaves
the CUDA RNG unusable). The DDP wrapper is hidden inside a plain module, so that the step runs
DDP's own forward and reducer in the graph (``CapturedStep`` itself runs a DDP model's module
and all-reduces the gradients in the graph instead: docs/captured.md, "Under torchrun").
Prints one JSON object (rank 0), also written to $OUT/ddp_probe.json.
"""

import functools
import json
import os
import statistics
import sys
import time
import traceback

os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import throughput as T
from trainkit import CapturedStep, LabelSmoothedNLLLoss, TensorBatches, build_optimizer

dist.init_process_group("nccl")
rank, ws = dist.get_rank(), dist.get_world_size()
dev = torch.device("cuda", rank)
torch.cuda.set_device(dev)
tensors = T.make_tensors(7424)
out = {
    "world_size": ws,
    "device": torch.cuda.get_device_name(dev),
    "torch": torch.__version__,
    "nccl": ".".join(map(str, torch.cuda.nccl.version())),
}


class Hidden(torch.nn.Module):
    """The DDP wrapper behind a plain module: CapturedStep then captures DDP's forward and reducer."""

    def __init__(self, ddp):
        super().__init__()
        self.ddp = ddp

    def forward(self, *args):
        return self.ddp(*args)


def run(name, capture, static_graph=True, epochs=5):
    torch.manual_seed(0)
    model = T.new_model(dev)
    ddp = DDP(
        model,
        device_ids=[rank],
        static_graph=static_graph,
        gradient_as_bucket_view=True,
        broadcast_buffers=False,
    )
    opt = build_optimizer(model, "adamw", lr=6.5e-4)
    train = TensorBatches(
        tensors,
        T.BATCH,
        shuffle=True,
        seed=0,
        device=dev,
        transform=T.to_seed,
        pad_to_full_batch=True,
        pad_values={"y": 0},
    )
    train.shard(rank, ws)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step = CapturedStep(
        Hidden(ddp),
        opt,
        LabelSmoothedNLLLoss(0.03),
        T.forward_seed_batch,
        next(iter(train)),
        precision="auto",
        max_grad_norm=0.8,
        capture=capture,
        warmup_steps=15,
    )
    torch.cuda.synchronize()
    cap = time.perf_counter() - t0
    times = []
    for epoch in range(epochs):
        train.set_epoch(epoch)
        step.reset_sums()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for batch in train:
            step.run(batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    loss = (step.sums[0] / step.sums[3]).item()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(ws)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    r = {
        "capture_s": round(cap, 3),
        "samples_per_s_all_ranks": round(
            len(train) * T.BATCH * ws / statistics.median(times[1:]), 1
        ),
        "ms_per_step": round(statistics.median(times[1:]) / len(train) * 1000, 3),
        "last_epoch_loss": round(loss, 4),
        "ranks_identical": same,
        "eager_steps": step.eager_steps,
    }
    out[name] = r
    return flat


import trainkit.captured as C

eager = run("eager_ddp", capture=False)
for mode in (os.environ.get("MODE", "global"),):
    C._graph_warmup_and_capture = functools.partial(
        C._graph_warmup_and_capture, capture_error_mode=mode
    )
    try:
        captured = run(f"captured_ddp_{mode}", capture=True)
        out[f"max_param_diff_{mode}_vs_eager"] = (eager - captured).abs().max().item()
        break
    except Exception as exc:
        out[f"error_{mode}"] = "".join(traceback.format_exception(exc))[-1500:]
if rank == 0:
    print(json.dumps(out, indent=1), flush=True)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "ddp_probe.json"), "w") as f:
        json.dump(out, f, indent=1)
dist.destroy_process_group()
