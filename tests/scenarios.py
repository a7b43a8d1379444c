"""Adversarial scenarios against trainkit's promises: run them all, report what broke.

Run:  python tests/scenarios.py            # every scenario; prints "N tried, all held"
      python tests/scenarios.py -k ckpt    # only scenarios whose name contains "ckpt"
      python tests/scenarios.py -v         # one line per scenario

Each scenario is a small function decorated with ``@scenario``: it gets a fresh temporary
directory, tries one thing an adversarial user (or a failing machine) would do, and raises
(usually ``AssertionError`` via :func:`expect_raises` or ``assert``) when trainkit breaks a
promise of docs/ — a silent wrong number, a traceback where a one-line error is promised,
a lost or deleted file. Returning normally means the promise held. To add scenarios (the
command line, the Trainer, ...) append functions here, or in another module that imports
``scenario`` and is listed in ``MODULES``. docs/reliability.md quotes the count.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainkit import (  # noqa: E402
    AMPStep,
    CheckpointError,
    CheckpointManager,
    EarlyStopper,
    LabelSmoothedNLLLoss,
    RunningAverage,
    WarmupCosineSchedule,
    build_optimizer,
    masked_nll,
)
from trainkit.metrics import RankingMetrics, target_ranks  # noqa: E402

Scenario = Callable[[Path], None]
SCENARIOS: list[Scenario] = []
MODULES: tuple[str, ...] = ("scenarios_state",)  # other scenario modules (importable names)
# Run as a script this module is ``__main__``: the modules above import it as ``scenarios``,
# and must find this same module (and its SCENARIOS list), not a second copy.
sys.modules.setdefault("scenarios", sys.modules[__name__])


def scenario(function: Scenario) -> Scenario:
    """Register ``function`` as a scenario (its docstring's first line is the promise)."""
    SCENARIOS.append(function)
    return function


@contextmanager
def expect_raises(
    kind: type[BaseException] | tuple[type[BaseException], ...], match: str = ""
) -> Iterator[None]:
    """The block must raise ``kind`` with a message matching ``match`` (a regex)."""
    try:
        yield
    except kind as exc:
        if match and not re.search(match, str(exc)):
            raise AssertionError(f"raised {type(exc).__name__} without {match!r}: {exc}") from exc
        return
    raise AssertionError(f"no {kind} raised (expected one matching {match!r})")


def _state(k: int) -> dict[str, Any]:
    return {"step": k, "w": torch.full((4,), float(k))}


def _metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    m = RankingMetrics(num_classes=scores.shape[1])
    m.update(scores, targets)
    return m.compute()


# ----------------------------------------------------------------------------- metrics


@scenario
def metrics_all_nan_scores_give_zero(tmp: Path) -> None:
    """All-NaN log-probs score Acc@1/5/10, NDCG and F1 0 (not 100)."""
    r = _metrics(torch.full((8, 20), math.nan), torch.arange(1, 9))
    assert all(r[k] == 0.0 for k in ("acc@1", "acc@5", "acc@10", "ndcg", "f1")), r


@scenario
def metrics_inf_target_score_is_no_hit(tmp: Path) -> None:
    """A +inf target score is not a hit."""
    scores = torch.zeros(1, 5)
    scores[0, 2] = math.inf
    assert target_ranks(scores, torch.tensor([2])).tolist() == [5]


@scenario
def metrics_neg_inf_target_ranks_last(tmp: Path) -> None:
    """A -inf target score ranks last, even when every class is -inf."""
    assert target_ranks(torch.full((1, 5), -math.inf), torch.tensor([3])).tolist() == [5]


@scenario
def metrics_nan_class_never_predicted(tmp: Path) -> None:
    """A NaN score of another class neither outranks the target nor becomes the F1 prediction."""
    scores = torch.zeros(1, 6)
    scores[0, 0], scores[0, 4] = math.nan, 1.0
    r = _metrics(scores, torch.tensor([4]))
    assert r["acc@1"] == 100.0 and r["f1"] == 100.0, r


@scenario
def metrics_half_nan_batch_through_sums(tmp: Path) -> None:
    """compute_from_sums of all-reduced counters gives the same answer as compute()."""
    scores = torch.randn(10, 7).log_softmax(-1)
    scores[::2] = math.nan
    m = RankingMetrics(num_classes=7)
    m.update(scores, torch.randint(0, 7, (10,)))
    assert RankingMetrics.compute_from_sums(m.sums() * 2)["acc@1"] == m.compute()["acc@1"] <= 50.0


@scenario
def metrics_bad_shapes_refused(tmp: Path) -> None:
    """Scores that are not [N, V], or targets of another length, raise ValueError."""
    with expect_raises(ValueError, "scores must be"):
        target_ranks(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with expect_raises(ValueError, "targets must be"):
        target_ranks(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


@scenario
def metrics_num_classes_mismatch_refused(tmp: Path) -> None:
    """Scores with another V than num_classes raise ValueError."""
    with expect_raises(ValueError, "num_classes"):
        RankingMetrics(num_classes=5).update(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- losses


def _nll_inputs(v: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    log_probs = torch.randn(2, 3, v).log_softmax(-1)
    return log_probs, torch.randint(0, v, (2, 3)), torch.ones(2, 3)


@scenario
def losses_target_equal_to_v_refused(tmp: Path) -> None:
    """masked_nll: target V at a valid step raises ValueError naming the value (no clamping)."""
    log_probs, targets, mask = _nll_inputs()
    targets[1, 2] = 5
    with expect_raises(ValueError, "got 5"):
        masked_nll(log_probs, targets, mask)


@scenario
def losses_huge_id_refused(tmp: Path) -> None:
    """masked_nll: an id near 2**62 at a valid step raises ValueError."""
    log_probs, targets, mask = _nll_inputs()
    targets[0, 0] = 2**62
    with expect_raises(ValueError, str(2**62)):
        masked_nll(log_probs, targets, mask)


@scenario
def losses_negative_id_refused(tmp: Path) -> None:
    """masked_nll: a negative id at a valid step raises ValueError."""
    log_probs, targets, mask = _nll_inputs()
    targets[0, 1] = -3
    with expect_raises(ValueError, "got -3"):
        masked_nll(log_probs, targets, mask)


@scenario
def losses_anything_at_masked_steps(tmp: Path) -> None:
    """masked_nll: masked steps may hold any id and do not change the loss."""
    log_probs, targets, mask = _nll_inputs()
    mask[1, 1:] = 0
    other = targets.clone()
    other[1, 1:] = torch.tensor([2**62, -7])
    assert torch.equal(masked_nll(log_probs, other, mask), masked_nll(log_probs, targets, mask))


@scenario
def losses_all_masked_is_zero(tmp: Path) -> None:
    """masked_nll with every step masked is 0, not NaN."""
    log_probs, targets, _ = _nll_inputs()
    assert masked_nll(log_probs, targets, torch.zeros(2, 3)).item() == 0.0


@scenario
def losses_label_smoothed_out_of_range_refused(tmp: Path) -> None:
    """LabelSmoothedNLLLoss: a non-ignored target >= V raises ValueError."""
    with expect_raises(ValueError, "got 9"):
        LabelSmoothedNLLLoss()(torch.randn(2, 4).log_softmax(-1), torch.tensor([1, 9]))


@scenario
def losses_label_smoothed_all_ignored_is_zero(tmp: Path) -> None:
    """LabelSmoothedNLLLoss with every target ignored is 0, not NaN."""
    assert (
        LabelSmoothedNLLLoss()(
            torch.randn(3, 4).log_softmax(-1), torch.zeros(3, dtype=torch.long)
        ).item()
        == 0.0
    )


@scenario
def losses_label_smoothed_float64_kept(tmp: Path) -> None:
    """LabelSmoothedNLLLoss keeps float64 input in float64 (equal to CrossEntropyLoss to 1e-12)."""
    log_probs = torch.randn(16, 500, dtype=torch.float64).log_softmax(-1)
    targets = torch.randint(1, 500, (16,))
    ours = LabelSmoothedNLLLoss()(log_probs, targets)
    reference = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)(log_probs, targets)
    assert ours.dtype == torch.float64 and abs(ours.item() - reference.item()) < 1e-12


@scenario
def losses_label_smoothed_logits_caught_by_check(tmp: Path) -> None:
    """LabelSmoothedNLLLoss(check_log_probs=True) refuses logits and probabilities."""
    logits = 3 * torch.randn(4, 6)
    for given in (logits, logits.softmax(-1)):
        with expect_raises(ValueError, "expects log-probabilities"):
            LabelSmoothedNLLLoss(check_log_probs=True)(given, torch.tensor([1, 2, 3, 4]))


@scenario
def losses_label_smoothed_from_logits(tmp: Path) -> None:
    """LabelSmoothedNLLLoss(from_logits=True) equals CrossEntropyLoss on logits."""
    logits, targets = 3 * torch.randn(8, 6), torch.randint(0, 6, (8,))
    ours = LabelSmoothedNLLLoss(from_logits=True)(logits, targets)
    assert torch.allclose(
        ours, nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)(logits, targets), atol=1e-6
    )


# ----------------------------------------------------------------------------- schedule


@scenario
def schedule_bad_settings_refused(tmp: Path) -> None:
    """WarmupCosineSchedule refuses NaN base_lr, warmup > total, min_lr > base_lr."""
    for args in ((math.nan, 1, 5), (0.1, 6, 5), (0.1, 1, 5, 0.2), (0.1, -1, 5), (0.1, 1, 0)):
        with expect_raises(ValueError):
            WarmupCosineSchedule(*args)


@scenario
def schedule_bad_position_refused(tmp: Path) -> None:
    """sched(t) refuses a negative or non-finite t."""
    for t in (-1.0, math.nan, math.inf):
        with expect_raises(ValueError):
            WarmupCosineSchedule(0.1, 1, 5)(t)


@scenario
def schedule_groups_keep_their_ratio(tmp: Path) -> None:
    """as_lr_scheduler: groups at 1e-3 and 1e-4 stay a factor 10 apart; base_lrs agrees."""
    params = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1e-3, 1e-4)]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    sched = WarmupCosineSchedule(1e-3, 2, 10)
    scheduler = sched.as_lr_scheduler(optimizer)
    for k in range(1, 6):
        optimizer.step()
        scheduler.step()
        first, second = (g["lr"] for g in optimizer.param_groups)
        assert first == sched(k) and math.isclose(second, first / 10, rel_tol=1e-12)
    assert scheduler.base_lrs == [1e-3, 1e-4]


@scenario
def schedule_zero_first_group_refused(tmp: Path) -> None:
    """as_lr_scheduler refuses a first param group at lr 0 (no ratio exists)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
    with expect_raises(ValueError, "first param group"):
        WarmupCosineSchedule(0.1, 1, 5).as_lr_scheduler(optimizer)


@scenario
def schedule_state_missing_key_refused(tmp: Path) -> None:
    """WarmupCosineSchedule.load_state_dict names a missing key."""
    with expect_raises(ValueError, "'min_lr'"):
        WarmupCosineSchedule(0.1, 1, 5).load_state_dict({"base_lr": 0.1, "warmup": 1, "total": 5})


@scenario
def schedule_other_steps_per_epoch_refused(tmp: Path) -> None:
    """A scheduler state saved with another steps_per_epoch is refused."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = WarmupCosineSchedule(0.1, 1, 5)
    state = sched.as_lr_scheduler(optimizer, steps_per_epoch=4).state_dict()
    with expect_raises(ValueError, "steps_per_epoch"):
        sched.as_lr_scheduler(optimizer, steps_per_epoch=8).load_state_dict(state)


# ----------------------------------------------------------------------------- checkpoint: unsafe state


@dataclasses.dataclass
class _Config:
    lr: float = 0.1


def _unsafe_values() -> dict[str, Any]:
    values: dict[str, Any] = {
        "Path": Path("/data"),
        "dataclass": _Config(),
        "Namespace": argparse.Namespace(lr=0.1),
        "nn.Module": nn.Linear(2, 2),
        "function": len,
        "lambda": lambda: 0,
        "frozenset": frozenset({1}),
    }
    try:
        import numpy as np

        values["np.float64"] = np.float64(0.5)
        values["np.ndarray"] = np.zeros(2)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return values


def _make_unsafe_scenario(label: str) -> Scenario:
    def check(tmp: Path) -> None:
        manager = CheckpointManager(tmp)
        manager.save("last.pt", _state(1))
        with expect_raises(ValueError, r"state\['config'\]\['x'\]: .*weights_only"):
            manager.save("last.pt", {"config": {"x": _unsafe_values()[label]}})
        assert os.listdir(tmp) == ["last.pt"] and manager.load("last.pt")["step"] == 1

    check.__name__ = f"ckpt_unsafe_{label.replace('.', '_').lower()}_refused_before_writing"
    check.__doc__ = (
        f"save() refuses a {label} (its own safe load would), naming the key, before writing."
    )
    return check


for _label in _unsafe_values():
    scenario(_make_unsafe_scenario(_label))


@scenario
def ckpt_unsafe_dict_key_refused(tmp: Path) -> None:
    """save() refuses a Path used as a dict key."""
    with expect_raises(ValueError, "key PosixPath"):
        CheckpointManager(tmp).save("last.pt", {"m": {Path("a"): 1}})


@scenario
def ckpt_safe_globals_round_trip(tmp: Path) -> None:
    """safe_globals=[cls] lets save and load handle that class."""
    manager = CheckpointManager(tmp, safe_globals=[argparse.Namespace])
    manager.save("last.pt", {"args": argparse.Namespace(lr=0.5)})
    assert manager.load("last.pt")["args"].lr == 0.5


# ----------------------------------------------------------------------------- checkpoint: files and state


@scenario
def ckpt_user_files_survive_rotation(tmp: Path) -> None:
    """Rotation leaves a user's pretrained_embeddings.pt and resnet-50.pt alone."""
    for name in ("pretrained_embeddings.pt", "resnet-50.pt"):
        (tmp / name).write_bytes(b"user")
    manager = CheckpointManager(tmp, keep_last=2)
    for k in range(5):
        manager.save(f"epoch-{k:04d}.pt", _state(k))
    assert (tmp / "pretrained_embeddings.pt").exists() and (tmp / "resnet-50.pt").exists()
    assert len(list(tmp.glob("epoch-*.pt"))) == 2


@scenario
def ckpt_user_files_not_resumed_from(tmp: Path) -> None:
    """load_latest() never returns a file the manager does not own."""
    manager = CheckpointManager(tmp)
    manager.save("epoch-0001.pt", _state(1))
    torch.save({"step": 99}, tmp / "someone-elses.pt")
    found = manager.load_latest()
    assert found is not None and found[1]["step"] == 1


@scenario
def ckpt_keep_last_zero_state_refused(tmp: Path) -> None:
    """load_state_dict({'keep_last': 0, ...}) is refused and the next save deletes nothing new."""
    manager = CheckpointManager(tmp)
    with expect_raises(ValueError, "keep_last"):
        manager.load_state_dict({**manager.state_dict(), "keep_last": 0})
    manager.save("epoch-0001.pt", _state(1))
    assert (tmp / "epoch-0001.pt").exists()


@scenario
def ckpt_bad_state_types_refused(tmp: Path) -> None:
    """load_state_dict refuses a str keep_last, a bool, a missing key and a non-mapping."""
    manager = CheckpointManager(tmp)
    for bad in (
        {**manager.state_dict(), "keep_last": "3"},
        {**manager.state_dict(), "keep_last": True},
        {"keep_last": 3},
        [("keep_last", 3)],
    ):
        with expect_raises(ValueError):
            manager.load_state_dict(bad)  # type: ignore[arg-type]


@scenario
def ckpt_name_with_newline_refused(tmp: Path) -> None:
    """A name with a trailing newline, a path separator or a leading dot is refused."""
    for name in ("last.pt\n", "../last.pt", "a/b.pt", ".last.pt", ""):
        with expect_raises(ValueError, "plain file name"):
            CheckpointManager(tmp).save(name, _state(1))


@scenario
def ckpt_pinned_not_listed(tmp: Path) -> None:
    """checkpoints() leaves out best.pt and a pinned bestmodel.pt (docs agree)."""
    manager = CheckpointManager(tmp, pinned=("bestmodel.pt",))
    for name in ("step-1.pt", "best.pt", "bestmodel.pt"):
        manager.save(name, _state(1))
    assert [p.name for p in manager.checkpoints()] == ["step-1.pt"]


@scenario
def ckpt_k_best_never_keeps_nan(tmp: Path) -> None:
    """save_best never keeps a NaN or inf metric."""
    manager = CheckpointManager(tmp, keep_best=2)
    for value in (math.nan, math.inf, -math.inf):
        assert manager.save_best("b.pt", _state(1), value) is None
    assert list(tmp.iterdir()) == []


@scenario
def ckpt_k_best_keeps_k(tmp: Path) -> None:
    """keep_best=2, mode max: the two highest remain on disk, the rest are deleted."""
    manager = CheckpointManager(tmp, keep_best=2, best_mode="max")
    for i, value in enumerate((0.1, 0.5, 0.3, 0.9)):
        manager.save_best(f"b{i}.pt", _state(i), value)
    assert sorted(p.name for p in tmp.iterdir()) == ["b1.pt", "b3.pt"]


@scenario
def ckpt_stray_temp_of_dead_process_removed(tmp: Path) -> None:
    """A temp file left by a dead writer is removed by the next save."""
    stray = tmp / ".trainkit-tmp-last.pt.999999999.deadbeef"
    stray.write_bytes(b"partial")
    CheckpointManager(tmp).save("last.pt", _state(1))
    assert not stray.exists()


@scenario
def ckpt_directory_removed_underneath(tmp: Path) -> None:
    """Saving into a directory deleted after construction raises CheckpointError, not a traceback."""
    manager = CheckpointManager(tmp / "ckpt")
    shutil.rmtree(tmp / "ckpt")
    with expect_raises(CheckpointError, "could not save checkpoint"):
        manager.save("last.pt", _state(1))


# ----------------------------------------------------------------------------- checkpoint: failing disks and bad files


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _writer_failing_with(error: BaseException) -> Callable[..., None]:
    def save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"PK\x03\x04partial")
        raise error

    return save


@scenario
def ckpt_fake_enospc(tmp: Path) -> None:
    """ENOSPC during a save: 'No space left on device' with the path; the old file intact."""
    manager = CheckpointManager(tmp)
    manager.save("last.pt", _state(1))
    with _patched(
        torch, "save", _writer_failing_with(OSError(errno.ENOSPC, "No space left on device"))
    ):
        with expect_raises(CheckpointError, r"last\.pt: No space left on device"):
            manager.save("last.pt", _state(2))
    assert os.listdir(tmp) == ["last.pt"] and manager.load("last.pt")["step"] == 1


@scenario
def ckpt_unexpected_pos_on_full_disk(tmp: Path) -> None:
    """torch's 'unexpected pos' writer error on a full disk says 'No space left on device'."""
    error = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032")
    full = shutil._ntuple_diskusage(10**9, 10**9, 0)  # type: ignore[attr-defined]
    with (
        _patched(torch, "save", _writer_failing_with(error)),
        _patched(shutil, "disk_usage", lambda p: full),
    ):
        with expect_raises(CheckpointError, "No space left on device"):
            CheckpointManager(tmp).save("last.pt", _state(1))
    assert os.listdir(tmp) == []


@scenario
def ckpt_raw_pickle_one_warning(tmp: Path) -> None:
    """A raw pickle as last.pt: exactly one warning, naming the file; the previous checkpoint is used."""
    manager = CheckpointManager(tmp)
    manager.save("step-1.pt", _state(1))
    with open(tmp / "last.pt", "wb") as handle:
        pickle.dump({"step": 2}, handle, protocol=pickle.HIGHEST_PROTOCOL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = manager.load_latest()
    assert found is not None and found[0].name == "step-1.pt"
    assert len(caught) == 1 and "last.pt" in str(caught[0].message), [
        str(w.message) for w in caught
    ]


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


@scenario
def ckpt_malicious_pickle_never_runs(tmp: Path) -> None:
    """A checkpoint whose unpickling would run code is refused and the code never runs."""
    torch.save({"x": _Evil()}, tmp / "last.pt")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with expect_raises(CheckpointError, "safely"):
            CheckpointManager(tmp).load("last.pt")
    finally:
        os.chdir(cwd)
    assert not (tmp / "PWNED").exists()


@scenario
def ckpt_truncated_newest_falls_back(tmp: Path) -> None:
    """A truncated newest checkpoint: one warning, the previous one loads."""
    manager = CheckpointManager(tmp, keep_last=3)
    manager.save("step-1.pt", {"w": torch.randn(64, 64)})
    newest = manager.save("step-2.pt", {"w": torch.randn(64, 64)})
    newest.write_bytes(newest.read_bytes()[:200])
    os.utime(newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert manager.latest() == tmp / "step-1.pt"
    assert len(caught) == 1


@scenario
def ckpt_garbage_empty_and_non_dict_refused(tmp: Path) -> None:
    """Garbage bytes, an empty file and a checkpoint holding a list raise CheckpointError."""
    (tmp / "garbage.pt").write_bytes(os.urandom(300))
    (tmp / "empty.pt").write_bytes(b"")
    torch.save([1, 2], tmp / "list.pt")
    for name in ("garbage.pt", "empty.pt", "list.pt"):
        with expect_raises(CheckpointError):
            CheckpointManager(tmp).load(name)


@scenario
def ckpt_missing_file_is_file_not_found(tmp: Path) -> None:
    """load() of a missing name raises FileNotFoundError naming it."""
    with expect_raises(FileNotFoundError, "nothing.pt"):
        CheckpointManager(tmp).load("nothing.pt")


# ----------------------------------------------------------------------------- AMP


def _amp_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@scenario
def amp_fp16_cuda_without_cuda_refused(tmp: Path) -> None:
    """AMPStep('fp16', device_type='cuda') without CUDA is refused at construction."""
    if torch.cuda.is_available():
        return  # the promise is about machines without CUDA
    with expect_raises(ValueError, "CUDA"):
        AMPStep(_amp_model()[1], "fp16", device_type="cuda")


@scenario
def amp_backward_twice_explained(tmp: Path) -> None:
    """loss.backward() and then amp.step(loss): the error says what happened."""
    model, optimizer = _amp_model()
    loss = model(torch.randn(3, 4)).pow(2).mean()
    loss.backward()
    with expect_raises(RuntimeError, r"loss\.backward\(\) before amp\.step"):
        AMPStep(optimizer, "fp32").step(loss)


@scenario
def amp_non_scalar_loss_refused(tmp: Path) -> None:
    """amp.step of a non-scalar loss raises ValueError."""
    model, optimizer = _amp_model()
    with expect_raises(ValueError, "scalar"):
        AMPStep(optimizer, "fp32").step(model(torch.randn(3, 4)))


@scenario
def amp_bad_settings_refused(tmp: Path) -> None:
    """AMPStep refuses precision 'fp8', max_grad_norm NaN, accumulation_steps 0."""
    optimizer = _amp_model()[1]
    for kwargs in ({"precision": "fp8"}, {"max_grad_norm": math.nan}, {"accumulation_steps": 0}):
        with expect_raises(ValueError):
            AMPStep(optimizer, **kwargs)


@scenario
def amp_fp16_overflow_skipped(tmp: Path) -> None:
    """An inf loss under fp16 is skipped and the weights do not change."""
    model, optimizer = _amp_model()
    amp = AMPStep(optimizer, "fp16", device_type="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    info = amp.step(model(torch.randn(3, 4)).float().pow(2).mean() * math.inf)
    assert info.skipped and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@scenario
def amp_accumulation_steps_every_k(tmp: Path) -> None:
    """accumulation_steps=3: the optimizer steps on calls 3 and 6 only."""
    model, optimizer = _amp_model()
    amp = AMPStep(optimizer, "fp32", accumulation_steps=3)
    stepped = [amp.step(model(torch.randn(2, 4)).pow(2).mean()).stepped for _ in range(6)]
    assert stepped == [False, False, True, False, False, True]


@scenario
def amp_state_of_other_precision_refused(tmp: Path) -> None:
    """An AMPStep state of another precision or accumulation is refused."""
    optimizer = _amp_model()[1]
    with expect_raises(ValueError, "precision"):
        AMPStep(optimizer, "fp32").load_state_dict(
            AMPStep(optimizer, "fp16", device_type="cpu").state_dict()
        )
    with expect_raises(ValueError, "accumulation_steps"):
        AMPStep(optimizer, "fp32").load_state_dict(
            AMPStep(optimizer, "fp32", accumulation_steps=2).state_dict()
        )


# ----------------------------------------------------------------------------- stopping and optimizers


@scenario
def stopping_nan_never_improves(tmp: Path) -> None:
    """EarlyStopper: a NaN/inf value is never a new best."""
    stopper = EarlyStopper(patience=1)
    stopper.step(1.0)
    assert not stopper.step(math.nan) and not stopper.step(-math.inf) and stopper.best == 1.0


@scenario
def stopping_running_average_skips_nan(tmp: Path) -> None:
    """RunningAverage does not fold a NaN into the average."""
    average = RunningAverage()
    average.update(torch.tensor(2.0))
    assert average.update(math.nan) == 2.0 and not average.is_best


@scenario
def optim_unknown_name_refused(tmp: Path) -> None:
    """build_optimizer('sgd') raises ValueError listing the names."""
    with expect_raises(ValueError, "adagrad"):
        build_optimizer(nn.Linear(2, 2), "sgd")


@scenario
def optim_no_parameters_refused(tmp: Path) -> None:
    """build_optimizer with no parameters raises ValueError."""
    with expect_raises(ValueError, "no parameters"):
        build_optimizer([], "adamw")


# ----------------------------------------------------------------------------- runner


def _load_modules() -> None:
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    for name in MODULES:
        importlib.import_module(name)


def run(selected: list[Scenario], verbose: bool = False) -> list[tuple[str, str]]:
    """Run scenarios; return (name, reason) for each that broke."""
    broken: list[tuple[str, str]] = []
    for function in selected:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                function(Path(tmp))
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                lines = traceback.format_exception_only(type(exc), exc)
                broken.append((function.__name__, lines[-1].strip()))
                if verbose:
                    print(f"BROKE {function.__name__}: {lines[-1].strip()}")
                continue
        if verbose:
            print(f"held  {function.__name__}")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only scenarios whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    _load_modules()
    selected = [s for s in SCENARIOS if args.k in s.__name__]
    broken = run(selected, args.verbose)
    if not broken:
        print(f"{len(selected)} tried, all held")
        return 0
    print(f"{len(selected)} tried, {len(broken)} broke:")
    for name, reason in broken:
        doc = next(s for s in selected if s.__name__ == name).__doc__ or ""
        print(f"- {name}: {doc.strip().splitlines()[0] if doc.strip() else ''}\n    {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
