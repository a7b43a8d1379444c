"""One processed-split cache per staypoint CSV, shared by every run on this machine.

    splits = load_or_build_splits(csv_path, cache_dir(None), max_len=None)

The cache file is named by sha256(CSV bytes + ``PROTOCOL_VERSION`` + max_len), so every run
on the same CSV (whatever its ``--out``) reads the same file, and an edited CSV or a protocol
change builds a new one. Where it lives (docs/data.md): ``data.cache_dir`` in the config, else
``$TRAINKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/trainkit``, else ``~/.cache/trainkit``.

The cache is an optimisation: a cache file that cannot be read, or whose arrays do not agree
with its own metadata (ids out of range, wrong shapes), is rebuilt; a cache directory that
cannot be written (full disk, no permission) is reported in one warning and the run goes on
without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from geolife_data import (
    MAX_DURATION_BUCKET,
    PREVIOUS_DAYS,
    PROTOCOL_VERSION,
    SAMPLE_KEYS,
    SPLITS,
    GeoLifeSplits,
    load_staypoints,
    make_samples,
)
from trainkit.atomic import atomic_write

__all__ = ["cache_dir", "load_or_build_splits"]

log = logging.getLogger("geolife_cache")

# Exclusive upper bounds of the id-like arrays that do not depend on the data set.
_FIXED_BOUNDS = {
    "time": 96,
    "weekday": 7,
    "duration": MAX_DURATION_BUCKET + 1,
    "diff": PREVIOUS_DAYS + 1,
}
# The [N, max_len] arrays (the others are [N]).
_HISTORY_KEYS = ("x", "time", "weekday", "diff", "duration")
# What reading a damaged .npz can raise (np.load and the zip reader).
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def cache_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``configured``, ``$TRAINKIT_CACHE_DIR``, ``$XDG_CACHE_HOME/trainkit``
    or ``~/.cache/trainkit``, in that order (not created here)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("TRAINKIT_CACHE_DIR"):
        return Path(os.environ["TRAINKIT_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "trainkit"
    return Path.home() / ".cache" / "trainkit"


def load_or_build_splits(
    csv_path: str | os.PathLike[str], directory: str | os.PathLike[str], max_len: int | None = None
) -> GeoLifeSplits:
    """Return the splits of ``csv_path``, from the cache in ``directory`` when the CSV is unchanged.

    A cache file that cannot be read, or whose arrays disagree with its metadata, is rebuilt
    and overwritten; a new one is written with ``trainkit.atomic.atomic_write`` (a kill never
    leaves half a file). A cache that cannot be written (full disk, no permission) is
    reported in one warning naming it, and the splits are returned all the same.

    Args:
        csv_path: Staypoint CSV (see ``geolife_data.load_staypoints``).
        directory: The cache directory (created if missing).
        max_len: Forwarded to ``make_samples``.

    Returns:
        The splits.

    Raises:
        ValueError: as ``load_staypoints`` / ``make_samples``.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"staypoint file not found: {csv_path}")
    digest = hashlib.sha256(csv_path.read_bytes())
    digest.update(f"|{PROTOCOL_VERSION}|max_len={max_len}".encode())
    cache_file = Path(directory) / f"geolife-{digest.hexdigest()[:24]}.npz"
    if cache_file.is_file():
        try:
            return _load(cache_file)
        except _UNREADABLE as exc:
            log.warning("data cache %s is unusable (%s): rebuilding it", cache_file, exc)
    splits = make_samples(load_staypoints(csv_path), max_len=max_len)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _save(cache_file, splits)
    except OSError as exc:
        log.warning("data cache %s not written (%s): continuing without it", cache_file, exc)
    return splits


def _save(path: Path, splits: GeoLifeSplits) -> None:
    """Write ``splits`` to ``path`` atomically (plain arrays only, no pickled objects)."""
    arrays: dict[str, np.ndarray] = {
        f"{split}.{key}": splits.split(split)[key] for split in SPLITS for key in SAMPLE_KEYS
    }
    arrays["meta.protocol"] = np.array(PROTOCOL_VERSION)
    arrays["meta.sizes"] = np.array(
        [splits.num_locations, splits.num_users, splits.max_len], dtype=np.int64
    )
    arrays["meta.skipped_users"] = np.array(splits.skipped_users, dtype=np.int64)
    arrays["meta.warnings"] = np.array(splits.warnings, dtype=str)
    arrays["meta.location_frequencies"] = splits.location_frequencies
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _load(path: Path) -> GeoLifeSplits:
    """Read a cache written by ``_save``."""
    # allow_pickle=False: only plain numeric/str arrays are accepted, so a tampered cache
    # cannot execute code (the reference pipeline's pickled datasets could).
    with np.load(path, allow_pickle=False) as data:
        if str(data["meta.protocol"]) != PROTOCOL_VERSION:
            raise ValueError(f"cache {path} has another protocol version")
        parts = {split: {key: data[f"{split}.{key}"] for key in SAMPLE_KEYS} for split in SPLITS}
        num_locations, num_users, max_len = (int(v) for v in data["meta.sizes"])
        for split, arrays in parts.items():
            _check_split(split, arrays, num_locations, num_users, max_len)
        return GeoLifeSplits(
            **parts,
            num_locations=num_locations,
            num_users=num_users,
            max_len=max_len,
            skipped_users=[int(u) for u in data["meta.skipped_users"]],
            warnings=[str(w) for w in data["meta.warnings"]],
            location_frequencies=data["meta.location_frequencies"],
        )


def _check_split(
    split: str, arrays: dict[str, np.ndarray], num_locations: int, num_users: int, max_len: int
) -> None:
    """Raise ValueError unless one split's arrays fit the cache's own metadata.

    A cache that passes can be indexed by the model: every id is in its embedding's range.
    """
    rows = len(arrays["y"])
    bounds = {**_FIXED_BOUNDS, "x": num_locations, "y": num_locations, "user": num_users}
    bounds["len"] = max_len + 1
    for key in SAMPLE_KEYS:
        values = arrays[key]
        shape = (rows, max_len) if key in _HISTORY_KEYS else (rows,)
        if values.dtype.kind not in "iu" or values.shape != shape:
            raise ValueError(f"{split}.{key}: {values.dtype} {values.shape}, expected int {shape}")
        if values.size and (values.min() < 0 or values.max() >= bounds[key]):
            raise ValueError(f"{split}.{key}: ids outside [0, {bounds[key]})")
