"""``mypy --strict`` over the docs' snippets (tests/docs_snippets_typecheck.py); skipped without mypy.

mypy is not a dependency of the test suite: install it (``pip install mypy``) to run this.
A cold mypy cache takes about a minute on 2 cores; later runs take seconds.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "mypy", reason="mypy is not installed (pip install mypy to type-check the docs' snippets)"
)

import docs_snippets_typecheck


@pytest.mark.slow  # a cold mypy run: about half a minute on 2 cores
def test_every_docs_page_passes_mypy_strict() -> None:
    pages = docs_snippets_typecheck.docs_pages()
    assert "recipes.md" in pages and len(pages) > 20  # the glob found docs/, not an empty folder
    errors, report = docs_snippets_typecheck.check(pages)
    assert errors == 0, report
