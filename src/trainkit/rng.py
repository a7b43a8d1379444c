"""Seeding and RNG state capture that survives ``torch.load(weights_only=True)``.

NumPy's and Python's RNG states are tuples holding arrays and big integers; pickling them
as they are breaks safe loading. Here they are stored as tensors and plain lists.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from trainkit._validate import check_int

__all__ = ["get_rng_state", "seed_everything", "set_rng_state"]

_MAX_SEED = 2**64 - 1  # torch.manual_seed refuses more


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Args:
        seed: An integer in ``[0, 2**64 - 1]`` (what ``torch.manual_seed`` takes).

    Raises:
        ValueError: ``seed`` is not an int, negative, or 2**64 or more (nothing is seeded then).
    """
    seed = check_int("seed", seed, minimum=0)
    if seed > _MAX_SEED:
        raise ValueError(f"seed must be below 2**64 (torch.manual_seed's range), got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Capture Python, NumPy, torch CPU and all CUDA RNG states as tensors/plain values."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state`.

    CUDA states are restored for as many devices as both the state and this machine have.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    # .cpu(): a checkpoint loaded with map_location="cuda" holds the keys on the GPU
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        for index in range(count):
            torch.cuda.set_rng_state(cuda_states[index].cpu(), index)
