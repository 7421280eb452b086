"""TaskRetryOptions validation and the handler's per-task retry limits."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudtasks_deferred import TaskRetryOptions
from cloudtasks_deferred.payload.retry import give_up_reason
from cloudtasks_deferred.receive.context import TaskInfo
from cloudtasks_deferred.receive.retry import gives_up


def test_legacy_fields() -> None:
    options = TaskRetryOptions(
        min_backoff_seconds=1,
        max_backoff_seconds=60.5,
        task_age_limit=3600,
        max_doublings=4,
        task_retry_limit=5,
    )
    assert options.to_metadata() == {"task_retry_limit": 5, "task_age_limit": 3600}
    assert options.queue_level_fields == (
        "min_backoff_seconds",
        "max_backoff_seconds",
        "max_doublings",
    )
    assert TaskRetryOptions(task_retry_limit=0).queue_level_fields == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"task_retry_limit": -1}, ValueError, "task_retry_limit must be >= 0"),
        ({"task_retry_limit": 1.5}, TypeError, "task_retry_limit must be an int"),
        ({"task_age_limit": "1d"}, TypeError, "task_age_limit must be an int"),
        ({"max_doublings": True}, TypeError, "max_doublings must be an int"),
        ({"min_backoff_seconds": "1"}, TypeError, "min_backoff_seconds must be a number"),
        ({"min_backoff_seconds": 10, "max_backoff_seconds": 1}, ValueError, "must be >= min"),
    ],
)
def test_invalid_values(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        TaskRetryOptions(**kwargs)


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        TaskRetryOptions(1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("limits", "retry_count", "age", "gives_up"),
    [
        ({}, 100, 10**6, False),
        ({"task_retry_limit": 3}, 2, None, False),
        ({"task_retry_limit": 3}, 3, None, True),
        ({"task_retry_limit": 0}, 0, None, True),
        ({"task_retry_limit": 3}, None, None, False),
        ({"task_age_limit": 60}, 0, 59.0, False),
        ({"task_age_limit": 60}, 0, 60.0, True),
        ({"task_age_limit": 60}, 0, None, False),
        # With both limits, the task is retried until both are reached (legacy rule).
        ({"task_retry_limit": 3, "task_age_limit": 60}, 5, 30.0, False),
        ({"task_retry_limit": 3, "task_age_limit": 60}, 1, 90.0, False),
        ({"task_retry_limit": 3, "task_age_limit": 60}, 3, 60.0, True),
        ({"task_retry_limit": "3"}, 10, None, False),
    ],
)
def test_give_up_reason(
    limits: dict[str, Any], retry_count: int | None, age: float | None, gives_up: bool
) -> None:
    reason = give_up_reason(limits, retry_count=retry_count, age_seconds=age)
    assert (reason is not None) is gives_up


def test_gives_up_applies_the_handlers_rule_inside_a_task() -> None:
    limit = {"retry": {"task_retry_limit": 2}}
    assert not gives_up(limit, None)  # outside a task nothing gives up
    assert not gives_up(limit, TaskInfo(retry_count=1))
    assert gives_up(limit, TaskInfo(retry_count=2))
    assert not gives_up({}, TaskInfo(retry_count=99))  # no limits: the queue decides
    aged = {"retry": {"task_age_limit": 60}, "t0": time.time() - 61}
    assert gives_up(aged, TaskInfo(retry_count=0))
    eta = datetime.now(UTC) - timedelta(seconds=30)
    assert not gives_up({"retry": {"task_age_limit": 60}}, TaskInfo(eta=eta))
