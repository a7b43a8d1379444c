"""Type-check the Python snippets of docs/*.md with ``mypy --strict``.

Users copy these snippets into typed code bases, so the types trainkit declares must accept
what the docs pass (a 0-d tensor to ``EarlyStopper.step``, a recipe's numbers through its typed
builders, a ``Path | None`` handled before use, ...). Each runnable snippet (not fenced
``python no-run``) of every page under docs/ becomes a module in a temporary directory; one
``mypy --strict`` run checks them all against ``src/``.

Run:  python tests/docs_snippets_typecheck.py            # every page under docs/
      python tests/docs_snippets_typecheck.py stopping.md trainer.md

Settings beyond ``--strict``:
- ``--untyped-calls-exclude=torch``: torch's own ``Tensor.backward`` and a few other
  functions have no annotations, so strict mode would flag every ``loss.backward()``.
- ``--follow-imports=silent``: trainkit's modules are checked for what the snippets see
  of them (their signatures), not re-reported here.
The mypy cache lives in ``.cache/mypy-docs`` (a cold run takes about a minute on 2 cores,
a warm one about a second). Exit status: 0 when every checked snippet passes, 1 otherwise,
2 when mypy is not installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CACHE = ROOT / ".cache" / "mypy-docs"


sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs import python_blocks  # noqa: E402  (the docs test's own block parser)


def docs_pages() -> list[str]:
    """Every page under docs/ (file names), sorted."""
    return sorted(page.name for page in DOCS.glob("*.md"))


def write_snippets(pages: list[str], directory: Path) -> dict[str, tuple[str, int]]:
    """Write each runnable snippet as ``<page>_<n>.py``; return module file -> (page, first line)."""
    where: dict[str, tuple[str, int]] = {}
    for page in pages:
        for index, (line, code, skip) in enumerate(python_blocks(DOCS / page), start=1):
            if skip:
                continue
            name = f"{Path(page).stem.replace('-', '_')}_{index}.py"
            (directory / name).write_text(code, encoding="utf-8")
            where[name] = (page, line)
    return where


def check(pages: list[str]) -> tuple[int, str]:
    """Run mypy over the pages' snippets; return (number of errors, report with docs line numbers)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        where = write_snippets(pages, directory)
        if not where:
            return 0, "no runnable snippets"
        CACHE.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--untyped-calls-exclude=torch",
            "--follow-imports=silent",
            "--no-error-summary",
            "--cache-dir",
            str(CACHE),
            *sorted(str(directory / name) for name in where),
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=tmp,
            env={**os.environ, "MYPYPATH": str(ROOT / "src")},
        )
        lines = []
        errors = 0
        for raw in (done.stdout + done.stderr).splitlines():
            name, _, rest = raw.partition(":")
            file_name = Path(name).name
            if file_name in where and rest.split(":", 1)[0].strip().isdigit():
                number, _, message = rest.partition(":")
                page, first = where[file_name]
                lines.append(f"docs/{page}:{first + int(number) - 1}:{message}")
                errors += " error:" in raw
            elif raw.strip():
                lines.append(raw)
        if done.returncode not in (0, 1):
            errors = max(errors, 1)
        return errors, "\n".join(lines)


def mypy_available() -> bool:
    try:
        import mypy  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help="pages under docs/ (default: every page)")
    parser.add_argument("--all", action="store_true", help="every page under docs/ (the default)")
    args = parser.parse_args(argv)
    if not mypy_available():
        print("mypy is not installed: pip install mypy", file=sys.stderr)
        return 2
    pages = docs_pages() if args.all or not args.pages else args.pages
    errors, report = check(pages)
    if report:
        print(report)
    print(f"{len(pages)} pages checked with mypy --strict: {errors} errors")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
