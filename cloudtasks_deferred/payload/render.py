"""Shows what :func:`cloudtasks_deferred.payload.reader.read` found as Python-like text.

:func:`render` writes each symbolic value the way Python's ``repr`` would write the
object unpickling makes, within a budget of characters and a depth, so that the work
stays small even for a small pickle that shares one value many times over. Values the
standard library and NDB pickle as calls of a constructor on raw state are decoded from
that state — by arithmetic on the bytes, never by calling what the pickle names — and
shown as their ``repr``; in Python 2's pickles as in Python 3's:

* ``datetime.datetime``, ``date`` and ``time`` (their packed bytes), ``timedelta``
  and ``timezone``; ``uuid.UUID`` (its ``int``); ``decimal.Decimal`` (its text);
* NDB keys, ``google.cloud.ndb.key.Key`` and the legacy
  ``google.appengine.ext.ndb.key.Key`` (their ``pairs``, ``app``, ``namespace``);
* ``bytes`` pickled by protocols 0-2 as ``_codecs.encode(text, "latin1")``.

Text that is not printable (a terminal's escape sequences, newlines in a name) is
escaped, so the output cannot rewrite the terminal it is shown on.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any, Final

from cloudtasks_deferred.payload.reader import (
    Global,
    Instance,
    Opaque,
    SymbolicDict,
    SymbolicList,
    SymbolicSet,
)

__all__ = ["printable", "render"]

_MAX_TEXT: Final = 200  # characters of one string or bytes value shown
_MAX_DEPTH: Final = 12
_MAX_INT_BITS: Final = 2000  # larger integers show their size: ~600 digits is no argument
_DATETIME: Final = "datetime"
_KEY_CLASSES: Final = frozenset({
    ("google.cloud.ndb.key", "Key"), ("google.appengine.ext.ndb.key", "Key")
})  # fmt: skip
_RECONSTRUCTORS: Final = frozenset({("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")})


def render(value: Any, *, limit: int = 2000) -> str:
    """Shows a symbolic value as Python-like text.

    Calls unpickling would make read ``module.name(args)``; objects made with
    ``__new__`` read ``<module.Class object>``; ``, state {...}`` follows what
    ``__setstate__`` would receive. Known values read as their ``repr`` (see the module
    docstring). Long strings, deep nesting and values past the limit are elided.

    Args:
        value: A value from :func:`~cloudtasks_deferred.payload.reader.read`.
        limit: Characters at most.
    """
    text = _Renderer(budget=limit).render(value, 0, frozenset())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped as ``repr`` does."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


class _Renderer:
    def __init__(self, budget: int) -> None:
        self.budget = budget  # values left to show; each shows as one character or more

    def render(self, value: Any, depth: int, active: frozenset[int]) -> str:  # noqa: PLR0911 - a return per kind
        self.budget -= 1
        if self.budget < 0 or depth > _MAX_DEPTH:
            return "…"
        if isinstance(value, (str, bytes, bytearray)):
            return _short(value)
        if isinstance(value, int) and not isinstance(value, bool):
            bits = value.bit_length()
            return repr(value) if bits <= _MAX_INT_BITS else f"<an int of {bits:,} bits>"
        if value is None or isinstance(value, (bool, float)):
            return repr(value)
        if isinstance(value, Global):
            return printable(str(value))
        if isinstance(value, (Opaque, _Name)):
            return printable(value.text)
        if id(value) in active:
            return "…"  # a container holding itself, as [...] in Python's repr
        active = active | {id(value)}
        if isinstance(value, tuple):
            inner = self.each(value, depth, active)
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if isinstance(value, SymbolicList):
            return f"[{self.each(value.items, depth, active)}]"
        if isinstance(value, SymbolicSet):
            inner = f"{{{self.each(value.items, depth, active)}}}" if value.items else ""
            return f"frozenset({inner})" if value.frozen else (inner or "set()")
        if isinstance(value, SymbolicDict):
            return f"{{{self.each(value.pairs, depth, active, pair=': ')}}}"
        if isinstance(value, Instance):
            known = self.known(value, depth, active)
            return known if known is not None else self.instance(value, depth, active)
        return f"<{type(value).__name__}>"  # pragma: no cover - every kind is handled above

    def each(self, items: Any, depth: int, active: frozenset[int], pair: str = "") -> str:
        shown = []
        for item in items:
            if self.budget < 0:
                shown.append("…")
                break
            if pair:
                key, value = item
                shown.append(
                    f"{self.render(key, depth + 1, active)}{pair}"
                    f"{self.render(value, depth + 1, active)}"
                )
            else:
                shown.append(self.render(item, depth + 1, active))
        return ", ".join(shown)

    def instance(self, value: Instance, depth: int, active: frozenset[int]) -> str:
        factory = self.render(value.factory, depth + 1, active)
        args = value.args if isinstance(value.args, tuple) else (value.args,)
        parts = [self.each(args, depth, active)] if args else []
        if isinstance(value.kwargs, SymbolicDict) and value.kwargs.pairs:
            named = [(_Name(k) if isinstance(k, str) else k, v) for k, v in value.kwargs.pairs]
            parts.append(self.each(named, depth, active, pair="="))
        extras = []
        if value.has_state:
            extras.append(f"state {self.render(value.state, depth + 1, active)}")
        if value.items:
            extras.append(f"items {self.render(tuple(value.items), depth + 1, active)}")
        if value.new:
            made = f"<{factory} object" + (f" from __new__({', '.join(parts)})" if parts else "")
            return made + "".join(f", {extra}" for extra in extras) + ">"
        call = f"{factory}({', '.join(parts)})"
        return f"<{call}, {', '.join(extras)}>" if extras else call

    def known(self, value: Instance, depth: int, active: frozenset[int]) -> str | None:  # noqa: PLR0911 - a return per kind
        """The ``repr`` of a value the standard library or NDB pickles as a call, decoded
        from its pickled state; ``None`` if it is not one or its state does not decode."""
        cls = _class_of(value)
        if cls is None or value.items:
            return None
        module, name = cls.module, cls.name
        args = value.args if isinstance(value.args, tuple) else ()
        if module == _DATETIME and name in ("datetime", "date", "time"):
            return self.datetime(name, args, depth, active)
        if module == _DATETIME and name == "timedelta":
            return _timedelta(args)
        if module == _DATETIME and name == "timezone":
            return _timezone(args)
        if (module, name) == ("uuid", "UUID"):
            return _uuid(value.state if value.has_state else None)
        if (module, name) in _KEY_CLASSES:
            return self.key(str(cls), value, depth, active)
        if (module, name) == ("_codecs", "encode"):
            packed = _bytes_of(value)
            return None if packed is None else _short(packed)
        if (module, name) in (("builtins", "bytes"), ("__builtin__", "bytes")) and not args:
            return "b''"
        return None

    def datetime(
        self, kind: str, args: tuple[Any, ...], depth: int, active: frozenset[int]
    ) -> str | None:
        """``datetime``, ``date`` and ``time`` pickle their fields packed in bytes (a
        Python 2 ``str``, or ``_codecs.encode(text, "latin1")`` in protocols 0-2), with
        the ``tzinfo`` after them."""
        if not args or len(args) > 2:
            return None
        packed = _bytes_of(args[0])
        made = _unpack(kind, packed) if packed is not None else None
        if made is None:
            return None
        # repr writes a time's fold after its tzinfo, a datetime's before it.
        fold = isinstance(made, datetime.time) and made.fold
        text = repr(made.replace(fold=0) if isinstance(made, datetime.time) else made)
        if len(args) == 2 and args[1] is not None:
            tzinfo = self.render(args[1], depth + 1, active)
            text = f"{text[:-1]}, tzinfo={tzinfo})"
        return f"{text[:-1]}, fold=1)" if fold else text

    def key(self, cls: str, value: Instance, depth: int, active: frozenset[int]) -> str | None:
        """An NDB key: its state is ``({"pairs": ..., "app": ..., "namespace": ...},)``
        (as ``__getnewargs__`` and ``__getstate__`` return it)."""
        for state in (value.args, value.state):
            if isinstance(state, tuple) and len(state) == 1 and isinstance(state[0], SymbolicDict):
                fields = {k: v for k, v in state[0].pairs if isinstance(k, str)}
                pairs = fields.get("pairs")
                if not isinstance(pairs, tuple):
                    return None
                flat = [part for pair in pairs if isinstance(pair, tuple) for part in pair]
                shown = [self.render(part, depth + 1, active) for part in flat]
                for name in ("app", "namespace", "database"):
                    if fields.get(name) not in (None, ""):
                        shown.append(f"{name}={self.render(fields[name], depth + 1, active)}")
                return f"{cls}({', '.join(shown)})"
        return None


def _class_of(value: Instance) -> Global | None:
    """The class a call makes: its factory, or the class a ``copyreg._reconstructor``
    (Python 2's protocols 0 and 1) is told to make."""
    factory = value.factory
    if not isinstance(factory, Global):
        return None
    if (factory.module, factory.name) in _RECONSTRUCTORS:
        args = value.args
        if isinstance(args, tuple) and args and isinstance(args[0], Global):
            return args[0]
        return None
    return factory


def _bytes_of(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # a Python 2 str, read as Latin-1
        return _latin1(value)
    if isinstance(value, Instance) and _class_of(value) == Global("_codecs", "encode"):
        args = value.args
        if isinstance(args, tuple) and len(args) == 2 and args[1] in ("latin1", "latin-1"):
            return _latin1(args[0]) if isinstance(args[0], str) else None
    return None


def _latin1(text: str) -> bytes | None:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _unpack(kind: str, data: bytes) -> datetime.date | datetime.time | None:
    """The fields ``datetime``'s ``__reduce__`` packs: year (2 bytes), month, day, then
    hour, minute, second, microseconds (3 bytes); ``fold`` in the month's (``datetime``)
    or the hour's (``time``) high bit."""
    try:
        if kind == "date" and len(data) == 4:
            return datetime.date(data[0] * 256 + data[1], data[2], data[3])
        if kind == "datetime" and len(data) == 10:
            fold, month = divmod(data[2], 128)
            micro = int.from_bytes(data[7:10], "big")
            return datetime.datetime(
                data[0] * 256 + data[1], month, data[3], data[4], data[5], data[6], micro, fold=fold
            )
        if kind == "time" and len(data) == 6:
            fold, hour = divmod(data[0], 128)
            micro = int.from_bytes(data[3:6], "big")
            return datetime.time(hour, data[1], data[2], micro, fold=fold)
    except (ValueError, OverflowError):
        return None
    return None


def _timedelta(args: tuple[Any, ...]) -> str | None:
    delta = _delta(args)
    return None if delta is None else repr(delta)


def _delta(args: tuple[Any, ...]) -> datetime.timedelta | None:
    if len(args) != 3 or not all(type(arg) is int for arg in args):
        return None
    try:
        return datetime.timedelta(days=args[0], seconds=args[1], microseconds=args[2])
    except (OverflowError, ValueError):
        return None


def _timezone(args: tuple[Any, ...]) -> str | None:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], Instance):
        return None
    offset = args[0]
    if _class_of(offset) != Global(_DATETIME, "timedelta") or not isinstance(offset.args, tuple):
        return None
    delta = _delta(offset.args)
    name = args[1] if len(args) == 2 else None
    if delta is None or not (name is None or isinstance(name, str)):
        return None
    try:
        zone = datetime.timezone(delta) if name is None else datetime.timezone(delta, name)
    except (ValueError, TypeError):
        return None
    return repr(zone)


def _uuid(state: Any) -> str | None:
    if not isinstance(state, SymbolicDict):
        return None
    number = next((v for k, v in state.pairs if k == "int"), None)
    if type(number) is not int or not 0 <= number < 1 << 128:
        return None
    return f"uuid.{uuid.UUID(int=number)!r}"


@dataclasses.dataclass(frozen=True)
class _Name:
    """A keyword argument's name: shown bare, not quoted."""

    text: str


def _short(value: str | bytes | bytearray) -> str:
    if len(value) <= _MAX_TEXT:
        return repr(value)
    return f"{value[:_MAX_TEXT]!r}…[{len(value)} {'chars' if isinstance(value, str) else 'bytes'}]"
