"""Every module of the package says what it exports, and shares nothing else."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import cloudtasks_deferred


def modules() -> list[ModuleType]:
    names = [cloudtasks_deferred.__name__]
    names += [
        info.name
        for info in pkgutil.walk_packages(
            cloudtasks_deferred.__path__, f"{cloudtasks_deferred.__name__}."
        )
    ]
    return [importlib.import_module(name) for name in names]


@pytest.mark.parametrize("module", modules(), ids=lambda module: module.__name__)
def test_every_module_lists_names_that_exist(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module.__name__} has no __all__"
    assert len(exported) == len(set(exported))
    assert [name for name in exported if not hasattr(module, name)] == []


def imported_names(module: ModuleType) -> list[tuple[str, str]]:
    """``(module, name)`` for each ``from .module import name`` of the module's source."""
    path = Path(module.__file__ or "")
    package = module.__name__ if path.name == "__init__.py" else module.__name__.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        source = f"{base}.{node.module}" if node.module else base
        found += [(source, alias.name) for alias in node.names]
    return found


def is_submodule(package: str, name: str) -> bool:
    """Whether ``from package import name`` imports a module: ``from . import limits``."""
    if not hasattr(importlib.import_module(package), "__path__"):
        return False
    return importlib.util.find_spec(f"{package}.{name}") is not None


@pytest.mark.parametrize("module", modules(), ids=lambda module: module.__name__)
def test_what_modules_import_from_each_other_is_exported(module: ModuleType) -> None:
    unexported = [
        f"{source}.{name}"
        for source, name in imported_names(module)
        if not name.startswith("_")
        and not is_submodule(source, name)
        and name not in getattr(importlib.import_module(source), "__all__", ())
    ]
    assert unexported == []
