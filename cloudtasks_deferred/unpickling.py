"""The optional unpickling allowlist: a payload may only name code you listed.

A pickle names every class and function it needs as ``module`` + ``name`` and the
unpickler imports them. With ``CLOUDTASKS_DEFERRED_ALLOWED_MODULES`` set (comma-
separated entries), :class:`Allowlist` unpickles through a restricted
``find_class`` that refuses any other reference **before importing its module**,
raising :class:`DisallowedReferenceError` (the handler answers 403, retried: an
incomplete allowlist is a configuration error, and fixing it drains the queue).

An entry is a module prefix or an exact global:

* ``myapp.tasks`` allows everything defined in ``myapp.tasks`` and its submodules
  (``myapp.tasks.mail``), not ``myapp.tasks_old``;
* ``uuid.UUID`` allows exactly that name (prefer exact names for library modules:
  ``uuid`` as a prefix would allow its helpers that run commands).

Names reached through a prefix are resolved step by step: no name part may start
with ``__`` (``__globals__``, ``__builtins__``, ``__getattribute__``), only classes
are looked into (``Counter.double``, ``Outer.Inner``), no module object is returned,
and every object met must be *defined* in an allowed module (its ``__module__``), so
``myapp.tasks.os.system`` or a function ``myapp.tasks`` imported from elsewhere is
refused. A callable without a ``__module__`` string (a built-in bound method such as
``emit = sys.stderr.write``, or ``from random import getrandbits``) is refused too;
only plain data (a module-level dict, a number) may lack one.

The pickle may only fill in objects it creates itself: ``BUILD`` (set an object's
state), ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS`` are refused, before they change
anything, when their target is an object ``find_class`` returned during this load (a
class, function, module-level dict or library marker the pickle names) or any class,
module, function, method or descriptor — otherwise a payload could rewrite
``Counter.most_common`` or a task's ``__defaults__`` for the rest of the process, even
when a later reference is refused. Checking the real objects takes the pure-Python
unpickler (:mod:`cloudtasks_deferred._checked_unpickler`; roughly 1.5 times the cost
of the opcode pre-scan plus C unpickler it replaces, tens of microseconds for a
typical task), whose memo is a dict: a forged memo index costs no memory.

Always allowed, without listing:

* the library's own task callables, :data:`LIBRARY_CALLABLES` —
  ``cloudtasks_deferred.payload.invoke_member`` (how bound and built-in methods
  travel) and ``cloudtasks_deferred.deferred.run_from_datastore`` (how payloads
  stored in Datastore travel; the stored payload is checked by the same rules), and
  the legacy library's names for them
  (:data:`~cloudtasks_deferred.payload.LEGACY_NAMES`) — but only as the task's
  callable: anywhere else in the pickle each is an inert, immutable marker that
  refuses to be called, since ``invoke_member`` (``getattr(obj, name)(...)``) called
  *while unpickling* would chain attribute lookups to ``eval``;
* ``copyreg._reconstructor``, ``copyreg.__newobj__``, ``copyreg.__newobj_ex__``: the
  standard reconstructors, which only call classes that are themselves checked;
* :data:`SAFE_GLOBALS`: data types that arguments commonly hold (``datetime``,
  ``Decimal``, ``UUID``, ``OrderedDict``... and the built-in constructors ``set``,
  ``complex``, ``range``...).

Never allowed: entries naming :data:`REFUSED_MODULES` (``builtins`` as a whole,
``os``, ``subprocess``, ``pickle``, ``operator``, ``cloudtasks_deferred`` itself...)
or :data:`DANGEROUS_BUILTINS` (``builtins.eval``, ``exec``, ``getattr``,
``__import__``...) make the settings invalid. Built-in functions you defer
(``len``) must be listed by exact name (``builtins.len``).

The allowlist limits which code a forged or replayed payload can reach; it is not a
sandbox: the listed code runs with arguments of the payload's choosing (so it can
change whatever that code changes, and an object your listed code *returns* while
unpickling — a shared instance, not a class or function — can be filled in), and
resource exhaustion (``range(10**12)`` turned into a list by your code) is not
prevented. Python 2 names, which protocols 0-2 write (``__builtin__``,
``copy_reg``), are translated to their Python 3 names as the standard unpickler does,
then checked.
"""

from __future__ import annotations

import importlib
import io
import re
import types
from collections.abc import Callable, Iterable
from typing import Any, Final

from ._checked_unpickler import CheckedUnpickler
from .errors import PayloadRefusedError
from .payload import LEGACY_NAMES, invoke_member

__all__ = [
    "DANGEROUS_BUILTINS",
    "INVOKE_MEMBER",
    "LIBRARY_CALLABLES",
    "REFUSED_MODULES",
    "SAFE_GLOBALS",
    "Allowlist",
    "DisallowedReferenceError",
    "check_entries",
]

#: The library's member-call wrapper (legacy rules 4 and 7), allowed as the task's callable.
INVOKE_MEMBER: Final = f"{invoke_member.__module__}.{invoke_member.__qualname__}"
#: The library functions a payload may name, each only as the task's callable.
LIBRARY_CALLABLES: Final = frozenset(
    {INVOKE_MEMBER, "cloudtasks_deferred.deferred.run_from_datastore"}
)
# The legacy library's names for them (its queued tasks still run).
_LEGACY_CALLABLES: Final = {
    f"{module}.{name}": f"{ours[0]}.{ours[1]}" for (module, name), ours in LEGACY_NAMES.items()
}
_RECONSTRUCTORS: Final = frozenset(
    {"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"}
)
#: Data types allowed without listing: constructing them runs no code of the payload's.
SAFE_GLOBALS: Final = frozenset(
    {
        *(
            f"builtins.{name}"
            for name in [
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "object",
                "range",
                "set",
                "slice",
                "str",
                "tuple",
            ]
        ),
        "datetime.date",
        "datetime.datetime",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "uuid.UUID",
        "collections.OrderedDict",
        "collections.Counter",
        "collections.defaultdict",
        "collections.deque",
    }
)
#: Modules an entry may not name, wholly or in part: each reaches arbitrary code.
REFUSED_MODULES: Final = frozenset(
    {
        "builtins",
        "cloudtasks_deferred",
        "code",
        "codeop",
        "ctypes",
        "importlib",
        "io",
        "marshal",
        "multiprocessing",
        "nt",
        "operator",
        "_operator",
        "os",
        "pickle",
        "_pickle",
        "posix",
        "pty",
        "runpy",
        "shutil",
        "socket",
        "subprocess",
        "sys",
        "types",
    }
)
#: Built-ins that may never be listed: they evaluate code or reach any attribute.
DANGEROUS_BUILTINS: Final = frozenset(
    f"builtins.{name}"
    for name in [
        "__import__",
        "breakpoint",
        "compile",
        "delattr",
        "eval",
        "exec",
        "getattr",
        "globals",
        "input",
        "locals",
        "open",
        "setattr",
        "type",
        "vars",
    ]
)
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class DisallowedReferenceError(PayloadRefusedError):
    """The pickle names code outside the allowlist (its module was not imported), or would
    modify an object it did not create (nothing was modified)."""


def check_entries(entries: Iterable[str]) -> None:
    """Validates allowlist entries.

    Args:
        entries: Module prefixes or exact globals (module docstring).

    Raises:
        ValueError: An entry is not a dotted name, or names something never allowed
            (:data:`REFUSED_MODULES`, :data:`DANGEROUS_BUILTINS`); the message quotes it.
    """
    for entry in entries:
        if entry == INVOKE_MEMBER:  # always allowed; listing it changes nothing
            continue
        if not _ENTRY.fullmatch(entry):
            raise ValueError(f"{entry!r} is not a dotted module or global name")
        root = entry.split(".", 1)[0]
        builtin_name = root == "builtins" and entry != "builtins"
        if entry in DANGEROUS_BUILTINS or (root in REFUSED_MODULES and not builtin_name):
            raise ValueError(
                f"{entry!r} would let a payload reach arbitrary code; list your task "
                "modules and exact data types (e.g. builtins.len, uuid.UUID) instead"
            )
        if builtin_name and entry.count(".") != 1:
            raise ValueError(f"{entry!r}: list built-ins by exact name, e.g. builtins.len")


class Allowlist:
    """Unpickles task payloads, refusing references outside the allowed entries.

    Args:
        entries: Module prefixes or exact globals, validated with :func:`check_entries`.

    Raises:
        ValueError: An entry is invalid.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        check_entries(self.entries)
        self._exact = SAFE_GLOBALS | _RECONSTRUCTORS | frozenset(self.entries)
        self._prefixes = tuple(entry + "." for entry in self.entries)
        self._modules = frozenset(self.entries)

    def allows_module(self, module: str) -> bool:
        """Whether everything defined in ``module`` may be referenced."""
        return module in self._modules or module.startswith(self._prefixes)

    def loads(self, pickled: bytes) -> Any:
        """Unpickles ``pickled`` under the allowlist.

        Args:
            pickled: The payload's pickle.

        Returns:
            The unpickled object; a ``(callable, args, kwargs)`` tuple whose callable
            is one of :data:`LIBRARY_CALLABLES` gets the real function back.

        Raises:
            DisallowedReferenceError: The pickle names something not allowed, or
                would modify an object it did not create (module docstring).
            ImportError, AttributeError: An allowed name does not exist here.
            pickle.UnpicklingError, ValueError, EOFError, ...: The bytes are not a
                valid pickle.
        """
        unpickler = CheckedUnpickler(
            io.BytesIO(pickled), resolve=self.resolve, refuse=DisallowedReferenceError
        )
        loaded = unpickler.load()
        if isinstance(loaded, tuple) and len(loaded) == 3:
            marker = loaded[0]
            if isinstance(marker, _LibraryCallable):
                return (marker.function(), loaded[1], loaded[2])
        return loaded

    def resolve(self, find: Callable[[str, str], Any], module: str, name: str) -> Any:
        """The checks behind ``find_class`` (module docstring); imports only when allowed.

        Args:
            find: The unpickler's own lookup, called only for allowed names.
            module: The module the pickle names (Python 3 name).
            name: The name in it, possibly dotted.

        Returns:
            The object, or a library callable's marker.

        Raises:
            DisallowedReferenceError: The reference is not allowed.
        """
        full = f"{module}.{name}"
        full = _LEGACY_CALLABLES.get(full, full)
        if full in _MARKERS:
            return _MARKERS[full]
        if full in self._exact:
            found = find(module, name)
            if isinstance(found, types.ModuleType):
                raise _refused(full)
            return found
        parts = name.split(".")
        if not self.allows_module(module) or any(
            not part or part.startswith("__") for part in parts
        ):
            raise _refused(full)
        found = find(module, parts[0])
        self._check_defined_here(found, full)
        for part in parts[1:]:
            if not isinstance(found, type):
                raise _refused(full)
            found = getattr(found, part)
            self._check_defined_here(found, full)
        return found

    def _check_defined_here(self, found: Any, full: str) -> None:
        if isinstance(found, types.ModuleType):
            raise _refused(full)
        defined_in = getattr(found, "__module__", None)
        if not isinstance(defined_in, str):
            # Built-in bound methods have __module__ None: only plain data may lack one.
            if callable(found):
                raise _refused(full)
            return
        if not self.allows_module(defined_in):
            qualified = f"{defined_in}.{getattr(found, '__qualname__', '')}"
            if qualified not in self._exact:
                raise _refused(full)


class _LibraryCallable:
    """Stands for a library callable while unpickling; refuses to be called."""

    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a library callable's marker cannot be changed")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a library callable's marker cannot be changed")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DisallowedReferenceError(
            f"the payload calls {self.name} while unpickling; it is allowed only as "
            "the task's callable"
        )

    def function(self) -> Any:
        """The real callable, for the task itself."""
        module, _, attribute = self.name.rpartition(".")
        return getattr(importlib.import_module(module), attribute)

    def __repr__(self) -> str:
        return f"<{self.name} marker>"


_MARKERS: Final = {name: _LibraryCallable(name) for name in LIBRARY_CALLABLES}


def _refused(full: str) -> DisallowedReferenceError:
    from .settings import _ENV_NAMES  # the variable's one name; settings imports this module

    variable = _ENV_NAMES["allowed_modules"]
    return DisallowedReferenceError(
        f"the payload references {full!r}, which {variable} does not allow"
    )
