"""Training throughput of pointer_v45 at GeoLife size: the seed's loop vs trainkit vs Lightning.

    python benchmarks/throughput.py --device cuda            # full measurement
    python benchmarks/throughput.py --device cpu --quick     # under a minute on 2 cores
    python benchmarks/throughput.py --device cpu --quick --interleave --epochs 10   # paired, CPU

Every variant trains the same model (d_model 64, 2 layers, batch 128) on the same
GeoLife-sized synthetic tensors (7,424 samples, histories up to 48, 1,187 locations) in one
process, and reports training samples/s (median over timed epochs, after warm-up epochs):

- ``seed_loop``: the seed's ``train_epoch`` restated: a DataLoader with Python collation,
  per-batch ``.to(device)``, ``loss.item()`` twice a step, a tqdm postfix every step, and
  GradScaler fp16 AMP on CUDA (fp32 on CPU);
- ``minimal``: a lean hand-written loop over device-resident tensors, no host syncs;
- ``trainkit``: ``Trainer.train_epoch`` with its defaults for the device
  (``TensorBatches`` on the device, ``AMPStep(precision="auto")``, fused AdamW on CUDA);
- ``trainkit_step_eager``: ``TrainStep`` without capture: the captured step's own
  code run eagerly (what the graph saves is the difference to ``trainkit_captured``);
- ``trainkit_captured`` (CUDA): ``TrainStep.capture``, the whole step in one CUDA graph, driven
  the way the Trainer drives it (static shapes: the last batch padded with ignored
  targets; LR set per epoch through the optimizer's LR tensor; one host sync per 50 steps);
- ``trainkit_compiled`` (CUDA, unless ``--no-compile``): the same with the model
  ``torch.compile(dynamic=False)``-d, so inductor's kernels run inside the captured step;
- ``lightning``: a LightningModule with the same model and loss, when importable.

Also measured: warm-up + capture seconds (compile included) of the captured variants,
``--profile``: kernels and kernel time per step by torch.profiler (the floor under the
step time), and the cost of writing a full checkpoint (``last.pt``) relative to an epoch.
``--interleave`` times ``seed_loop``, ``minimal`` and ``trainkit`` one epoch each in turn, the
order rotating every round, and reports each one's per-round throughput ratio to
``seed_loop`` with a 95% t-interval: on a machine whose speed drifts (the shared 2-core
one) separate blocks of epochs measure the drift more than the loops.
The last line printed is JSON: ``{"device": ..., "samples_per_s": {...}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "src"))

from pointer_v45_model import PointerV45
from trainkit import (
    AMPStep,
    CaptureError,
    CheckpointManager,
    LabelSmoothedNLLLoss,
    WarmupCosineSchedule,
    build_optimizer,
)
from trainkit.batching import TensorBatches
from trainkit.stats import MIN_SEEDS, t_interval
from trainkit.train_step import TrainStep
from trainkit.trainer import Trainer

NUM_LOCATIONS, NUM_USERS, MAX_LEN, BATCH = 1187, 46, 48, 128
X_KEYS = ("time", "weekday", "diff", "duration", "user", "len")


def make_tensors(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """GeoLife-shaped samples: right-padded histories of 3..48 staypoints."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, MAX_LEN + 1, (n,), generator=g)
    valid = torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)

    def feature(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n, MAX_LEN), generator=g) * valid

    x = torch.randint(2, NUM_LOCATIONS, (n, MAX_LEN), generator=g) * valid
    # the target is often a location of the history, as in real data
    pick = torch.randint(0, 10**6, (n,), generator=g) % lengths
    y = torch.where(
        torch.rand(n, generator=g) < 0.6,
        x[torch.arange(n), pick],
        torch.randint(2, NUM_LOCATIONS, (n,), generator=g),
    )
    return {
        "x": x,
        "time": feature(96),
        "weekday": feature(7),
        "diff": feature(8),
        "duration": feature(96),
        "user": torch.randint(1, NUM_USERS, (n,), generator=g),
        "len": lengths,
        "y": y,
    }


def new_model(device: torch.device) -> PointerV45:
    torch.manual_seed(0)
    return PointerV45(NUM_LOCATIONS, NUM_USERS, max_len=MAX_LEN).to(device)


def to_seed(batch: dict[str, torch.Tensor]):
    return batch["x"], batch["y"], {k: batch[k] for k in X_KEYS}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(
    run_epoch: Callable[[int], None], device: torch.device, warmup: int, timed: int
) -> list[float]:
    for epoch in range(warmup):
        run_epoch(epoch)
    sync(device)
    times = []
    for epoch in range(warmup, warmup + timed):
        start = time.perf_counter()
        run_epoch(epoch)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- seed loop
class SeedDataset(Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = tensors

    def __len__(self) -> int:
        return len(self.t["y"])

    def __getitem__(self, i: int):
        return self.t["x"][i], self.t["y"][i], {k: self.t[k][i] for k in X_KEYS}


def bench_seed_loop(tensors, device, warmup, timed) -> list[float]:
    return time_epochs(seed_loop_epoch(tensors, device), device, warmup, timed)


def seed_loop_epoch(tensors, device) -> Callable[[int], None]:
    """The seed's train_epoch, as written (lines 410-450), with its DataLoader."""
    model = new_model(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=6.5e-4, weight_decay=0.015, betas=(0.9, 0.98), eps=1e-9
    )
    criterion = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    loader = DataLoader(
        SeedDataset(tensors), batch_size=BATCH, shuffle=True, pin_memory=device.type == "cuda"
    )

    def run_epoch(epoch: int) -> None:
        model.train()
        total_loss, num_batches = 0.0, 0
        pbar = tqdm(loader, desc=f"Epoch {epoch}", disable=False, file=_NULL, mininterval=0)
        for x, y, x_dict in pbar:
            x, y = x.to(device), y.to(device)
            x_dict = {k: v.to(device) for k, v in x_dict.items()}
            optimizer.zero_grad()
            if scaler:
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = model(x, x_dict)
                    loss = criterion(logits, y)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
                scaler.step(optimizer)
                scaler.update()
            else:
                logits = model(x, x_dict)
                loss = criterion(logits, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
                optimizer.step()
            total_loss += loss.item()
            num_batches += 1
            pbar.set_postfix(
                {"loss": f"{loss.item():.4f}", "avg": f"{total_loss / num_batches:.4f}"}
            )

    return run_epoch


class _Null:
    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass


_NULL = _Null()
PROFILE = False


# ----------------------------------------------------------------------------- minimal
def bench_minimal(tensors, device, warmup, timed) -> list[float]:
    return time_epochs(minimal_epoch(tensors, device), device, warmup, timed)


def minimal_epoch(tensors, device) -> Callable[[int], None]:
    """A lean hand-written loop: device-resident data, bf16 on CUDA, no host syncs."""
    model = new_model(device)
    optimizer = build_optimizer(model, "adamw", lr=6.5e-4)
    criterion = LabelSmoothedNLLLoss(0.03)
    data = {k: v.to(device) for k, v in tensors.items()}
    n = len(data["y"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    params = list(model.parameters())

    def run_epoch(epoch: int) -> None:
        model.train()
        order = torch.randperm(n, device=device)
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            b = {k: v[idx] for k, v in data.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                loss = criterion(model(b["x"], {k: b[k] for k in X_KEYS}), b["y"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.8)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run_epoch


# ---------------------------------------------------------------------------- trainkit
def make_trainer(tensors, device, checkpoint_dir: Path | None = None) -> Trainer:
    model = new_model(device)
    optimizer = build_optimizer(model, "adamw", lr=6.5e-4)
    train = TensorBatches(tensors, BATCH, shuffle=True, seed=0, device=device, transform=to_seed)
    return Trainer(
        model,
        optimizer,
        LabelSmoothedNLLLoss(0.03),
        train,
        [],
        epochs=10**6,
        amp=AMPStep(optimizer, precision="auto", max_grad_norm=0.8, device_type=device.type),
        checkpoints=None if checkpoint_dir is None else CheckpointManager(checkpoint_dir),
        device=device,
        progress=False,
        log_every=50,
    )


def bench_trainkit(tensors, device, warmup, timed) -> list[float]:
    return time_epochs(trainkit_epoch(tensors, device), device, warmup, timed)


def trainkit_epoch(tensors, device) -> Callable[[int], None]:
    trainer = make_trainer(tensors, device)

    def run_epoch(epoch: int) -> None:
        trainer.epoch = epoch
        trainer.train_epoch()

    return run_epoch


INTERLEAVABLE = {"seed_loop": seed_loop_epoch, "minimal": minimal_epoch, "trainkit": trainkit_epoch}


def interleaved_epochs(
    names: list[str], tensors, device, warmup: int, timed: int
) -> dict[str, list[float]]:
    """Each round times one epoch of every variant in turn (the order rotating each round), so
    that a machine whose speed drifts slows all of them alike: a paired measurement."""
    epochs = {name: INTERLEAVABLE[name](tensors, device) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + timed):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            epochs[name](round_)
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: list[float], base: list[float]) -> dict[str, float]:
    """Mean of the per-round throughput ratios ``base_time / time`` with its 95% t-interval."""
    ratios = [b / t for t, b in zip(times, base)]
    interval = t_interval(ratios)
    return {
        "mean": round(statistics.fmean(ratios), 3),
        "low": round(interval.low, 3),
        "high": round(interval.high, 3),
        "rounds": len(ratios),
    }


# ------------------------------------------------------------------- the captured step
def forward_seed_batch(model: torch.nn.Module, batch, device: torch.device):
    x, y, x_dict = batch
    return model(x, x_dict), y


EXTRA: dict[str, dict] = {"capture_seconds": {}, "final_train_loss": {}, "profile": {}}


def make_captured(tensors, device, capture: bool, compiled: bool = False):
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
    forward_model = torch.compile(model, dynamic=False) if compiled else model
    amp = AMPStep(optimizer, "auto", max_grad_norm=0.8, device_type=device.type)
    step = TrainStep(forward_model, optimizer, LabelSmoothedNLLLoss(0.03), forward_seed_batch, amp)
    sync(device)
    start = time.perf_counter()
    if capture:
        try:
            step.capture(next(iter(train)))
        except CaptureError as exc:
            return None, str(exc), train, optimizer
    sync(device)
    if capture:
        print(
            f"  captured in {time.perf_counter() - start:.2f} s (warm-up + capture"
            f"{' + compile' if compiled else ''})",
            flush=True,
        )
    return step, None, train, optimizer


def bench_captured(
    tensors, device, warmup, timed, name: str, capture: bool = True, compiled: bool = False
):
    start = time.perf_counter()
    step, reason, train, optimizer = make_captured(tensors, device, capture, compiled)
    if step is None:
        return reason
    if capture:
        EXTRA["capture_seconds"][name] = round(time.perf_counter() - start, 3)
    schedule = WarmupCosineSchedule(6.5e-4, warmup=5, total=50, min_lr=1e-6)

    def run_epoch(epoch: int) -> None:  # what the Trainer does around the step
        train.set_epoch(epoch)
        schedule.apply(optimizer, epoch)
        step.stats.reset()
        for i, batch in enumerate(train):
            step(batch)
            if (i + 1) % 50 == 0:  # the Trainer's log step: one read of the counters
                counts = step.stats.read()
                assert counts["nonfinite_steps"] == 0, "non-finite step"
        counts = step.stats.read()
        finite = max(counts["finite_micro_batches"], 1)
        EXTRA["final_train_loss"][name] = round(counts["loss_sum"] / finite, 4)

    times = time_epochs(run_epoch, device, warmup, timed)
    if capture and step.eager_steps:
        print(f"  {step.eager_steps} batches ran eagerly", flush=True)
    if PROFILE and device.type == "cuda":
        EXTRA["profile"][name] = profile_steps(step, list(train), device)
    return times


def profile_steps(step, batches, device, steps: int = 20) -> dict[str, float]:
    """Kernels and summed kernel time per step (torch.profiler), and wall ms per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    batches = (batches * (steps // len(batches) + 1))[:steps]
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        sync(device)
        wall = time.perf_counter() - start
    device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    kernels = [e for e in device_events if not e.name.startswith(("Memcpy", "Memset"))]
    result = {
        "kernels_per_step": round(len(kernels) / steps, 1),
        "kernel_ms_per_step": round(
            sum(e.time_range.elapsed_us() for e in kernels) / steps / 1000, 3
        ),
        "copies_per_step": round((len(device_events) - len(kernels)) / steps, 1),
        "profiled_wall_ms_per_step": round(wall / steps * 1000, 3),
    }
    print(f"  profile: {result}", flush=True)
    return result


def bench_checkpoint(tensors, device, repeats: int = 5) -> float:
    """Median seconds to write last.pt (model + optimizer + RNG + ...) atomically and durably."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(tensors, device, checkpoint_dir=Path(tmp))
        trainer.train_epoch()  # optimizer state exists
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            trainer.checkpoints.save("last.pt", trainer.state_dict())  # type: ignore[union-attr]
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- lightning
def bench_lightning(tensors, device, warmup, timed) -> list[float] | None:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl  # type: ignore[no-redef]
        except ImportError:
            return None

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = new_model(device)
            self.criterion = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)

        def training_step(self, batch, _):
            x, y, x_dict = batch
            return self.criterion(self.model(x, x_dict), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(
                self.parameters(), lr=6.5e-4, weight_decay=0.015, betas=(0.9, 0.98), eps=1e-9
            )

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            sync(device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    loader = DataLoader(
        SeedDataset(tensors), batch_size=BATCH, shuffle=True, pin_memory=device.type == "cuda"
    )
    trainer = pl.Trainer(
        max_epochs=warmup + timed,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        gradient_clip_val=0.8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(Module(), loader)
    return timer.times[warmup:]


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples and epochs (CPU: under a minute)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per variant")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument(
        "--variants",
        default="seed_loop,minimal,trainkit,trainkit_step_eager,trainkit_captured,"
        "trainkit_compiled,lightning",
    )
    parser.add_argument(
        "--profile", action="store_true", help="torch.profiler: kernels and kernel time per step"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help=f"time {', '.join(INTERLEAVABLE)} epoch by epoch in rotating order (a paired measurement)",
    )
    args = parser.parse_args(argv)
    global PROFILE
    PROFILE = args.profile
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 1024 if args.quick and device.type == "cpu" else 7424
    warmup = 1 if args.quick else 2
    timed = args.epochs or (1 if args.quick and device.type == "cpu" else 3 if args.quick else 5)
    tensors = make_tensors(n)
    wanted = args.variants.split(",")
    if device.type != "cuda" or args.no_compile:
        wanted = [v for v in wanted if v != "trainkit_compiled"]
    runners = {
        "seed_loop": lambda: bench_seed_loop(tensors, device, warmup, timed),
        "minimal": lambda: bench_minimal(tensors, device, warmup, timed),
        "trainkit": lambda: bench_trainkit(tensors, device, warmup, timed),
        "trainkit_step_eager": lambda: bench_captured(
            tensors, device, warmup, timed, "trainkit_step_eager", capture=False
        ),
        "trainkit_captured": lambda: bench_captured(
            tensors, device, warmup, timed, "trainkit_captured"
        ),
        "trainkit_compiled": lambda: bench_captured(
            tensors, device, warmup, timed, "trainkit_compiled", compiled=True
        ),
        "lightning": lambda: bench_lightning(tensors, device, warmup, timed),
    }
    samples_per_s: dict[str, float] = {}
    epoch_seconds: dict[str, list[float]] = {}
    if args.interleave:
        wanted = [v for v in wanted if v in INTERLEAVABLE]
        interleaved = interleaved_epochs(wanted, tensors, device, warmup, timed)
        for name, times in interleaved.items():
            epoch_seconds[name] = [round(t, 4) for t in times]
            samples_per_s[name] = round(n / statistics.median(times), 1)
            print(
                f"{name:18s} {samples_per_s[name]:10.1f} samples/s  (epochs: {epoch_seconds[name]})",
                flush=True,
            )
        if "seed_loop" in interleaved and len(interleaved["seed_loop"]) >= MIN_SEEDS:
            EXTRA["paired_ratio_to_seed_loop"] = {
                name: paired_ratio(times, interleaved["seed_loop"])
                for name, times in interleaved.items()
                if name != "seed_loop"
            }
            print(
                f"paired ratio to seed_loop (mean, 95% CI): {EXTRA['paired_ratio_to_seed_loop']}",
                flush=True,
            )
        wanted = []
    for name in wanted:
        try:
            times = runners[name]()
        except Exception as exc:  # one broken variant must not hide the others' figures
            times = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if times is None or isinstance(times, str):
            print(f"{name:18s} skipped ({times or 'not importable'})", flush=True)
            continue
        epoch_seconds[name] = [round(t, 4) for t in times]
        samples_per_s[name] = round(n / statistics.median(times), 1)
        print(
            f"{name:18s} {samples_per_s[name]:10.1f} samples/s  (epochs: {epoch_seconds[name]})",
            flush=True,
        )
    ckpt = bench_checkpoint(tensors, device)
    epoch_s = n / samples_per_s["trainkit"] if "trainkit" in samples_per_s else float("nan")
    base = samples_per_s.get("seed_loop")
    ratios = {k: round(v / base, 3) for k, v in samples_per_s.items()} if base else {}
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "samples": n,
        "samples_per_s": samples_per_s,
        "ratio_to_seed_loop": ratios,
        "epoch_seconds": epoch_seconds,
        "checkpoint_seconds": round(ckpt, 4),
        "checkpoint_fraction_of_trainkit_epoch": round(ckpt / epoch_s, 4),
        "step_ms": {
            k: round(1000 * statistics.median(v) / -(-n // BATCH), 3)
            for k, v in epoch_seconds.items()
        },
        **EXTRA,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
