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
import pathlib
import re
import traceback
import unicodedata
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


_LINK = re.compile(r"\]\(([\w./-]*\.md)?#([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def _mkdocs_slug(heading: str) -> str:
    """The anchor that mkdocs (Python-Markdown's ``toc`` extension) gives a heading."""
    text = re.sub(r"[`*_]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _github_slug(heading: str) -> str:
    """The anchor that GitHub gives a heading (each space one hyphen, punctuation dropped)."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(path: Path) -> list[str]:
    """The headings of a markdown file, outside code fences."""
    headings = []
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line.strip())
        if match and (fence is None or match.group(1) == fence):
            fence = match.group(1) if fence is None else None
            continue
        heading = _HEADING.match(line)
        if fence is None and heading:
            headings.append(heading.group(1))
    return headings


def test_every_anchor_link_names_a_heading_in_mkdocs_and_on_github() -> None:
    broken = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in _LINK.finditer(text):
            target = DOCS / match.group(1) if match.group(1) else path
            if not target.is_file():
                continue  # a missing page is mkdocs' --strict build's to report
            headings = _headings(target)
            anchor = match.group(2)
            for slug in (_mkdocs_slug, _github_slug):
                if anchor not in {slug(heading) for heading in headings}:
                    broken.append(f"{path.name}: #{anchor} ({slug.__name__})")
    assert not broken, f"anchor links that name no heading: {broken}"


@pytest.mark.parametrize(
    ("page", "line", "code"), [param for param in SNIPPETS if param.values[0] == "checkpoint.md"]
)
def test_checkpoint_snippets_hold_where_pathlib_lives_in_pathlib_local(
    page: str, line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.13 ``PosixPath.__module__`` is ``pathlib._local``, and messages name it so."""
    for kind in (pathlib.PosixPath, pathlib.WindowsPath, pathlib.Path):
        monkeypatch.setattr(kind, "__module__", "pathlib._local")
    test_snippet_runs(page, line, code, tmp_path, monkeypatch)
