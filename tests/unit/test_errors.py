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
    "cloudtasks_deferred._tasks_emulator",
    "cloudtasks_deferred.cli",
    "cloudtasks_deferred.devcommand",
    "cloudtasks_deferred.devserver",
    "cloudtasks_deferred.emulators",
    "cloudtasks_deferred.inspect_payload",
    "cloudtasks_deferred.localdev",
    "cloudtasks_deferred.pickle_reader",
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
                cls.__name__
                if name == "cloudtasks_deferred.errors"
                else (f"{short.split('.')[0]}.{cls.__name__}")
            )
            assert drawn in (errors.__doc__ or ""), drawn
