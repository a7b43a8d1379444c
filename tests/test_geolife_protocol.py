"""The GeoLife protocol (examples/geolife_data.py) against hand-derived samples; the split
cache (examples/geolife_cache.py) and the synthetic data (examples/synthetic_data.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import geolife_cache
import geolife_data as gd
import synthetic_data

REAL_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/geolife/dataSet_geolife.csv"
HEADER = "id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday"

# (id, user, location, duration, start_day, start_min); weekday = start_day % 7.
#
# User 3, max_day 20: train day < 12, validation 12 <= day < 16, test day >= 16.
#   Train rows (day@min:loc): 0@480:10 0@720:20 2@480:10 5@600:30 7@540:20 8@300:10
#   8@900:30 11@600:20. First train day 0, so targets need day >= 7; history = earlier
#   rows with day >= target_day - 7 (same day included):
#     7@540  -> hist 0@480 0@720 2@480 5@600           (4)  diff 7 7 5 2
#     8@300  -> hist 2@480 5@600 7@540                 (3)  diff 6 3 1
#     8@900  -> hist 2@480 5@600 7@540 8@300           (4)  diff 6 3 1 0
#     11@600 -> hist 5@600 7@540 8@300 8@900           (4)  diff 6 4 3 3
#   Validation has only day 12 and test only day 20: no targets (warned, not fatal).
# User 8, max_day 50: train < 30, validation 30 <= day < 40 (day 30 is the boundary),
#   test day >= 40 (day 40 is the boundary).
#   Train 0:10 1:40 3:10 29:40 -> only day 29 is late enough, its window [22, 29] holds
#   no earlier row -> no train sample (warned).
#   Validation 30:40 31:10 33:99 37:40 39:10 (99 never in train -> unseen id 1):
#     37 -> hist 30 31 33 (3), diff 7 6 4, target 40;  39 -> hist 33 37 (2) -> dropped.
#   Test 40:10 41:77 42:10 47:77 50:20 (77 unseen):
#     47 -> hist 40 41 42 (3), diff 7 6 5, target 77 -> 1;  50 -> hist 47 (1) -> dropped.
# User 9 spans days 0..2 only: no sample anywhere -> skipped_users == [9].
#
# Train locations {10, 20, 30, 40, 50, 60} -> 2, 3, 4, 5, 6, 7; num_locations = 8.
# Users 3, 8, 9 -> 1, 2, 3; num_users = 4.
ROWS = [
    (0, 3, 10, 60.0, 0, 480),
    (1, 3, 20, 30.0, 0, 720),
    (2, 3, 10, 125.0, 2, 480),
    (3, 3, 30, 5000.0, 5, 600),
    (4, 3, 20, 45.0, 7, 540),
    (5, 3, 10, 90.0, 8, 300),
    (6, 3, 30, 29.0, 8, 900),
    (7, 3, 20, 10.0, 11, 600),
    (8, 3, 20, 10.0, 12, 600),
    (9, 3, 30, 10.0, 20, 600),
    (10, 8, 10, 60.0, 0, 60),
    (11, 8, 40, 60.0, 1, 60),
    (12, 8, 10, 60.0, 3, 60),
    (13, 8, 40, 60.0, 29, 60),
    (14, 8, 40, 60.0, 30, 60),
    (15, 8, 10, 60.0, 31, 60),
    (16, 8, 99, 60.0, 33, 60),
    (17, 8, 40, 60.0, 37, 60),
    (18, 8, 10, 60.0, 39, 60),
    (19, 8, 10, 60.0, 40, 60),
    (20, 8, 77, 60.0, 41, 60),
    (21, 8, 10, 60.0, 42, 60),
    (22, 8, 77, 60.0, 47, 60),
    (23, 8, 20, 60.0, 50, 60),
    (24, 9, 50, 60.0, 0, 60),
    (25, 9, 60, 60.0, 0, 600),
    (26, 9, 50, 60.0, 1, 60),
    (27, 9, 60, 60.0, 2, 60),
    (28, 9, 50, 60.0, 2, 600),
]


def write_csv(path: Path, rows: list[tuple] = ROWS) -> Path:
    lines = [HEADER] + [
        f"{i},{u},{loc},{dur},{day},{day},{minute},{minute},{day % 7}"
        for i, u, loc, dur, day, minute in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    # Rows written out of order: the protocol must sort by (day, minute, id) itself.
    return write_csv(tmp_path / "tiny.csv", ROWS[::-1])


def test_hand_derived_samples(tiny_csv: Path) -> None:
    s = gd.make_samples(gd.load_staypoints(tiny_csv))
    assert (s.num_locations, s.num_users, s.max_len) == (8, 4, 4)
    assert s.skipped_users == [9]
    assert any("user 3: no validation" in w for w in s.warnings)
    assert any("user 8: no train" in w for w in s.warnings)

    tr = s.train
    np.testing.assert_array_equal(tr["x"], [[2, 3, 2, 4], [2, 4, 3, 0], [2, 4, 3, 2], [4, 3, 2, 4]])
    np.testing.assert_array_equal(
        tr["diff"], [[7, 7, 5, 2], [6, 3, 1, 0], [6, 3, 1, 0], [6, 4, 3, 3]]
    )
    np.testing.assert_array_equal(tr["len"], [4, 3, 4, 4])
    np.testing.assert_array_equal(tr["y"], [3, 2, 4, 3])
    np.testing.assert_array_equal(tr["user"], [1, 1, 1, 1])
    # time = start_min // 15: 480 -> 32, 720 -> 48, 600 -> 40
    np.testing.assert_array_equal(tr["time"][0], [32, 48, 32, 40])
    # duration = minutes // 30, clamped at 95: 60 -> 2, 30 -> 1, 125 -> 4, 5000 -> 95
    np.testing.assert_array_equal(tr["duration"][0], [2, 1, 4, 95])
    np.testing.assert_array_equal(tr["weekday"][0], [0, 0, 2, 5])

    va, te = s.validation, s.test
    np.testing.assert_array_equal(va["x"], [[5, 2, 1, 0]])
    np.testing.assert_array_equal(va["diff"], [[7, 6, 4, 0]])
    np.testing.assert_array_equal(va["y"], [5])
    np.testing.assert_array_equal(te["x"], [[2, 1, 2, 0]])
    np.testing.assert_array_equal(te["diff"], [[7, 6, 5, 0]])
    np.testing.assert_array_equal(te["y"], [1])  # unseen target
    np.testing.assert_array_equal(te["user"], [2])

    np.testing.assert_array_equal(s.location_frequencies, [0, 0, 1, 2, 1, 0, 0, 0])
    assert gd.most_frequent_baseline(s) == 0.0  # always predicts 3; the only test target is 1
    assert gd.most_frequent_baseline(s, "train") == 50.0


def test_max_len_keeps_most_recent(tiny_csv: Path) -> None:
    s = gd.make_samples(gd.load_staypoints(tiny_csv), max_len=3)
    assert s.max_len == 3
    np.testing.assert_array_equal(s.train["x"][0], [3, 2, 4])
    np.testing.assert_array_equal(s.train["diff"][0], [7, 5, 2])
    np.testing.assert_array_equal(s.train["len"], [3, 3, 3, 3])
    with pytest.raises(ValueError, match="max_len"):
        gd.make_samples(gd.load_staypoints(tiny_csv), max_len=2)


def test_splits_to_tensors(tiny_csv: Path) -> None:
    s = gd.make_samples(gd.load_staypoints(tiny_csv))
    t = gd.splits_to_tensors(s.train)
    assert set(t) == set(gd.SAMPLE_KEYS)
    assert t["x"].shape == (4, 4) and t["user"].shape == (4,)
    assert all(v.dtype.is_floating_point is False for v in t.values())
    with pytest.raises(ValueError, match="lacks key"):
        gd.splits_to_tensors({"x": s.train["x"]})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        (HEADER + "\n", "no rows"),
        (
            "id,user_id,location_id,duration,start_day,start_min\n0,1,1,1.0,0,0\n",
            "missing required column.*weekday",
        ),
        (
            HEADER + "\n0,1,1,10.0,0,0,480,500,1\n1,1,2,10.0,0,0,abc,500,1\n",
            "line 3, column 'start_min'",
        ),
        (HEADER + "\n0,1,1,10.0,0,0,480,500,9\n", "column 'weekday'"),
        (
            HEADER + "\n0,1,1e300,10.0,0,0,480,500,1\n",
            "line 2, column 'location_id': expected an integer, got '1e300'",
        ),
        (
            HEADER + "\n0,1,3.5,10.0,0,0,480,500,1\n",
            "line 2, column 'location_id': expected an integer, got '3.5'",
        ),
        (
            HEADER + "\n0,1,3,10.0,0,0,480,500,1\n1,1.5,3,10.0,0,0,480,500,1\n",
            "line 3, column 'user_id': expected an integer",
        ),
        (
            HEADER + f"\n0,1,{2**63},10.0,0,0,480,500,1\n",
            "column 'location_id': integer .* does not fit 64 bits",
        ),
        (HEADER + "\n0,1,3,inf,0,0,480,500,1\n", "column 'duration': non-numeric value 'inf'"),
    ],
)
def test_load_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        gd.load_staypoints(path)


def test_ids_beyond_2_to_the_53_stay_distinct(tmp_path: Path) -> None:
    # float() would merge these (2**53 + 1 == 2**53 as a float): ids are parsed as integers
    big = 2**62
    rows = [(i, u, big + loc, dur, day, minute) for i, u, loc, dur, day, minute in ROWS]
    columns = gd.load_staypoints(write_csv(tmp_path / "big.csv", rows))
    assert columns["location_id"].dtype == np.int64
    assert sorted(set(columns["location_id"].tolist())) == sorted({big + row[2] for row in ROWS})
    s = gd.make_samples(columns)
    expected = gd.make_samples(gd.load_staypoints(write_csv(tmp_path / "small.csv")))
    assert s.num_locations == expected.num_locations == 8
    for name in gd.SPLITS:
        np.testing.assert_array_equal(s.split(name)["x"], expected.split(name)["x"])
    assert gd.load_staypoints(write_csv(tmp_path / "float.csv", [(0, 1, 7, 1.0, 0, 0)]))[
        "location_id"
    ].tolist() == [7]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        gd.load_staypoints(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="not found"):
        geolife_cache.load_or_build_splits(tmp_path / "nope.csv", tmp_path / "cache")


def test_cache_reused_and_rebuilt(
    tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = []
    real = gd.make_samples
    monkeypatch.setattr(
        geolife_cache, "make_samples", lambda *a, **k: builds.append(1) or real(*a, **k)
    )
    cache = tmp_path / "cache"
    first = geolife_cache.load_or_build_splits(tiny_csv, cache)
    second = geolife_cache.load_or_build_splits(tiny_csv, cache)
    assert len(builds) == 1
    assert [p.suffix for p in cache.iterdir()] == [".npz"]  # no temp file left behind
    for name in gd.SPLITS:
        for key in gd.SAMPLE_KEYS:
            np.testing.assert_array_equal(first.split(name)[key], second.split(name)[key])
    assert (second.num_locations, second.num_users, second.max_len) == (8, 4, 4)
    assert second.skipped_users == [9] and second.warnings == first.warnings
    np.testing.assert_array_equal(second.location_frequencies, first.location_frequencies)

    other = geolife_cache.load_or_build_splits(
        tiny_csv, cache, max_len=3
    )  # max_len is part of the key
    assert len(builds) == 2 and other.max_len == 3 and len(list(cache.iterdir())) == 2

    write_csv(tiny_csv, ROWS[:-1])  # source changed -> rebuilt under a new name
    third = geolife_cache.load_or_build_splits(tiny_csv, cache)
    assert len(builds) == 3 and len(list(cache.iterdir())) == 3
    assert third.num_users == 4

    (damaged,) = [
        p
        for p in cache.iterdir()
        if p.stat().st_mtime == max(q.stat().st_mtime for q in cache.iterdir())
    ]
    damaged.write_bytes(b"not an npz")  # an unreadable cache file is rebuilt, not an error
    assert geolife_cache.load_or_build_splits(tiny_csv, cache).num_users == 4 and len(builds) == 4


def test_cache_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINKIT_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert geolife_cache.cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert geolife_cache.cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("TRAINKIT_CACHE_DIR")
    assert geolife_cache.cache_dir(None) == tmp_path / "xdg" / "trainkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert geolife_cache.cache_dir(None) == Path.home() / ".cache" / "trainkit"


def test_synthetic_deterministic(tmp_path: Path) -> None:
    a = synthetic_data.generate_synthetic_staypoints(
        tmp_path / "a.csv", num_users=4, num_days=40, seed=3
    )
    b = synthetic_data.generate_synthetic_staypoints(
        tmp_path / "b.csv", num_users=4, num_days=40, seed=3
    )
    c = synthetic_data.generate_synthetic_staypoints(
        tmp_path / "c.csv", num_users=4, num_days=40, seed=4
    )
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    s = gd.make_samples(gd.load_staypoints(a))
    assert len(s.train["y"]) > 100 and len(s.test["y"]) > 0
    with pytest.raises(ValueError, match="num_days"):
        synthetic_data.generate_synthetic_staypoints(tmp_path / "d.csv", num_days=5)
    cached = synthetic_data.cached_synthetic_csv(
        tmp_path / "cache", num_users=4, num_days=40, seed=3
    )
    assert cached.read_bytes() == a.read_bytes() and cached.name.startswith(
        synthetic_data.SYNTHETIC_VERSION
    )


def test_synthetic_default_is_small_and_learnable(tmp_path: Path) -> None:
    s = gd.make_samples(
        gd.load_staypoints(synthetic_data.generate_synthetic_staypoints(tmp_path / "syn.csv"))
    )
    assert 2000 <= len(s.train["y"]) <= 5000
    assert len(s.validation["y"]) >= 300 and len(s.test["y"]) >= 300
    assert 10.0 <= gd.most_frequent_baseline(s) <= 25.0
    assert s.skipped_users == []


@pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"real GeoLife CSV not found at {REAL_CSV}")
def test_real_geolife_counts() -> None:
    s = gd.make_samples(gd.load_staypoints(REAL_CSV))
    counts = {name: len(s.split(name)["y"]) for name in gd.SPLITS}
    # Pinned: this implementation of the reference code path (previous_day = 7) on the real CSV.
    assert counts == {"train": 7424, "validation": 3334, "test": 3502}
    assert (s.num_locations, s.num_users, s.max_len) == (1187, 46, 54)
    assert s.skipped_users == []
    unseen = float(np.mean(s.test["y"] == 1))
    assert 0.15 < unseen < 0.30  # about a fifth (0.228)
    assert s.train["diff"].max() == 7 and s.train["duration"].max() == 95


# ------------------------------------------------------------- odd files (issue 22)


def test_a_utf8_bom_is_skipped_and_keeps_the_id_column(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "plain.csv", ROWS[::-1])
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # Excel's "CSV UTF-8"
    columns = gd.load_staypoints(bom)
    assert columns["id"].tolist() == [row[0] for row in ROWS[::-1]]  # not the row order
    expected = gd.make_samples(gd.load_staypoints(plain))
    got = gd.make_samples(columns)
    for name in gd.SPLITS:
        for key in gd.SAMPLE_KEYS:
            np.testing.assert_array_equal(got.split(name)[key], expected.split(name)[key])


@pytest.mark.parametrize("minutes", [1e19, 1e300])
def test_a_huge_duration_lands_in_the_last_bucket(tmp_path: Path, minutes: float) -> None:
    # row 3 lasts 5000 minutes: already past the 2-day cap, so bucket 95
    huge = [row if row[0] != 3 else (*row[:3], minutes, *row[4:]) for row in ROWS]
    expected = gd.make_samples(gd.load_staypoints(write_csv(tmp_path / "capped.csv")))
    got = gd.make_samples(gd.load_staypoints(write_csv(tmp_path / "huge.csv", huge)))
    assert got.train["duration"].max() == gd.MAX_DURATION_BUCKET
    for name in gd.SPLITS:
        np.testing.assert_array_equal(got.split(name)["duration"], expected.split(name)["duration"])


@pytest.mark.parametrize(
    ("encoding", "message"),
    [("latin-1", r"not UTF-8 \(byte 0xe9 at offset \d+\)"), ("utf-16", "the file is UTF-16")],
)
def test_a_csv_in_another_encoding_is_one_line_naming_the_file(
    tmp_path: Path, encoding: str, message: str
) -> None:
    path = tmp_path / "other.csv"
    text = write_csv(tmp_path / "plain.csv").read_text() + "29,3,10,1.0,21,21,60,60,0 café\n"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(ValueError, match=message) as info:
        gd.load_staypoints(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_cell_over_the_csv_field_limit_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "long.csv")
    with open(path, "a") as handle:
        handle.write(f'29,3,10,1.0,21,21,60,60,"{"x" * 200_000}"\n')
    with pytest.raises(ValueError, match=r"long\.csv: line 31: field larger than field limit"):
        gd.load_staypoints(path)


def test_a_cache_directory_that_cannot_be_written_is_a_warning_not_an_error(
    tiny_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(geolife_cache, "atomic_write", disk_full)
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING", logger="geolife_cache"):
        splits = geolife_cache.load_or_build_splits(tiny_csv, cache)
    assert splits.num_users == 4 and list(cache.iterdir()) == []
    assert len(caplog.records) == 1
    assert str(cache) in caplog.text and "No space left on device" in caplog.text


@pytest.mark.parametrize(
    ("key", "value"), [("train.x", 99), ("validation.user", -1), ("test.time", 96)]
)
def test_a_cache_with_ids_out_of_range_is_rebuilt(
    tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: int
) -> None:
    cache = tmp_path / "cache"
    expected = geolife_cache.load_or_build_splits(tiny_csv, cache)
    (cache_file,) = cache.iterdir()
    with np.load(cache_file) as data:
        arrays = {name: data[name].copy() for name in data.files}
    arrays[key].flat[0] = value  # a valid-looking cache, an id the model cannot embed
    with open(cache_file, "wb") as handle:
        np.savez(handle, **arrays)
    builds = []
    real = geolife_cache.make_samples
    monkeypatch.setattr(
        geolife_cache, "make_samples", lambda *a, **k: builds.append(1) or real(*a, **k)
    )
    got = geolife_cache.load_or_build_splits(tiny_csv, cache)
    assert builds == [1]
    for name in gd.SPLITS:
        for sample_key in gd.SAMPLE_KEYS:
            np.testing.assert_array_equal(
                got.split(name)[sample_key], expected.split(name)[sample_key]
            )
    assert geolife_cache.load_or_build_splits(tiny_csv, cache) is not None and builds == [1]
