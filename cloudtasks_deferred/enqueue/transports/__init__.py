"""Transports: how a built task reaches a queue.

:class:`Transport` is the small protocol ``defer`` talks to.
:class:`~cloudtasks_deferred.enqueue.transports.cloud_tasks.CloudTasksTransport` sends tasks
to the Cloud Tasks API (or its emulator);
:class:`~cloudtasks_deferred.enqueue.transports.memory.InMemoryTransport` records them for
tests (see :mod:`cloudtasks_deferred.testing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from google.cloud import tasks_v2

__all__ = ["Transport"]


class Transport(Protocol):
    """Creates tasks in queues."""

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        """Creates ``task`` in the queue ``parent``.

        Args:
            parent: Full queue name, ``projects/P/locations/L/queues/Q``.
            task: The task as built by :func:`cloudtasks_deferred.enqueue.tasks.build_task`.

        Returns:
            The created task, with its name.

        Raises:
            google.api_core.exceptions.AlreadyExists: ``task.name`` is taken.
            google.api_core.exceptions.GoogleAPICallError: Any other refusal.
        """
        ...
