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

On the wire a task body is a *frame*: the magic ``b"\\x89CTD"``, a version byte, a
flags byte, a two-byte length and that many bytes of JSON metadata (options the
handler enforces, such as retry limits), then the pickle. A bare pickle (what the
legacy :func:`serialize` returned) is accepted as a body too.
"""

from __future__ import annotations

import json
import pickle
import struct
import types
from collections.abc import Callable, Mapping
from typing import Any, Final

from .errors import PermanentTaskFailure

__all__ = [
    "FRAME_MAGIC",
    "InvalidPayloadError",
    "UnsupportedPayloadError",
    "describe_callable",
    "frame",
    "invoke_member",
    "load_call",
    "run",
    "serialize",
    "unframe",
]

FRAME_MAGIC: Final = b"\x89CTD"
_FRAME_VERSION: Final = 1
_HEADER: Final = struct.Struct(">4sBBH")  # magic, version, flags, metadata length
_PICKLE_PROTO: Final = 0x80  # first byte of every pickle of protocol 2 or later
_KNOWN_FLAGS: Final = 0  # no flag is defined by this version of the format

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class InvalidPayloadError(PermanentTaskFailure):
    """The body is not a task payload: not a frame, a truncated frame or a bad pickle.

    A permanent failure: delivering the same bytes again cannot succeed.
    """


class UnsupportedPayloadError(Exception):
    """The payload uses a frame version or feature this deployment does not know.

    Not permanent: a newer version of the code enqueued it, and the task succeeds
    once that version serves the handler, so Cloud Tasks should retry (HTTP 500).
    """


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


def run(data: bytes) -> Any:
    """Unpickles and executes a task.

    Args:
        data: A frame, or a pickled ``(callable, args, kwargs)`` tuple as returned by
            :func:`serialize`.

    Returns:
        The return value of the call.

    Raises:
        PermanentTaskFailure: ``data`` is not a valid payload (as
            :class:`InvalidPayloadError`).
        ImportError, AttributeError: The pickle names code this deployment lacks;
            unlike the legacy library these are not permanent, because a rolling
            deploy fixes them.
        UnsupportedPayloadError: The frame needs a newer version of this library.
    """
    _, pickled = unframe(data)
    func, args, kwargs = load_call(pickled)
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
    if func is invoke_member and len(args) >= 2 and isinstance(args[1], str):
        target = args[0] if isinstance(args[0], type) else type(args[0])
        return f"{_qualified_name(target)}.{args[1]}"
    return _qualified_name(func)


def frame(pickled: bytes, metadata: Mapping[str, Any] | None = None) -> bytes:
    """Wraps a pickle in the task frame.

    Args:
        pickled: Output of :func:`serialize`.
        metadata: JSON-serializable options for the handler (may be empty).

    Returns:
        The task body.
    """
    meta = json.dumps(metadata, separators=(",", ":")).encode() if metadata else b""
    return _HEADER.pack(FRAME_MAGIC, _FRAME_VERSION, 0, len(meta)) + meta + pickled


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Splits a task body into its metadata and its pickle.

    Args:
        data: A frame, or a bare pickle of protocol 2 or later.

    Returns:
        ``(metadata, pickle)``; the metadata is empty for a bare pickle.

    Raises:
        InvalidPayloadError: ``data`` is neither.
        UnsupportedPayloadError: The frame's version or flags are newer than this code.
    """
    if not data.startswith(FRAME_MAGIC):
        if data[:1] == bytes([_PICKLE_PROTO]):
            return {}, data
        raise InvalidPayloadError("the body is not a deferred task payload")
    if len(data) < _HEADER.size:
        raise InvalidPayloadError("the payload frame is truncated")
    _, version, flags, meta_len = _HEADER.unpack_from(data)
    if version != _FRAME_VERSION or flags & ~_KNOWN_FLAGS:
        raise UnsupportedPayloadError(
            f"payload frame version {version} with flags {flags:#04x} needs a newer "
            "cloudtasks_deferred than this deployment runs"
        )
    body_start = _HEADER.size + meta_len
    if len(data) < body_start:
        raise InvalidPayloadError("the payload frame is truncated")
    try:
        metadata = json.loads(data[_HEADER.size : body_start]) if meta_len else {}
    except ValueError as exc:
        raise InvalidPayloadError("the payload metadata is not JSON") from exc
    if not isinstance(metadata, dict):
        raise InvalidPayloadError("the payload metadata is not a JSON object")
    return metadata, data[body_start:]


def load_call(pickled: bytes) -> Call:
    """Unpickles a ``(callable, args, kwargs)`` tuple. Only call it on trusted bytes.

    Args:
        pickled: The pickle from :func:`unframe`.

    Returns:
        The callable and its arguments.

    Raises:
        InvalidPayloadError: The bytes are not a pickle of such a tuple.
        ImportError, AttributeError: The pickle names code this deployment lacks.
    """
    try:
        call = pickle.loads(pickled)
    except (ImportError, AttributeError):
        raise
    except Exception as exc:
        raise InvalidPayloadError(f"the payload does not unpickle: {exc!r}") from exc
    if not (
        isinstance(call, tuple)
        and len(call) == 3
        and callable(call[0])
        and isinstance(call[1], tuple)
        and isinstance(call[2], dict)
    ):
        raise InvalidPayloadError("the payload is not a (callable, args, kwargs) tuple")
    return call


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
