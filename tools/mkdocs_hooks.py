"""MkDocs hook: fences marked ``python no-run`` and links out of docs/, for the website.

``python no-run`` (a block the docs test skips, see tests/test_docs.py) is not a fence that
Markdown recognises, so it is rendered as a plain ``python`` block.

A link from docs/ to a file elsewhere in the source tree becomes a mention.

The website holds docs/ only, so a link such as ``../benchmarks/results/x.txt`` (which works
in a checkout and in the source distribution) would break there; it is rendered as the
path "in the source distribution" instead. Links to missing files are left for MkDocs to
report, so ``mkdocs build --strict`` still fails on them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s#]+)\)")
_NO_RUN = re.compile(r"^(\s*`{3,}\s*python)\s+no-run\s*$", re.M)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Plain ``python`` fences and rewritten ``[text](../outside/docs)`` links (MkDocs calls this per page)."""
    markdown = _NO_RUN.sub(r"\1", markdown)
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent

    def mention(match: re.Match[str]) -> str:
        text, href = match.group(1), match.group(2)
        target = (docs / Path(page.file.src_path).parent / href).resolve()
        if docs in target.parents or root not in target.parents or not target.is_file():
            return match.group(0)
        path = target.relative_to(root).as_posix()
        if text.strip("`") == path:
            return f"{text} (in the source distribution)"
        return f"{text} (`{path}` in the source distribution)"

    return _LINK.sub(mention, markdown)
