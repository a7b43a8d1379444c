"""Release metadata: one version, the distribution name, license, and (under ``make test``) the installed wheel."""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import trainkit

ROOT = Path(__file__).resolve().parent.parent
DIST = "trainkit-pt"
INSTALLED = os.environ.get("TRAINKIT_TEST_INSTALLED") == "1"
installed_only = pytest.mark.skipif(
    not INSTALLED, reason="runs under `make test` (TRAINKIT_TEST_INSTALLED=1), against the wheel"
)


def pyproject() -> dict:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_is_single_sourced_from_the_package() -> None:
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "trainkit.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", trainkit.__version__), trainkit.__version__


def test_changelog_has_unreleased_on_top_and_a_section_for_this_version() -> None:
    headings = re.findall(
        r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M
    )
    assert headings[0] == "Unreleased", headings
    assert trainkit.__version__ in headings, (trainkit.__version__, headings)


def test_license_and_metadata() -> None:
    project = pyproject()["project"]
    assert project["name"] == DIST
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert "Typing :: Typed" in project["classifiers"]
    assert not any(
        c.startswith("License ::") for c in project["classifiers"]
    )  # SPDX expression instead
    assert f"pip install {DIST}" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_project_urls_point_at_the_repository() -> None:
    urls = pyproject()["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}, urls
    assert all(url.startswith("https://github.com/trainkit/trainkit-pt") for url in urls.values())


def test_install_hints_name_this_distribution() -> None:
    """``pip install 'trainkit[...]'`` would install an unrelated project: hints say trainkit-pt."""
    wrong = re.compile(r"""pip install ['"]?trainkit(\[|['"\s]|$)""")
    files = [ROOT / "README.md", *(ROOT / "examples").glob("*.py"), *(ROOT / "docs").glob("*.md")]
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in files
        for line in path.read_text(encoding="utf-8").splitlines()
        if wrong.search(line)
    ]
    assert not found, found


@installed_only
def test_trainkit_is_imported_from_the_installed_wheel() -> None:
    package = Path(trainkit.__file__).resolve().parent
    assert "site-packages" in package.parts, package
    assert not (ROOT / "src").exists(), (
        "make test runs the suite from the unpacked sdist without src/"
    )
    dist = metadata.distribution(DIST)
    assert dist.version == trainkit.__version__
    assert dist.metadata["License-Expression"] == "MIT"
    assert "Typing :: Typed" in dist.metadata.get_all("Classifier")
    files = {str(f) for f in dist.files or ()}
    assert "trainkit/py.typed" in files
    assert any(f.endswith("licenses/LICENSE") for f in files), sorted(files)
    shipped = {Path(f).name for f in files if f.startswith("trainkit/") and f.endswith(".py")}
    expected = {
        "__init__.py",
        "ema.py",
        "export.py",
        "atomic.py",
        "_state.py",
        "checkpoint.py",
        "trainer.py",
    }
    assert expected <= shipped, expected - shipped


def test_api_reference_renders_every_public_module_and_names_the_internal_ones() -> None:
    package = Path(trainkit.__file__).resolve().parent
    modules = {f"trainkit.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^::: (trainkit\.\w+)$", text, re.M))
    internal_part = text.split("## Internal modules", 1)[1]
    internal = set(re.findall(r"`(trainkit\.\w+)`", internal_part)) & modules
    assert listed | internal == modules and not listed & internal, (
        f"docs/api.md: missing {sorted(modules - listed - internal)}, "
        f"unknown {sorted(listed - modules)}, both {sorted(listed & internal)}"
    )


def test_every_docs_page_is_in_the_mkdocs_navigation() -> None:
    yaml = pytest.importorskip("yaml", reason="pyyaml reads mkdocs.yml")

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [p for value in node.values() for p in pages(value)]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        return []

    nav = set(pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]))
    docs = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert nav == docs, (
        f"mkdocs.yml nav: missing {sorted(docs - nav)}, unknown {sorted(nav - docs)}"
    )
