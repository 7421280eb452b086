"""The unpickler behind the allowlist: bounded, every reference checked, only its own
objects filled in.

A :class:`CheckedUnpickler` is a
:class:`~cloudtasks_deferred.payload.unpickler.BoundedUnpickler` that adds the
allowlist's mechanism (the policy lives in :mod:`cloudtasks_deferred.payload.allowlist`):

* every ``GLOBAL``/``STACK_GLOBAL``/``INST``/``EXT`` reference goes to ``resolve``
  (Python 2 names translated first), ``EXT`` without copyreg's process-wide cache;
* ``BUILD`` (set an object's state), ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS``
  are refused, **before they change anything**, when their target is an object
  ``resolve`` returned during this load, or any class, module, function, method,
  descriptor or code object wherever it came from: a pickle may fill in only the
  objects it creates.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from collections.abc import Callable
from typing import Any, ClassVar, Final

from cloudtasks_deferred.payload.budget import DecodeBudget
from cloudtasks_deferred.payload.unpickler import BoundedUnpickler, Handler, Lookup

__all__ = ["CheckedUnpickler"]


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


class CheckedUnpickler(BoundedUnpickler):
    """A :class:`BoundedUnpickler` whose references are checked, and which fills in
    only the objects it creates.

    Args:
        data: The whole pickle.
        resolve: ``resolve(find, module, name)`` returns what a reference stands for
            or raises; ``find`` is the standard lookup (imports the module).
        refuse: Makes the exception raised for a refused fill-in from its message.
        budget: What the load may spend (see :class:`BoundedUnpickler`).
    """

    dispatch: ClassVar[dict[int, Handler]] = dict(BoundedUnpickler.dispatch)

    def __init__(
        self,
        data: bytes,
        *,
        resolve: Callable[[Lookup, str, str], Any],
        refuse: Callable[[str], Exception],
        budget: DecodeBudget | None = None,
    ) -> None:
        super().__init__(data, budget=budget)
        self._resolve = resolve
        self._refuse = refuse
        #: What resolve returned, by id (holding the objects keeps the ids unique).
        self.found: dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Resolves a reference through ``resolve``: Python 2 names translated first."""
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._resolve(self._find, module, name)
        self.found[id(found)] = found
        return found

    def _check_target(self, opcode: str, stack: list[Any], depth: int) -> None:
        """Refuses to let ``opcode`` change ``stack[-depth]`` unless the pickle made it."""
        if len(stack) < depth:
            return  # the opcode itself reports the malformed stack
        target = stack[-depth]
        if id(target) in self.found or isinstance(target, _NEVER_FILLED_IN):
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
        super().load_build()

    def load_setitem(self) -> None:
        """``SETITEM``, checked."""
        self._check_target("SETITEM", self.stack, 3)
        super().load_setitem()

    def load_setitems(self) -> None:
        """``SETITEMS``, checked."""
        self._check_marked_target("SETITEMS")
        super().load_setitems()

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
        super().load_additems()

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.ADDITEMS[0]] = load_additems


def _describe(target: Any) -> str:
    """Names what a refused opcode would have changed: its name or kind, never contents."""
    name = getattr(target, "__qualname__", None)
    module = getattr(target, "__module__", None)
    if isinstance(name, str) and isinstance(module, str):
        return f"{module}.{name}"
    return f"a {type(target).__name__} object"
