"""EarlyStopper against the seed's patience loop; RunningAverage against See et al.'s rule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainkit import EarlyStopper, RunningAverage


class SeedLoop:
    """The seed's early-stopping loop (train_pointer_v45.py, lines 511-547), restated.

    ``best_val_loss = inf``; per epoch (counted from 1): improvement resets the counter,
    anything else increments it and may stop. The contract adds: non-finite values are never
    an improvement, an optional ``min_delta``, and a mirrored ``"max"`` mode.
    """

    def __init__(
        self, patience: int, min_epochs: int, mode: str = "min", min_delta: float = 0.0
    ) -> None:
        self.patience, self.min_epochs, self.mode, self.min_delta = (
            patience,
            min_epochs,
            mode,
            min_delta,
        )
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = None
        self.counter = 0
        self.epoch = 0
        self.stopped = False

    def step(self, value: float) -> bool:
        self.epoch += 1
        if self.mode == "min":
            improved = math.isfinite(value) and value < self.best - self.min_delta
        else:
            improved = math.isfinite(value) and value > self.best + self.min_delta
        if improved:
            self.best = value
            self.best_epoch = self.epoch
            self.counter = 0
        else:
            self.counter += 1
            if self.counter >= self.patience and self.epoch >= self.min_epochs:
                self.stopped = True
        return improved


values = st.one_of(
    st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, 2.0, 1.5, math.nan, math.inf, -math.inf]),
)
configs = st.tuples(
    st.integers(min_value=0, max_value=6),  # patience
    st.integers(min_value=0, max_value=12),  # min_epochs
    st.sampled_from(["min", "max"]),
    st.sampled_from([0.0, 0.0, 0.1, 0.5]),  # min_delta
)


def _compare(stopper: EarlyStopper, ref: SeedLoop, seq: list[float]) -> None:
    for v in seq:
        assert stopper.step(v) is ref.step(v)
        assert stopper.counter == ref.counter
        assert stopper.epoch == ref.epoch
        if ref.best_epoch is not None:
            assert stopper.best == ref.best
            assert stopper.best_epoch == ref.best_epoch
        # should_stop is compared up to and including the seed's break; what happens if a
        # caller keeps stepping after that is not specified.
        assert bool(stopper.should_stop) == ref.stopped
        if ref.stopped:
            break


@settings(max_examples=300, deadline=None)
@given(configs, st.lists(values, max_size=30))
def test_matches_seed_loop(config, seq):
    patience, min_epochs, mode, min_delta = config
    stopper = EarlyStopper(patience=patience, min_epochs=min_epochs, mode=mode, min_delta=min_delta)
    _compare(stopper, SeedLoop(patience, min_epochs, mode, min_delta), seq)


@settings(max_examples=200, deadline=None)
@given(configs, st.lists(values, max_size=30))
def test_max_mode_mirrors_min_mode(config, seq):
    patience, min_epochs, _, min_delta = config
    lo = EarlyStopper(patience=patience, min_epochs=min_epochs, mode="min", min_delta=min_delta)
    hi = EarlyStopper(patience=patience, min_epochs=min_epochs, mode="max", min_delta=min_delta)
    for v in seq:
        assert lo.step(v) is hi.step(-v)
        assert (lo.counter, lo.epoch, lo.best_epoch, bool(lo.should_stop)) == (
            hi.counter,
            hi.epoch,
            hi.best_epoch,
            bool(hi.should_stop),
        )
        if lo.best_epoch:
            assert lo.best == -hi.best
        if lo.should_stop:
            break


def test_seed_setting_patience_5_min_epochs_8():
    # Improves at epochs 1-2, then flat. The counter reaches 5 at epoch 7, but min_epochs
    # holds the stop until epoch 8.
    stopper = EarlyStopper(patience=5, min_epochs=8)
    seq = [3.0, 2.0] + [2.5] * 10
    decisions = []
    for v in seq:
        decisions.append(stopper.step(v))
        if stopper.should_stop:
            break
    assert decisions == [True, True] + [False] * 6
    assert stopper.epoch == 8
    assert stopper.counter == 6
    assert stopper.best == 2.0
    assert stopper.best_epoch == 2


def test_patience_without_min_epochs_stops_exactly_at_patience():
    stopper = EarlyStopper(patience=2)
    assert stopper.step(1.0) is True
    assert stopper.step(1.0) is False  # equal is not an improvement
    assert not stopper.should_stop
    assert stopper.step(0.5) is True  # counter resets
    assert stopper.counter == 0
    assert stopper.step(0.7) is False
    assert not stopper.should_stop
    assert stopper.step(0.6) is False
    assert stopper.should_stop
    assert (stopper.best, stopper.best_epoch, stopper.counter, stopper.epoch) == (0.5, 3, 2, 5)


def test_min_delta_margin():
    stopper = EarlyStopper(patience=10, min_delta=0.5)
    assert stopper.step(2.0) is True
    assert stopper.step(1.5) is False  # 1.5 < 2.0 - 0.5 is False
    assert stopper.step(1.4) is True
    assert stopper.best == 1.4


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_non_finite_is_never_an_improvement(bad, mode):
    stopper = EarlyStopper(patience=3, mode=mode)
    assert stopper.step(bad) is False
    assert stopper.counter == 1
    assert stopper.step(1.0) is True
    assert stopper.step(bad) is False
    assert stopper.best == 1.0
    assert stopper.best_epoch == 2
    assert stopper.counter == 1


def test_nan_streak_triggers_stop():
    stopper = EarlyStopper(patience=2, min_epochs=0)
    stopper.step(1.0)
    stopper.step(math.nan)
    assert not stopper.should_stop
    stopper.step(math.nan)
    assert stopper.should_stop


@settings(max_examples=150, deadline=None)
@given(configs, st.lists(values, max_size=30), st.data())
def test_state_dict_round_trip_mid_sequence(config, seq, data):
    patience, min_epochs, mode, min_delta = config
    split = data.draw(st.integers(min_value=0, max_value=len(seq)))
    kwargs = dict(patience=patience, min_epochs=min_epochs, mode=mode, min_delta=min_delta)
    straight = EarlyStopper(**kwargs)
    interrupted = EarlyStopper(**kwargs)
    for v in seq[:split]:
        straight.step(v)
        interrupted.step(v)

    buf = io.BytesIO()
    torch.save(interrupted.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = EarlyStopper(**kwargs)
    resumed.load_state_dict(state)
    assert (resumed.best_epoch, resumed.counter, resumed.epoch, bool(resumed.should_stop)) == (
        straight.best_epoch,
        straight.counter,
        straight.epoch,
        bool(straight.should_stop),
    )
    for v in seq[split:]:
        assert resumed.step(v) is straight.step(v)
        assert (resumed.best_epoch, resumed.counter, resumed.epoch, bool(resumed.should_stop)) == (
            straight.best_epoch,
            straight.counter,
            straight.epoch,
            bool(straight.should_stop),
        )
        if straight.best_epoch:
            assert resumed.best == straight.best


def test_state_dict_restores_counter_and_best_into_a_default_stopper():
    # A resume that forgets the counter/best is a reported pitfall: check they come back.
    stopper = EarlyStopper(patience=3, min_epochs=0)
    for v in [1.0, 0.5, 0.9, 0.8]:
        stopper.step(v)
    resumed = EarlyStopper(patience=3, min_epochs=0)
    resumed.load_state_dict(stopper.state_dict())
    assert (resumed.best, resumed.best_epoch, resumed.counter, resumed.epoch) == (0.5, 2, 2, 4)
    assert resumed.step(0.7) is False
    assert resumed.should_stop


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(patience=-1), "patience"),
        (dict(min_epochs=-2), "min_epochs"),
        (dict(min_delta=-0.5), "min_delta"),
        (dict(mode="minimum"), "mode"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EarlyStopper(**kwargs)


def test_defaults():
    stopper = EarlyStopper()
    assert stopper.patience == 5
    assert stopper.min_epochs == 0
    assert stopper.mode == "min"
    assert stopper.min_delta == 0.0
    # patience 5, min_epochs 0: stop on the 5th non-improving value
    stopper.step(1.0)
    for _ in range(4):
        stopper.step(2.0)
        assert not stopper.should_stop
    stopper.step(2.0)
    assert stopper.should_stop


# --------------------------------------------------------------------------- RunningAverage


def test_running_average_hand_values():
    ra = RunningAverage()  # decay 0.99, clip 12
    assert ra.update(10.0) == 10.0  # first value as is
    assert ra.is_best
    got = ra.update(20.0)  # 0.99 * 10 + 0.01 * 20 = 10.1
    assert got == pytest.approx(10.1, rel=1e-12)
    assert not ra.is_best
    got = ra.update(0.0)  # 0.99 * 10.1 = 9.999
    assert got == pytest.approx(9.999, rel=1e-12)
    assert ra.is_best
    got = ra.update(9.999)  # 0.99 * 9.999 + 0.01 * 9.999 = 9.999 (not strictly below)
    assert got == pytest.approx(9.999, rel=1e-12)
    got = ra.update(5.0)  # 0.99 * 9.999 + 0.05 = 9.94901
    assert got == pytest.approx(9.94901, rel=1e-12)
    assert ra.is_best


def test_running_average_follows_the_formula_exactly():
    ra = RunningAverage(decay=0.9, clip=100.0)
    avg = None
    for v in [3.0, 1.0, 7.0, 2.5, 0.1]:
        avg = v if avg is None else 0.9 * avg + (1 - 0.9) * v
        avg = min(avg, 100.0)
        assert ra.update(v) == pytest.approx(avg, rel=1e-14)


def test_running_average_clip():
    ra = RunningAverage(decay=0.99, clip=12.0)
    # See et al.'s calc_running_avg_loss clips the first value too
    assert ra.update(20.0) == 12.0
    assert ra.is_best
    assert ra.update(30.0) == 12.0  # 0.99 * 12 + 0.3 = 12.18 -> 12
    assert not ra.is_best  # equal to the earlier average is not below it
    got = ra.update(2.0)  # 0.99 * 12 + 0.02 = 11.9
    assert got == pytest.approx(11.9, rel=1e-12)
    assert ra.is_best


def test_running_average_is_best_means_below_every_earlier_average():
    ra = RunningAverage(decay=0.5, clip=1e9)
    averages = []
    for v in [4.0, 2.0, 8.0, 1.0, 3.0, 0.0, 6.0]:
        avg = ra.update(v)
        assert ra.is_best == all(avg < a for a in averages)
        averages.append(avg)
    # 4, 3, 5.5, 3.25, 3.125, 1.5625, 3.78125
    assert averages == [4.0, 3.0, 5.5, 3.25, 3.125, 1.5625, 3.78125]


def test_running_average_state_dict_round_trip():
    seq = [5.0, 4.0, 6.0, 3.0, 9.0, 1.0, 2.0]
    straight = RunningAverage()
    first = RunningAverage()
    for v in seq[:3]:
        straight.update(v)
        first.update(v)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = RunningAverage()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for v in seq[3:]:
        assert resumed.update(v) == straight.update(v)
        assert resumed.is_best == straight.is_best


def test_running_average_skips_nonfinite_values():
    from trainkit import RunningAverage

    avg = RunningAverage(decay=0.5, clip=12.0)
    assert avg.update(4.0) == 4.0
    assert avg.update(math.nan) == 4.0 and not avg.is_best and avg.nonfinite == 1
    assert avg.update(2.0) == 3.0 and avg.is_best


# --------------------------------------------------------------------------- state errors (the types the docs pass: docs/stopping.md, type-checked with the docs)


@pytest.mark.parametrize(
    "selector", [EarlyStopper(), RunningAverage()], ids=["EarlyStopper", "RunningAverage"]
)
def test_load_state_dict_names_missing_keys_with_a_value_error(selector) -> None:
    state = selector.state_dict()
    del state["best"]
    with pytest.raises(ValueError, match=r"lacks 'best'"):
        type(selector)().load_state_dict(state)
    with pytest.raises(ValueError, match="must be a mapping"):
        type(selector)().load_state_dict([1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------- check, then change (issue 22)
from trainkit.stopping import BestValue  # noqa: E402


def _fed(
    selector: EarlyStopper | RunningAverage | BestValue,
) -> EarlyStopper | RunningAverage | BestValue:
    for value in (3.0, 2.0, 2.5):
        selector.step([value, value - 0.5] if isinstance(selector, RunningAverage) else value)
    return selector


@pytest.mark.parametrize(
    ("make", "key", "bad"),
    [
        (EarlyStopper, "counter", "x"),
        (EarlyStopper, "best", "2.0"),
        (EarlyStopper, "best", math.nan),
        (EarlyStopper, "epoch", -1),
        (EarlyStopper, "should_stop", "no"),
        (EarlyStopper, "patience", -2),
        (EarlyStopper, "min_delta", "x"),
        (RunningAverage, "avg", "x"),
        (RunningAverage, "best", None),
        (RunningAverage, "is_best", 1),
        (RunningAverage, "count", 2.5),
        (RunningAverage, "decay", 1.5),
        (BestValue, "best", "x"),
        (BestValue, "epoch", "3"),
        (BestValue, "mode", "avg"),
    ],
)
def test_a_refused_state_changes_nothing_and_names_the_key(make, key, bad) -> None:
    selector = _fed(make())
    before = selector.state_dict()
    state = {**before, key: bad}
    with pytest.raises(ValueError, match=key) as info:
        selector.load_state_dict(state)
    assert "\n" not in str(info.value)
    assert selector.state_dict() == before
    with pytest.raises(ValueError, match=key):
        selector.check_state_dict(state)


@pytest.mark.parametrize("make", [EarlyStopper, RunningAverage, BestValue])
def test_check_state_dict_accepts_a_saved_state(make) -> None:
    selector = _fed(make())
    fresh = make()
    fresh.check_state_dict(selector.state_dict())
    assert fresh.state_dict() == make().state_dict()  # the check changed nothing
