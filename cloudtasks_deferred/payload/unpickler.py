"""Pure-Python unpicklers that bound what a pickle may cost and check what it touches.

The C unpickler offers no hook before an opcode acts, and sizes its memo by the
largest index a pickle names (five bytes can ask for gigabytes). These classes
extend :class:`pickle._Unpickler`, the standard library's pure-Python
implementation, whose opcodes are methods a subclass can check first.

:class:`BoundedUnpickler` — every pickle the library reads through it, with or
without an allowlist:

* **a budget** (:class:`DecodeBudget`): at most ``opcodes`` opcodes run, and the
  objects they create are charged an estimate of their size (a fixed cost per
  opcode, the real size of what a call returns); past ``memory`` bytes the load
  stops. Text and bytes are charged their header only: their contents come from
  the pickle, so they add at most 4 bytes per pickle byte (a UTF-8 byte can become
  a 4-byte code point);
* **no size the pickle only claims**: the memo is a dict, ``BYTEARRAY8`` reads its
  bytes before allocating, ``FRAME`` is skipped (the whole pickle is in memory);
* **calls get real arguments**: ``REDUCE``, ``NEWOBJ`` and the rest take exactly
  a tuple (and a dict of keyword arguments), never a lazy ``range`` (``list(range(10**12))``),
  and ``bytes``/``bytearray`` never an integer size;
* **Python 2 strings** (``STRING``, ``BINSTRING``, ``SHORT_BINSTRING``, what
  protocols 0-2 write for a Python 2 ``str``) become ``str`` when they are valid
  UTF-8 and ``bytes`` otherwise; a ``datetime``, ``date`` or ``time`` built from
  one gets its raw bytes, as the ``pickle`` documentation's ``encoding="latin1"``
  rule for these types intends. Python 2 module names (``__builtin__``,
  ``copy_reg``) are translated as the standard unpickler does.

:class:`~cloudtasks_deferred.payload.checked.CheckedUnpickler` adds the allowlist's
checks on top.

The price of checking in Python is speed: decoding a typical 4 KB task costs about
ten times ``pickle.loads`` (benchmark P8); the C unpickler could not enforce any of
the rules above.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import datetime
import functools
import io
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Final

from cloudtasks_deferred.payload.budget import (
    COSTS,
    ITEM_COST,
    MAX_MARK_DEPTH,
    DecodeBudget,
    DecodeLimitError,
)

__all__ = ["BoundedUnpickler"]

Lookup = Callable[[str, str], Any]
Handler = Callable[[Any], None]

_CHECK_EVERY: Final = 64  # opcodes between budget checks: overshoot under 15 KB
_DATE_TYPES: Final = (datetime.date, datetime.time)  # datetime is a date


def _unknown_opcode(unpickler: Any) -> None:
    raise pickle.UnpicklingError("the pickle holds an unknown opcode")


def _whole_line(readline: Callable[[], bytes]) -> bytes:
    """A line of a text opcode, which must end with a newline (as the C unpickler insists)."""
    line = readline()
    if not line.endswith(b"\n"):
        raise pickle.UnpicklingError("pickle data was truncated")
    return line


def _handler_table(dispatch: dict[int, Handler]) -> tuple[Handler, ...]:
    """The dispatch dict as a tuple indexed by opcode: one index instead of a hash."""
    return tuple(dispatch.get(op, _unknown_opcode) for op in range(256))


class BoundedUnpickler(pickle._Unpickler):
    """Unpickles ``data`` within a budget (module docstring).

    Args:
        data: The whole pickle.
        budget: What the load may spend; :meth:`DecodeBudget.for_body` of the
            pickle's size when ``None``.
        find: Resolves a ``(module, name)`` reference, Python 2 names already
            translated; the standard lookup (imports the module) when ``None``.
    """

    dispatch: ClassVar[dict[int, Handler]] = dict(pickle._Unpickler.dispatch)
    _handlers: ClassVar[tuple[Handler, ...]] = ()
    # Set by load() (typeshed does not declare them).
    stack: list[Any]
    metastack: list[list[Any]]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    readline: Callable[[], bytes]
    memo: dict[int, Any]

    def __init__(
        self, data: bytes, *, budget: DecodeBudget | None = None, find: Lookup | None = None
    ) -> None:
        super().__init__(io.BytesIO(data), fix_imports=False)
        self._data = data
        self._budget = budget or DecodeBudget.for_body(len(data))
        self._find = find or super().find_class
        self._charged = 0
        self._opcodes_left = self._budget.opcodes
        # Raw bytes of the Python 2 strings decoded as str, by id (the str is held).
        self._py2_strings: dict[int, tuple[str, bytes]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = _handler_table(cls.dispatch)

    def load(self) -> Any:
        """Reads the pickle and returns the object it holds.

        Raises:
            DecodeLimitError: The budget ran out, or a call broke the rules.
            pickle.UnpicklingError, EOFError, ValueError, ...: The bytes are no pickle.
            Exception: What a referenced callable raised while unpickling.
        """
        source = io.BytesIO(self._data)
        self.read = read = source.read
        self.readline = functools.partial(_whole_line, source.readline)
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        handlers, costs = self._handlers, COSTS
        charged = 0  # the fixed costs, added to self._charged every _CHECK_EVERY opcodes
        countdown = _CHECK_EVERY
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                op = key[0]
                charged += costs[op]
                countdown -= 1
                if not countdown:
                    countdown = _CHECK_EVERY
                    self._opcodes_left -= _CHECK_EVERY
                    self.charge(charged)
                    charged = 0
                handlers[op](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def find_class(self, module: str, name: str) -> Any:
        """Resolves a reference, Python 2 names translated first (any protocol)."""
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        return self._find(module, name)

    def get_extension(self, code: int) -> None:
        """Resolves an ``EXT`` code, never from copyreg's cache (filled by other loads)."""
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    def charge(self, size: int) -> None:
        """Charges ``size`` bytes to the budget (for opcodes whose cost is not fixed).

        Raises:
            DecodeLimitError: The budget is spent (opcodes or memory).
        """
        self._charged += size
        if self._opcodes_left < 0:
            raise DecodeLimitError(f"the pickle runs more than {self._budget.opcodes} opcodes")
        if self._charged > self._budget.memory:
            raise DecodeLimitError(
                f"the pickle creates more than {self._budget.memory} bytes of objects"
            )

    def load_mark(self) -> None:
        """``MARK``, at most :data:`MAX_MARK_DEPTH` deep (each level holds a list)."""
        if len(self.metastack) >= MAX_MARK_DEPTH:
            raise DecodeLimitError(f"the pickle nests more than {MAX_MARK_DEPTH} marks")
        self.metastack.append(self.stack)
        self.stack = []
        self.append = self.stack.append

    # --- Python 2 strings -------------------------------------------------------------

    def _decode_string(self, value: bytes) -> str | bytes:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return value
        if not text.isascii():  # a date's state is rarely valid UTF-8, but can be
            self._py2_strings[id(text)] = (text, value)
        return text

    def _raw(self, arg: Any) -> Any:
        held = self._py2_strings.get(id(arg))
        return held[1] if held is not None and held[0] is arg else arg

    # --- calls ---------------------------------------------------------------------------

    def _checked_args(self, func: Any, args: Any, kwargs: Any = None) -> tuple[Any, ...]:
        """The arguments of a call the pickle makes, refused unless they are plain."""
        if type(args) is not tuple or (kwargs is not None and type(kwargs) is not dict):
            raise DecodeLimitError("a call in the pickle takes arguments that are not a tuple")
        values = args if kwargs is None else (*args, *kwargs.values())
        if any(type(value) is range for value in values):
            raise DecodeLimitError("a call in the pickle consumes a range")
        if isinstance(func, type) and issubclass(func, _DATE_TYPES) and args:
            return (self._raw(args[0]), *args[1:])  # Python 2's latin-1 date state
        sized = isinstance(func, type) and issubclass(func, (bytes, bytearray))
        if sized and args and not isinstance(args[0], (bytes, bytearray, str)):
            raise DecodeLimitError("a call in the pickle sizes a bytes object")
        return args

    def _charge_result(self, result: Any) -> Any:
        self.charge(sys.getsizeof(result))
        return result

    def load_reduce(self) -> None:
        """``REDUCE``: a call, its arguments checked and its result charged."""
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        stack[-1] = self._charge_result(func(*self._checked_args(func, args)))

    def load_newobj(self) -> None:
        """``NEWOBJ``: ``cls.__new__(cls, *args)``, checked and charged."""
        args = self.stack.pop()
        cls = self.stack.pop()
        args = self._checked_args(cls, args)
        self.append(self._charge_result(cls.__new__(cls, *args)))

    def load_newobj_ex(self) -> None:
        """``NEWOBJ_EX``: ``cls.__new__(cls, *args, **kwargs)``, checked and charged."""
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        args = self._checked_args(cls, args, kwargs)
        self.append(self._charge_result(cls.__new__(cls, *args, **kwargs)))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        # INST and OBJ (protocols 0 and 1, Python 2's old-style instances).
        checked = self._checked_args(klass, tuple(args))
        value: Any
        if checked or not isinstance(klass, type) or hasattr(klass, "__getinitargs__"):
            value = klass(*checked)
        else:
            value = klass.__new__(klass)  # type: ignore[call-overload]
        self.append(self._charge_result(value))

    # --- containers ------------------------------------------------------------------

    def load_setitems(self) -> None:
        """``SETITEMS``, charged per item."""
        self.charge(ITEM_COST * (len(self.stack) // 2))
        super().load_setitems()  # type: ignore[misc]

    def load_setitem(self) -> None:
        """``SETITEM``, charged."""
        self.charge(ITEM_COST)
        super().load_setitem()  # type: ignore[misc]

    def load_dict(self) -> None:
        """``DICT`` (protocols 0 and 1), charged per item."""
        self.charge(ITEM_COST * (len(self.stack) // 2))
        super().load_dict()  # type: ignore[misc]

    def load_additems(self) -> None:
        """``ADDITEMS``, charged per item."""
        self.charge(ITEM_COST * len(self.stack))
        super().load_additems()  # type: ignore[misc]

    def load_frozenset(self) -> None:
        """``FROZENSET``, charged per item."""
        self.charge(ITEM_COST * len(self.stack))
        super().load_frozenset()  # type: ignore[misc]

    def load_build(self) -> None:
        """``BUILD``, charged per state item."""
        state = self.stack[-1] if self.stack else None
        if isinstance(state, dict):
            self.charge(ITEM_COST * len(state))
        super().load_build()  # type: ignore[misc]

    def load_bytearray8(self) -> None:
        """``BYTEARRAY8``, reading before allocating (the base zeroes the claimed size)."""
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(min(size, len(self._data)))  # read() takes no size past 2**63
        if len(data) < size:
            raise pickle.UnpicklingError("BYTEARRAY8 is longer than the pickle")
        self.append(bytearray(data))

    def load_frame(self) -> None:
        """``FRAME``: a read-ahead hint, skipped (the whole pickle is in memory)."""
        self.read(8)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.FRAME[0]] = load_frame
    dispatch[pickle.MARK[0]] = load_mark


BoundedUnpickler._handlers = _handler_table(BoundedUnpickler.dispatch)
