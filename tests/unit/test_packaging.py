"""What installs the project: pyproject's dependency lists and scripts/bootstrap."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.run_cli import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
LISTS = {"dependencies": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}

#: Where each development tool is used: a text that appears in the files that use it.
DEV_TOOL_USES = {
    "pytest": "import pytest",
    "hypothesis": "from hypothesis import",
    "ruff": ".venv/bin/ruff check",
    "mypy": ".venv/bin/mypy",
    "gunicorn": "gunicorn",
    "python-hcl2": "import hcl2",
    "build": "-m build",
    "twine": "twine check",
    "types-requests": "import requests",
    "types-pyyaml": "import yaml",
    "mutmut": 'with_name("mutmut")',
    "import-linter": "lint-imports",
    "opentelemetry-sdk": "from opentelemetry.sdk",
}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_no_package_is_listed_twice(name: str) -> None:
    names = [Requirement(line).name.lower() for line in LISTS[name]]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def used_text() -> str:
    files = [ROOT / ".ci" / "run", *(ROOT / "scripts").iterdir()]
    files += [*ROOT.glob("tests/**/*.py"), *ROOT.glob("cloudtasks_deferred/**/*.py")]
    return "\n".join(path.read_text(errors="replace") for path in files if path.is_file())


def test_every_development_tool_is_used() -> None:
    text = used_text()
    tools = [Requirement(line).name.lower() for line in PROJECT["optional-dependencies"]["dev"]]
    unknown = [tool for tool in tools if tool not in DEV_TOOL_USES]
    assert unknown == [], "say in DEV_TOOL_USES where these are used, or drop them"
    assert [tool for tool in tools if DEV_TOOL_USES[tool] not in text] == []


def test_bootstrap_cites_only_files_that_exist() -> None:
    text = (ROOT / "scripts" / "bootstrap").read_text()
    cited = set(re.findall(r"[\w./-]+\.(?:md|toml|txt|cfg)\b", text))
    assert cited, "the pattern finds the files bootstrap names"
    assert sorted(name for name in cited if not (ROOT / name).exists()) == []
    assert "DESIGN.md" not in text


def bootstrap_in(tmp_path: Path, python: str) -> subprocess.CompletedProcess[str]:
    """Runs a copy of scripts/bootstrap in an empty project with ``PYTHON=python``."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap", tmp_path / "scripts" / "bootstrap")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return subprocess.run(
        [str(tmp_path / "scripts" / "bootstrap")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bootstrap_without_python_says_what_to_install(tmp_path: Path) -> None:
    result = bootstrap_in(tmp_path, "/nonexistent/python3")
    assert result.returncode == 3
    assert result.stderr == (
        "scripts/bootstrap: /nonexistent/python3 is not on the PATH: install Python 3.11 or "
        "later, or name one with PYTHON=/path/to/python3.11 scripts/bootstrap\n"
    )
    assert not (tmp_path / ".venv").exists()


def test_bootstrap_with_an_old_python_says_what_to_install(tmp_path: Path) -> None:
    old = tmp_path / "python3.8"
    old.write_text(
        '#!/bin/sh\ncase "$2" in *print*) echo 3.8 ;; *) exit 1 ;; esac\n'  # as Python 3.8 answers
    )
    old.chmod(0o755)
    result = bootstrap_in(tmp_path, str(old))
    assert result.returncode == 3
    assert result.stderr.startswith(
        f"scripts/bootstrap: {old} is Python 3.8; cloudtasks-deferred needs 3.11 or later: "
    )
    assert not (tmp_path / ".venv").exists()
