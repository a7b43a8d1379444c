"""Run every Python snippet in ``docs/*.md`` so the documentation cannot rot.

Conventions:

- Every fenced block whose info string starts with ``python`` is executed, in order of
  appearance, each in a fresh namespace with a temporary working directory. Test ids are
  ``<page>-<n>`` with ``n`` counting the page's python blocks from 1 (``schedule.md-1``).
- A block fenced as ```` ```python no-run ```` is collected but skipped (use it for code
  that needs a GPU, real data, or is deliberately partial). Nothing else is skipped.
- A snippet passes when it runs without raising; snippets use ``assert`` to check results.

Also checked: every public name in ``trainkit.__all__`` is mentioned in some page, and the
field table of ``docs/recipes.md`` matches ``trainkit.recipes.original()``/``proposed()``.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import traceback
from pathlib import Path

import pytest

import trainkit
from trainkit import recipes

DOCS = Path(__file__).resolve().parent.parent / "docs"
NO_RUN = "no-run"
PAGES = (
    "schedule.md",
    "stopping.md",
    "checkpoint.md",
    "amp.md",
    "losses.md",
    "optim.md",
    "recipes.md",
    "trainer.md",
    "batching.md",
    "metrics.md",
    "compare.md",
)
_FENCE = re.compile(r"^(`{3,})\s*(\S*)\s*(.*)$")


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """``(first line number, code, skipped)`` for each python block of a markdown file."""
    blocks: list[tuple[int, str, bool]] = []
    fence = None  # the opening fence while inside any block
    current: list[str] | None = None
    start, skip = 0, False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            match = _FENCE.match(stripped)
            if match:
                fence = match.group(1)
                if match.group(2).lower() == "python":
                    current, start = [], number + 1
                    skip = NO_RUN in match.group(3).split()
            continue
        if stripped.startswith(fence) and stripped.strip("`") == "":
            if current is not None:
                blocks.append((start, "\n".join(current) + "\n", skip))
            fence, current = None, None
            continue
        if current is not None:
            current.append(line)
    if fence is not None:
        raise ValueError(f"{path.name}: unclosed code fence")
    return blocks


def _collect() -> list:
    params = []
    for path in sorted(DOCS.glob("*.md")):
        for index, (line, code, skip) in enumerate(python_blocks(path), start=1):
            marks = [pytest.mark.skip(reason=f"fenced as python {NO_RUN}")] if skip else []
            params.append(
                pytest.param(path.name, line, code, marks=marks, id=f"{path.name}-{index}")
            )
    return params


SNIPPETS = _collect()


@pytest.mark.parametrize(("page", "line", "code"), SNIPPETS)
def test_snippet_runs(
    page: str, line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{Path(page).stem}"}
    try:
        exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)
    except BaseException:
        pytest.fail(
            f"snippet in docs/{page} starting at line {line} failed:\n"
            f"----\n{code}----\n{traceback.format_exc()}",
            pytrace=False,
        )


def test_every_page_exists_and_has_a_runnable_snippet() -> None:
    missing = [page for page in PAGES if not (DOCS / page).is_file()]
    assert not missing, f"missing docs pages: {missing}"
    without = [
        page for page in PAGES if not any(not skip for _, _, skip in python_blocks(DOCS / page))
    ]
    assert not without, f"pages without a runnable python block: {without}"


def test_every_public_name_is_documented() -> None:
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCS.glob("*.md"))
    names = [name for name in trainkit.__all__ if name not in ("__version__", "recipes")]
    undocumented = [name for name in names if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not undocumented, f"names in trainkit.__all__ not mentioned in docs/*.md: {undocumented}"


def _recipe_table() -> dict[str, tuple[str, str]]:
    """Rows ``| `field` | `original` | `proposed` | source |`` of recipes.md's field table."""
    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    section = text.split("## The two recipes", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`\w+`", cells[0]):
            field = cells[0].strip("`")
            assert field not in rows, f"field {field} listed twice in docs/recipes.md"
            rows[field] = (cells[1], cells[2])
    return rows


def _literal(cell: str) -> object:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"recipe table cell {cell!r} is not a single `python literal`"
    return ast.literal_eval(match.group(1))


def test_recipe_table_matches_recipes() -> None:
    rows = _recipe_table()
    fields = [field.name for field in dataclasses.fields(recipes.Recipe)]
    assert sorted(rows) == sorted(fields), (
        f"docs/recipes.md table fields differ from Recipe: missing {sorted(set(fields) - set(rows))}, "
        f"unknown {sorted(set(rows) - set(fields))}"
    )
    for field, (original_cell, proposed_cell) in rows.items():
        for cell, recipe in (
            (original_cell, recipes.original()),
            (proposed_cell, recipes.proposed()),
        ):
            documented, actual = _literal(cell), getattr(recipe, field)
            assert documented == actual and type(documented) is type(actual), (
                f"docs/recipes.md says {recipe.name}.{field} = {documented!r}, recipes says {actual!r}"
            )
