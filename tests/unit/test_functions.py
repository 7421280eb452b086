"""The functions-framework entry point: the handler's rules behind a function signature."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import types
from http import HTTPStatus
from pathlib import Path
from typing import Any

import flask
import pytest
from werkzeug.test import EnvironBuilder

from cloudtasks_deferred import Client, deferred
from cloudtasks_deferred.functions import deferred_task, task_function
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.receive.outcomes import Outcome, response_for
from cloudtasks_deferred.testing import in_memory_queue
from tests import tasks
from tests.oidc import Issuer
from tests.tasks import RECORDER


def request(body: bytes = b"", *, method: str = "POST", **headers: str) -> flask.Request:
    """A Flask request, as functions-framework passes to a function."""
    builder = EnvironBuilder(path="/", method=method, data=body, headers=headers)
    return flask.Request(builder.get_environ())


def auth(issuer: Issuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token()}", "X-CloudTasks-TaskRetryCount": "0"}


def test_an_authenticated_task_runs(signed_client: Client, issuer: Issuer) -> None:
    entry_point = task_function(client=signed_client)
    body, status, headers = entry_point(request(encode(serialize(tasks.record, 5)), **auth(issuer)))
    assert (body, status) == ("Success", 200)
    assert ("Content-Type", "text/plain; charset=utf-8") in headers
    assert RECORDER.named("record") == [5]


def test_statuses_are_the_handlers(signed_client: Client, issuer: Issuer) -> None:
    entry_point = task_function(client=signed_client)
    singular = encode(serialize(tasks.always_singular))
    crash = encode(serialize(tasks.crash))
    assert entry_point(request(singular, **auth(issuer)))[1] == 408
    assert entry_point(request(crash, **auth(issuer)))[1] == 500


def test_unauthenticated_requests_get_403_and_nothing_is_unpickled(signed_client: Client) -> None:
    entry_point = task_function(client=signed_client)
    spoofed = {"X-CloudTasks-QueueName": "default", "X-AppEngine-QueueName": "default"}
    body, status, _ = entry_point(request(pickle.dumps(tasks.Canary()), **spoofed))
    assert status == 403
    assert body.startswith("Forbidden: ")
    assert RECORDER.named("canary") == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_405(method: str) -> None:
    body, status, headers = deferred_task(request(method=method))
    assert (body, status) == ("MethodNotAllowed", 405)
    assert ("Allow", "POST") in headers


def test_the_ready_entry_point_reads_the_environment() -> None:
    # Nothing configured: every request is refused, as the WSGI handler does.
    body, status, _ = deferred_task(request(pickle.dumps(tasks.Canary())))
    assert status == 403
    assert RECORDER.named("canary") == []
    assert body.startswith("Forbidden")


def test_entry_points_are_plain_functions_as_functions_framework_requires(
    signed_client: Client,
) -> None:
    for entry_point in (deferred_task, task_function(client=signed_client)):
        assert isinstance(entry_point, types.FunctionType)
        assert entry_point.__name__ == "deferred_task"


def test_flask_accepts_the_response(signed_client: Client, issuer: Issuer) -> None:
    app = flask.Flask(__name__)
    entry_point = task_function(client=signed_client)

    @app.post("/")
    def view() -> Any:
        return entry_point(flask.request)

    response = app.test_client().post("/", data=b"not a payload", headers=auth(issuer))
    assert response.status_code == 200  # a body that is no payload: permanent failure
    assert response.text == "PermanentTaskFailure"


def test_importing_it_loads_neither_flask_nor_functions_framework() -> None:
    code = (
        "import sys, cloudtasks_deferred.functions\n"
        "print(','.join(m for m in ('flask', 'functions_framework', 'google.cloud.tasks_v2')"
        " if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_the_docstring_names_every_status_the_handler_answers() -> None:
    statuses = {response_for(outcome)[1] for outcome in Outcome}
    doc = deferred_task.__doc__ or ""
    assert (
        sorted(status.value for status in statuses if not re.search(rf"\b{status.value}\b", doc))
        == []
    )


@pytest.fixture
def functions_app() -> Any:
    """functions-framework's own Flask app for the re-exported entry point."""
    import functions_framework

    source = Path(__file__).resolve().parents[1] / "functions_main.py"
    return functions_framework.create_app(target="deferred_task", source=str(source))


def test_in_memory_queue_delivers_through_a_functions_framework_app(functions_app: Any) -> None:
    with in_memory_queue(app=functions_app) as queue:
        for n in range(5):
            deferred.defer(tasks.record, n)
        assert queue.run_pending() == [HTTPStatus.OK] * 5  # each task once, answered 200
    assert RECORDER.named("record") == [0, 1, 2, 3, 4]


def test_functions_framework_reads_the_body_once_for_every_outcome(functions_app: Any) -> None:
    with in_memory_queue(app=functions_app, max_attempts=2) as queue:
        deferred.defer(tasks.always_singular)
        deferred.defer(tasks.fail_permanently)
        assert queue.run_pending() == [HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.OK, 408]
    assert len(RECORDER.named("always_singular")) == 2
    assert len(RECORDER.named("fail_permanently")) == 1


def test_the_body_is_read_through_the_requests_own_stream(
    signed_client: Client, issuer: Issuer
) -> None:
    entry_point = task_function(client=signed_client)
    flask_request = request(encode(serialize(tasks.record, "once")), **auth(issuer))
    assert entry_point(flask_request)[1] == 200
    assert flask_request.get_data() == b""  # consumed: a later read neither hangs nor fails
    assert RECORDER.named("record") == ["once"]


def test_a_truncated_body_is_still_a_bad_request(signed_client: Client, issuer: Issuer) -> None:
    body = encode(serialize(tasks.record, "cut"))
    builder = EnvironBuilder(path="/", method="POST", data=body[:-4], headers=auth(issuer))
    env = builder.get_environ()
    env["CONTENT_LENGTH"] = str(len(body))
    assert task_function(client=signed_client)(flask.Request(env))[1] == 400
    assert RECORDER.named("record") == []
