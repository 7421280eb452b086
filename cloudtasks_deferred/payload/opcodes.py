"""A pickle's opcodes, read without running them, within a bound on their number.

:func:`opcodes` is :func:`pickletools.genops` made safe for any byte string and for
Python 2's pickles: it reads a Python 2
``STRING`` as Latin-1 text (``genops`` fails on any non-ASCII byte in one, which every
Python 2 ``datetime`` has), and reads ``GLOBAL``/``INST`` names as :mod:`pickle` does.
Lengths a pickle states are never allocated beyond the bytes it has (``pickletools``'
readers slice what is there). Used by :mod:`cloudtasks_deferred.payload.reader` and by
``cloudtasks-deferred inspect --disassemble``.
"""

from __future__ import annotations

import codecs
import io
import pickletools
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = ["opcodes"]


def opcodes(pickled: bytes) -> Iterator[tuple[pickletools.OpcodeInfo, Any, int]]:
    """Yields ``(opcode, argument, offset)`` up to and including ``STOP``.

    :func:`pickletools.genops` with two differences: a Python 2 ``STRING`` is read as
    Latin-1 text (``genops`` fails on any non-ASCII byte in it, which every Python 2
    ``datetime`` has), and ``GLOBAL``/``INST`` names are read as ``pickle`` reads them.

    Raises:
        ValueError: An unknown opcode, an argument that is malformed or cut short, or
            the end of the data before ``STOP`` (the message says which).
    """
    stream = io.BytesIO(pickled)
    while True:
        position = stream.tell()
        code = stream.read(1)
        if not code:
            raise ValueError("the pickle ends before its STOP opcode")
        opcode = _BY_CODE.get(code)
        if opcode is None:
            raise ValueError(f"unknown opcode {code!r}")
        reader = _READERS.get(opcode.name) or (opcode.arg.reader if opcode.arg else None)
        yield opcode, None if reader is None else reader(stream), position
        if opcode.name == "STOP":
            return


def _py2_string(stream: io.BytesIO) -> str:
    """``STRING``'s quoted, escaped bytes (Python 2's ``repr`` of a ``str``), as Latin-1."""
    data = pickletools.read_stringnl(stream, decode=False)
    assert isinstance(data, bytes)  # noqa: S101 - decode=False returns the raw bytes
    decoded: bytes = codecs.escape_decode(data)[0]
    return decoded.decode("latin-1")


def _line(stream: io.BytesIO) -> str:
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise ValueError("a GLOBAL or INST name has no newline")
    return line[:-1].decode("utf-8")


def _global_name(stream: io.BytesIO) -> tuple[str, str]:
    """``GLOBAL``/``INST``: two lines, module and name, as ``pickle`` decodes them."""
    return _line(stream), _line(stream)


_BY_CODE: Final = {opcode.code.encode("latin-1"): opcode for opcode in pickletools.opcodes}
_READERS: Final[dict[str, Callable[[io.BytesIO], Any]]] = {
    "STRING": _py2_string,
    "GLOBAL": _global_name,
    "INST": _global_name,
}
