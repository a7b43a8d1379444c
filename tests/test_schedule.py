"""WarmupCosineSchedule against the seed's ``_get_lr(epoch)`` and the design contract."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trainkit import WarmupCosineSchedule


def seed_get_lr(epoch: int, base_lr: float, warmup: int, total: int, min_lr: float) -> float:
    """The seed's ``_get_lr`` (train_pointer_v45.py, lines 372-378), restated verbatim."""
    if epoch < warmup:
        return base_lr * (epoch + 1) / warmup
    progress = (epoch - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def one_ulp_above(x: float) -> float:
    # The seed's own formula can land one ulp above base_lr at its peak: at t = warmup - 1
    # base_lr * warmup / warmup rounds twice, and at t = warmup min_lr + (base_lr - min_lr)
    # rounds twice. Each is within one ulp of base_lr (two roundings of relative error <= 2**-53
    # each), and the contract asks for exact equality with the seed on integer epochs, so the
    # "never exceeds base_lr" bound can only hold up to that one ulp.
    return math.nextafter(x, math.inf)


@st.composite
def schedules(draw, min_warmup: int = 0):
    base_lr = draw(st.floats(min_value=1e-7, max_value=10.0, allow_nan=False, allow_infinity=False))
    total = draw(st.integers(min_value=1, max_value=200))
    warmup = draw(st.integers(min_value=min_warmup, max_value=total))
    min_lr = draw(
        st.one_of(
            st.just(0.0),
            st.just(base_lr),
            st.floats(min_value=0.0, max_value=base_lr, allow_nan=False, allow_infinity=False),
        )
    )
    return base_lr, warmup, total, min_lr


# --------------------------------------------------------------------------- seed equality


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_equals_seed_on_integer_epochs(args):
    base_lr, warmup, total, min_lr = args
    sched = WarmupCosineSchedule(base_lr, warmup, total, min_lr)
    # t == total with warmup == total: the seed gives base_lr (progress 0), the contract says
    # t >= total holds min_lr. Those two sentences of the spec disagree there, so the seed
    # comparison stops before total in that one case; test_holds_min_lr_from_total covers it.
    last = total if warmup < total else total - 1
    for t in range(0, last + 1):
        got = sched(t)
        want = seed_get_lr(t, base_lr, warmup, total, min_lr)
        assert isinstance(got, float)
        assert got == want, (t, got, want)


def test_seed_defaults_hand_values():
    sched = WarmupCosineSchedule(6.5e-4, 5, 50, 1e-6)
    assert sched(0) == 1.3e-4
    assert sched(1) == pytest.approx(2.6e-4, rel=1e-12)
    assert sched(4) == 6.5e-4
    assert sched(5) == 6.5e-4  # cosine start: progress 0
    # midpoint of the cosine: progress 0.5, cos = 0 (to rounding): min + (base - min) / 2
    assert sched(27.5) == pytest.approx(1e-6 + 0.5 * (6.5e-4 - 1e-6), rel=1e-12)
    assert sched(50) == 1e-6
    for t in range(51):
        assert sched(t) == seed_get_lr(t, 6.5e-4, 5, 50, 1e-6)


def test_warmup_does_not_start_at_zero_and_seam_has_no_off_by_one():
    sched = WarmupCosineSchedule(1.0, 4, 10, 0.0)
    assert [sched(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert sched(4) == 1.0  # first cosine epoch: still the peak
    assert sched(5) < 1.0


def test_warmup_zero_is_pure_cosine():
    sched = WarmupCosineSchedule(0.1, 0, 10, 0.001)
    for t in range(11):
        assert sched(t) == 0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * t / 10))
    assert sched(0) == pytest.approx(0.1, rel=1e-15)
    assert sched(10) == 0.001
    # halfway through the cosine
    assert sched(5) == pytest.approx(0.001 + 0.5 * 0.099, rel=1e-12)


# --------------------------------------------------------------------------- bounds & shape

# Positions are drawn as t = k / steps_per_epoch, the per-step positions a loop passes
# (t = epoch + step / steps_per_epoch), so distinct positions are at least 1/1000 epoch apart.


@settings(max_examples=300, deadline=None)
@given(
    schedules(),
    st.integers(min_value=0, max_value=250 * 1000),
    st.sampled_from([1, 2, 3, 7, 64, 1000]),
)
def test_bounds(args, k, steps_per_epoch):
    base_lr, warmup, total, min_lr = args
    sched = WarmupCosineSchedule(base_lr, warmup, total, min_lr)
    t = k / steps_per_epoch
    lr = sched(t)
    assert lr <= one_ulp_above(base_lr)
    if t < warmup:
        assert lr > 0
        # strictly on the ramp (before the last integer warmup epoch) there is no rounding slack
        if t + 1 < warmup:
            assert lr < base_lr
    else:
        assert lr >= min_lr


@settings(max_examples=300, deadline=None)
@given(
    schedules(),
    st.integers(min_value=0, max_value=100_000),
    st.integers(min_value=0, max_value=100_000),
    st.sampled_from([1, 2, 3, 7, 64, 1000]),
)
def test_monotone_warmup_rise_and_cosine_fall(args, a, b, steps_per_epoch):
    base_lr, warmup, total, min_lr = args
    sched = WarmupCosineSchedule(base_lr, warmup, total, min_lr)
    t1, t2 = sorted((a / steps_per_epoch, b / steps_per_epoch))
    assume(t1 != t2)
    lr1, lr2 = sched(t1), sched(t2)
    if t2 < warmup:  # warmup: rises (strictly on the ramp, flat on the capped last epoch)
        assert lr1 <= lr2
        if t2 <= warmup - 1:
            assert lr1 < lr2
    elif t1 >= warmup:  # cosine and the min_lr tail: never rises
        assert lr1 >= lr2
        if t2 <= total and min_lr <= base_lr / 2:
            assert lr1 > lr2


def test_warmup_cosine_seam_is_at_the_peak():
    # At the seam the seed's two formulas each give base_lr up to their own rounding.
    for base_lr, warmup, total, min_lr in [
        (6.5e-4, 5, 50, 1e-6),
        (0.4810498669763799, 3, 9, 0.15106670460766922),
    ]:
        sched = WarmupCosineSchedule(base_lr, warmup, total, min_lr)
        ulp = math.ulp(base_lr)
        assert abs(sched(warmup - 1) - base_lr) <= ulp
        assert abs(sched(warmup - 0.5) - base_lr) <= ulp
        assert abs(sched(warmup) - base_lr) <= ulp
        assert sched(warmup + 0.5) < base_lr - ulp


def test_fractional_warmup_ramp_is_capped():
    sched = WarmupCosineSchedule(1.0, 4, 10, 0.0)
    # the raw seed formula at t = 3.5 would be 4.5 / 4 = 1.125
    for t in (3.0, 3.25, 3.5, 3.999):
        assert sched(t) == 1.0
    assert sched(2.5) == pytest.approx(0.875, rel=1e-15)


@settings(max_examples=200, deadline=None)
@given(schedules(), st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_holds_min_lr_from_total(args, extra):
    base_lr, warmup, total, min_lr = args
    sched = WarmupCosineSchedule(base_lr, warmup, total, min_lr)
    assert sched(total) == min_lr
    assert sched(total + extra) == min_lr
    assert sched(total + 1) == min_lr


def test_past_total_does_not_rise_like_the_seed():
    sched = WarmupCosineSchedule(6.5e-4, 5, 50, 1e-6)
    assert seed_get_lr(60, 6.5e-4, 5, 50, 1e-6) > 1e-6  # the seed formula climbs back
    assert sched(60) == 1e-6


def test_is_pure():
    sched = WarmupCosineSchedule(0.3, 3, 20, 0.01)
    a = [sched(t / 4) for t in range(100)]
    b = [sched(t / 4) for t in reversed(range(100))][::-1]
    assert a == b


# --------------------------------------------------------------------------- apply


@pytest.mark.filterwarnings("ignore:warmup=.* gives no warmup per step")  # tested below
@settings(max_examples=50, deadline=None)
@given(schedules(), st.floats(min_value=0.0, max_value=300.0, allow_nan=False))
def test_apply_sets_every_group(args, t):
    base_lr, warmup, total, min_lr = args
    sched = WarmupCosineSchedule(base_lr, warmup, total, min_lr)
    w1 = torch.nn.Parameter(torch.zeros(2))
    w2 = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [w1], "lr": 123.0}, {"params": [w2], "lr": 456.0}], lr=7.0)
    ret = sched.apply(opt, t)
    assert ret == sched(t)
    assert [g["lr"] for g in opt.param_groups] == [ret, ret]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, name, shown",
    [
        (dict(base_lr=0.0, warmup=5, total=50, min_lr=0.0), "base_lr", "0.0"),
        (dict(base_lr=-0.25, warmup=5, total=50, min_lr=0.0), "base_lr", "-0.25"),
        (dict(base_lr=0.5, warmup=5, total=50, min_lr=-0.125), "min_lr", "-0.125"),
        (dict(base_lr=0.5, warmup=5, total=50, min_lr=0.75), "min_lr", "0.75"),
        (dict(base_lr=0.5, warmup=-3, total=50, min_lr=0.0), "warmup", "-3"),
        (dict(base_lr=0.5, warmup=0, total=0, min_lr=0.0), "total", "0"),
        (dict(base_lr=0.5, warmup=0, total=-7, min_lr=0.0), "total", "-7"),
        (dict(base_lr=0.5, warmup=51, total=50, min_lr=0.0), "warmup", "51"),
        (dict(base_lr=math.inf, warmup=5, total=50, min_lr=0.0), "base_lr", "inf"),
        (dict(base_lr=math.nan, warmup=5, total=50, min_lr=0.0), "base_lr", "nan"),
        (dict(base_lr=0.5, warmup=5, total=50, min_lr=math.nan), "min_lr", "nan"),
        (dict(base_lr=0.5, warmup=math.inf, total=50, min_lr=0.0), "warmup", "inf"),
        (dict(base_lr=0.5, warmup=5, total=math.inf, min_lr=0.0), "total", "inf"),
        (dict(base_lr=0.5, warmup=5, total=math.nan, min_lr=0.0), "total", "nan"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name, shown):
    with pytest.raises(ValueError) as excinfo:
        WarmupCosineSchedule(**kwargs)
    msg = str(excinfo.value)
    assert name in msg
    assert shown in msg


def test_positional_signature_and_min_lr_default():
    sched = WarmupCosineSchedule(0.5, 2, 10)
    assert sched(10) == 0.0
    assert sched(0) == 0.25


# ------------------------------------------------------------ as_lr_scheduler and param groups


def _groups_optimizer(lrs: list[float]) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(params, lr=lrs[0])


def test_as_lr_scheduler_groups_keep_their_ratio_and_base_lrs_agree() -> None:
    sched = WarmupCosineSchedule(1e-3, warmup=2, total=10, min_lr=1e-5)
    optimizer = _groups_optimizer([1e-3, 1e-4])  # a backbone at a tenth of the head
    scheduler = sched.as_lr_scheduler(optimizer)
    assert scheduler.base_lrs == [1e-3, 1e-3 * 0.1]
    for k in range(1, 13):
        optimizer.step()
        scheduler.step()
        head, backbone = (group["lr"] for group in optimizer.param_groups)
        assert head == sched(k)  # exact for the first group
        assert backbone == pytest.approx(sched(k) / 10, rel=1e-12)


def test_as_lr_scheduler_in_a_chained_scheduler_behaves_like_lambda_lr() -> None:
    sched = WarmupCosineSchedule(0.1, warmup=3, total=12, min_lr=1e-3)
    ours_opt, ref_opt = _groups_optimizer([0.1, 0.02]), _groups_optimizer([0.1, 0.02])
    ours = torch.optim.lr_scheduler.ChainedScheduler(
        [
            sched.as_lr_scheduler(ours_opt),
            torch.optim.lr_scheduler.ExponentialLR(ours_opt, gamma=0.9),
        ]
    )
    ref = torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda t: sched(t) / sched.base_lr),
            torch.optim.lr_scheduler.ExponentialLR(ref_opt, gamma=0.9),
        ]
    )
    for _ in range(15):
        ours_opt.step()
        ref_opt.step()
        ours.step()
        ref.step()
        assert [g["lr"] for g in ours_opt.param_groups] == pytest.approx(
            [g["lr"] for g in ref_opt.param_groups]
        )


def test_as_lr_scheduler_refuses_a_first_group_at_lr_zero() -> None:
    with pytest.raises(ValueError, match="first param group's lr"):
        WarmupCosineSchedule(0.1, 1, 5).as_lr_scheduler(_groups_optimizer([0.0, 0.1]))


def test_as_lr_scheduler_refuses_a_state_for_other_groups() -> None:
    sched = WarmupCosineSchedule(0.1, 1, 5)
    state = sched.as_lr_scheduler(_groups_optimizer([0.1, 0.01])).state_dict()
    with pytest.raises(ValueError, match="param groups"):
        sched.as_lr_scheduler(_groups_optimizer([0.1])).load_state_dict(state)
    with pytest.raises(ValueError, match="last_epoch"):
        sched.as_lr_scheduler(_groups_optimizer([0.1])).load_state_dict({"steps_per_epoch": None})


def test_schedule_load_state_dict_names_missing_keys() -> None:
    sched = WarmupCosineSchedule(0.1, 1, 5)
    with pytest.raises(ValueError, match="'total'"):
        sched.load_state_dict({"base_lr": 0.1, "warmup": 1, "min_lr": 0.0})


# ---------------------------------------------------------------- warmup per step (issue 24)


def _no_warning(call) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call()


@pytest.mark.parametrize("warmup", [1, 0.5])
def test_step_mode_warns_when_the_warmup_cannot_ramp(warmup: float) -> None:
    sched = WarmupCosineSchedule(0.1, warmup, 5)
    assert sched(0) == sched(0.25) == 0.1  # the reference ramp starts at the peak
    with pytest.warns(UserWarning, match=f"warmup={warmup!r} gives no warmup per step"):
        sched.as_lr_scheduler(_groups_optimizer([0.1]), steps_per_epoch=4)
    with pytest.warns(UserWarning, match="HF and timm ramp up from 0"):
        sched.apply(_groups_optimizer([0.1]), 0.25)


def test_epoch_mode_and_real_ramps_do_not_warn() -> None:
    one = WarmupCosineSchedule(0.1, 1, 5)  # per epoch: exactly the seed, nothing to announce
    _no_warning(lambda: one.as_lr_scheduler(_groups_optimizer([0.1])))
    _no_warning(lambda: one.apply(_groups_optimizer([0.1]), 2))
    for warmup in (0, 2, 5):
        sched = WarmupCosineSchedule(0.1, warmup, 5)
        _no_warning(lambda s=sched: s.as_lr_scheduler(_groups_optimizer([0.1]), steps_per_epoch=4))
        _no_warning(lambda s=sched: s.apply(_groups_optimizer([0.1]), 0.25))


def test_step_mode_ramp_is_the_seed_ramp_between_epochs() -> None:
    """Per step the warmup interpolates the seed's per-epoch values and starts at base_lr / W."""
    sched = WarmupCosineSchedule(1.0, 5, 50)
    for epoch in range(4):
        for step in range(4):
            t = epoch + step / 4
            assert sched(t) == pytest.approx((t + 1) / 5)
    assert sched(4) == sched(4.5) == 1.0  # the last warmup epoch is flat at the peak
