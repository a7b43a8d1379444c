"""``WarmupCosineSchedule.as_lr_scheduler``: a standard torch ``LRScheduler`` equal to ``sched(t)``.

The contract (issue 8): after ``k`` calls to ``.step()`` the LR is ``sched(k)`` (epoch mode) or
``sched(k / steps_per_epoch)`` (step mode), exactly (float equality, no tolerance), over a
whole run and past ``total`` (where it holds ``min_lr``); the ``state_dict`` survives
``torch.save`` + ``torch.load(weights_only=True)`` and a fresh optimizer + scheduler loaded
from it mid-run continue with identical LRs; other param groups keep their ratio to the first; the
ordinary ``optimizer.step(); scheduler.step()`` loop raises no warning.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trainkit import AMPStep, CheckpointManager, WarmupCosineSchedule, build_optimizer

SEED = WarmupCosineSchedule(6.5e-4, warmup=5, total=50, min_lr=1e-6)  # the seed's proposed schedule


def make(
    lr: float = 1.0, groups: int = 1, seed: int = 0
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A tiny model and an AdamW whose initial ``lr`` differs from the schedule's (it must be ignored)."""
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(groups)])
    param_groups = [
        {"params": layer.parameters(), "lr": lr * (i + 1)} for i, layer in enumerate(model)
    ]
    return model, torch.optim.AdamW(param_groups, lr=lr)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 3)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def run(sched: WarmupCosineSchedule, steps_per_epoch: int | None, calls: int) -> list[float]:
    """LR of the first group after 0, 1, ..., ``calls`` calls to ``.step()`` in a plain loop."""
    model, optimizer = make()
    scheduler = sched.as_lr_scheduler(optimizer, steps_per_epoch)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(calls):
        train_step(model, optimizer)
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


def expected(sched: WarmupCosineSchedule, steps_per_epoch: int | None, calls: int) -> list[float]:
    return [
        sched(k) if steps_per_epoch is None else sched(k / steps_per_epoch)
        for k in range(calls + 1)
    ]


# ---------------------------------------------------------------------- the whole run


def test_is_a_standard_lr_scheduler() -> None:
    _, optimizer = make()
    scheduler = SEED.as_lr_scheduler(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert scheduler.optimizer is optimizer
    assert lrs(optimizer) == [SEED(0)] and scheduler.get_last_lr() == [
        SEED(0)
    ]  # set at construction
    assert scheduler.last_epoch == 0


def test_epoch_mode_equals_sched_over_a_whole_run_and_past_total() -> None:
    seen = run(SEED, None, 80)  # 50 epochs of schedule, then 30 past total
    assert seen == expected(SEED, None, 80)  # exact: float equality at every k
    assert seen[0] == 6.5e-4 / 5 and seen[4] == seen[5] == 6.5e-4  # warmup from base/5; the seam
    assert seen[50:] == [1e-6] * 31  # holds min_lr past total


def test_step_mode_equals_sched_of_fractional_epoch_over_a_whole_run() -> None:
    steps_per_epoch = 7
    calls = 60 * steps_per_epoch
    seen = run(SEED, steps_per_epoch, calls)
    assert seen == expected(SEED, steps_per_epoch, calls)
    assert max(seen) == 6.5e-4 and min(seen) == 1e-6
    assert seen[: 5 * steps_per_epoch] == sorted(seen[: 5 * steps_per_epoch])  # rises in warmup
    assert seen[50 * steps_per_epoch :] == [1e-6] * (10 * steps_per_epoch + 1)


@pytest.mark.parametrize(
    "sched",
    [
        WarmupCosineSchedule(0.15, warmup=0, total=10),  # no warmup, min_lr 0
        WarmupCosineSchedule(1e-3, warmup=4, total=4, min_lr=1e-5),  # warmup == total
        WarmupCosineSchedule(3e-4, warmup=2.5, total=7.5, min_lr=3e-4),  # fractional, flat
    ],
    ids=["no-warmup", "warmup-equals-total", "fractional-flat"],
)
@pytest.mark.parametrize("steps_per_epoch", [None, 1, 3])
def test_other_shapes(sched: WarmupCosineSchedule, steps_per_epoch: int | None) -> None:
    calls = 14 * (steps_per_epoch or 1)
    assert run(sched, steps_per_epoch, calls) == expected(sched, steps_per_epoch, calls)


@settings(max_examples=25, deadline=None)
@given(
    base_lr=st.floats(1e-6, 1.0),
    warmup=st.integers(0, 6),
    extra=st.integers(1, 8),
    floor=st.floats(0.0, 1.0),
    steps_per_epoch=st.one_of(st.none(), st.integers(1, 9)),
)
def test_equals_sched_for_any_schedule(
    base_lr: float, warmup: int, extra: int, floor: float, steps_per_epoch: int | None
) -> None:
    sched = WarmupCosineSchedule(base_lr, warmup, warmup + extra, min_lr=base_lr * floor)
    _, optimizer = make()
    scheduler = sched.as_lr_scheduler(optimizer, steps_per_epoch)
    calls = (warmup + extra + 2) * (steps_per_epoch or 1)
    for k in range(1, calls + 1):
        optimizer.step()  # no gradients: a no-op step, keeps torch's call-order check happy
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == (
            sched(k) if steps_per_epoch is None else sched(k / steps_per_epoch)
        )


def test_step_with_an_epoch_argument_is_exact_too() -> None:
    _, optimizer = make()
    scheduler = SEED.as_lr_scheduler(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates step(epoch); it must still be exact
        scheduler.step(17)
    assert lrs(optimizer) == [SEED(17)]


# ---------------------------------------------------------------------- param groups


def test_first_group_gets_sched_and_the_others_keep_their_ratio() -> None:
    model, optimizer = make(lr=0.5, groups=3)  # initial lrs 0.5, 1.0, 1.5: ratios 1, 2, 3
    scheduler = SEED.as_lr_scheduler(optimizer, steps_per_epoch=4)
    assert scheduler.base_lrs == [6.5e-4, 6.5e-4 * 2, 6.5e-4 * 3]
    for k in range(1, 4 * 55 + 1):
        train_step(model, optimizer)
        scheduler.step()
        assert lrs(optimizer) == [SEED(k / 4), SEED(k / 4) * 2, SEED(k / 4) * 3]
    assert scheduler.get_last_lr() == [1e-6, 2e-6, 3e-6]


def test_with_build_optimizer_decay_exempt_groups() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8))
    optimizer = build_optimizer(model, "adamw", lr=6.5e-4, decay_exempt=True)
    scheduler = SEED.as_lr_scheduler(optimizer)
    for k in range(1, 8):
        model(torch.randint(0, 10, (4,))).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        assert lrs(optimizer) == [SEED(k), SEED(k)]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.015, 0.0]  # untouched


# ---------------------------------------------------------------------- state_dict


def weights_only_roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def contains_callable(value: Any) -> bool:
    if isinstance(value, dict):
        return any(contains_callable(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_callable(v) for v in value)
    return callable(value)


@pytest.mark.parametrize("steps_per_epoch", [None, 5])
def test_state_dict_holds_plain_values_only(steps_per_epoch: int | None) -> None:
    model, optimizer = make()
    scheduler = SEED.as_lr_scheduler(optimizer, steps_per_epoch)
    for _ in range(3):
        train_step(model, optimizer)
        scheduler.step()
    state = scheduler.state_dict()
    assert not contains_callable(state)  # no function, lambda, schedule or optimizer inside
    assert {"optimizer", "schedule", "_fn"}.isdisjoint(state)
    assert state["last_epoch"] == 3 and state["steps_per_epoch"] == steps_per_epoch
    assert weights_only_roundtrip(state) == state


@pytest.mark.parametrize("steps_per_epoch", [None, 6])
@pytest.mark.parametrize("stop_after", [2, 5, 31])  # in warmup, at the seam, in the decay
def test_state_dict_roundtrip_mid_run_continues_identically(
    steps_per_epoch: int | None, stop_after: int
) -> None:
    per = steps_per_epoch or 1
    calls = 55 * per
    reference = run(SEED, steps_per_epoch, calls)

    model, optimizer = make(groups=2)
    scheduler = SEED.as_lr_scheduler(optimizer, steps_per_epoch)
    for _ in range(stop_after * per):
        train_step(model, optimizer)
        scheduler.step()
    saved = weights_only_roundtrip(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
    )

    # a new process: fresh model, optimizer and scheduler (torch's documented order), then load
    model2, optimizer2 = make(groups=2, seed=1)
    scheduler2 = WarmupCosineSchedule(6.5e-4, 5, 50, 1e-6).as_lr_scheduler(
        optimizer2, steps_per_epoch
    )
    assert lrs(optimizer2) == [SEED(0), SEED(0) * 2]  # the fresh scheduler starts over ...
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    assert lrs(optimizer2) == [
        reference[stop_after * per],
        reference[stop_after * per] * 2,
    ]  # ... until loaded
    assert (
        scheduler2.last_epoch == scheduler.last_epoch
        and scheduler2.get_last_lr() == scheduler.get_last_lr()
    )

    resumed = [optimizer2.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(calls - stop_after * per):
            train_step(model2, optimizer2)
            scheduler2.step()
            resumed.append(optimizer2.param_groups[0]["lr"])
            assert (
                optimizer2.param_groups[1]["lr"] == resumed[-1] * 2
            )  # the second group keeps its ratio
    assert resumed == reference[stop_after * per :]


def test_loading_the_scheduler_before_the_optimizer_works_too() -> None:
    model, optimizer = make()
    scheduler = SEED.as_lr_scheduler(optimizer, steps_per_epoch=3)
    for _ in range(20):
        train_step(model, optimizer)
        scheduler.step()
    state = weights_only_roundtrip(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    )
    _, optimizer2 = make()
    scheduler2 = SEED.as_lr_scheduler(optimizer2, steps_per_epoch=3)
    scheduler2.load_state_dict(state["scheduler"])
    optimizer2.load_state_dict(state["optimizer"])
    optimizer2.step()
    scheduler2.step()
    assert lrs(optimizer2) == [SEED(21 / 3)]


def test_checkpoint_manager_roundtrip(tmp_path) -> None:
    model, optimizer = make()
    scheduler = SEED.as_lr_scheduler(optimizer)
    ckpt = CheckpointManager(tmp_path)
    for _ in range(12):
        train_step(model, optimizer)
        scheduler.step()
    ckpt.save("last.pt", {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    state = ckpt.load("last.pt")  # torch.load(weights_only=True)
    _, optimizer2 = make()
    scheduler2 = SEED.as_lr_scheduler(optimizer2)
    optimizer2.load_state_dict(state["optimizer"])
    scheduler2.load_state_dict(state["scheduler"])
    optimizer2.step()
    scheduler2.step()
    assert lrs(optimizer2) == [SEED(13)]


def test_loading_a_state_with_another_steps_per_epoch_raises() -> None:
    _, optimizer = make()
    state = SEED.as_lr_scheduler(optimizer, steps_per_epoch=4).state_dict()
    _, optimizer2 = make()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        SEED.as_lr_scheduler(optimizer2, steps_per_epoch=8).load_state_dict(state)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        SEED.as_lr_scheduler(optimizer2).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4"])
def test_bad_steps_per_epoch_raises(bad: Any) -> None:
    _, optimizer = make()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        SEED.as_lr_scheduler(optimizer, steps_per_epoch=bad)


# ---------------------------------------------------------------------- no warnings


@pytest.mark.parametrize("steps_per_epoch", [None, 4])
def test_plain_torch_loop_gets_no_warnings(steps_per_epoch: int | None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, optimizer = make()
        scheduler = SEED.as_lr_scheduler(optimizer, steps_per_epoch)
        for _ in range(3 * (steps_per_epoch or 1)):
            train_step(model, optimizer)  # optimizer.step() ...
            scheduler.step()  # ... then scheduler.step(): torch's order
        scheduler.get_last_lr()
        scheduler.get_lr()  # ours computes in closed form: no "use get_last_lr()" warning
    assert [str(w.message) for w in caught] == []


def test_amp_step_loop_gets_no_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, optimizer = make()
        amp = AMPStep(optimizer, precision="fp32", max_grad_norm=0.8)
        scheduler = SEED.as_lr_scheduler(optimizer, steps_per_epoch=2)
        for k in range(1, 7):
            with amp.autocast():
                loss = model(torch.randn(4, 3)).pow(2).mean()
            amp.step(loss)  # calls optimizer.step() inside
            scheduler.step()
            assert lrs(optimizer) == [SEED(k / 2)]
    assert [str(w.message) for w in caught] == []


# --------------------------------------------------------------------- Lightning (docs/interop.md)
def _have_lightning() -> bool:
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(
    not _have_lightning(), reason="lightning is not installed (not a trainkit dependency)"
)
def test_lightning_example_of_docs_interop_runs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The page's one `python no-run` block: schedule, stopper, checkpoint manager and AMP step
    # inside a LightningModule and a Callback; it asserts the best epoch, the step count and
    # that the LR equals sched(epochs run) exactly.
    from test_docs import DOCS, python_blocks

    blocks = [code for _, code, skipped in python_blocks(DOCS / "interop.md") if skipped]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_interop"}
    exec(compile(blocks[0], "docs/interop.md", "exec"), namespace)
    assert namespace["selection"].stopper.epoch >= 1
