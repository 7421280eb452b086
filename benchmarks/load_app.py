"""What R1 serves with gunicorn: a user's WSGI app wrapped with ``wrap_wsgi_app``, and its task.

Configured only by the environment R1 gives the gunicorn process (dev mode against
the emulators, NDB on), as a deployed service is. Each task records its index in
Datastore through NDB, idempotently: one ``R1Record`` entity per index, however often
the task runs, holding the list of its executions so that duplicates can be counted
and explained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.cloud import ndb

from cloudtasks_deferred import current_task, wrap_wsgi_app


class R1Record(ndb.Model):
    """Index ``index`` of run ``run`` ran: once per execution, an entry in ``executions``.

    Attributes:
        run: The run's ID (indexed: R1 counts a run's records).
        index: The task's index in its run.
        executions: One ``{"task", "retry", "pid", "at", "injected"}`` per execution:
            the task's short name and ``X-CloudTasks-TaskRetryCount``, the worker's
            process, when (epoch seconds), and whether this execution then failed
            on purpose.
    """

    run = ndb.StringProperty(required=True)
    index = ndb.IntegerProperty(indexed=False, required=True)
    executions = ndb.JsonProperty(required=True)


class InjectedFailure(RuntimeError):
    """Raised after recording, to make Cloud Tasks retry a task that already ran."""


def record_index(run: str, index: int, fail_once: bool = False) -> None:
    """The load's task: records this execution of ``index``, in one transaction.

    Args:
        run: The run's ID.
        index: The task's index.
        fail_once: Raise after recording on the first attempt (a 500): the retry runs
            the task again, a duplicate the report must explain.
    """
    info = current_task()
    if info is None:
        raise RuntimeError("record_index runs as a task only")
    injected = fail_once and info.retry_count == 0
    execution = {
        "task": info.task_name,
        "retry": info.retry_count,
        "pid": os.getpid(),
        "at": time.time(),
        "injected": injected,
    }
    key = ndb.Key(R1Record, f"{run}-{index:06d}")

    @ndb.transactional()
    def append() -> None:
        record = key.get(use_cache=False)
        if record is None:
            record = R1Record(key=key, run=run, index=index, executions=[])
        record.executions = [*record.executions, execution]
        record.put(use_cache=False)

    append()
    if injected:
        raise InjectedFailure(f"index {index}: an injected failure after recording")


def site(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The user's own app: answers everything that is not a task (R1's readiness probe)."""
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok"]


application = wrap_wsgi_app(site)
