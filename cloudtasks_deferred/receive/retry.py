"""The handler side of per-task retry options: is this failed attempt the last one?

The limits travel in the payload frame's metadata
(:func:`~cloudtasks_deferred.payload.retry.retry_metadata`); here they meet the running
task's retry count and schedule (:class:`~cloudtasks_deferred.receive.context.TaskInfo`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from cloudtasks_deferred.payload.retry import LIMITS_KEY, STARTED_KEY, give_up_reason
from cloudtasks_deferred.receive.context import TaskInfo

__all__ = ["exhausted", "gives_up"]


def exhausted(metadata: Mapping[str, Any], task: TaskInfo | None, now: float) -> str | None:
    """Why a failed attempt of ``task`` is the last one, or ``None`` if it will be retried.

    The one rule the handler applies, and that code running inside a task uses to
    clean up once its task will not be retried (a stored payload, an outbox entry).

    Args:
        metadata: The payload frame's metadata (see :func:`retry_metadata`).
        task: The running task (:func:`~cloudtasks_deferred.current_task`); ``None``
            outside one, where nothing is exhausted.
        now: Seconds since the epoch.
    """
    if task is None:
        return None
    start = metadata.get(STARTED_KEY)
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        age: float | None = now - start
    else:
        age = now - task.eta.timestamp() if task.eta else None
    limits = metadata.get(LIMITS_KEY)
    return give_up_reason(
        limits if isinstance(limits, Mapping) else {},
        retry_count=task.retry_count,
        age_seconds=age,
    )


def gives_up(metadata: Mapping[str, Any], task: TaskInfo | None) -> bool:
    """Whether the handler will give up on the failed attempt of ``task`` now
    (:func:`exhausted`, at the current time)."""
    return exhausted(metadata, task, time.time()) is not None
