"""The pure-Python unpickler, checking every reference and every object it fills in.

:class:`CheckedUnpickler` is the mechanism behind :mod:`cloudtasks_deferred.unpickling`
(which holds the policy). It extends :class:`pickle._Unpickler`, the standard
library's pure-Python implementation, because its opcodes are methods a subclass can
check before they act, on the real objects; the C unpickler offers no such hook.

* Every ``GLOBAL``/``STACK_GLOBAL``/``INST``/``EXT`` reference goes to ``resolve``
  (Python 2 names translated first), ``EXT`` without copyreg's process-wide cache.
* ``BUILD`` (set an object's state), ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS``
  are refused, **before they change anything**, when their target is an object
  ``resolve`` returned during this load, or any class, module, function, method,
  descriptor or code object wherever it came from: a pickle may fill in only objects
  it creates (a ``functools.partial`` it made, say, whose state ``BUILD`` restores).
* Forged sizes cost no memory: the memo is a dict (the C unpickler sizes an array by
  the largest index), and ``BYTEARRAY8`` reads its bytes before allocating.

It costs roughly 1.5 times what the allowlist paid before (a :func:`pickletools.genops`
pre-scan for memo indices, then the C unpickler), which the dict memo made unnecessary.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickle
import struct
import types
from collections.abc import Callable
from typing import IO, Any, ClassVar, Final

__all__ = ["CheckedUnpickler"]

Lookup = Callable[[str, str], Any]

# Never filled in by a pickle, wherever they come from: code and what holds code.
_NEVER_FILLED_IN: Final = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.CodeType,
    staticmethod,
    classmethod,
    property,
)


class CheckedUnpickler(pickle._Unpickler):
    """Unpickles with every reference checked and only its own objects filled in.

    Args:
        file: The pickle.
        resolve: ``resolve(find, module, name)`` returns what a reference stands for
            or raises; ``find`` is the standard lookup (imports the module).
        refuse: Makes the exception raised for a refused fill-in from its message.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    # Set by the base class's load() (typeshed does not declare them).
    stack: list[Any]
    metastack: list[list[Any]]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]

    def __init__(
        self,
        file: IO[bytes],
        *,
        resolve: Callable[[Lookup, str, str], Any],
        refuse: Callable[[str], Exception],
    ) -> None:
        # find_class translates Python 2 names itself, before resolving them.
        super().__init__(file, fix_imports=False)
        self._resolve = resolve
        self._refuse = refuse
        # What resolve returned, by id (holding the objects keeps the ids unique).
        self._found: dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Resolves a reference: Python 2 names translated (any protocol), then checked."""
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._resolve(super().find_class, module, name)
        self._found[id(found)] = found
        return found

    def get_extension(self, code: int) -> None:
        """Resolves an ``EXT`` code, never from copyreg's cache (filled by other loads)."""
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    def _check_target(self, opcode: str, stack: list[Any], depth: int) -> None:
        """Refuses to let ``opcode`` change ``stack[-depth]`` unless the pickle made it."""
        if len(stack) < depth:
            return  # the opcode itself reports the malformed stack
        target = stack[-depth]
        if id(target) in self._found or isinstance(target, _NEVER_FILLED_IN):
            raise self._refuse(
                f"the payload's {opcode} opcode would modify {_describe(target)}, "
                "which it did not create"
            )

    def _check_marked_target(self, opcode: str) -> None:
        if self.metastack:  # the target sits just below the mark
            self._check_target(opcode, self.metastack[-1], 1)

    def load_build(self) -> None:
        """``BUILD``, checked."""
        self._check_target("BUILD", self.stack, 2)
        super().load_build()  # type: ignore[misc]

    def load_setitem(self) -> None:
        """``SETITEM``, checked."""
        self._check_target("SETITEM", self.stack, 3)
        super().load_setitem()  # type: ignore[misc]

    def load_setitems(self) -> None:
        """``SETITEMS``, checked."""
        self._check_marked_target("SETITEMS")
        super().load_setitems()  # type: ignore[misc]

    def load_append(self) -> None:
        """``APPEND``, checked."""
        self._check_target("APPEND", self.stack, 2)
        super().load_append()  # type: ignore[misc]

    def load_appends(self) -> None:
        """``APPENDS``, checked."""
        self._check_marked_target("APPENDS")
        super().load_appends()  # type: ignore[misc]

    def load_additems(self) -> None:
        """``ADDITEMS``, checked."""
        self._check_marked_target("ADDITEMS")
        super().load_additems()  # type: ignore[misc]

    def load_bytearray8(self) -> None:
        """``BYTEARRAY8``, reading before allocating (the base zeroes the claimed size)."""
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) < size:
            raise pickle.UnpicklingError("BYTEARRAY8 is longer than the pickle")
        self.append(bytearray(data))

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _describe(target: Any) -> str:
    """Names what a refused opcode would have changed: its name or kind, never contents."""
    name = getattr(target, "__qualname__", None)
    module = getattr(target, "__module__", None)
    if isinstance(name, str) and isinstance(module, str):
        return f"{module}.{name}"
    return f"a {type(target).__name__} object"
