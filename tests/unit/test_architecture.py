"""The package's shape: no import cycle, lazy imports only where marked, layers documented.

The layers themselves (which subpackage may import which) are import-linter's
contracts in pyproject.toml, run by ``lint-imports`` in ``.ci/run``; these tests hold
what a contract does not say.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

import cloudtasks_deferred

PACKAGE = Path(cloudtasks_deferred.__file__).parent
#: Longer modules say why at their top, with this phrase.
LONG_REASON = "Why this module is long:"
MAX_LINES = 420


def find_cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle of ``graph`` (modules, the first repeated last), or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)) is not None:
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph.modules):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    # grimp reads every import statement: inside functions and TYPE_CHECKING blocks too.
    graph = grimp.build_graph("cloudtasks_deferred", include_external_packages=False)
    assert find_cycle(graph) is None


@pytest.fixture
def cyclic_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package whose two modules import each other, one of them inside a function."""
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        textwrap.dedent(
            """
            def later():
                from cyclepkg import b  # hidden in a function, as the old code did

                return b
            """
        )
    )
    (package / "b.py").write_text("import cyclepkg.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cyclepkg"
    sys.modules.pop("cyclepkg", None)


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function(cyclic_package: str) -> None:
    graph = grimp.build_graph(cyclic_package, include_external_packages=False)
    assert find_cycle(graph) == ["cyclepkg.a", "cyclepkg.b", "cyclepkg.a"]


def local_import_blocks() -> Iterator[tuple[Path, int, list[str]]]:
    """Each run of imports inside a function (not under ``TYPE_CHECKING``), with the
    source lines just above it and on its first line."""
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        skipped: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for child in ast.walk(node))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            previous_was_import = False
            for statement in _statements(node):
                is_import = isinstance(statement, (ast.Import, ast.ImportFrom))
                if is_import and id(statement) not in skipped and not previous_was_import:
                    start = statement.lineno
                    yield path, start, lines[max(0, start - 2) : start]
                previous_was_import = is_import


def _statements(node: ast.AST) -> Iterator[ast.stmt]:
    for field in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(node, field, []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # their own blocks are visited as functions
            yield child
            yield from _statements(child)


def test_function_local_imports_are_lazy_loads_marked_with_their_reason() -> None:
    # Only to load a heavy or optional dependency lazily, and then with a comment.
    unmarked = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, line, context in local_import_blocks()
        if not any("#" in text for text in context)
    ]
    assert unmarked == []


def test_each_layer_says_what_it_may_import() -> None:
    for layer in ("payload", "storage", "enqueue", "receive", "devtools"):
        doc = (PACKAGE / layer / "__init__.py").read_text()
        assert "may import" in doc, layer


def test_modules_stay_small_or_say_why() -> None:
    long = [
        path.relative_to(PACKAGE.parent)
        for path in PACKAGE.rglob("*.py")
        if len(path.read_text().splitlines()) > MAX_LINES
        and LONG_REASON not in "\n".join(path.read_text().splitlines()[:60])
    ]
    assert long == []


def test_the_handler_path_imports_neither_google_cloud_tasks_nor_the_tools() -> None:
    code = textwrap.dedent(
        """
        import sys
        import cloudtasks_deferred
        from cloudtasks_deferred import Handler, wrap_wsgi_app
        from cloudtasks_deferred.functions import deferred_task
        wrap_wsgi_app(lambda environ, start_response: [])
        Handler()
        print(sorted(m for m in sys.modules
                     if m.startswith(("google.cloud.tasks_v2", "cloudtasks_deferred.devtools"))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
