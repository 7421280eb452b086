"""The optional unpickling allowlist: a payload may only name, and only run, code you listed.

Why this module is long: the whole policy and its rationale, which a security review
reads in one sitting, stay in one file (its mechanism is in ``checked``, its entries in
``allowlist_entries``).

A pickle names every class and function it needs as ``module`` + ``name`` and the
unpickler imports them. With ``CLOUDTASKS_DEFERRED_ALLOWED_MODULES`` set (comma-
separated entries), :class:`Allowlist` unpickles through a restricted
``find_class`` that refuses any other reference **before importing its module**,
raising :class:`DisallowedReferenceError` (the handler answers 403, retried: an
incomplete allowlist is a configuration error, and fixing it drains the queue).

An entry is a module prefix or an exact global:

* ``myapp.tasks`` allows everything defined in ``myapp.tasks`` and its public
  submodules (``myapp.tasks.mail``), not ``myapp.tasks_old``, and not a submodule
  part starting with ``_`` (``myapp.tasks.__main__``, ``myapp.tasks._impl``: importing
  one runs it) unless an entry names it exactly;
* ``uuid.UUID`` allows exactly that name (prefer exact names for library modules:
  ``uuid`` as a prefix would allow its helpers that run commands).

**What a pickle may reference.** Names reached through a prefix are resolved step
by step: a module-level name may start with one ``_`` (a private task function),
nothing deeper may start with ``_`` and nothing at all with ``__``
(``__globals__``, ``__init__``); only classes are looked into (``Counter.double``,
``Outer.Inner``); no module object is returned; and every object met must be
*defined* in an allowed module (its ``__module__``), so ``myapp.tasks.os.system``
or a function ``myapp.tasks`` imported from elsewhere is refused. A callable
without a ``__module__`` string (a built-in bound method such as
``emit = sys.stderr.write``) is refused too; only plain data may lack one. Besides
your entries, a pickle may reference, to carry arguments: :data:`SAFE_GLOBALS` (data
types such as ``datetime``, ``Decimal``, ``UUID``, ``set``) and the standard
reconstructors (``copyreg._reconstructor``, ``copyreg.__newobj__``,
``copyreg.__newobj_ex__``), which only call classes that are themselves checked.

**What a task may run.** Once unpickled, the task's callable must be something your
entries allow — a function, class or method defined in an allowed module, an
instance of such a class, or an exact entry such as ``builtins.len`` — whether the
pickle named it or code it called returned it. :data:`SAFE_GLOBALS` carry data and
are not callable as tasks unless you list them. A member call
(:func:`~cloudtasks_deferred.payload.invoke_member`, how bound and built-in methods
travel) passes the same test: the member name is an identifier not starting with
``_``, it is found without running code (no ``__getattr__``, no property), the class
that defines it is allowed, and a function stored as a class attribute must itself
be defined in an allowed module (``run = subprocess.run`` is refused); a method of
an object the pickle named (a module-level instance or dict) is refused, so a task
cannot call ``update`` on shared data. ``datetime.now().isoformat`` needs
``datetime.datetime`` listed.

**What a pickle may change.** Nothing it did not create: ``BUILD`` (set an object's
state), ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS`` are refused, before they change
anything, when their target is an object ``find_class`` returned during this load,
or any class, module, function, method, code object or descriptor wherever it came
from (:mod:`cloudtasks_deferred.payload.unpickler`). Together with the member rules,
no payload can rewrite a function's ``__defaults__``, a class's methods or the
library's own markers, so **no task changes what a later task runs**.

**The library's own callables**, :data:`LIBRARY_CALLABLES` (``invoke_member``, and
``run_from_datastore`` for payloads stored in Datastore, whose stored payload passes
the same checks), and the legacy library's names for them
(:data:`~cloudtasks_deferred.payload.calls.LEGACY_NAMES`), are allowed without listing,
but only as the task's callable: while unpickling, and anywhere else in the
payload, each is an inert marker without state that refuses to be called, and it
is recognised by identity when the load is done.

**What unpickling may cost** is bounded too
(:class:`~cloudtasks_deferred.payload.budget.DecodeBudget`: opcodes, and bytes of
objects created).

Entries are validated by :func:`~cloudtasks_deferred.payload.allowlist_entries.check_entries`.
Never allowed: entries naming :data:`REFUSED_MODULES` (``builtins`` as a whole,
``os``, ``subprocess``, ``pickle``, ``operator``, ``cloudtasks_deferred`` itself...)
or :data:`DANGEROUS_BUILTINS` (``builtins.eval``, ``exec``, ``getattr``,
``__import__``...) make the settings invalid. Built-in functions you defer
(``len``) must be listed by exact name (``builtins.len``).

The allowlist limits which code a forged or replayed payload can reach; it is not a
sandbox: the listed code runs with arguments of the payload's choosing (so it can
change whatever that code changes, and an object your listed code *returns* while
unpickling — a shared instance, not a class or function — can be filled in).
Python 2 names, which protocols 0-2 write (``__builtin__``, ``copy_reg``), are
translated to their Python 3 names as the standard unpickler does, then checked.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, final

from cloudtasks_deferred.errors import PayloadRefusedError
from cloudtasks_deferred.payload.allowlist_entries import (
    ALLOWED_MODULES_VARIABLE,
    DANGEROUS_BUILTINS,
    INVOKE_MEMBER,
    RECONSTRUCTORS,
    REFUSED_MODULES,
    SAFE_GLOBALS,
    check_entries,
)
from cloudtasks_deferred.payload.budget import DecodeBudget
from cloudtasks_deferred.payload.calls import LEGACY_NAMES, invoke_member
from cloudtasks_deferred.payload.calls import RUN_FROM_DATASTORE as _RUN_FROM_DATASTORE_NAME
from cloudtasks_deferred.payload.checked import CheckedUnpickler

__all__ = [
    "ALLOWED_MODULES_VARIABLE",
    "DANGEROUS_BUILTINS",
    "INVOKE_MEMBER",
    "LIBRARY_CALLABLES",
    "REFUSED_MODULES",
    "RUN_FROM_DATASTORE",
    "SAFE_GLOBALS",
    "Allowlist",
    "DisallowedReferenceError",
    "check_entries",
]

#: The library's runner of payloads stored in Datastore, allowed as the task's callable.
RUN_FROM_DATASTORE: Final = ".".join(_RUN_FROM_DATASTORE_NAME)
#: The library functions a payload may name, each only as the task's callable.
LIBRARY_CALLABLES: Final = frozenset({INVOKE_MEMBER, RUN_FROM_DATASTORE})
# The legacy library's names for them (its queued tasks still run).
_LEGACY_CALLABLES: Final = types.MappingProxyType(
    {f"{module}.{name}": f"{ours[0]}.{ours[1]}" for (module, name), ours in LEGACY_NAMES.items()}
)


class DisallowedReferenceError(PayloadRefusedError):
    """The pickle names or runs code outside the allowlist (its module was not imported),
    or would modify an object it did not create (nothing was modified)."""


@final
class _Marker:
    """Stands for a library callable while unpickling: no state, refuses to be called.

    The task's callable is compared with the markers by identity once the load is
    done; nothing a payload does to a marker (it has no attribute to set) changes
    what another payload's marker stands for.
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DisallowedReferenceError(
            f"the payload calls {_MARKER_NAMES[self]} while unpickling; it is allowed only "
            "as the task's callable"
        )

    def __repr__(self) -> str:
        return f"<{_MARKER_NAMES[self]} marker>"


_NOTHING: Final[Mapping[int, Any]] = types.MappingProxyType({})
_INVOKE_MEMBER_MARKER: Final = _Marker()
_RUN_FROM_DATASTORE_MARKER: Final = _Marker()
_MARKERS: Final[Mapping[str, _Marker]] = types.MappingProxyType(
    {INVOKE_MEMBER: _INVOKE_MEMBER_MARKER, RUN_FROM_DATASTORE: _RUN_FROM_DATASTORE_MARKER}
)
_MARKER_NAMES: Final[Mapping[_Marker, str]] = types.MappingProxyType(
    {marker: name for name, marker in _MARKERS.items()}
)


class Allowlist:
    """Unpickles task payloads, refusing what the allowed entries do not cover.

    Args:
        entries: Module prefixes or exact globals, validated with :func:`check_entries`.
        library: The functions the library callables' names stand for, handed back as
            the task's callable: ``invoke_member`` is always there; a name missing from
            the mapping (``run_from_datastore`` outside the facade) is refused.

    Raises:
        ValueError: An entry is invalid.
    """

    def __init__(
        self, entries: Iterable[str], *, library: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self._library = {INVOKE_MEMBER: invoke_member, **(library or {})}
        self.entries = tuple(entries)
        check_entries(self.entries)
        listed = frozenset(self.entries)
        # What a task may run: your entries only.
        self._callable_exact = listed
        # What a pickle may reference: those, plus data types and reconstructors.
        self._exact = SAFE_GLOBALS | RECONSTRUCTORS | listed
        self._prefixes = tuple(entry + "." for entry in self.entries)

    def allows_module(self, module: str) -> bool:
        """Whether everything defined in ``module`` may be referenced.

        True when an entry names ``module`` exactly, or is a prefix of it and no part
        of ``module`` past the entry starts with ``_``.
        """
        if module in self._callable_exact:
            return True
        for prefix in self._prefixes:
            if module.startswith(prefix):
                rest = module[len(prefix) :].split(".")
                if not any(part.startswith("_") for part in rest):
                    return True
        return False

    def loads(self, pickled: bytes, *, budget: DecodeBudget | None = None) -> Any:
        """Unpickles ``pickled`` under the allowlist.

        Args:
            pickled: The payload's pickle.
            budget: What unpickling may spend; by default the one for a body the size
                of ``pickled``.

        Returns:
            The unpickled object. For a ``(callable, args, kwargs)`` tuple, the callable
            has passed :meth:`check_callable` (or, for a member call,
            :meth:`check_member`), and a library callable's marker is replaced by the
            real function.

        Raises:
            DisallowedReferenceError: The pickle names or runs something not allowed,
                or would modify an object it did not create (module docstring).
            DecodeLimitError: Unpickling would exceed ``budget``.
            ImportError, AttributeError: An allowed name does not exist here.
            pickle.UnpicklingError, ValueError, EOFError, ...: The bytes are not a
                valid pickle.
        """
        unpickler = CheckedUnpickler(
            pickled, resolve=self.resolve, refuse=DisallowedReferenceError, budget=budget
        )
        loaded = unpickler.load()
        if not (isinstance(loaded, tuple) and len(loaded) == 3):
            return loaded  # not a task: the caller reports the shape
        func, args, kwargs = loaded
        if func is _RUN_FROM_DATASTORE_MARKER:
            run_stored = self._library.get(RUN_FROM_DATASTORE)
            if run_stored is None:
                raise _refused(RUN_FROM_DATASTORE)
            return (run_stored, args, kwargs)
        if func is _INVOKE_MEMBER_MARKER:
            if not (isinstance(args, tuple) and len(args) >= 2):
                raise DisallowedReferenceError("invoke_member needs an object and a member name")
            self.check_member(args[0], args[1], shared=unpickler.found)
            return (invoke_member, args, kwargs)
        self.check_callable(func)
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
        marker = _MARKERS.get(full)
        if marker is not None:
            return marker
        if full in self._exact:
            found = find(module, name)
            if isinstance(found, types.ModuleType):
                raise _refused(full)
            return found
        parts = name.split(".")
        if (
            not self.allows_module(module)
            or any(not part for part in parts)
            or any(part.startswith("_") for part in parts[1:])
            or parts[0].startswith("__")
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

    def check_callable(self, func: Any) -> None:
        """Refuses a task callable that the entries do not allow (module docstring).

        Args:
            func: The task's callable, however the pickle produced it.

        Raises:
            DisallowedReferenceError: It is not allowed.
        """
        target = func
        if isinstance(func, types.MethodType):
            target = func.__func__  # a bound or class method: its function decides
        elif not isinstance(func, (type, types.FunctionType, types.BuiltinFunctionType)):
            target = type(func)  # a callable instance: its class decides
        if not (isinstance(target, (type, types.FunctionType, types.BuiltinFunctionType))):
            raise _refused(_name_of(func))
        module = getattr(target, "__module__", None)
        qualified = _name_of(target)
        bound_to = getattr(target, "__self__", None)
        builtin_method = isinstance(target, types.BuiltinFunctionType) and not isinstance(
            bound_to, (types.ModuleType, type(None))
        )
        if builtin_method:
            raise _refused(qualified)  # a built-in bound method: send it as a member
        if qualified in self._callable_exact:
            return
        if not isinstance(module, str) or not self.allows_module(module):
            raise _refused(qualified)
        if any(part.startswith("__") for part in qualified.split(".")) or "<" in qualified:
            raise _refused(qualified)  # a dunder, a lambda or a nested function

    def check_member(self, obj: Any, name: Any, *, shared: Mapping[int, Any] = _NOTHING) -> None:
        """Refuses a member call (``invoke_member(obj, name, ...)``) the entries do not allow.

        Args:
            obj: The object whose member the task calls.
            name: The member's name.
            shared: Objects the pickle named, by id: their members are not callable
                unless the object is a class.

        Raises:
            DisallowedReferenceError: The member call is not allowed (module docstring).
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise DisallowedReferenceError(
                "the payload calls a member whose name is not an identifier"
            )
        owner = obj if isinstance(obj, type) else type(obj)
        where = f"{_name_of(owner)}.{name}"
        if name.startswith("_") or isinstance(obj, _Marker):
            raise _refused(where)
        if id(obj) in shared and not isinstance(obj, type):
            raise DisallowedReferenceError(
                f"the payload calls {where} on an object it names (shared by every task), "
                f"which {ALLOWED_MODULES_VARIABLE} does not allow"
            )
        lookup: Any = type(obj).__getattribute__
        if lookup not in _PLAIN_LOOKUPS:
            raise _refused(where)  # its own lookup could answer with anything
        instance_value, defining, raw = _static_member(obj, owner, name)
        if defining is None:
            if instance_value is _MISSING:
                raise _refused(where)  # only a __getattr__ could answer
            self.check_callable(instance_value)
            return
        if not self._allows_class(defining):
            raise _refused(where)
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        if isinstance(raw, types.FunctionType):
            self.check_callable(raw)
        elif not isinstance(
            raw,
            (
                types.MethodDescriptorType,
                types.ClassMethodDescriptorType,
                types.BuiltinFunctionType,
            ),
        ):
            self.check_callable(raw)  # a callable object stored on the class

    def _allows_class(self, cls: type) -> bool:
        """Whether the members a class defines may be called: it is listed, or defined
        in an allowed module."""
        return _name_of(cls) in self._callable_exact or self.allows_module(cls.__module__)

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


_MISSING: Final = object()
_PLAIN_LOOKUPS: Final = (object.__getattribute__, type.__getattribute__)


def _static_member(obj: Any, owner: type, name: str) -> tuple[Any, type | None, Any]:
    """Finds what ``getattr(obj, name)`` would return, without running any code.

    Returns:
        ``(instance_value, defining_class, class_attribute)``: the instance's own
        value when it shadows the class's (or :data:`_MISSING`), and the class in
        ``owner``'s MRO that defines ``name`` with what it holds (``None`` if none).
    """
    defining, raw = None, None
    for klass in owner.__mro__:
        if name in klass.__dict__:
            defining, raw = klass, klass.__dict__[name]
            break
    if not isinstance(obj, type):
        try:
            instance_dict = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            instance_dict = {}
        data_descriptor = hasattr(type(raw), "__set__") or hasattr(type(raw), "__delete__")
        if isinstance(instance_dict, dict) and name in instance_dict and not data_descriptor:
            return instance_dict[name], None, None
    return _MISSING, defining, raw


def _name_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(obj).__qualname__
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _refused(full: str) -> DisallowedReferenceError:
    return DisallowedReferenceError(
        f"the payload references {full!r}, which {ALLOWED_MODULES_VARIABLE} does not allow"
    )
