"""A call turned into bytes and back: the legacy callable rules, pickling and framing.

These callables can be deferred, as in the legacy ``deferred`` module:

1. functions defined at the top level of a module;
2. classes defined at the top level of a module;
3. instances of such classes that implement ``__call__``;
4. instance methods of such objects (sent as :func:`invoke_member`);
5. class methods and static methods of such classes;
6. built-in functions, e.g. ``len``;
7. built-in methods, e.g. ``datetime.now().isoformat`` (sent as :func:`invoke_member`).

Lambdas, nested functions and closures, and nested (function-local) classes or
their instances cannot: :func:`serialize` raises the error the standard library's
pickle raises (``pickle.PicklingError`` or ``AttributeError``), at ``defer`` time
rather than when the task runs. Arguments must be picklable too.

On the wire the pickle travels in a frame (:mod:`cloudtasks_deferred.payload.frame`).

Tasks the legacy library queued name its own helpers,
``google.appengine.ext.deferred.deferred.invoke_member`` and ``.run_from_datastore``
(:data:`LEGACY_NAMES`); :func:`unpickle` reads them as this library's, which take the
same arguments, so those tasks still run once ``google.appengine`` is gone.

The other way round, while a Python 2 version of the app still serves part of the
traffic, :func:`serialize_for_python2` writes a pickle its ``deferred`` handler can
run: protocol 2, Python 2's module names (``__builtin__``, ``copy_reg``) and the
legacy helpers' names. A Python 3 ``str`` reaches Python 2 as ``unicode`` and
``bytes`` as ``str``.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import pickle
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

from cloudtasks_deferred.errors import PayloadRefusedError
from cloudtasks_deferred.payload.budget import DecodeLimitError
from cloudtasks_deferred.payload.frame import InvalidPayloadError, decode
from cloudtasks_deferred.payload.unpickler import BoundedUnpickler

__all__ = [
    "LEGACY_NAMES",
    "RUN_ENTRY",
    "RUN_FROM_DATASTORE",
    "OpenedPayload",
    "describe_callable",
    "invoke_member",
    "library_call",
    "load_call",
    "run",
    "serialize",
    "serialize_for_python2",
    "serializer",
    "unpickle",
]

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

#: Frame metadata naming a transactional task's ``_DeferredOutboxRun`` entry.
RUN_ENTRY: Final = "outbox"
#: The name payloads call a stored payload's runner by (the facade's function).
RUN_FROM_DATASTORE: Final = ("cloudtasks_deferred.deferred", "run_from_datastore")

_LEGACY_MODULE: Final = "google.appengine.ext.deferred.deferred"
#: ``(module, name)`` of the legacy library's own task callables -> this library's.
LEGACY_NAMES: Final[Mapping[tuple[str, str], tuple[str, str]]] = types.MappingProxyType(
    {
        (_LEGACY_MODULE, "invoke_member"): ("cloudtasks_deferred.payload", "invoke_member"),
        (_LEGACY_MODULE, "run_from_datastore"): (
            "cloudtasks_deferred.deferred",
            "run_from_datastore",
        ),
    }
)


@dataclasses.dataclass(frozen=True)
class OpenedPayload:
    """A decoded, unpickled task, ready to run.

    Attributes:
        metadata: The frame's metadata.
        func: The callable.
        args: Its positional arguments.
        kwargs: Its keyword arguments.
    """

    metadata: dict[str, Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def callable_name(self) -> str:
        """``module.qualname`` of the callable, for logs (never the arguments)."""
        return describe_callable(self.func, self.args)

    @property
    def run_entry(self) -> object | None:
        """The ``_DeferredOutboxRun`` entry a transactional task runs under (its
        metadata's :data:`RUN_ENTRY`), or ``None``; see :mod:`cloudtasks_deferred.receive.guard`."""
        return self.metadata.get(RUN_ENTRY)

    def call(self) -> Any:
        """Calls the callable with its arguments and returns what it returns."""
        return self.func(*self.args, **self.kwargs)


def invoke_member(obj: Any, membername: str, *args: Any, **kwargs: Any) -> Any:
    """Retrieves a member of an object, then calls it with the provided arguments.

    Args:
        obj: The object to operate on.
        membername: The name of the member to retrieve from ``obj``.
        *args: Positional arguments to pass to the member.
        **kwargs: Keyword arguments to pass to the member.

    Returns:
        The return value of the member's invocation.
    """
    return getattr(obj, membername)(*args, **kwargs)


def serialize(obj: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """Serializes a callable and its arguments into a pickle :func:`run` executes.

    Args:
        obj: The callable; see the module docstring for which kinds are allowed.
        *args: Positional arguments to call it with.
        **kwargs: Keyword arguments to call it with.

    Returns:
        The pickled ``(callable, args, kwargs)`` tuple (no frame), as the legacy
        function returned.

    Raises:
        ValueError: ``obj`` is not callable.
        pickle.PicklingError: ``obj`` or an argument cannot be pickled by reference
            (a lambda, a nested function, a nested class).
        AttributeError: The same, as some Python versions raise it for local objects.
    """
    return pickle.dumps(_curry(obj, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)


def serialize_for_python2(obj: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """Serializes a call for a Python 2 app's ``deferred`` handler (module docstring).

    Args:
        obj: The callable, as for :func:`serialize`.
        *args: Positional arguments to call it with.
        **kwargs: Keyword arguments to call it with.

    Returns:
        A protocol 2 pickle of ``(callable, args, kwargs)`` with Python 2's names.

    Raises:
        ValueError, pickle.PicklingError, AttributeError: As :func:`serialize`.
    """
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2, fix_imports=True).dump(_curry(obj, args, kwargs))
    return buffer.getvalue()


def library_call(name: tuple[str, str], *args: str) -> bytes:
    """Serializes a call to one of the library's own callables, named, not imported.

    The layers that write such calls (a stored payload's pointer task) sit below the
    facade that defines the callable, so the pickle names it (``STACK_GLOBAL``)
    rather than pickling the object.

    Args:
        name: ``(module, attribute)``, e.g. :data:`RUN_FROM_DATASTORE`.
        *args: String arguments (a stored payload's key).

    Returns:
        The pickled ``(callable, args, {})``, as :func:`serialize` would write it.
    """
    buffer = io.BytesIO()
    _NamingPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((_Named(*name), args, {}))
    return buffer.getvalue()


def serializer(*, for_python2: bool) -> Callable[..., bytes]:
    """:func:`serialize_for_python2` when ``for_python2``, else :func:`serialize`."""
    return serialize_for_python2 if for_python2 else serialize


def run(data: bytes) -> Any:
    """Unpickles and executes a task.

    Args:
        data: A frame (its signature, if any, is not checked: ``run`` trusts its
            input), or a pickled ``(callable, args, kwargs)`` tuple as returned by
            :func:`serialize`.

    Returns:
        The return value of the call.

    Raises:
        PermanentTaskFailure: ``data`` is not a valid payload (as
            :class:`~cloudtasks_deferred.payload.frame.InvalidPayloadError`).
        ImportError, AttributeError: The pickle names code this deployment lacks;
            unlike the legacy library these are not permanent, because a rolling
            deploy fixes them.
        UnsupportedPayloadError: The frame needs a newer version of this library.
    """
    func, args, kwargs = load_call(decode(data).pickled)
    return func(*args, **kwargs)


def describe_callable(func: Callable[..., Any], args: tuple[Any, ...] = ()) -> str:
    """Names a deferred callable for logs, never its arguments.

    Args:
        func: The callable from a decoded payload.
        args: Its positional arguments, used to name the member behind
            :func:`invoke_member`.

    Returns:
        ``"module.qualname"``, or ``"module.Class.member"`` for a member call.
    """
    member = args[1] if len(args) >= 2 else None
    # The member's name only when it is a name: any other string could be data.
    if func is invoke_member and isinstance(member, str) and member.isidentifier():
        target = args[0] if isinstance(args[0], type) else type(args[0])
        return f"{_qualified_name(target)}.{member}"
    return _qualified_name(func)


def load_call(pickled: bytes, *, loads: Callable[[bytes], Any] | None = None) -> Call:
    """Unpickles a ``(callable, args, kwargs)`` tuple. Only call it on trusted bytes.

    Args:
        pickled: The pickle from :func:`cloudtasks_deferred.payload.frame.decode`.
        loads: The unpickling function, e.g. an allowlist's
            (:mod:`cloudtasks_deferred.payload.allowlist`); :func:`unpickle` (the standard
            unpickler, reading the legacy library's names) when ``None``.

    Returns:
        The callable and its arguments.

    Raises:
        InvalidPayloadError: The bytes are not a pickle of such a tuple. The message
            names the error's type, never its text: that can quote the payload.
        ImportError, AttributeError: The pickle names code this deployment lacks.
        PayloadRefusedError: ``loads`` refused the pickle (e.g. outside an allowlist).
    """
    if loads is None:
        loads = unpickle
    try:
        call = loads(pickled)
    except (ImportError, AttributeError, PayloadRefusedError, DecodeLimitError):
        raise  # DecodeLimitError: an InvalidPayloadError whose text holds no data
    except Exception as exc:
        # "from None": a logged traceback would show the cause's text, which can quote
        # the payload (a UnicodeDecodeError holds the bytes it could not decode).
        raise InvalidPayloadError(f"the payload does not unpickle: {_safe_reason(exc)}") from None
    if not (
        isinstance(call, tuple)
        and len(call) == 3
        and callable(call[0])
        and isinstance(call[1], tuple)
        and isinstance(call[2], dict)
    ):
        raise InvalidPayloadError("the payload is not a (callable, args, kwargs) tuple")
    return call


def unpickle(pickled: bytes) -> Any:
    """``pickle.loads``, reading the legacy library's :data:`LEGACY_NAMES` as ours.

    Only call it on trusted bytes: it restricts nothing else. Pickles of protocol 3
    or later (Python 3's) go to the C unpickler; protocols 0-2, which Python 2 wrote,
    to :class:`~cloudtasks_deferred.payload.unpickler.BoundedUnpickler`, which reads
    Python 2 strings and dates as the migration guide describes.

    Args:
        pickled: A pickle.

    Returns:
        The unpickled object.

    Raises:
        pickle.UnpicklingError, ImportError, AttributeError, ...: As ``pickle.loads``.
    """
    if pickled[:1] == pickle.PROTO and pickled[1:2] >= b"\x03":
        return _LegacyNamesUnpickler(io.BytesIO(pickled)).load()
    return BoundedUnpickler(pickled, find=_find_legacy_names).load()


_TO_LEGACY: Final = types.MappingProxyType({ours: legacy for legacy, ours in LEGACY_NAMES.items()})


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler: save_global is a method
    dispatch: ClassVar[dict[type, Callable[..., None]]] = dict(pickle._Pickler.dispatch)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        ours = (getattr(obj, "__module__", None), name or getattr(obj, "__qualname__", None))
        legacy = _TO_LEGACY.get(ours)  # type: ignore[arg-type]
        if legacy is None:
            super().save_global(obj, name)  # type: ignore[misc]
            return
        module, qualname = legacy
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[types.FunctionType] = save_global


@dataclasses.dataclass(frozen=True)
class _Named:
    module: str
    qualname: str


class _NamingPickler(pickle._Pickler):  # the pure-Python pickler: dispatch is a dict
    dispatch: ClassVar[dict[type, Callable[..., None]]] = dict(pickle._Pickler.dispatch)

    def save_named(self, obj: _Named) -> None:
        self.save(obj.module)  # type: ignore[attr-defined]
        self.save(obj.qualname)  # type: ignore[attr-defined]
        self.write(pickle.STACK_GLOBAL)  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[_Named] = save_named


class _LegacyNamesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = LEGACY_NAMES.get((module, name), (module, name))
        return super().find_class(module, name)


def _find_legacy_names(module: str, name: str) -> Any:
    module, name = LEGACY_NAMES.get((module, name), (module, name))
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _safe_reason(error: Exception) -> str:
    """The error's type, and for a text decoding error its codec and offset: no data."""
    if isinstance(error, UnicodeDecodeError):
        hint = " (a Python 2 str of non-ASCII bytes)" if error.encoding == "ascii" else ""
        return f"UnicodeDecodeError: a string is not valid {error.encoding}{hint}"
    return type(error).__name__


def _curry(obj: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    if isinstance(obj, types.MethodType):
        # Bound methods and class methods: pickle the object and the member's name.
        return invoke_member, (obj.__self__, _member_name(obj), *args), kwargs
    if isinstance(obj, types.BuiltinMethodType) and not isinstance(
        obj.__self__, (types.ModuleType, type(None))
    ):
        # Built-in methods such as datetime.now().isoformat.
        return invoke_member, (obj.__self__, obj.__name__, *args), kwargs
    if not callable(obj):
        raise ValueError(f"obj must be callable, got {type(obj).__name__}")
    return obj, args, kwargs


def _member_name(method: types.MethodType) -> str:
    """The attribute name under which ``method`` is found on its object.

    A private method's ``__name__`` is ``__m``, but it is reachable only as
    ``_Class__m``; checking now makes the mistake fail at defer time, not at run time.
    """
    name = method.__func__.__name__
    candidates = [name]
    if name.startswith("__") and not name.endswith("__"):
        owner = method.__func__.__qualname__.rpartition(".")[0].rpartition(".")[2]
        candidates.append(f"_{owner.lstrip('_')}{name}")
    for candidate in candidates:
        found = getattr(method.__self__, candidate, None)
        if getattr(found, "__func__", None) is method.__func__:
            return candidate
    raise pickle.PicklingError(
        f"cannot defer {method.__func__.__qualname__}: it is not reachable as an attribute "
        "of its object under its own name"
    )


def _qualified_name(obj: object) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"
