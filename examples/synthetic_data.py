"""A synthetic staypoint CSV with the GeoLife schema: the example's default data.

    python examples/pointer_v45.py            # trains on it when no --data is given

Deterministic: the same arguments always write the same bytes (``SYNTHETIC_VERSION`` names
the generator in cache file names; bump it when the output changes). docs/data.md
describes the users it simulates.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from geolife_data import CSV_COLUMNS
from trainkit.atomic import atomic_write

__all__ = ["SYNTHETIC_VERSION", "cached_synthetic_csv", "generate_synthetic_staypoints"]

# Bump when generate_synthetic_staypoints writes different data for the same arguments.
SYNTHETIC_VERSION = "syn-v1"


def generate_synthetic_staypoints(
    path: str | os.PathLike[str], num_users: int = 20, num_days: int = 100, seed: int = 0
) -> Path:
    """Write a deterministic synthetic staypoint CSV with the GeoLife schema (``CSV_COLUMNS``).

    Each user has a home, a workplace (a shared "campus" for most users, as in GeoLife),
    a lunch place, a few leisure places with personal preferences and a weekly rhythm:
    weekdays home -> work -> (lunch -> work) -> (leisure) -> home, weekends home ->
    1-2 leisure places -> home. Days go untracked at random, about 6% of visits are one-off
    new places, and each user switches lunch place once (revisited, later-unseen locations).

    Args:
        path: Output CSV path (parent directories are created; written atomically).
        num_users: Users (>= 1).
        num_days: Calendar days per user (>= 15 so that every split can have targets).
        seed: RNG seed; the same arguments always write the same bytes.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``num_users`` outside 1..10000 or ``num_days`` outside 15..10000.
    """
    if not 1 <= num_users <= 10_000:
        raise ValueError(f"num_users must be between 1 and 10000, got {num_users}")
    if not 15 <= num_days <= 10_000:
        raise ValueError(f"num_days must be between 15 and 10000, got {num_days}")
    rng = np.random.default_rng(seed)
    next_loc = [0]

    def new_location() -> int:
        next_loc[0] += 1
        return next_loc[0] - 1

    campus = new_location()
    shared_leisure = [new_location() for _ in range(12)]  # malls, parks, stations shared by users
    rows: list[tuple[int, int, float, int, int, int, int, int]] = []
    for user in range(1, num_users + 1):
        home = new_location()
        work = campus if rng.random() < 0.7 else new_location()
        lunch = [new_location() for _ in range(3)]  # lunch[2] replaces lunch[1] from switch_day on
        lunch_pref = rng.dirichlet(np.ones(2))
        switch_day = int(rng.integers(num_days // 3, num_days))
        own = [new_location() for _ in range(4)]
        leisure = own + [int(v) for v in rng.choice(shared_leisure, size=3, replace=False)]
        pref = rng.dirichlet(np.ones(len(leisure)))
        first_weekday = int(rng.integers(0, 7))
        user_rows: list[tuple[int, int, int]] = []  # (location, absolute start minute, end minute)

        def visit(loc: int, start: int, end: int) -> None:
            user_rows.append((loc, start, max(end, start + 10)))  # noqa: B023 (called in this iteration)

        def maybe_noise(t: int) -> int:
            if rng.random() < 0.1:  # a one-off new place
                stay = int(rng.integers(20, 120))
                visit(new_location(), t, t + stay)
                return t + stay + int(rng.integers(10, 40))
            return t

        wake = int(rng.integers(6 * 60, 9 * 60))  # absolute minute the user leaves home next
        for d in range(num_days):
            base = d * 1440
            weekend = (first_weekday + d) % 7 >= 5
            if d > 0 and rng.random() < 0.12:  # untracked day
                wake = base + 1440 + int(rng.integers(6 * 60, 9 * 60))
                continue
            t = max(wake, base) + int(rng.integers(15, 50))  # commute
            if weekend or rng.random() < 0.2:  # weekend, or a weekday off: 1-3 outings
                for _ in range(int(rng.integers(1, 4))):
                    stay = int(rng.gamma(3.0, 40))
                    visit(int(rng.choice(leisure, p=pref)), t, t + stay)
                    t = maybe_noise(t + stay + int(rng.integers(15, 60)))
            else:
                end_work = base + int(rng.normal(18 * 60, 40))
                if rng.random() < 0.5:  # morning at work, lunch out, afternoon at work
                    noon = base + 12 * 60 + int(rng.normal(0, 15))
                    visit(work, t, noon)
                    t = noon + int(rng.integers(5, 15))
                    back = t + int(rng.integers(30, 70))
                    choice = int(rng.choice(2, p=lunch_pref))
                    visit(lunch[2 if choice == 1 and d >= switch_day else choice], t, back)
                    t = back + int(rng.integers(5, 15))
                visit(work, t, end_work)
                t = maybe_noise(max(end_work, t + 30) + int(rng.integers(15, 45)))
                if rng.random() < 0.4:
                    stay = int(rng.gamma(2.0, 40))
                    visit(int(rng.choice(leisure, p=pref)), t, t + stay)
                    t += stay + int(rng.integers(15, 45))
            # home overnight; later mornings before a weekend day
            tomorrow_weekend = (first_weekday + d + 1) % 7 >= 5
            wake = base + 1440 + int(rng.normal(9.5 * 60 if tomorrow_weekend else 7.5 * 60, 40))
            visit(home, t, max(wake, t + 60))
        for loc, start, end in user_rows:
            rows.append(
                (
                    user,
                    loc,
                    float(end - start),
                    start // 1440,
                    end // 1440,
                    start % 1440,
                    end % 1440,
                    (first_weekday + start // 1440) % 7,
                )
            )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, row in enumerate(rows):
        writer.writerow((i, *row))
    return atomic_write(path, text.getvalue())  # a kill never leaves half a CSV


def cached_synthetic_csv(
    cache_dir: Path, num_users: int = 20, num_days: int = 100, seed: int = 0
) -> Path:
    """The synthetic CSV for these arguments in ``cache_dir``, written on first use."""
    path = Path(cache_dir) / f"{SYNTHETIC_VERSION}-u{num_users}-d{num_days}-s{seed}.csv"
    if not path.is_file():
        generate_synthetic_staypoints(path, num_users=num_users, num_days=num_days, seed=seed)
    return path
