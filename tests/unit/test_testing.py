"""The in-memory queue users test with: real task messages, the real handler, real tokens."""

from __future__ import annotations

import dataclasses
import threading
from http import HTTPStatus
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred import Handler, Settings, TaskAlreadyExistsError, deferred, testing
from cloudtasks_deferred.enqueue import build_task
from cloudtasks_deferred.options import split_options
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
