"""CheckpointManager: round trips, safe loading, rotation, timing, corrupt files, crashes."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from trainkit import CheckpointManager

SRC = Path(__file__).resolve().parent.parent / "src"


def _state(k: int) -> dict:
    return {"step": k, "w": torch.full((4, 4), float(k))}


# --------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    mgr = CheckpointManager(tmp_path)
    state = {
        "model": {"weight": torch.randn(3, 5), "bias": torch.arange(5, dtype=torch.int64)},
        "epoch": 7,
        "best": 0.125,
        "name": "proposed",
        "flags": [True, False, None],
        "betas": (0.9, 0.98),
        "half": torch.ones(2, dtype=torch.float16),
    }
    path = mgr.save("best.pt", state)
    assert Path(path) == tmp_path / "best.pt"
    assert Path(path).is_file()

    loaded = mgr.load()  # default name: best.pt
    assert set(loaded) == set(state)
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert torch.equal(loaded["model"]["bias"], state["model"]["bias"])
    assert loaded["model"]["bias"].dtype == torch.int64
    assert loaded["half"].dtype == torch.float16
    assert loaded["epoch"] == 7
    assert loaded["best"] == 0.125
    assert loaded["name"] == "proposed"
    assert loaded["flags"] == [True, False, None]
    assert tuple(loaded["betas"]) == (0.9, 0.98)

    again = mgr.load("best.pt", map_location="cpu")
    assert torch.equal(again["model"]["weight"], state["model"]["weight"])
    # the file is a plain torch checkpoint any safe loader can read
    plain = torch.load(tmp_path / "best.pt", weights_only=True)
    assert plain["epoch"] == 7


def test_overwrite_replaces_content(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save("last.pt", _state(1))
    mgr.save("last.pt", _state(2))
    loaded = mgr.load("last.pt")
    assert loaded["step"] == 2
    assert torch.equal(loaded["w"], torch.full((4, 4), 2.0))


def test_no_temp_files_left_after_saves(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    for k in range(4):
        mgr.save("last.pt", _state(k))
        mgr.save(f"step-{k:04d}.pt", _state(k))
    mgr.save("best.pt", _state(9))
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"] + [
        f"step-{k:04d}.pt" for k in range(4)
    ]


def test_missing_file_raises(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(FileNotFoundError):
        mgr.load("nope.pt")


# --------------------------------------------------------------------------- safe loading


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_is_refused(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    mgr = CheckpointManager(ckpt_dir)
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Evil(marker)}, ckpt_dir / "best.pt")

    with pytest.raises(Exception):
        mgr.load("best.pt")
    assert not marker.exists()
    with pytest.raises(Exception):
        mgr.load()
    assert not marker.exists()
    # latest() must not unpickle it unsafely either
    torch.save({"payload": _Evil(marker)}, ckpt_dir / "step-0001.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mgr.latest() is None
    assert not marker.exists()


def test_malicious_pickle_control_really_runs_code_when_loaded_unsafely(tmp_path):
    # Control for the test above: the same file DOES execute its payload when loaded with
    # weights_only=False, so "no marker" above means the manager refused it.
    marker = tmp_path / "pwned"
    torch.save({"payload": _Evil(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- rotation


def test_keep_last_rotation_never_touches_best_and_last(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save("best.pt", _state(0))
    mgr.save("last.pt", _state(0))
    for k in range(1, 6):
        mgr.save(f"step-{k:04d}.pt", _state(k))
        mgr.save("last.pt", _state(k))
        if k % 2:
            mgr.save("best.pt", _state(k))
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt", "step-0004.pt", "step-0005.pt"]
    assert mgr.load("step-0005.pt")["step"] == 5
    assert mgr.load("best.pt")["step"] == 5
    assert mgr.load("last.pt")["step"] == 5


def test_default_keep_last_is_three(tmp_path):
    mgr = CheckpointManager(tmp_path)
    for k in range(1, 8):
        mgr.save(f"epoch-{k:03d}.pt", _state(k))
    assert sorted(os.listdir(tmp_path)) == ["epoch-005.pt", "epoch-006.pt", "epoch-007.pt"]


def test_rotation_keeps_the_newest_saves_even_when_mtimes_tie(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for k in (8, 9, 10):
        mgr.save(f"step-{k}.pt", _state(k))
    # Simulate a coarse-timestamp filesystem: all three saves landed within one tick.
    tick = os.stat(tmp_path / "step-8.pt").st_mtime_ns
    for k in (8, 9, 10):
        os.utime(tmp_path / f"step-{k}.pt", ns=(tick, tick))
    mgr.save("step-11.pt", _state(11))
    assert sorted(os.listdir(tmp_path)) == ["step-10.pt", "step-11.pt", "step-9.pt"]


# --------------------------------------------------------------------------- every_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_seconds_due_with_fake_clock(tmp_path):
    clock = FakeClock()
    mgr = CheckpointManager(tmp_path, keep_last=3, every_seconds=60, clock=clock)
    assert not mgr.due()
    clock.now += 59.5
    assert not mgr.due()
    clock.now += 0.5
    assert mgr.due()
    mgr.save("ckpt-0001.pt", _state(1))
    assert not mgr.due()
    clock.now += 30
    assert not mgr.due()
    clock.now += 45
    assert mgr.due()
    assert mgr.due()  # asking does not reset the timer
    mgr.save("ckpt-0002.pt", _state(2))
    assert not mgr.due()


def test_due_is_false_without_every_seconds(tmp_path):
    clock = FakeClock()
    mgr = CheckpointManager(tmp_path, clock=clock)
    clock.now += 1e6
    assert not mgr.due()


# --------------------------------------------------------------------------- latest()


def test_latest_skips_truncated_newest_with_a_warning(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    for k in (1, 2, 3):
        mgr.save(f"step-{k:04d}.pt", {"step": k, "w": torch.randn(64, 64)})
    newest = tmp_path / "step-0003.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a torn write, as a non-atomic save leaves
    os.utime(newest)  # and it is the newest file

    with pytest.warns(Warning, match="step-0003"):
        found = mgr.latest()
    assert found is not None
    assert Path(found).name == "step-0002.pt"
    assert mgr.load(Path(found).name)["step"] == 2
    with pytest.raises(Exception):
        mgr.load("step-0003.pt")


def test_latest_skips_garbage_file(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    mgr.save("step-0001.pt", _state(1))
    garbage = tmp_path / "step-0002.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    os.utime(garbage)
    with pytest.warns(Warning):
        found = mgr.latest()
    assert Path(found).name == "step-0001.pt"


def test_latest_returns_newest_when_all_good(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    assert mgr.latest() is None
    for k in (1, 2, 3):
        mgr.save(f"step-{k:04d}.pt", _state(k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = mgr.latest()
    assert Path(found).name == "step-0003.pt"


# --------------------------------------------------------------------------- crash safety

N = 1024  # a 4 MiB tensor: a write takes long enough that a kill often lands inside one

_CHILD = textwrap.dedent(
    f"""
    import sys
    import torch
    from trainkit import CheckpointManager

    mgr = CheckpointManager(sys.argv[1], keep_last=3)
    k = 0
    while True:
        k += 1
        state = {{"step": k, "w": torch.full(({N}, {N}), float(k))}}
        mgr.save("last.pt", state)
        if k % 5 == 0:
            mgr.save(f"step-{{k:08d}}.pt", state)
        if k == 1:
            print("saved", flush=True)
    """
)


def _assert_consistent(state: dict) -> int:
    k = state["step"]
    assert isinstance(k, int) and k >= 1
    assert state["w"].shape == (N, N)
    assert torch.equal(state["w"], torch.full((N, N), float(k)))
    return k


@pytest.mark.parametrize("rep", range(4))
def test_sigkill_mid_save_leaves_a_consistent_file(tmp_path, rep):
    delay = random.Random().uniform(0.0, 0.3)  # a random moment; any moment must be safe
    ckpt_dir = tmp_path / "ckpt"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "child never completed its first save"
        line = proc.stdout.readline()
        assert line.strip() == b"saved", proc.stderr.read().decode()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    mgr = CheckpointManager(ckpt_dir, keep_last=3)
    k_last = _assert_consistent(mgr.load("last.pt"))
    # every visible checkpoint is complete, so latest() has nothing to skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        newest = mgr.latest()
    assert newest is not None
    _assert_consistent(mgr.load(Path(newest).name))
    for name in os.listdir(ckpt_dir):
        if name.endswith(".pt") and not name.startswith("."):
            assert _assert_consistent(mgr.load(name)) <= k_last + 1

    # the next save removes whatever temp file the killed process left behind
    mgr.save("last.pt", _state(k_last + 100))
    leftovers = [n for n in os.listdir(ckpt_dir) if n != "last.pt" and not n.startswith("step-")]
    assert leftovers == []
    assert all(n.endswith(".pt") for n in os.listdir(ckpt_dir))
    assert mgr.load("last.pt")["step"] == k_last + 100


_CHILD_DIES_BEFORE_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from trainkit import CheckpointManager

    mgr = CheckpointManager(sys.argv[1], keep_last=3)
    mgr.save("last.pt", {"step": 1, "w": torch.full((8, 8), 1.0)})
    # Die at the worst moment the design names: the temp file is written, the rename
    # (os.replace) has not happened yet.
    os.replace = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    mgr.save("last.pt", {"step": 2, "w": torch.full((8, 8), 2.0)})
    """
)


def test_kill_before_rename_keeps_old_file_and_next_save_removes_the_temp(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    script = tmp_path / "child.py"
    script.write_text(_CHILD_DIES_BEFORE_RENAME)
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt_dir)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    names = os.listdir(ckpt_dir)
    assert "last.pt" in names
    assert len(names) == 2, names  # last.pt and the dead save's temp file
    mgr = CheckpointManager(ckpt_dir)
    loaded = mgr.load("last.pt")
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.full((8, 8), 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Path(mgr.latest()).name == "last.pt"  # the temp file is not a checkpoint

    mgr.save("last.pt", _state(3))
    assert os.listdir(ckpt_dir) == ["last.pt"]
    assert mgr.load("last.pt")["step"] == 3


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, name", [(dict(keep_last=0), "keep_last"), (dict(every_seconds=0), "every_seconds")]
)
def test_invalid_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        CheckpointManager(tmp_path, **kwargs)


def test_stray_temp_files_of_dead_processes_are_removed_but_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_pid = os.getppid()  # our parent process is alive while the test runs
    stale = tmp_path / f".trainkit-tmp-last.pt.{dead.pid}.deadbeef"
    in_flight = tmp_path / f".trainkit-tmp-last.pt.{live_pid}.cafef00d"
    stale.write_bytes(b"partial")
    in_flight.write_bytes(b"partial")
    CheckpointManager(tmp_path).save("last.pt", _state(1))
    assert not stale.exists()
    assert in_flight.exists()  # another live process may still be writing it


def test_latest_skips_pinned_best_model_files(tmp_path):
    mgr = CheckpointManager(tmp_path, pinned=("bestmodel.pt",))
    mgr.save("step-1.pt", _state(1))
    mgr.save("bestmodel.pt", _state(2))  # newer, but a best-model file, not a resume point
    assert mgr.latest() == tmp_path / "step-1.pt"


# --------------------------------------------------------------------------- state a safe load would refuse

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import errno  # noqa: E402
import io  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402

from trainkit import CheckpointError  # noqa: E402


@dataclasses.dataclass
class Config:
    lr: float = 0.1


Pair = __import__("collections").namedtuple("Pair", "x y")


def _unsafe_values() -> list[tuple[str, object, str]]:
    np = pytest.importorskip("numpy")
    return [
        ("path", Path("/tmp/x"), "PosixPath"),
        ("dataclass", Config(), "Config"),
        ("namespace", argparse.Namespace(lr=0.1), "Namespace"),
        ("numpy scalar", np.float64(0.5), "float64"),
        ("module", torch.nn.Linear(2, 2), "Linear"),
    ]


@pytest.mark.parametrize(
    "index", range(5), ids=["path", "dataclass", "namespace", "numpy", "module"]
)
def test_save_refuses_what_its_own_safe_load_would_refuse_before_writing(tmp_path, index):
    _label, value, type_name = _unsafe_values()[index]
    mgr = CheckpointManager(tmp_path)
    mgr.save("last.pt", _state(1))
    with pytest.raises(
        ValueError, match=rf"state\['config'\]\['deep'\]\[1\]: .*{type_name}.*weights_only"
    ):
        mgr.save("last.pt", {"step": 2, "config": {"deep": [0, value]}})
    assert os.listdir(tmp_path) == ["last.pt"]  # nothing written, no temp file
    assert mgr.load("last.pt")["step"] == 1


def test_save_refuses_an_unsafe_dict_key(tmp_path):
    with pytest.raises(ValueError, match="key PosixPath"):
        CheckpointManager(tmp_path).save("last.pt", {"paths": {Path("a"): 1}})


def _loads_weights_only(value: object) -> bool:
    buffer = io.BytesIO()
    torch.save({"v": value}, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception:
        return False
    return True


def test_the_save_check_agrees_with_torch_load_weights_only():
    from collections import Counter, OrderedDict, defaultdict

    from trainkit.checkpoint import _refused_entry

    values = [
        None,
        True,
        3,
        2.5,
        1 + 2j,
        "s",
        b"b",
        bytearray(b"x"),
        [1, (2, 3)],
        {1, 2},
        {"a": {"b": [1]}},
        OrderedDict(a=1),
        Counter("aab"),
        torch.Size([2, 3]),
        torch.device("cpu"),
        torch.float16,
        torch.strided,
        torch.zeros(2),
        torch.nn.Parameter(torch.ones(1)),
        torch.nn.Linear(2, 2).state_dict(),
        torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()).state_dict(),
        torch.get_rng_state(),
        Path("p"),
        Config(),
        argparse.Namespace(a=1),
        torch.nn.Linear(2, 2),
        frozenset({1}),
        defaultdict(int),
        Pair(1, 2),
        range(3),
        slice(1, 2),
    ]
    for value in values:
        refused = _refused_entry({"v": value}, "state", (), set()) is not None
        assert refused != _loads_weights_only(value), f"{value!r}: check says refused={refused}"


def test_safe_globals_allow_a_class_on_save_and_load(tmp_path):
    mgr = CheckpointManager(tmp_path, safe_globals=[Config])
    mgr.save("last.pt", {"config": Config(lr=0.5)})
    assert mgr.load("last.pt")["config"] == Config(lr=0.5)
    _, state = mgr.load_latest()
    assert state["config"].lr == 0.5
    with pytest.raises(CheckpointError, match="Config"):  # another manager does not allow it
        CheckpointManager(tmp_path).load("last.pt")
    with pytest.raises(ValueError, match="Path"):  # the allowed class's fields are checked too
        mgr.save("last.pt", {"config": Config(lr=Path("x"))})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- which files are rotated


def test_rotation_deletes_only_files_the_manager_owns(tmp_path):
    (tmp_path / "pretrained_embeddings.pt").write_bytes(b"user data")
    (tmp_path / "resnet-50.pt").write_bytes(b"user data")
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for k in range(1, 4):
        mgr.save(f"epoch-{k:04d}.pt", _state(k))
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-0002.pt",
        "epoch-0003.pt",
        "pretrained_embeddings.pt",
        "resnet-50.pt",
    ]
    assert [p.name for p in mgr.checkpoints()] == [
        "epoch-0003.pt",
        "epoch-0002.pt",
    ]  # user files not listed


def test_rotation_after_a_restart_recognises_its_prefixes_and_restored_names(tmp_path):
    first = CheckpointManager(tmp_path, keep_last=2)
    first.save("epoch-0001.pt", _state(1))
    first.save(
        "snapshot-a.pt", _state(1)
    )  # a name without a number: rotating because save() wrote it
    state = first.state_dict()
    # a new process: epoch-0001.pt is recognised by its prefix, snapshot-a.pt only via state_dict
    second = CheckpointManager(tmp_path, keep_last=2)
    assert [p.name for p in second.checkpoints()] == ["epoch-0001.pt"]
    second.load_state_dict(state)
    assert {p.name for p in second.checkpoints()} == {"epoch-0001.pt", "snapshot-a.pt"}
    second.save("epoch-0002.pt", _state(2))
    second.save("epoch-0003.pt", _state(3))
    assert sorted(os.listdir(tmp_path)) == ["epoch-0002.pt", "epoch-0003.pt"]


def test_custom_rotating_prefixes(tmp_path):
    (tmp_path / "run7-0001.pt").write_bytes(b"")
    (tmp_path / "run7-0002.pt").write_bytes(b"")
    mgr = CheckpointManager(tmp_path, keep_last=1, rotating_prefixes=("run7-",))
    mgr.save("run7-0003.pt", _state(3))
    assert os.listdir(tmp_path) == ["run7-0003.pt"]
    with pytest.raises(ValueError, match="rotating_prefixes"):
        CheckpointManager(tmp_path, rotating_prefixes="run7-")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"keep_last": 0},
        {"keep_last": "3"},
        {"keep_last": True},
        {"every_seconds": -1.0},
        {"seconds_since_save": "x"},
        {"saved": ["../x.pt"]},
        {"best_mode": "avg"},
        {"keep_best": -1},
        {"best": [["best-1.pt", 1.0]] * 5},
    ],
)
def test_load_state_dict_refuses_bad_values_and_changes_nothing(tmp_path, change):
    mgr = CheckpointManager(tmp_path, keep_last=2, keep_best=2)
    before = mgr.state_dict()
    with pytest.raises(ValueError):
        mgr.load_state_dict({**before, **change})
    after = mgr.state_dict()
    assert {k: v for k, v in after.items() if k != "seconds_since_save"} == {
        k: v for k, v in before.items() if k != "seconds_since_save"
    }


def test_load_state_dict_names_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="'seconds_since_save'"):
        CheckpointManager(tmp_path).load_state_dict({"keep_last": 3, "every_seconds": None})


@pytest.mark.parametrize("name", ["last.pt\n", "a/b.pt", "", ".hidden.pt", "x.pt\x00"])
def test_name_check_rejects_trailing_newline_and_paths(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name"):
        CheckpointManager(tmp_path).save(name, _state(1))


# --------------------------------------------------------------------------- checkpoints() and pinned files


def test_checkpoints_and_load_latest_leave_out_pinned_and_k_best_files(tmp_path):
    mgr = CheckpointManager(tmp_path, pinned=("bestmodel.pt",), keep_best=1)
    mgr.save("step-1.pt", _state(1))
    mgr.save("last.pt", _state(1))
    time.sleep(0.01)
    mgr.save("bestmodel.pt", _state(2))
    mgr.save("best.pt", _state(2))
    mgr.save_best("best-step-2.pt", _state(2), 0.5)
    assert {p.name for p in mgr.checkpoints()} == {"step-1.pt", "last.pt"}
    assert mgr.load_latest()[1]["step"] == 1


# --------------------------------------------------------------------------- k best


def test_keep_best_min_keeps_the_k_lowest_and_deletes_the_rest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1, keep_best=2, best_mode="min")
    values = [3.0, 1.0, 2.0, float("nan"), 0.5, 2.0]
    kept = [mgr.save_best(f"best-epoch-{e}.pt", _state(e), v) for e, v in enumerate(values)]
    assert [p is not None for p in kept] == [
        True,
        True,
        True,
        False,
        True,
        False,
    ]  # NaN and a tie: not kept
    assert [(p.name, v) for p, v in mgr.best_checkpoints()] == [
        ("best-epoch-4.pt", 0.5),
        ("best-epoch-1.pt", 1.0),
    ]
    for e in range(3):
        mgr.save(f"epoch-{e}.pt", _state(e))  # rotation (keep_last=1) never touches k-best files
    assert sorted(os.listdir(tmp_path)) == ["best-epoch-1.pt", "best-epoch-4.pt", "epoch-2.pt"]


def test_keep_best_max_mode_and_tensor_values(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_best=1, best_mode="max")
    mgr.save_best("top-a.pt", _state(1), torch.tensor(70.0))
    assert mgr.save_best("top-b.pt", _state(2), torch.tensor(65.0)) is None
    mgr.save_best("top-c.pt", _state(3), 71.5)
    assert mgr.best_names() == ["top-c.pt"] and sorted(os.listdir(tmp_path)) == ["top-c.pt"]


def test_keep_best_state_dict_round_trip_continues(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_best=2)
    mgr.save_best("b1.pt", _state(1), 2.0)
    mgr.save_best("b2.pt", _state(2), 1.0)
    buffer = io.BytesIO()
    torch.save(mgr.state_dict(), buffer)
    buffer.seek(0)
    restored = CheckpointManager(tmp_path)  # keep_best=0 until the state is loaded
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.keep_best == 2 and restored.best_checkpoints() == mgr.best_checkpoints()
    restored.save_best("b3.pt", _state(3), 1.5)
    assert sorted(os.listdir(tmp_path)) == ["b2.pt", "b3.pt"]


def test_keep_best_refuses_misuse(tmp_path):
    with pytest.raises(ValueError, match="keep_best"):
        CheckpointManager(tmp_path).save_best("b.pt", _state(1), 1.0)
    mgr = CheckpointManager(tmp_path, keep_best=2)
    for name in ("best.pt", "last.pt", "epoch-0001.pt"):
        with pytest.raises(ValueError, match="pinned or rotating"):
            mgr.save_best(name, _state(1), 1.0)
    mgr.save_best("b.pt", _state(1), 1.0)
    with pytest.raises(ValueError, match="k-best"):
        mgr.save("b.pt", _state(2))
    with pytest.raises(ValueError, match="best_mode"):
        CheckpointManager(tmp_path, best_mode="maximum")


# --------------------------------------------------------------------------- disk full, raw pickles


def _failing_torch_save(error: BaseException):
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        real_save(obj, io.BytesIO())
        handle.write(b"PK\x03\x04partial")  # some bytes made it to disk
        raise error

    return save


def test_disk_full_inside_torch_save_says_no_space_left(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    mgr.save("last.pt", _state(1))
    torch_error = RuntimeError(
        "[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032"
    )
    monkeypatch.setattr(torch, "save", _failing_torch_save(torch_error))
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 512, 512)
    )
    with pytest.raises(
        CheckpointError,
        match=r"could not save checkpoint .*last\.pt: No space left on device \(0\.0 MiB free\)",
    ):
        mgr.save("last.pt", {"w": torch.zeros(1 << 18)})
    assert os.listdir(tmp_path) == ["last.pt"]
    monkeypatch.undo()
    assert mgr.load("last.pt")["step"] == 1


def test_a_writer_failure_with_free_space_is_not_called_disk_full(tmp_path, monkeypatch):
    torch_error = RuntimeError(
        "[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032"
    )
    monkeypatch.setattr(torch, "save", _failing_torch_save(torch_error))
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**9, 10**11)
    )
    with pytest.raises(CheckpointError, match="could not save checkpoint") as caught:
        CheckpointManager(tmp_path).save("last.pt", _state(1))
    assert "No space" not in str(caught.value) and "unexpected pos" in str(caught.value)


def test_enospc_from_the_os_says_no_space_left(tmp_path, monkeypatch):
    monkeypatch.setattr(
        torch, "save", _failing_torch_save(OSError(errno.ENOSPC, "No space left on device"))
    )
    with pytest.raises(
        CheckpointError, match=r"could not save checkpoint .*step-1\.pt: No space left on device"
    ):
        CheckpointManager(tmp_path).save("step-1.pt", _state(1))


def test_a_raw_pickle_as_last_pt_gives_exactly_one_warning_naming_it(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save("step-1.pt", _state(1))
    with open(tmp_path / "last.pt", "wb") as handle:
        pickle.dump({"step": 2, "w": [1.0, 2.0]}, handle)  # protocol 4+: torch adds its own warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, state = mgr.load_latest()
    assert path.name == "step-1.pt" and state["step"] == 1
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "last.pt" in str(caught[0].message) and "raw pickle" in str(caught[0].message)


# --------------------------------------------------------------------------- k best: nothing lost (issue 22)


def test_keep_best_same_name_twice_keeps_the_better_state(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_best=2)
    assert mgr.save_best("a.pt", _state(1), 0.1) is not None
    assert mgr.save_best("a.pt", _state(2), 9.0) is None  # worse: the better file stays
    assert [(p.name, v) for p, v in mgr.best_checkpoints()] == [("a.pt", 0.1)]
    assert torch.load(tmp_path / "a.pt", weights_only=True)["step"] == 1
    assert mgr.save_best("a.pt", _state(3), 0.05) is not None  # better: overwritten
    assert [(p.name, v) for p, v in mgr.best_checkpoints()] == [("a.pt", 0.05)]
    assert torch.load(tmp_path / "a.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize(
    "value",
    [None, "0.3", True, [0.3], torch.tensor([1.0, 2.0]), 10**400],
    ids=["None", "text", "bool", "list", "two-elements", "10**400"],
)
def test_save_best_refuses_a_value_that_is_no_number_naming_it(tmp_path, value):
    mgr = CheckpointManager(tmp_path, keep_best=2)
    with pytest.raises(ValueError, match="value") as info:
        mgr.save_best("b.pt", _state(1), value)
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == [] and mgr.best_names() == []


def test_save_best_never_keeps_nan_and_takes_numpy_and_tensor_numbers(tmp_path):
    import numpy as np

    mgr = CheckpointManager(tmp_path, keep_best=3)
    assert mgr.save_best("nan.pt", _state(1), float("nan")) is None
    assert mgr.save_best("inf.pt", _state(1), torch.tensor(float("inf"))) is None
    mgr.save_best("np.pt", _state(2), np.float32(0.5))
    mgr.save_best("t.pt", _state(3), torch.tensor([0.25]))
    assert mgr.best_checkpoints() == [(tmp_path / "t.pt", 0.25), (tmp_path / "np.pt", 0.5)]


@pytest.mark.parametrize(
    ("best", "named"),
    [
        ([["b.pt", float("nan")]], "NaN|nan"),
        ([["b.pt", float("inf")]], "inf"),
        ([["last.pt", 1.0]], "pinned or rotating"),
        ([["best.pt", 1.0]], "pinned or rotating"),
        ([["epoch-0001.pt", 1.0]], "pinned or rotating"),
        ([["b.pt", 1.0], ["b.pt", 2.0]], "twice"),
        ([["b.pt", "1.0"]], "pairs"),
        ([["b.pt", True]], "pairs"),
    ],
)
def test_load_state_dict_refuses_a_k_best_record_that_could_break_later(tmp_path, best, named):
    mgr = CheckpointManager(tmp_path, keep_best=2)
    mgr.save_best("kept.pt", _state(1), 0.5)
    before = mgr.state_dict()
    state = {**before, "best": best}
    with pytest.raises(ValueError, match=named):
        mgr.check_state_dict(state)
    with pytest.raises(ValueError, match=named):
        mgr.load_state_dict(state)
    assert mgr.best_names() == ["kept.pt"]
    mgr.save("last.pt", _state(2))  # still works: no pinned name was taken as a k-best file


def test_check_state_dict_accepts_what_state_dict_gives_and_changes_nothing(tmp_path, fake_clock):
    mgr = CheckpointManager(tmp_path, keep_best=2, every_seconds=5, clock=fake_clock())
    mgr.save("epoch-0001.pt", _state(1))
    mgr.save_best("b.pt", _state(1), 0.5)
    state = mgr.state_dict()
    mgr.check_state_dict(state)
    assert mgr.state_dict()["best"] == state["best"] and mgr.state_dict()["saved"] == state["saved"]
