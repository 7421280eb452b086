"""Task bodies as the legacy ``google.appengine.ext.deferred`` library queued them."""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LEGACY_MODULE = "google.appengine.ext.deferred.deferred"


@contextmanager
def legacy_library() -> Iterator[types.ModuleType]:
    """Stand-ins for the legacy module, present only while a test pickles with them.

    The pickler checks that a function is importable under its name; once the block
    ends, ``google.appengine`` is gone again, as after the migration.
    """
    module = types.ModuleType(LEGACY_MODULE)
    for name in ("invoke_member", "run_from_datastore", "defer"):

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the legacy library's code never runs")

        stand_in.__module__, stand_in.__name__, stand_in.__qualname__ = LEGACY_MODULE, name, name
        setattr(module, name, stand_in)
    sys.modules[LEGACY_MODULE] = module
    try:
        yield module
    finally:
        del sys.modules[LEGACY_MODULE]


def legacy_task(name: str, *args: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """``(deferred.<name>, args, {})`` as the bundled-services library pickled it."""
    with legacy_library() as module:
        return pickle.dumps((getattr(module, name), args, {}), protocol=protocol)


def receive(*args: Any, **kwargs: Any) -> str:
    """A migrated task: records exactly the arguments it received."""
    from tests.tasks import RECORDER

    RECORDER.add("py2", (args, kwargs))
    return "received"


class Point:
    """A class a Python 2 app pickled instances of (old-style there, new-style here)."""

    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def norm(self) -> int:
        """A method a legacy task called through invoke_member."""
        from tests.tasks import RECORDER

        RECORDER.add("py2", ((self.x, self.y), {}))
        return abs(self.x) + abs(self.y)
