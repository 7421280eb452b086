"""Pickles written opcode by opcode, as a forged payload is: building one imports nothing.

Each helper returns a fragment that pushes one object; :func:`task` wraps a callable and
its arguments into a whole ``(callable, args, kwargs)`` pickle (protocol 4, no frame).
"""

from __future__ import annotations

import struct

INVOKE_MEMBER = ("cloudtasks_deferred.payload", "invoke_member")
RUN_FROM_DATASTORE = ("cloudtasks_deferred.deferred", "run_from_datastore")
LEGACY_INVOKE_MEMBER = ("google.appengine.ext.deferred.deferred", "invoke_member")
LEGACY_RUN_FROM_DATASTORE = ("google.appengine.ext.deferred.deferred", "run_from_datastore")
ALLOWED = "tests.security.allowed_tasks"


def text(value: str) -> bytes:
    """``SHORT_BINUNICODE`` or ``BINUNICODE``."""
    data = value.encode()
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    """``BININT`` (32-bit), ``LONG1`` or ``LONG4``."""
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(data) < 256:
        return b"\x8a" + bytes([len(data)]) + data
    return b"\x8b" + struct.pack("<i", len(data)) + data


def ref(module: str, name: str) -> bytes:
    """``STACK_GLOBAL``: the object ``module.name``."""
    return text(module) + text(name) + b"\x93"


def tup(*items: bytes) -> bytes:
    """A tuple of the objects the fragments push."""
    return b"(" + b"".join(items) + b"t"


def dict_of(**items: bytes) -> bytes:
    """A dict of ``str`` keys to the objects the fragments push."""
    return b"}(" + b"".join(text(key) + value for key, value in items.items()) + b"u"


def call(func: bytes, *args: bytes) -> bytes:
    """``REDUCE``: the result of calling ``func(*args)`` while unpickling."""
    return func + tup(*args) + b"R"


def new(cls: bytes, state: bytes | None = None) -> bytes:
    """``NEWOBJ`` (``cls.__new__(cls)``), then ``BUILD`` with ``state`` if given."""
    return cls + b")\x81" + (state + b"b" if state is not None else b"")


def pickle_of(*fragments: bytes) -> bytes:
    """A whole pickle (protocol 4, no frame) of the object the fragments push."""
    return b"\x80\x04" + b"".join(fragments) + b"."


def task(func: bytes, *args: bytes) -> bytes:
    """A whole task pickle: ``(func, args, {})``."""
    return b"\x80\x04" + func + tup(*args) + b"}\x87."


def member_task(obj: bytes, name: str, *args: bytes, via: tuple[str, str] = INVOKE_MEMBER) -> bytes:
    """``invoke_member(obj, name, *args)`` as the task, through ``via``'s name."""
    return task(ref(*via), obj, text(name), *args)
