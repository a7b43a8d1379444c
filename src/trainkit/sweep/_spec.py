"""``sweep.json``: what a sweep is, checked the same way when it is created and when it resumes.

A sweep is a set of *rows* (configurations) each trained with every seed of one list, so that
results pair up by seed. ``sweep.json`` is written before the first run and holds everything
needed to finish the sweep after a kill::

    {"format": "trainkit.sweep/1", "kind": "compare" | "ablation" | "grid",
     "title": "...", "train": "module:function", "seeds": [42, 43, ...],
     "rows": {"name": {...}, ...}, "reference": "name", "shared": {...},
     "metrics": [{"name": ..., "label": ..., "digits": 2, "verdict": true}, ...] | null,
     "curves": [["train_loss", "train loss"], ...] | null, "not_settings": [...],
     "design": "revert" | "add-one" | null, "changed": {"row": ["field", ...]}}
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit._validate import check_int, shown
from trainkit.sweep.rundir import SweepError, read_json

__all__ = [
    "FORMAT",
    "KINDS",
    "MAX_SEED",
    "MAX_SEEDS",
    "SWEEP_FILE",
    "Metric",
    "ablation_rows",
    "check_spec",
    "parse_seeds",
    "read_spec",
]

FORMAT = "trainkit.sweep/1"
SWEEP_FILE = "sweep.json"
KINDS = ("compare", "ablation", "grid")
DESIGNS = ("revert", "add-one")
MAX_SEED = 2**32 - 1  # what every RNG (Python, NumPy, torch) accepts as is
MAX_SEEDS = 10_000
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")
_TRAIN_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Metric:
    """One number every run returns, as the report shows it.

    Attributes:
        name: The key in the mapping the training function returns.
        label: How the report names it (default: ``name``).
        digits: Decimals shown.
        verdict: Whether the report tests it (paired t-test, Holm-adjusted within the
            report's family); ``False``: shown with its interval only (wall time, epochs).
    """

    name: str
    label: str = ""
    digits: int = 2
    verdict: bool = True

    def to_dict(self) -> dict[str, Any]:
        """As stored in ``sweep.json``."""
        return {
            "name": self.name,
            "label": self.label or self.name,
            "digits": self.digits,
            "verdict": self.verdict,
        }


def parse_seeds(text: str, first: int = 0) -> list[int]:
    """The seeds of ``--seeds``: a count ``N`` (``first .. first+N-1``) or a list ``1,2,3``.

    Args:
        text: The flag's value.
        first: The first seed of a count.

    Returns:
        The seeds, checked like ``sweep.json``'s (distinct, in ``[0, MAX_SEED]``, at most
        ``MAX_SEEDS``); nothing is built before the count is checked.

    Raises:
        SweepError: not a count or a list of integers, or a seed out of range.
    """
    listed = "," in text
    try:
        numbers = [int(part) for part in text.split(",")] if listed else [int(text)]
    except ValueError:
        raise SweepError(
            f"--seeds must be a count or a comma-separated list of integers, got {shown(text)}"
        ) from None
    if listed:
        return check_seeds(numbers, "--seeds")
    count = numbers[0]
    if not 1 <= count <= MAX_SEEDS:
        raise SweepError(f"--seeds: the count must be in [1, {MAX_SEEDS}], got {count}")
    if not 0 <= first <= MAX_SEED - count + 1:
        raise SweepError(
            f"--seeds {count} from seed {first}: the seeds must lie in [0, {MAX_SEED}]"
        )
    return list(range(first, first + count))


def check_seeds(seeds: Any, where: str) -> list[int]:
    """``seeds`` if it is a non-empty list of distinct ints in ``[0, MAX_SEED]``.

    Raises:
        SweepError: naming ``where`` (``sweep.json``'s path and field, or the flag).
    """
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise SweepError(f"{where} must be a non-empty list of seeds, got {shown(seeds)}")
    if len(seeds) > MAX_SEEDS:
        raise SweepError(f"{where} holds {len(seeds)} seeds, more than {MAX_SEEDS}")
    for seed in seeds:
        try:
            check_int(f"{where}: every seed", seed, minimum=0, maximum=MAX_SEED)
        except ValueError as error:
            raise SweepError(str(error)) from None
    counts = collections.Counter(seeds)
    repeated = sorted(seed for seed, count in counts.items() if count > 1)
    if repeated:
        raise SweepError(f"{where}: seeds must be distinct, got {shown(repeated)} more than once")
    return list(seeds)


def check_row_name(name: Any, where: str) -> str:
    """A row name that is a plain directory name (no ``/``, ``..``, leading dot or space).

    Raises:
        SweepError: naming ``where``.
    """
    if not isinstance(name, str) or not _ROW_NAME.match(name):
        raise SweepError(
            f"{where}: a row name must be letters, digits, '_', '.', '+' or '-' (at most 100, "
            f"not starting with '.' or '-'), got {shown(name)}"
        )
    return name


def _field(spec: Mapping[str, Any], key: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    if key not in spec:
        raise SweepError(f"{path}: field {key!r} is missing")
    value = spec[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise SweepError(f"{path}: field {key!r} has the wrong type, got {shown(value)}")
    return value


def check_spec(spec: Any, path: Path) -> dict[str, Any]:
    """Check a sweep's description; creation and resume both call this.

    Args:
        spec: The parsed ``sweep.json`` (or the one about to be written).
        path: Its path, for the messages.

    Returns:
        ``spec`` unchanged.

    Raises:
        SweepError: one line naming ``path`` and the field at fault.
    """
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != FORMAT:
        raise SweepError(
            f"{path}: field 'format' must be {FORMAT!r}, got {shown(spec.get('format'))}"
        )
    kind = _field(spec, "kind", path, str)
    if kind not in KINDS:
        raise SweepError(
            f"{path}: field 'kind' must be one of {', '.join(KINDS)}, got {shown(kind)}"
        )
    _field(spec, "title", path, str)
    train = _field(spec, "train", path, str)
    if not _TRAIN_REF.match(train):
        raise SweepError(f"{path}: field 'train' must be 'module:function', got {shown(train)}")
    check_seeds(_field(spec, "seeds", path, list), f"{path}: field 'seeds'")
    rows = _field(spec, "rows", path, dict)
    for name, row in rows.items():
        check_row_name(name, f"{path}: field 'rows'")
        if not isinstance(row, dict):
            raise SweepError(
                f"{path}: field 'rows': row {name!r} must be an object, got {shown(row)}"
            )
    need = {"compare": "exactly 2", "ablation": "at least 2", "grid": "at least 1"}[kind]
    count_ok = {"compare": len(rows) == 2, "ablation": len(rows) >= 2, "grid": len(rows) >= 1}
    if not count_ok[kind]:
        raise SweepError(f"{path}: field 'rows': a {kind} sweep needs {need} rows, got {len(rows)}")
    reference = _field(spec, "reference", path, str)
    if reference not in rows:
        raise SweepError(f"{path}: field 'reference' must name a row, got {shown(reference)}")
    _field(spec, "shared", path, dict)
    metrics = spec.get("metrics")
    if metrics is not None:
        _check_metrics(metrics, path)
    curves = spec.get("curves")
    if curves is not None and not (
        isinstance(curves, list)
        and all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)
            for c in curves
        )
    ):
        raise SweepError(f"{path}: field 'curves' must be a list of [key, label] pairs")
    not_settings = spec.get("not_settings", [])
    if not (isinstance(not_settings, list) and all(isinstance(x, str) for x in not_settings)):
        raise SweepError(f"{path}: field 'not_settings' must be a list of strings")
    _check_design(spec, path, kind, rows, reference)
    return spec


def _check_metrics(metrics: Any, path: Path) -> None:
    if not isinstance(metrics, list) or not metrics:
        raise SweepError(f"{path}: field 'metrics' must be a non-empty list or null")
    names = []
    for entry in metrics:
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("label"), str)
            and isinstance(entry.get("digits"), int)
            and not isinstance(entry.get("digits"), bool)
            and 0 <= entry["digits"] <= 10
            and isinstance(entry.get("verdict"), bool)
        )
        if not ok:
            raise SweepError(
                f"{path}: field 'metrics': each entry needs name, label, digits (0-10) and "
                f"verdict, got {shown(entry)}"
            )
        names.append(entry["name"])
    if len(set(names)) != len(names):
        raise SweepError(f"{path}: field 'metrics' names a metric twice")


def _check_design(
    spec: Mapping[str, Any], path: Path, kind: str, rows: Mapping[str, Any], reference: str
) -> None:
    if kind != "ablation":
        return
    design = spec.get("design")
    if design not in DESIGNS:
        raise SweepError(
            f"{path}: field 'design' must be one of {', '.join(DESIGNS)}, got {shown(design)}"
        )
    changed = _field(spec, "changed", path, dict)
    for row, fields in changed.items():
        if row not in rows or row == reference:
            raise SweepError(
                f"{path}: field 'changed' names {shown(row)}, not a row besides {reference!r}"
            )
        if not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
            raise SweepError(f"{path}: field 'changed': {row!r} must list field names")


def read_spec(out_dir: Path) -> dict[str, Any]:
    """The checked ``sweep.json`` of ``out_dir``.

    Raises:
        SweepError: missing, not JSON, or failing :func:`check_spec`.
    """
    path = Path(out_dir) / SWEEP_FILE
    if not path.is_file():
        raise SweepError(f"{path}: not found (not a sweep directory?)")
    return check_spec(read_json(path), path)


def as_json(value: Any, what: str) -> Any:
    """``value`` after a JSON round trip (tuples become lists), or a SweepError naming ``what``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SweepError(
            f"{what} must be plain JSON data (numbers, strings, lists, dicts): {exc}"
        ) from None


def ablation_rows(
    start: Mapping[str, Any],
    source: Mapping[str, Any],
    groups: Mapping[str, Sequence[str]],
    start_name: str = "base",
    all_name: str | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """An ablation ladder: ``start``, then ``start`` with each group of fields from ``source``.

    The *revert* design starts from the new recipe and takes each group back from the old
    one; the *add-one* design starts from the old recipe and adds each group of the new.

    Args:
        start: The reference row's configuration.
        source: Where each row takes its group's values from.
        groups: Row name -> the fields it takes from ``source``.
        start_name: The reference row's name.
        all_name: If given, one more row that takes every group at once.

    Returns:
        ``(rows, changed)``: row name -> configuration (``start_name`` first), and row name
        -> the fields it changed.

    Raises:
        ValueError: a field missing from ``start`` or ``source``, or a group whose fields
            already agree (that row would train ``start`` again).
    """
    rows: dict[str, dict[str, Any]] = {start_name: dict(start)}
    changed: dict[str, list[str]] = {}
    every: dict[str, Any] = {}
    for row, fields in groups.items():
        missing = [f for f in fields if f not in start or f not in source]
        if missing:
            raise ValueError(f"groups[{row!r}] names unknown field(s) {missing}")
        if all(as_json(start[f], row) == as_json(source[f], row) for f in fields):
            raise ValueError(
                f"ablation row {row!r} changes nothing: both have the same {list(fields)}"
            )
        values = {f: source[f] for f in fields}
        rows[row] = {**start, **values}
        changed[row] = list(fields)
        every.update(values)
    if all_name is not None:
        rows[all_name] = {**start, **every}
        changed[all_name] = list(every)
    return rows, changed
