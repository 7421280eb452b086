"""The exception tree: everything the library raises at run time descends from Error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import cloudtasks_deferred
from cloudtasks_deferred import errors

#: The development tools raise their own errors, turned into exit codes by the CLI.
TOOLING = {
    "cloudtasks_deferred.devtools.tasks_emulator",
    "cloudtasks_deferred.devtools.cli",
    "cloudtasks_deferred.devtools.cli_dead_letters",
    "cloudtasks_deferred.devtools.devcommand",
    "cloudtasks_deferred.devtools.devserver",
    "cloudtasks_deferred.devtools.emulators",
    "cloudtasks_deferred.payload.inspection",
    "cloudtasks_deferred.devtools.localdev",
    "cloudtasks_deferred.payload.reader",
}

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(cloudtasks_deferred.__path__, "cloudtasks_deferred.")
    if info.name not in TOOLING
)


@pytest.mark.parametrize("name", MODULES)
def test_every_exception_descends_from_error(name: str) -> None:
    module = importlib.import_module(name)
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__ == name:
            expected = Warning if issubclass(cls, Warning) else errors.Error
            assert issubclass(cls, expected), f"{name}.{cls.__qualname__}"


@pytest.mark.parametrize("name", MODULES)
def test_every_exception_is_drawn_in_the_tree(name: str) -> None:
    module = importlib.import_module(name)
    short = name.removeprefix("cloudtasks_deferred.")
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__ == name:
            drawn = (
                cls.__name__ if name == "cloudtasks_deferred.errors" else f"{short}.{cls.__name__}"
            )
            assert drawn in (errors.__doc__ or ""), drawn
