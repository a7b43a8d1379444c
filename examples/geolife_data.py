"""GeoLife staypoints -> (history, next location) samples, following Hong et al.'s protocol.

The protocol (docs/data.md; checked against mie-lab/location-prediction,
``utils/dataloader.py`` and ``preprocessing/utils.py::get_valid_sequence``):

1. Per user, split by day: ``start_day < 0.6*max_day`` -> train, ``< 0.8*max_day`` ->
   validation, else test (``max_day`` = that user's largest ``start_day``).
2. Locations seen in train are encoded 2..N+1 in sorted raw-id order; 0 = padding,
   1 = unseen (a validation/test location absent from train).
3. Within each split and user, staypoints sorted by (start_day, start_min, id): staypoint
   ``i`` is a target when ``start_day[i] - first_start_day_in_split >= 7``; its history is
   every EARLIER staypoint ``j < i`` of the same split and user with
   ``start_day[j] >= start_day[i] - 7`` (inclusive, so same-day earlier staypoints are in
   and ``diff`` ranges 0..7); the sample is kept when the history has >= 3 staypoints.
   See docs/data.md for why this (and not ``[day-7, day)``) is the reference convention.

The split cache lives in ``geolife_cache.py``, the synthetic data in ``synthetic_data.py``.

Batch format consumed by ``PointerV45`` (see ``splits_to_tensors``): ``(x, y, x_dict)`` with
``x`` [B, L] int64 location ids right-padded with 0, ``y`` [B] int64 target ids and
``x_dict`` = {"time", "weekday", "diff", "duration"} [B, L] int64 plus {"user", "len"} [B].
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REQUIRED_COLUMNS = ("user_id", "location_id", "duration", "start_day", "start_min", "weekday")
CSV_COLUMNS = (
    "id",
    "user_id",
    "location_id",
    "duration",
    "start_day",
    "end_day",
    "start_min",
    "end_min",
    "weekday",
)
SPLITS = ("train", "validation", "test")
SAMPLE_KEYS = ("x", "time", "weekday", "diff", "duration", "user", "len", "y")

PREVIOUS_DAYS = 7  # history window and warm-up length, in days
MIN_HISTORY = 3  # a sample needs at least this many history staypoints
TIME_BUCKET_MINUTES = 15  # time feature = start_min // 15 -> 0..95
DURATION_BUCKET_MINUTES = 30  # duration feature = minutes // 30 ...
MAX_DURATION_BUCKET = 95  # ... clamped to 95 (= the reference's 2-day truncation, 2879 // 30)
PAD_ID, UNSEEN_ID = 0, 1
# Bump when the sample construction changes: it is part of the cache key.
PROTOCOL_VERSION = "geolife-hong-v1"

_INT_COLUMNS = ("id", "user_id", "location_id", "start_day", "start_min", "weekday")
_INT64_BOUND = 2**63
_Sample = tuple[np.ndarray, np.ndarray, int, int]  # (history rows, diff, target id, user id)


@dataclass
class GeoLifeSplits:
    """Processed samples of the three splits.

    Each split is a dict of right-padded int64 arrays: ``x, time, weekday, diff, duration``
    [N, max_len] and ``user, len, y`` [N].

    Attributes:
        train, validation, test: The splits.
        num_locations: Vocabulary size N+2 (0 = padding, 1 = unseen, 2.. = train locations).
        num_users: Users encoded 1..U in sorted raw-id order, plus the unused 0 (so U+1).
        max_len: History length L of the arrays.
        skipped_users: Raw ids of users that yield no sample in any split.
        warnings: One line per (user, split) that yields no sample.
        location_frequencies: [num_locations] count of each location as a TRAIN target.
    """

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    num_locations: int
    num_users: int
    max_len: int
    skipped_users: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    location_frequencies: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def split(self, name: str) -> dict[str, np.ndarray]:
        """Return the split called ``name`` ("train", "validation" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


# --------------------------------------------------------------------------- loading


def load_staypoints(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a staypoint CSV into column arrays.

    Args:
        path: A UTF-8 CSV (a leading byte-order mark, as Excel's "CSV UTF-8" writes, is
            skipped) with a header containing at least ``REQUIRED_COLUMNS`` (``id``
            optional: row order is used when absent).

    Returns:
        ``{"id", "user_id", "location_id", "start_day", "start_min", "weekday"}`` as int64
        and ``"duration"`` (minutes) as float64 arrays, one entry per row.

    Raises:
        ValueError: missing file, not UTF-8 (latin-1, UTF-16), empty file or no rows, missing
            column, a cell over the CSV field limit, non-numeric or out-of-range value (the
            message names the file, and the column and the line where there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"staypoint file not found: {path}")
    with path.open("rb") as raw:
        start = raw.read(2)
    if start in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path}: the file is UTF-16; save it as UTF-8 (CSV UTF-8)")
    try:
        values = _read_columns(path)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8 (CSV UTF-8)"
        ) from None
    if not values["user_id"]:
        raise ValueError(f"staypoint file has no rows: {path}")
    columns = {
        name: np.asarray(vals, dtype=np.float64 if name == "duration" else np.int64)
        for name, vals in values.items()
    }
    if "id" not in columns:
        columns["id"] = np.arange(len(columns["user_id"]), dtype=np.int64)
    _check_range(columns, "weekday", 0, 6, path)
    _check_range(columns, "start_min", 0, 1439, path)
    _check_range(columns, "start_day", 0, None, path)
    _check_range(columns, "duration", 0, None, path)
    return columns


def _read_columns(path: Path) -> dict[str, list[float | int]]:
    """The wanted columns of the CSV at ``path``, parsed (see :func:`load_staypoints`).

    Raises:
        UnicodeDecodeError: the file is not UTF-8.
        ValueError: as :func:`load_staypoints`.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: skip a BOM
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"staypoint file is empty: {path}")
            header = [name.strip() for name in header]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if missing:
                raise ValueError(
                    f"{path}: missing required column(s) {', '.join(missing)} "
                    f"(header: {','.join(header)})"
                )
            wanted = list(REQUIRED_COLUMNS) + (["id"] if "id" in header else [])
            index = {name: header.index(name) for name in wanted}
            values: dict[str, list[float | int]] = {name: [] for name in wanted}
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank line
                for name, col in index.items():
                    cell = row[col].strip() if col < len(row) else ""
                    parse = _parse_int if name in _INT_COLUMNS else _parse_float
                    where = f"{path}: line {reader.line_num}, column {name!r}"
                    values[name].append(parse(cell, where))
        except csv.Error as exc:  # e.g. a cell over the field limit (131,072 characters)
            raise ValueError(f"{path}: line {reader.line_num}: {exc}") from None
    return values


def _parse_int(cell: str, where: str) -> int:
    """An integer cell (ids, days, minutes): ``"42"`` or ``"42.0"``, parsed exactly, within int64.

    Ids are parsed as integers, never through ``float``: ids of 2**53 and more stay distinct.
    """
    digits = cell[:-2] if cell.endswith(".0") else cell
    try:
        value = int(digits)
    except ValueError:
        try:
            float(cell)
        except ValueError:
            raise ValueError(f"{where}: non-numeric value {cell!r}") from None
        raise ValueError(f"{where}: expected an integer, got {cell!r}") from None
    if not -_INT64_BOUND <= value < _INT64_BOUND:
        raise ValueError(f"{where}: integer {cell!r} does not fit 64 bits")
    return value


def _parse_float(cell: str, where: str) -> float:
    """A finite number cell (the duration in minutes)."""
    try:
        value = float(cell)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise ValueError(f"{where}: non-numeric value {cell!r}")
    return value


def _check_range(
    columns: dict[str, np.ndarray], name: str, low: float, high: float | None, path: Path
) -> None:
    """Raise ValueError naming the first line whose ``name`` value is outside [low, high]."""
    bad = columns[name] < low
    if high is not None:
        bad |= columns[name] > high
    if bad.any():
        row = int(np.argmax(bad))
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(
            f"{path}: line {row + 2}, column {name!r}: value {columns[name][row]} outside {bound}"
        )


# --------------------------------------------------------------------------- protocol


def make_samples(staypoints: dict[str, np.ndarray], max_len: int | None = None) -> GeoLifeSplits:
    """Build train/validation/test samples from staypoint columns (protocol in the module doc).

    Args:
        staypoints: Output of ``load_staypoints`` (``id`` optional).
        max_len: Cap on the history length; longer histories keep their most recent
            ``max_len`` positions. None: L = the longest history over all splits.

    Returns:
        The splits; users without any sample are listed in ``skipped_users`` (not an error).

    Raises:
        ValueError: a required column is missing, columns differ in length, no staypoints,
            ``max_len < MIN_HISTORY``, or no split ends up with a single sample.
    """
    for name in REQUIRED_COLUMNS:
        if name not in staypoints:
            raise ValueError(f"staypoints lack required column {name!r}")
    n_rows = len(staypoints["user_id"])
    if n_rows == 0:
        raise ValueError("no staypoints to build samples from")
    if any(len(staypoints[name]) != n_rows for name in REQUIRED_COLUMNS):
        raise ValueError("staypoint columns have different lengths")
    if max_len is not None and max_len < MIN_HISTORY:
        raise ValueError(f"max_len must be >= {MIN_HISTORY}, got {max_len}")

    ids = np.asarray(staypoints.get("id", np.arange(n_rows)), dtype=np.int64)
    user = np.asarray(staypoints["user_id"], dtype=np.int64)
    loc = np.asarray(staypoints["location_id"], dtype=np.int64)
    day = np.asarray(staypoints["start_day"], dtype=np.int64)
    minute = np.asarray(staypoints["start_min"], dtype=np.int64)
    weekday = np.asarray(staypoints["weekday"], dtype=np.int64)
    duration = np.asarray(staypoints["duration"], dtype=np.float64)

    # 1. split by day, per user
    max_day = np.zeros(n_rows, dtype=np.int64)
    raw_users = np.unique(user)
    for u in raw_users:
        rows = user == u
        max_day[rows] = day[rows].max()
    split_of = np.where(day < 0.6 * max_day, 0, np.where(day < 0.8 * max_day, 1, 2))

    # 2. encode locations seen in train (sorted raw ids -> 2..N+1), users -> 1..U
    train_locs = np.unique(loc[split_of == 0])
    if len(train_locs) == 0:
        raise ValueError("no staypoint falls in the train split (every user spans a single day)")
    pos = np.minimum(np.searchsorted(train_locs, loc), len(train_locs) - 1)
    loc_enc = np.where(train_locs[pos] == loc, pos + 2, UNSEEN_ID).astype(np.int64)
    user_enc = np.searchsorted(raw_users, user).astype(np.int64) + 1

    feats = {
        "loc": loc_enc,
        "time": minute // TIME_BUCKET_MINUTES,
        "weekday": weekday,
        "duration": _duration_buckets(duration),
    }

    # 3. samples per split and user
    per_split: list[list[_Sample]] = [[], [], []]
    warnings: list[str] = []
    users_with_samples: set[int] = set()
    for s, split_name in enumerate(SPLITS):
        for u in raw_users:
            rows = np.flatnonzero((user == u) & (split_of == s))
            rows = rows[np.lexsort((ids[rows], minute[rows], day[rows]))]  # by day, minute, id
            found = _user_samples(
                rows, day, loc_enc, int(user_enc[rows[0]]) if len(rows) else 0, per_split[s]
            )
            if found:
                users_with_samples.add(int(u))
            else:
                warnings.append(
                    f"user {int(u)}: no {split_name} samples ({len(rows)} staypoints in the split)"
                )
    skipped = [int(u) for u in raw_users if int(u) not in users_with_samples]

    longest = max((len(sample[0]) for samples in per_split for sample in samples), default=0)
    if longest == 0:
        raise ValueError(
            "no user yields a single sample (each needs >= 8 days in a split and >= 3 history staypoints)"
        )
    length = longest if max_len is None else min(max_len, longest)
    arrays = [_pad(samples, feats, length) for samples in per_split]

    num_locations = len(train_locs) + 2
    frequencies = np.bincount(arrays[0]["y"], minlength=num_locations).astype(np.int64)
    return GeoLifeSplits(
        train=arrays[0],
        validation=arrays[1],
        test=arrays[2],
        num_locations=num_locations,
        num_users=len(raw_users) + 1,
        max_len=length,
        skipped_users=skipped,
        warnings=warnings,
        location_frequencies=frequencies,
    )


def _duration_buckets(minutes: np.ndarray) -> np.ndarray:
    """``minutes // 30``, clamped to ``MAX_DURATION_BUCKET`` (the reference's 2-day truncation).

    The minutes are clamped before the integer conversion, so a duration of 1e19 or 1e300
    minutes lands in the last bucket, not in whatever int64 overflow would give.
    """
    longest = (MAX_DURATION_BUCKET + 1) * DURATION_BUCKET_MINUTES - 1
    clamped = np.floor(np.minimum(minutes, longest)).astype(np.int64)
    return clamped // DURATION_BUCKET_MINUTES


def _user_samples(
    rows: np.ndarray, day: np.ndarray, target_loc: np.ndarray, user_id: int, out: list[_Sample]
) -> bool:
    """Append the samples of one user's split rows (sorted) to ``out``; True if any."""
    if len(rows) == 0:
        return False
    days = day[rows]
    # first history index of each target = first row with start_day >= day - 7 (days sorted),
    # so the history of target i is rows[lo[i]:i]: earlier rows, same day included.
    lo = np.searchsorted(days, days - PREVIOUS_DAYS, side="left")
    valid = (days - days[0] >= PREVIOUS_DAYS) & (np.arange(len(rows)) - lo >= MIN_HISTORY)
    for i in np.flatnonzero(valid):
        out.append((rows[lo[i] : i], days[i] - days[lo[i] : i], int(target_loc[rows[i]]), user_id))
    return bool(valid.any())


def _pad(
    samples: list[_Sample], feats: dict[str, np.ndarray], length: int
) -> dict[str, np.ndarray]:
    """Right-pad histories into int64 arrays, keeping the most recent ``length`` positions."""
    n = len(samples)
    out = {
        key: np.zeros((n, length), dtype=np.int64)
        for key in ("x", "time", "weekday", "diff", "duration")
    }
    for key in ("user", "len", "y"):
        out[key] = np.zeros(n, dtype=np.int64)
    for k, (hist, diff, target, user_id) in enumerate(samples):
        hist, diff = hist[-length:], diff[-length:]
        m = len(hist)
        out["x"][k, :m] = feats["loc"][hist]
        for key in ("time", "weekday", "duration"):
            out[key][k, :m] = feats[key][hist]
        out["diff"][k, :m] = diff
        out["user"][k], out["len"][k], out["y"][k] = user_id, m, target
    return out


# --------------------------------------------------------------------------- batches, baseline


def splits_to_tensors(
    split: dict[str, np.ndarray], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Convert one split's arrays to int64 tensors (same keys, ``SAMPLE_KEYS``).

    A batch for ``PointerV45`` is then ``t["x"][idx]``, ``t["y"][idx]`` and
    ``{k: t[k][idx] for k in ("time", "weekday", "diff", "duration", "user", "len")}``.
    Trimming the columns to ``t["len"][idx].max()`` is optional (padding is masked).

    Raises:
        ValueError: a key of ``SAMPLE_KEYS`` is missing.
    """
    missing = [key for key in SAMPLE_KEYS if key not in split]
    if missing:
        raise ValueError(f"split lacks key(s) {', '.join(missing)}")
    return {
        key: torch.as_tensor(np.ascontiguousarray(split[key]), dtype=torch.int64, device=device)
        for key in SAMPLE_KEYS
    }


def most_frequent_baseline(splits: GeoLifeSplits, split: str = "test") -> float:
    """Acc@1 (%) on ``split`` of always predicting the most frequent TRAIN target."""
    targets = splits.split(split)["y"]
    if len(targets) == 0:
        return 0.0
    best = int(np.argmax(splits.location_frequencies))
    return 100.0 * float(np.mean(targets == best))
