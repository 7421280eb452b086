"""defer -> Cloud Tasks emulator -> HTTP -> handler -> function, on real servers."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from google.cloud import tasks_v2

from cloudtasks_deferred import Client, Handler, Settings, deferred, wrap_wsgi_app
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.settings import queue_path
from tests import tasks
from tests.integration.conftest import LOCATION, PROJECT, Server
from tests.oidc import AUDIENCE, INVOKER, CertsServer, Issuer
from tests.tasks import RECORDER

pytestmark = pytest.mark.integration


@pytest.fixture
def deferring(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
) -> Client:
    """A server running the handler, and a dev-mode client whose tasks target it."""
    client = Client(dev_settings(server.url))
    server.app = Handler(client=client)
    return client


def test_a_deferred_call_runs_through_the_emulator(deferring: Client) -> None:
    task = deferring.defer(tasks.record, "hello", extra=1)
    assert task.name.startswith(queue_path(PROJECT, LOCATION, "default") + "/tasks/")
    assert RECORDER.wait_for("record") == [("hello", {"extra": 1})]


def test_every_callable_kind_runs(deferring: Client) -> None:
    deferring.defer(tasks.Counter(10), 1)
    deferring.defer(tasks.Counter(20).add, 2)
    deferring.defer(tasks.Counter.make, 3)
    deferring.defer(tasks.Counter.double, 4)
    deferring.defer(tasks.Point, 5, 6)
    assert RECORDER.wait_for("call") == [11]
    assert RECORDER.wait_for("method") == [22]
    assert RECORDER.wait_for("classmethod") == [3]
    assert RECORDER.wait_for("staticmethod") == [8]
    assert RECORDER.wait_for("Point") == [(5, 6)]


def test_a_singular_failure_is_retried_and_then_succeeds(deferring: Client) -> None:
    deferring.defer(tasks.fail_once_then_record, "retried")
    assert RECORDER.wait_for("fail_once_then_record") == ["retried"]
    assert RECORDER.named("attempt") == [0, 1]


def test_a_task_failing_twice_with_500_then_succeeding_succeeds_exactly_once(
    deferring: Client,
) -> None:
    """Two 500s, then success: one successful execution, counted by Cloud Tasks' headers.

    The emulator sends ``X-CloudTasks-TaskRetryCount`` as Cloud Tasks does (0, 1, 2)
    but counts every dispatch in ``-TaskExecutionCount`` and sends no
    ``-TaskPreviousResponse``; Cloud Tasks leaves 5xx answers out of the execution
    count and sends the previous status: the in-memory queue, which models the
    service's documented headers, is checked for those in
    tests/unit/test_testing.py::test_redeliveries_carry_the_retry_headers_of_http_targets.
    """
    deferring.defer(tasks.fail_twice_then_record, "third time")
    assert RECORDER.wait_for("fail_twice_then_record") == ["third time"]
    attempts = RECORDER.named("attempt")
    assert [info.retry_count for info in attempts] == [0, 1, 2]
    assert len({info.task_name for info in attempts}) == 1  # one task, retried
    time.sleep(0.5)  # the emulator would have redelivered by now, every ~0.1 s
    assert RECORDER.named("fail_twice_then_record") == ["third time"]
    assert len(RECORDER.named("attempt")) == 3


def test_countdown_is_honoured(deferring: Client) -> None:
    started = time.monotonic()
    deferring.defer(tasks.record, "later", _countdown=2)
    RECORDER.wait_for("record")
    assert time.monotonic() - started >= 1.9


def test_name_queue_and_headers_reach_the_task(deferring: Client) -> None:
    deferring.defer(tasks.record_task_info, _name="named-1", _queue="mail")
    [info] = RECORDER.wait_for("task_info")
    assert info.task_name == "named-1"
    assert info.queue_name == "mail"
    assert info.retry_count == 0


def test_tasks_defer_more_tasks(deferring: Client) -> None:
    deferring.defer(tasks.defer_another, "second hop")
    assert RECORDER.wait_for("record") == ["second hop"]


def test_a_request_without_credentials_gets_403_and_nothing_is_unpickled(
    server: Server, dev_settings: Callable[..., Settings]
) -> None:
    server.app = Handler(dev_settings(server.url))
    body = pickle.dumps(tasks.Canary())
    spoofed = {"X-CloudTasks-QueueName": "default", "X-AppEngine-QueueName": "default"}
    url = f"{server.url}/_ah/queue/deferred"
    response = requests.post(url, data=body, headers=spoofed, timeout=10)
    assert response.status_code == 403
    assert RECORDER.named("canary") == []
    # The server keeps serving.
    assert requests.get(f"{server.url}/_ah/queue/deferred", timeout=10).status_code == 405


def test_oidc_tokens_verified_with_certificates_fetched_over_http(
    server: Server,
    tasks_client: tasks_v2.CloudTasksClient,
    certs_server: CertsServer,
    issuer: Issuer,
) -> None:
    """Production verification: a token from the task's headers, certs from a real endpoint."""
    server.app = Handler(
        Settings(
            base_url=server.url,
            audiences=(AUDIENCE,),
            service_account=INVOKER,
            oidc_certs_url=certs_server.url,
            ndb=False,
        )
    )
    # The emulator ignores oidc_token, so the signed token travels as a header.
    wrong_audience = issuer.token(aud="https://elsewhere")
    for token, value in ((wrong_audience, "refused"), (issuer.token(), "ok")):
        tasks_client.create_task(
            parent=queue_path(PROJECT, LOCATION, "default"),
            task=tasks_v2.Task(
                http_request=tasks_v2.HttpRequest(
                    url=f"{server.url}/_ah/queue/deferred",
                    http_method=tasks_v2.HttpMethod.POST,
                    headers={"Authorization": f"Bearer {token}"},
                    body=encode(serialize(tasks.record, value)),
                )
            ),
        )
    assert RECORDER.wait_for("record") == ["ok"]
    time.sleep(0.5)  # the refused task keeps being retried, and refused
    assert RECORDER.named("record") == ["ok"]
    assert certs_server.fetches == 1


def test_wrap_wsgi_app_serves_the_app_and_the_tasks(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
) -> None:
    import flask

    app = flask.Flask(__name__)

    @app.route("/work")
    def work() -> str:
        deferred.defer(tasks.record, "from a view")
        deferred.defer(tasks.record, "custom url", _url="/custom/path")
        return "queued"

    @app.post("/custom/path")
    def custom() -> Any:
        return deferred.Handler().post(flask.request.environ)

    server.app = wrap_wsgi_app(app.wsgi_app, settings=dev_settings(server.url))
    assert requests.get(f"{server.url}/work", timeout=10).text == "queued"
    assert sorted(RECORDER.wait_for("record", count=2)) == ["custom url", "from a view"]
