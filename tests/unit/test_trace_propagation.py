"""A request's trace, carried by the tasks it defers: wrap_wsgi_app, defer, the handler."""

from __future__ import annotations

import io
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred import deferred, traces, wrap_wsgi_app
from cloudtasks_deferred.functions import deferred_task
from cloudtasks_deferred.testing import InMemoryQueue, in_memory_queue
from cloudtasks_deferred.traces import TraceContext
from tests import tasks
from tests.tasks import RECORDER

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


def request(headers: dict[str, str], path: str = "/view") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "app.test",
        "SERVER_PORT": "443",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "https",
    }
    environ.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    return environ


def serve(app: Callable[..., Any], environ: dict[str, Any]) -> str:
    status: list[str] = []
    body = app(environ, lambda line, headers, exc_info=None: status.append(line))
    b"".join(body)
    body.close()
    return status[0]


def deferring_app(**options: Any) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        RECORDER.add("view_trace", traces.current_trace())
        deferred.defer(tasks.record_trace, **options)
        start_response("200 OK", [])
        return [b"deferred"]

    return app


def carried(task: tasks_v2.Task) -> TraceContext | None:
    value = dict(task.http_request.headers).get("traceparent")
    return TraceContext.from_traceparent(value) if value is not None else None


def test_wrap_wsgi_app_reads_the_trace_and_defer_adds_a_child_span() -> None:
    with in_memory_queue() as queue:
        app = wrap_wsgi_app(deferring_app())
        assert serve(app, request({"traceparent": TRACEPARENT})).startswith("200")
        [task] = queue.tasks
    assert RECORDER.named("view_trace") == [TraceContext(TRACE, SPAN, sampled=True)]
    child = carried(task)
    assert child is not None
    assert (child.trace_id, child.sampled) == (TRACE, True)
    assert child.span_id not in (None, SPAN)
    assert traces.current_trace() is None  # the request's trace ended with it


def test_the_cloud_trace_header_is_read_too() -> None:
    with in_memory_queue() as queue:
        app = wrap_wsgi_app(deferring_app())
        serve(app, request({"X-Cloud-Trace-Context": f"{TRACE}/1;o=0"}))
        [task] = queue.tasks
    child = carried(task)
    assert child is not None
    assert (child.trace_id, child.sampled) == (TRACE, False)


@pytest.mark.parametrize(
    "header",
    [f"00-{TRACE}-{'0' * 16}-01", "00-xyz", "\x00" * 10, TRACEPARENT + "-extra", "ü" * 2000],
)
def test_a_malformed_trace_header_never_breaks_the_request(header: str) -> None:
    with in_memory_queue() as queue:
        app = wrap_wsgi_app(deferring_app())
        assert serve(app, request({"traceparent": header})).startswith("200")
        [task] = queue.tasks
        assert queue.run_pending() == [HTTPStatus.OK]
    assert carried(task) is None
    assert RECORDER.named("trace") == [(None, None)]


def test_outside_a_request_defer_adds_no_trace() -> None:
    with in_memory_queue() as queue:
        deferred.defer(tasks.record_trace)
        [task] = queue.tasks
    assert "traceparent" not in dict(task.http_request.headers)


@pytest.mark.parametrize("name", ["traceparent", "TraceParent"])
def test_a_traceparent_in_headers_wins(name: str) -> None:
    mine = f"00-{'a' * 32}-{'b' * 16}-00"
    with in_memory_queue() as queue:
        app = wrap_wsgi_app(deferring_app(_headers={name: mine}))
        serve(app, request({"traceparent": TRACEPARENT}))
        [task] = queue.tasks
    headers = dict(task.http_request.headers)
    assert [k for k in headers if k.lower() == "traceparent"] == [name]
    assert headers[name] == mine


def test_the_in_memory_queue_forwards_the_trace_to_the_task() -> None:
    with in_memory_queue() as queue:
        app = wrap_wsgi_app(deferring_app())
        serve(app, request({"traceparent": TRACEPARENT}))
        [task] = queue.tasks
        assert queue.run_pending() == [HTTPStatus.OK]
    [(info_trace, current)] = RECORDER.named("trace")
    assert info_trace == carried(task)  # current_task().trace
    assert current == carried(task)  # and the trace of the task's log lines


def test_a_task_deferred_by_a_task_stays_in_the_trace() -> None:
    with in_memory_queue() as queue:
        with traces.tracing(TraceContext(TRACE, SPAN, sampled=True)):
            deferred.defer(tasks.defer_record_trace)
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]
    (first, _), (second, _) = RECORDER.named("trace")
    assert first.trace_id == second.trace_id == TRACE
    assert len({SPAN, first.span_id, second.span_id}) == 3


def test_the_handler_reads_the_trace_of_tasks_sent_by_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A task created elsewhere (another service, gcloud) with Google's header only.
    with in_memory_queue() as queue:
        deferred.defer(tasks.record_trace, _headers={"X-Cloud-Trace-Context": f"{TRACE}/9;o=1"})
        assert queue.run_pending() == [HTTPStatus.OK]
    [(info_trace, _)] = RECORDER.named("trace")
    assert info_trace == TraceContext(TRACE, "0000000000000009", sampled=True)


class _FunctionRequest:
    def __init__(self, environ: dict[str, Any]) -> None:
        self.method = "POST"
        self.environ = environ


def test_the_functions_entry_point_reads_the_trace(queue_environ: dict[str, Any]) -> None:
    assert deferred_task(_FunctionRequest(queue_environ))[1] == 200
    [(info_trace, current)] = RECORDER.named("trace")
    assert info_trace == current == TraceContext(TRACE, SPAN, sampled=True)


@pytest.fixture
def queue_environ() -> Any:
    """The environ of a delivery of a task carrying TRACEPARENT, from an in-memory queue
    that is the current client while the test runs."""
    with in_memory_queue() as queue:
        deferred.defer(tasks.record_trace, _headers={"traceparent": TRACEPARENT})
        task = queue.transport.take()
        assert task is not None
        yield _delivery(queue, task)


def _delivery(queue: InMemoryQueue, task: tasks_v2.Task) -> dict[str, Any]:
    return queue._environ(task, [])
