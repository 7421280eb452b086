"""What the allowlist-rule tests reach: each object here is refused by exactly one rule.

The tests in ``test_allowlist_rules.py`` allow this module (and nothing else) and
name one of these objects, so that every other rule of
:mod:`cloudtasks_deferred.payload.allowlist` lets the reference through and the rule under
test is the only one left to refuse it. Keep it that way: an object refused by two
rules tests neither.
"""

from __future__ import annotations

import collections
import functools
import subprocess
import types
from typing import Any, Final
from uuid import UUID  # a safe global re-exported here: allowed through its exact entry

__all__ = [
    "NAMES",
    "SHARED",
    "TAGS",
    "TALLY",
    "UUID",
    "Described",
    "Helper",
    "Job",
    "OwnLookup",
    "make_nested",
    "never_filled_in",
    "run_elsewhere",
]

#: ``subprocess.run`` under a name of this module, at the top level.
run_elsewhere = subprocess.run


def make_nested() -> Any:
    """A function of this module returning one nested in it (``make_nested.<locals>``)."""

    def nested() -> str:
        return "nested"

    return nested


class Helper:
    """A callable class of this module: its instances are allowed callables."""

    def __call__(self) -> str:
        return "helped"


class Job:
    """A class of this module: it may be looked into, its own methods are allowed."""

    def __init__(self, name: str = "job") -> None:
        self.name = name

    def run(self) -> str:
        return self.name

    #: Defined in ``subprocess``, reached through this module's class.
    shell = subprocess.run

    #: Each kind of object the unpickler never fills in, as a class attribute.
    static = staticmethod(len)
    klass = classmethod(len)
    #: A static method wrapping code of ``subprocess``.
    spawn = staticmethod(subprocess.run)
    #: Callable objects stored on the class: one of an allowed class, one not.
    helper = Helper()
    runner = functools.partial(subprocess.run)

    @property
    def prop(self) -> str:
        return self.name


class OwnLookup:
    """A class of this module with its own ``__getattribute__``: any member could be
    swapped for anything when looked up."""

    def __getattribute__(self, name: str) -> Any:
        return object.__getattribute__(self, name)

    def run(self) -> str:
        return "looked up"


class _SetOnly:
    """A data descriptor by ``__set__`` alone."""

    def __get__(self, obj: object, owner: type | None = None) -> Helper:
        return Helper()

    def __set__(self, obj: object, value: object) -> None:
        raise AttributeError("read-only")


class _DeleteOnly:
    """A data descriptor by ``__delete__`` alone."""

    def __get__(self, obj: object, owner: type | None = None) -> Helper:
        return Helper()

    def __delete__(self, obj: object) -> None:
        raise AttributeError("read-only")


class Described:
    """Data descriptors that ``getattr`` prefers to the instance's own ``__dict__``."""

    set_only = _SetOnly()
    delete_only = _DeleteOnly()


#: A shared instance: its bound methods are not classes, so not looked into.
SHARED: Final = Job("shared")
#: Shared containers: a pickle that names them may not fill them in (found by the load).
NAMES: Final[list[str]] = ["default"]
TAGS: Final[set[str]] = {"test"}
#: Data whose class is defined elsewhere: an instance has no ``__qualname__``.
TALLY: Final = collections.Counter[str]()


def _function() -> None:
    """A plain function this module's code hands out."""


_NEVER_FILLED_IN: Final[dict[str, Any]] = {
    "module": collections,
    "function": _function,
    "builtin function": len,
    "method": SHARED.run,
    "method-wrapper": SHARED.__str__,
    "wrapper descriptor": object.__init__,
    "method descriptor": str.join,
    "classmethod descriptor": dict.__dict__["fromkeys"],
    "getset descriptor": types.FunctionType.__dict__["__name__"],
    "member descriptor": types.FunctionType.__dict__["__globals__"],
    "code": _function.__code__,
    "staticmethod": Job.__dict__["static"],
    "classmethod": Job.__dict__["klass"],
    "property": Job.__dict__["prop"],
}


def never_filled_in(kind: str) -> Any:
    """Listed code returning an object of ``kind`` (one per never-filled-in type).

    A pickle that calls it gets an object ``find_class`` did not return, so only the
    unpickler's type check can stop a ``BUILD`` on it.
    """
    return _NEVER_FILLED_IN[kind]
