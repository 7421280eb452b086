"""The in-memory queue users test with: real task messages, the real handler, real tokens."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred import (
    Client,
    Handler,
    Settings,
    SingularTaskFailure,
    TaskAlreadyExistsError,
    current_task,
    deferred,
    testing,
)
from cloudtasks_deferred.client import current_client
from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.tasks import build_task
from cloudtasks_deferred.settings import Platform
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import tasks
from tests.tasks import RECORDER


def test_records_tasks_exactly_as_the_cloud_tasks_transport_builds_them() -> None:
    with in_memory_queue() as queue:
        task = deferred.defer(tasks.record, 1, _countdown=30, _headers={"X-A": "b"})
    [recorded] = queue.tasks
    assert recorded == task
    options, _ = split_options({"_countdown": 30, "_headers": {"X-A": "b"}})
    expected = build_task(
        recorded.http_request.body,
        options,
        TEST_SETTINGS,
        parent="projects/test-project/locations/us-central1/queues/default",
    )
    # Everything but what the service fills in (name, create time) and the clock.
    for field in ("http_request", "dispatch_deadline", "app_engine_http_request"):
        assert getattr(recorded, field) == getattr(expected, field), field
    assert recorded.name.startswith(
        "projects/test-project/locations/us-central1/queues/default/tasks/"
    )
    assert recorded.create_time is not None


def test_run_pending_runs_tasks_through_the_handler_in_order() -> None:
    with in_memory_queue() as queue:
        deferred.defer(tasks.record, "first")
        deferred.defer(tasks.record, "second")
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]
        assert queue.tasks == []
    assert RECORDER.named("record") == ["first", "second"]


def test_tasks_deferred_by_tasks_run_too() -> None:
    with in_memory_queue() as queue:
        deferred.defer(tasks.defer_another, "chained")
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]
    assert RECORDER.named("record") == ["chained"]


def test_failures_are_retried_like_a_queue_would() -> None:
    with in_memory_queue() as queue:
        deferred.defer(tasks.fail_once_then_record, "k")
        assert queue.run_pending() == [HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.OK]
    assert RECORDER.named("attempt") == [0, 1]
    assert RECORDER.named("fail_once_then_record") == ["k"]


def test_tasks_that_keep_failing_are_given_up_after_max_attempts() -> None:
    with in_memory_queue(max_attempts=3) as queue:
        task = deferred.defer(tasks.crash)
        assert queue.run_pending() == [HTTPStatus.INTERNAL_SERVER_ERROR] * 3
        assert queue.given_up == [task]


def test_permanent_failures_are_dead_letters() -> None:
    with in_memory_queue() as queue:
        deferred.defer(tasks.fail_permanently)
        assert queue.run_pending() == [HTTPStatus.OK]
        [letter] = queue.dead_letters
    assert letter.callable_name == "tests.tasks.fail_permanently"


def test_current_task_sees_the_cloud_tasks_headers() -> None:
    with in_memory_queue() as queue:
        task = deferred.defer(tasks.record_task_info, _name="named-task", _queue="mail")
        queue.run_pending()
    [info] = RECORDER.named("task_info")
    assert info.task_name == "named-task"
    assert info.queue_name == "mail"
    assert info.retry_count == 0
    assert info.eta == task.schedule_time


def test_names_are_deduplicated_like_cloud_tasks() -> None:
    with in_memory_queue():
        deferred.defer(tasks.record, _name="once")
        with pytest.raises(TaskAlreadyExistsError):
            deferred.defer(tasks.record, _name="once")


def test_deliveries_are_authenticated_with_a_signed_token() -> None:
    seen: list[str] = []
    handler = Handler()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ["HTTP_AUTHORIZATION"])
        return handler(environ, start_response)

    with in_memory_queue(app=app) as queue:
        deferred.defer(tasks.record, 1)
        assert queue.run_pending() == [HTTPStatus.OK]
    assert seen[0].startswith("Bearer ey")


def test_unsigned_deliveries_would_be_refused() -> None:
    with in_memory_queue() as queue:
        task = deferred.defer(tasks.record, 1)
        request = tasks_v2.Task(task)
        request.http_request.oidc_token = tasks_v2.OidcToken()
        assert queue.deliver(request) == HTTPStatus.FORBIDDEN


def test_app_engine_tasks_use_app_engine_headers() -> None:
    settings = Settings(
        project="p",
        location="us-central1",
        platform=Platform.APP_ENGINE,
        app_engine_service="default",
        app_engine_version="v1",
        ndb=False,
    )
    with in_memory_queue(settings) as queue:
        task = deferred.defer(tasks.record_task_info, _name="gae-task")
        assert task.app_engine_http_request.app_engine_routing.version == "v1"
        assert queue.run_pending() == [HTTPStatus.OK]
    [info] = RECORDER.named("task_info")
    assert info.task_name == "gae-task"


def test_custom_url_routes_through_the_users_app() -> None:
    import flask

    app = flask.Flask(__name__)

    @app.post("/custom/path")
    def custom() -> Any:
        return deferred.Handler().post(flask.request.environ)

    with in_memory_queue(app=app.wsgi_app) as queue:
        deferred.defer(tasks.record, "custom", _url="/custom/path")
        assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("record") == ["custom"]


def test_dev_mode_settings_work_in_memory(tmp_path: Any) -> None:
    settings = dataclasses.replace(
        TEST_SETTINGS, dev_mode=True, dev_key_file=tmp_path / "dev.pem", ndb=False
    )
    with in_memory_queue(settings) as queue:
        deferred.defer(tasks.record, "dev")
        assert queue.run_pending() == [HTTPStatus.OK]


def test_defer_outside_the_block_does_not_land_in_the_queue() -> None:
    with in_memory_queue() as queue:
        pass
    assert queue.tasks == []


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        InMemoryQueue(TEST_SETTINGS, max_attempts=0)


def test_queues_built_at_once_on_threads_share_one_signing_key() -> None:
    testing._signing_key.cache_clear()  # type: ignore[attr-defined]
    start = threading.Barrier(4)
    queues: list[InMemoryQueue] = []

    def build() -> None:
        start.wait()
        queues.append(InMemoryQueue(TEST_SETTINGS))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(queues) == 4
    assert len({id(queue._key) for queue in queues}) == 1


def fail_twice_with(kind: str) -> None:
    """Records the task headers, and fails the first two attempts (500 or 408)."""
    info = current_task()
    assert info is not None
    RECORDER.add("headers", info)
    if (info.retry_count or 0) < 2:
        raise SingularTaskFailure("again") if kind == "singular" else RuntimeError("again")


def test_defer_from_a_thread_pool_lands_in_the_queue() -> None:
    with in_memory_queue() as queue, ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(deferred.defer, tasks.record, n) for n in range(4)]
        created = [future.result() for future in futures]
        assert sorted(task.name for task in queue.tasks) == sorted(t.name for t in created)
        assert queue.run_pending() == [HTTPStatus.OK] * 4
    assert sorted(RECORDER.named("record")) == [0, 1, 2, 3]


def test_defer_from_a_plain_thread_lands_in_the_queue() -> None:
    with in_memory_queue() as queue:
        thread = threading.Thread(target=deferred.defer, args=(tasks.record, "thread"))
        thread.start()
        thread.join()
        assert len(queue.tasks) == 1


def test_threads_use_the_default_client_again_after_the_block() -> None:
    with in_memory_queue() as queue:
        pass
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(current_client).result() is not queue.client


@pytest.mark.parametrize(
    ("kind", "statuses", "executions"),
    [("crash", [500, 500, 200], [0, 0, 0]), ("singular", [408, 408, 200], [0, 1, 2])],
)
def test_redeliveries_carry_the_retry_headers_of_http_targets(
    kind: str, statuses: list[int], executions: list[int]
) -> None:
    raw: list[dict[str, Any]] = []
    handler = Handler()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raw.append({k: v for k, v in environ.items() if k.startswith("HTTP_X_CLOUDTASKS_")})
        return handler(environ, start_response)

    with in_memory_queue(app=app) as queue:
        deferred.defer(fail_twice_with, kind)
        assert queue.run_pending() == statuses
    seen = RECORDER.named("headers")
    assert [info.retry_count for info in seen] == [0, 1, 2]
    assert [info.execution_count for info in seen] == executions  # 5xx not counted
    assert [info.previous_response for info in seen] == [None, *statuses[:2]]
    assert [info.retry_reason for info in seen] == [None, None, None]  # sent empty
    assert "HTTP_X_CLOUDTASKS_TASKRETRYREASON" not in raw[0]
    assert [headers["HTTP_X_CLOUDTASKS_TASKRETRYREASON"] for headers in raw[1:]] == ["", ""]
    assert "HTTP_X_CLOUDTASKS_TASKPREVIOUSRESPONSE" not in raw[0]


def test_redeliveries_carry_the_retry_headers_of_app_engine_targets() -> None:
    settings = Settings(
        project="p",
        location="us-central1",
        platform=Platform.APP_ENGINE,
        app_engine_service="default",
        app_engine_version="v1",
        ndb=False,
    )
    with in_memory_queue(settings) as queue:
        deferred.defer(fail_twice_with, "crash")
        assert queue.run_pending() == [500, 500, 200]
    seen = RECORDER.named("headers")
    assert [info.retry_count for info in seen] == [0, 1, 2]
    assert [info.execution_count for info in seen] == [0, 1, 2]  # every answer counts
    assert [info.previous_response for info in seen] == [None, 500, 500]
    assert [info.retry_reason for info in seen] == [None, "App Error", "App Error"]


def test_nested_blocks_the_inner_one_wins_in_every_thread_until_it_ends() -> None:
    def defer_in_a_thread(value: str) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(deferred.defer, tasks.record, value).result()

    with in_memory_queue() as outer:
        with in_memory_queue() as inner:
            deferred.defer(tasks.record, "inner, main thread")
            defer_in_a_thread("inner, worker")
        deferred.defer(tasks.record, "outer, main thread")
        defer_in_a_thread("outer, worker")
    assert len(inner.tasks) == 2
    assert len(outer.tasks) == 2


def test_concurrent_blocks_keep_each_threads_tasks_apart() -> None:
    both_open = threading.Barrier(2)
    queues: dict[str, InMemoryQueue] = {}

    def test_body(name: str) -> None:
        with in_memory_queue() as queue:
            queues[name] = queue
            both_open.wait()
            for _ in range(3):
                deferred.defer(tasks.record, name)
            both_open.wait()

    threads = [threading.Thread(target=test_body, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for queue in queues.values():
        assert len(queue.tasks) == 3
        with queue.client.bind():
            queue.run_pending()
    assert sorted(RECORDER.named("record")) == ["a"] * 3 + ["b"] * 3


def test_blocks_left_out_of_order_leave_the_remaining_one_in_place() -> None:
    def other_thread_client() -> Client:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(current_client).result()

    steps = {name: threading.Event() for name in ("a_in", "b_in", "a_out", "a_left", "b_out")}
    queues: dict[str, InMemoryQueue] = {}

    def block(name: str, entered: str, leave: str, left: str | None = None) -> None:
        with in_memory_queue() as queue:
            queues[name] = queue
            steps[entered].set()
            assert steps[leave].wait(10)
        if left:
            steps[left].set()

    a = threading.Thread(target=block, args=("a", "a_in", "a_out", "a_left"))
    b = threading.Thread(target=block, args=("b", "b_in", "b_out"))
    a.start()
    assert steps["a_in"].wait(10)
    b.start()
    assert steps["b_in"].wait(10)
    try:
        assert other_thread_client() is queues["b"].client
        steps["a_out"].set()  # the first block ends while the second is open
        assert steps["a_left"].wait(10)
        assert other_thread_client() is queues["b"].client
    finally:
        steps["a_out"].set()
        steps["b_out"].set()
        a.join()
        b.join()
    assert other_thread_client() not in (queues["a"].client, queues["b"].client)
