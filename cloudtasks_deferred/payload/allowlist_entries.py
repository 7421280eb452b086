"""Allowlist entries: what an entry may name, and the names allowed or refused without one.

The policy that uses them is :mod:`cloudtasks_deferred.payload.allowlist`; the settings
validate ``CLOUDTASKS_DEFERRED_ALLOWED_MODULES`` with :func:`check_entries`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "ALLOWED_MODULES_VARIABLE",
    "DANGEROUS_BUILTINS",
    "INVOKE_MEMBER",
    "RECONSTRUCTORS",
    "REFUSED_MODULES",
    "SAFE_GLOBALS",
    "check_entries",
]

#: The variable the allowlist is read from (named in every refusal).
ALLOWED_MODULES_VARIABLE: Final = "CLOUDTASKS_DEFERRED_ALLOWED_MODULES"
#: The library's member-call wrapper (legacy rules 4 and 7), allowed as the task's callable.
INVOKE_MEMBER: Final = "cloudtasks_deferred.payload.invoke_member"
#: The standard reconstructors: they only call classes that are themselves checked.
RECONSTRUCTORS: Final = frozenset(
    {"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"}
)
#: Data types a pickle may construct without listing: constructing them runs no code
#: of the payload's. They carry arguments; they are not callable as tasks.
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
        # How protocols 0-2 (Python 3 writing for Python 2) carry bytes: only with
        # latin-1, which the bounded unpickler enforces.
        "_codecs.encode",
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
        if not isinstance(entry, str) or not _ENTRY.fullmatch(entry):
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
