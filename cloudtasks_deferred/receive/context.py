"""What a running task knows about itself: :func:`current_task`.

Legacy code read ``os.environ["HTTP_X_APPENGINE_TASKNAME"]`` and friends inside a
task. Cloud Tasks sends the same facts as ``X-CloudTasks-*`` headers to HTTP
targets and as ``X-AppEngine-*`` headers to App Engine targets; the handler parses
whichever is present, after authenticating the request, into a :class:`TaskInfo`
visible to the task through :func:`current_task`, with the trace the task's request
carries (the ``traceparent`` ``defer`` added in the request that deferred it; see
:mod:`cloudtasks_deferred.traces`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cloudtasks_deferred import traces
from cloudtasks_deferred.traces import TraceContext

__all__ = ["TaskInfo", "current_task", "describe_request", "request_scope", "running"]

_PREFIXES: Final = ("HTTP_X_CLOUDTASKS_", "HTTP_X_APPENGINE_")

_current: contextvars.ContextVar[TaskInfo | None] = contextvars.ContextVar(
    "cloudtasks_deferred_current_task", default=None
)
# The scope of the task request being handled (request_scope), if any.
_request: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "cloudtasks_deferred_task_request", default=None
)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """The running task, as Cloud Tasks describes it in its request headers.

    Attributes:
        queue_name: Short queue ID, e.g. ``"default"``.
        task_name: Short task ID (the part after ``/tasks/``).
        retry_count: Retries before this attempt (0 on the first), if sent.
        execution_count: Attempts that got a response from the handler, if sent.
        eta: When the task was scheduled to run, as an aware UTC datetime, if sent.
        previous_response: HTTP status of the previous attempt, if any.
        retry_reason: Why the task is being retried, if Cloud Tasks says.
        trace: The trace of the task's request (``traceparent``, else
            ``X-Cloud-Trace-Context``): for a task deferred inside a traced request,
            a child span of that request's. ``None`` when it carries none.
    """

    queue_name: str | None = None
    task_name: str | None = None
    retry_count: int | None = None
    execution_count: int | None = None
    eta: datetime | None = None
    previous_response: int | None = None
    retry_reason: str | None = None
    trace: TraceContext | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> TaskInfo:
        """Parses the task headers of a WSGI request; missing or malformed ones are None.

        ``X-CloudTasks-*`` headers win over ``X-AppEngine-*`` when both are present.
        Only call it for an authenticated request: anyone can send these headers.

        Args:
            environ: The WSGI environ.
        """

        def header(name: str) -> str | None:
            for prefix in _PREFIXES:
                value = environ.get(prefix + name)
                if isinstance(value, str) and value:
                    return value
            return None

        return cls(
            queue_name=_short(header("QUEUENAME")),
            task_name=_short(header("TASKNAME")),
            retry_count=_int(header("TASKRETRYCOUNT")),
            execution_count=_int(header("TASKEXECUTIONCOUNT")),
            eta=_timestamp(header("TASKETA")),
            previous_response=_int(header("TASKPREVIOUSRESPONSE")),
            retry_reason=header("TASKRETRYREASON"),
            trace=traces.from_environ(environ),
        )

    @staticmethod
    def headers_for_log(environ: Mapping[str, Any]) -> str:
        """Formats the task headers as the legacy handler logged them, secrets excluded."""
        return ", ".join(
            f"{key[5:]}:{value}"
            for key, value in sorted(environ.items())
            if key.startswith(_PREFIXES) and isinstance(value, str)
        )


def current_task() -> TaskInfo | None:
    """Describes the task being run, or returns ``None`` outside a task.

    Returns:
        The :class:`TaskInfo` of the task the calling code runs in.
    """
    return _current.get()


@contextlib.contextmanager
def running(info: TaskInfo) -> Iterator[TaskInfo]:
    """Makes ``info`` the :func:`current_task` for the duration of the block."""
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


@contextlib.contextmanager
def request_scope() -> Iterator[None]:
    """The scope of one task request: what :func:`describe_request` sets ends with it."""
    with contextlib.ExitStack() as stack:
        token = _request.set(stack)
        try:
            yield
        finally:
            _request.reset(token)


def describe_request(info: TaskInfo) -> None:
    """Makes ``info`` the :func:`current_task` until the request's scope ends.

    The handler calls it once the request is authenticated, so that every line logged
    for the request from then on, its report included, names the task (the labels of
    :mod:`cloudtasks_deferred.logs`). Outside a :func:`request_scope` it does nothing.
    """
    stack = _request.get()
    if stack is not None:
        stack.enter_context(running(info))


def _short(name: str | None) -> str | None:
    # Some senders (the emulator) pass the full resource name.
    return name.rsplit("/", 1)[-1] if name else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _timestamp(value: str | None) -> datetime | None:
    try:
        seconds = float(value) if value is not None else None
        return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None
    except (ValueError, OverflowError, OSError):
        return None
