"""TaskInfo: the task headers Cloud Tasks and App Engine send, parsed leniently."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloudtasks_deferred import TaskInfo, current_task
from cloudtasks_deferred.receive.context import describe_request, request_scope, running
from cloudtasks_deferred.traces import TraceContext


def test_cloud_tasks_headers() -> None:
    info = TaskInfo.from_environ(
        {
            "HTTP_X_CLOUDTASKS_QUEUENAME": "projects/p/locations/l/queues/mail",
            "HTTP_X_CLOUDTASKS_TASKNAME": "123",
            "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "2",
            "HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT": "1",
            "HTTP_X_CLOUDTASKS_TASKETA": "1767225600",
            "HTTP_X_CLOUDTASKS_TASKPREVIOUSRESPONSE": "503",
            "HTTP_X_CLOUDTASKS_TASKRETRYREASON": "instance unavailable",
        }
    )
    assert info == TaskInfo(
        queue_name="mail",
        task_name="123",
        retry_count=2,
        execution_count=1,
        eta=datetime(2026, 1, 1, tzinfo=UTC),
        previous_response=503,
        retry_reason="instance unavailable",
    )


def test_app_engine_headers() -> None:
    info = TaskInfo.from_environ(
        {"HTTP_X_APPENGINE_QUEUENAME": "default", "HTTP_X_APPENGINE_TASKRETRYCOUNT": "4"}
    )
    assert (info.queue_name, info.retry_count) == ("default", 4)


@pytest.mark.parametrize("eta", ["", "soon", "nan", "1e400"])
def test_malformed_headers_are_none(eta: str) -> None:
    info = TaskInfo.from_environ(
        {"HTTP_X_CLOUDTASKS_TASKETA": eta, "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "x"}
    )
    assert info == TaskInfo()


def test_headers_for_log_lists_only_task_headers() -> None:
    text = TaskInfo.headers_for_log(
        {
            "HTTP_X_CLOUDTASKS_TASKNAME": "t",
            "HTTP_X_APPENGINE_QUEUENAME": "q",
            "HTTP_AUTHORIZATION": "Bearer secret",
            "HTTP_COOKIE": "session=secret",
        }
    )
    assert text == "X_APPENGINE_QUEUENAME:q, X_CLOUDTASKS_TASKNAME:t"


def test_running_sets_and_restores_current_task() -> None:
    assert current_task() is None
    with running(TaskInfo(task_name="a")):
        assert current_task() == TaskInfo(task_name="a")
    assert current_task() is None


def test_the_trace_of_the_task_request() -> None:
    info = TaskInfo.from_environ(
        {
            "HTTP_X_CLOUDTASKS_TASKNAME": "t",
            "HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        }
    )
    assert info.trace == TraceContext(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", sampled=False
    )
    assert TaskInfo.from_environ({"HTTP_TRACEPARENT": "00-bad"}).trace is None


def test_a_request_scope_holds_the_task_described_in_it_until_it_ends() -> None:
    info = TaskInfo(task_name="t")
    describe_request(info)  # outside a request's scope: nothing
    assert current_task() is None
    with request_scope():
        describe_request(info)
        assert current_task() is info
    assert current_task() is None
