"""Per-task retry options (the legacy ``taskqueue.TaskRetryOptions``) and their rule.

Cloud Tasks configures retries per queue (max attempts, backoff, max retry
duration; see ``terraform/``). The legacy API let each task carry its own limits,
so ``defer(..., _retry_options=TaskRetryOptions(...))`` stores the limits Cloud
Tasks cannot apply per task in the payload frame's metadata (:func:`retry_metadata`),
and the handler enforces them (:func:`give_up_reason`, applied by
:mod:`cloudtasks_deferred.receive.retry`):

* ``task_retry_limit`` — after that many retries a failing task is given up:
  logged, recorded as a dead letter and answered with 200 so Cloud Tasks drops it;
* ``task_age_limit`` — likewise once this many seconds have passed since the task's
  scheduled time. With both limits set, the task is retried until both are reached,
  as in the legacy API.

Backoff (``min_backoff_seconds``, ``max_backoff_seconds``, ``max_doublings``) exists
only per queue in Cloud Tasks: setting it on a task emits a
:class:`RetryOptionsWarning` that says so, and the queue's backoff applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "LIMITS_KEY",
    "STARTED_KEY",
    "RetryOptionsWarning",
    "TaskRetryOptions",
    "give_up_reason",
    "retry_metadata",
]

#: Frame metadata key of the task's own limits (:meth:`TaskRetryOptions.to_metadata`).
LIMITS_KEY: Final = "retry"
#: Frame metadata key of the time the task may first run, in seconds since the epoch.
STARTED_KEY: Final = "t0"


class RetryOptionsWarning(UserWarning):
    """A per-task retry option that Cloud Tasks can only apply per queue was set."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskRetryOptions:
    """Retry limits for one task, with the legacy ``taskqueue.TaskRetryOptions`` fields.

    Attributes:
        min_backoff_seconds: Minimum seconds between retries (queue-level in Cloud
            Tasks; see the module docstring).
        max_backoff_seconds: Maximum seconds between retries (queue-level).
        task_age_limit: Seconds after the task's scheduled time beyond which a failing
            task is no longer retried.
        max_doublings: Times the backoff doubles before growing linearly (queue-level).
        task_retry_limit: Retries after which a failing task is given up.

    Raises:
        TypeError: A value is not a number (or, for counts, not an ``int``).
        ValueError: A value is negative, or the backoff bounds are inverted.
    """

    min_backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None
    task_age_limit: int | None = None
    max_doublings: int | None = None
    task_retry_limit: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            integral = field.name in ("task_age_limit", "max_doublings", "task_retry_limit")
            kinds = (int,) if integral else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                kind = "an int" if integral else "a number"
                raise TypeError(f"TaskRetryOptions.{field.name} must be {kind}, got {value!r}")
            if value < 0:
                raise ValueError(f"TaskRetryOptions.{field.name} must be >= 0, got {value!r}")
        low, high = self.min_backoff_seconds, self.max_backoff_seconds
        if low is not None and high is not None and high < low:
            raise ValueError(
                "TaskRetryOptions.max_backoff_seconds must be >= min_backoff_seconds, "
                f"got {high!r} < {low!r}"
            )

    @property
    def queue_level_fields(self) -> tuple[str, ...]:
        """The fields that are set but that Cloud Tasks applies only per queue (backoff)."""
        names = ("min_backoff_seconds", "max_backoff_seconds", "max_doublings")
        return tuple(name for name in names if getattr(self, name) is not None)

    def to_metadata(self) -> dict[str, int]:
        """The limits the handler enforces, for the payload frame.

        Returns:
            ``task_retry_limit`` and ``task_age_limit`` where set.
        """
        limits = {"task_retry_limit": self.task_retry_limit, "task_age_limit": self.task_age_limit}
        return {k: v for k, v in limits.items() if v is not None}


def give_up_reason(
    limits: Mapping[str, Any], *, retry_count: int | None, age_seconds: float | None
) -> str | None:
    """Decides whether a failed attempt exhausted the task's own retry limits.

    Args:
        limits: The ``retry`` metadata of the payload (see
            :meth:`TaskRetryOptions.to_metadata`); malformed values are ignored.
        retry_count: Retries before this attempt (``X-CloudTasks-TaskRetryCount``),
            ``None`` if unknown.
        age_seconds: Seconds since the task's scheduled time, ``None`` if unknown.

    Returns:
        Why the task should not be retried, or ``None`` to let Cloud Tasks retry it.
    """
    retry_limit = limits.get("task_retry_limit")
    age_limit = limits.get("task_age_limit")
    reasons = []
    if isinstance(retry_limit, int):
        if retry_count is None or retry_count < retry_limit:
            return None
        reasons.append(f"task_retry_limit={retry_limit} reached after {retry_count} retries")
    if isinstance(age_limit, int):
        if age_seconds is None or age_seconds < age_limit:
            return None
        reasons.append(f"task_age_limit={age_limit}s reached at {age_seconds:.0f}s")
    return "; ".join(reasons) or None


def retry_metadata(options: TaskRetryOptions, scheduled_at: datetime) -> dict[str, Any]:
    """The frame metadata that carries ``options`` to the handler.

    Args:
        options: The task's ``_retry_options``.
        scheduled_at: When the task may first run: its age is counted from there.
    """
    return {LIMITS_KEY: options.to_metadata(), STARTED_KEY: scheduled_at.timestamp()}
