"""An in-memory transport: tasks are recorded, not sent.

It behaves like the service where a test can notice: it assigns names to unnamed
tasks, refuses a name it has seen (``ALREADY_EXISTS``, as Cloud Tasks does within
its dedupe window), and stamps ``create_time`` and a default ``schedule_time``.
"""

from __future__ import annotations

import itertools
import threading
import time

from google.api_core import exceptions
from google.cloud import tasks_v2

__all__ = ["InMemoryTransport"]


class InMemoryTransport:
    """Records created tasks, oldest first. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tasks_v2.Task] = []
        self._names: set[str] = set()
        self._ids = itertools.count(1)

    @property
    def tasks(self) -> list[tasks_v2.Task]:
        """A snapshot of the tasks not yet taken, oldest first."""
        with self._lock:
            return list(self._pending)

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        """Records a copy of ``task`` (see :class:`.transports.Transport`)."""
        created = tasks_v2.Task.pb()()
        created.CopyFrom(tasks_v2.Task.pb(task))
        now_ns = time.time_ns()  # Timestamp.GetCurrentTime() is ~10x slower
        created.create_time.seconds, created.create_time.nanos = divmod(now_ns, 1_000_000_000)
        if not created.HasField("schedule_time"):
            created.schedule_time.CopyFrom(created.create_time)
        with self._lock:
            if not created.name:
                created.name = f"{parent}/tasks/{next(self._ids):020d}"
            elif created.name in self._names:
                raise exceptions.AlreadyExists(f"Requested entity already exists: {created.name}")
            self._names.add(created.name)
            recorded: tasks_v2.Task = tasks_v2.Task.wrap(created)
            self._pending.append(recorded)
        return recorded

    def take(self) -> tasks_v2.Task | None:
        """Removes and returns the oldest pending task, or ``None``."""
        with self._lock:
            return self._pending.pop(0) if self._pending else None

    def clear(self) -> None:
        """Forgets every pending task and every name seen."""
        with self._lock:
            self._pending.clear()
            self._names.clear()

    def put_back(self, task: tasks_v2.Task) -> None:
        """Queues a task taken with :meth:`take` again (a retry), at the back."""
        with self._lock:
            self._pending.append(task)
