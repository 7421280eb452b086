"""A thread-safe memo for the few objects a process should build once."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["once_per_process"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def once_per_process(build: Callable[[_K], _V]) -> Callable[[_K], _V]:
    """Memoizes ``build`` per argument, calling it at most once even across threads.

    ``functools.cache`` alone may call ``build`` twice when two threads miss at once,
    which for a gRPC client or a key file means two of them. The result keeps
    ``cache_clear`` for tests.
    """
    lock = threading.Lock()
    cached = functools.cache(build)

    @functools.wraps(build)
    def get(key: _K) -> _V:
        with lock:
            return cached(key)

    get.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return get
