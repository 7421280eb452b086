"""Issue 13's acceptance: the JSON lines of a task run on a simulated Cloud Run (and App
Engine), read where Cloud Logging reads them, grouped under the request that deferred it.

A real HTTP request with a trace header reaches the app through ``wrap_wsgi_app`` on a
loopback server; the app logs and defers two tasks; the in-memory queue delivers them
through the real handler with real signed tokens (or App Engine's queue headers). Every
line written to standard error is then parsed as Cloud Logging would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
import requests

from cloudtasks_deferred import Settings, deferred, wrap_wsgi_app
from cloudtasks_deferred.logs import configure_logging
from cloudtasks_deferred.settings import Platform
from cloudtasks_deferred.testing import in_memory_queue
from cloudtasks_deferred.traces import TraceContext
from tests import tasks
from tests.integration.conftest import Server

PROJECT = "logs-project"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

CLOUD_RUN = {
    "K_SERVICE": "tasks-service",
    "K_REVISION": "tasks-service-00001-abc",
    "GOOGLE_CLOUD_PROJECT": PROJECT,
    "CLOUDTASKS_DEFERRED_LOCATION": "us-central1",
    "CLOUDTASKS_DEFERRED_BASE_URL": "https://tasks-service-abc-uc.a.run.app",
    "CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT": f"tasks@{PROJECT}.iam.gserviceaccount.com",
    "CLOUDTASKS_DEFERRED_NDB": "false",
}
APP_ENGINE = {
    "GAE_ENV": "standard",
    "GAE_APPLICATION": f"s~{PROJECT}",
    "GAE_SERVICE": "default",
    "GAE_VERSION": "v1",
    "CLOUDTASKS_DEFERRED_LOCATION": "us-central1",
    "CLOUDTASKS_DEFERRED_NDB": "false",
}


def view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    logging.getLogger("tests.app").info("signing up ada")
    deferred.defer(tasks.log_in_task, "welcome mail sent")
    deferred.defer(tasks.fail_permanently)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"signed up"]


@pytest.mark.parametrize(
    "platform",
    [
        (CLOUD_RUN, {"traceparent": f"00-{TRACE}-{SPAN}-01"}, True),
        (APP_ENGINE, {"X-Cloud-Trace-Context": f"{TRACE}/{int(SPAN, 16)};o=0"}, False),
    ],
    ids=["cloud-run", "app-engine"],
)
def test_a_tasks_log_lines_are_cloud_logging_entries_in_its_requests_trace(
    platform: tuple[dict[str, str], dict[str, str], bool],
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environment, header, sampled = platform  # its variables, the request's trace header
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.platform is not Platform.LOCAL
    assert settings.structured_logs  # on by default on Google Cloud
    configure_logging()  # the app opts in for its own loggers
    with in_memory_queue(settings) as queue:
        server.app = wrap_wsgi_app(view)
        response = requests.get(f"{server.url}/signup", headers=header, timeout=10)
        assert response.status_code == 200
        welcome, failing = queue.tasks
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]

    err = capsys.readouterr().err
    entries = [json.loads(line) for line in err.splitlines() if line]
    resource = f"projects/{PROJECT}/traces/{TRACE}"

    # The request's own line: its trace and span, no task labels.
    [signup] = [e for e in entries if e["message"] == "signing up ada"]
    assert signup["severity"] == "INFO"
    assert signup["logging.googleapis.com/trace"] == resource
    assert signup["logging.googleapis.com/spanId"] == SPAN
    assert signup["logging.googleapis.com/trace_sampled"] is sampled
    assert signup["logging.googleapis.com/sourceLocation"]["function"] == "view"
    assert "logging.googleapis.com/labels" not in signup

    # The task's lines, the app's and the library's: the same trace, the task's own span
    # (the one its traceparent header carried), its queue, name and attempt.
    request = welcome.http_request if "http_request" in welcome else welcome.app_engine_http_request
    carried = TraceContext.from_traceparent(dict(request.headers)["traceparent"])
    assert carried is not None
    assert carried.trace_id == TRACE
    assert carried.span_id != SPAN
    labels = {"queue_name": "default", "task_name": welcome.name.rsplit("/", 1)[-1]}
    task_lines = [
        e
        for e in entries
        if e.get("logging.googleapis.com/labels", {}).get("task_name") == labels["task_name"]
    ]
    sent = [e for e in task_lines if e["message"] == "welcome mail sent"]
    ran = [
        e
        for e in task_lines
        if re.search(r": ran tests.tasks.log_in_task in \d+ ms$", e["message"])
    ]
    assert [e["severity"] for e in sent] == ["WARNING"]
    assert [e["logger"] for e in ran] == ["cloudtasks_deferred.receive.handler"]
    for entry in [*sent, *ran]:
        assert entry["logging.googleapis.com/trace"] == resource
        assert entry["logging.googleapis.com/spanId"] == carried.span_id
        assert entry["logging.googleapis.com/trace_sampled"] is sampled
        assert entry["logging.googleapis.com/labels"] == {**labels, "attempt": "1"}

    # The task that failed for good: an ERROR with its traceback, in the same trace.
    failing_name = failing.name.rsplit("/", 1)[-1]
    [failure] = [
        e
        for e in entries
        if e["severity"] == "ERROR"
        and e["logging.googleapis.com/labels"]["task_name"] == failing_name
    ]
    assert "permanent failure running tests.tasks.fail_permanently" in failure["message"]
    assert "Traceback (most recent call last)" in failure["message"]
    assert failure["logging.googleapis.com/trace"] == resource


@contextlib.contextmanager
def app_without_logging() -> Iterator[None]:
    """A process whose app configured no logging (gunicorn configures only its own
    loggers): pytest's root handlers step aside, and werkzeug, the test server, keeps
    its request lines to itself rather than adding a handler for the session."""
    root, werkzeug = logging.getLogger(), logging.getLogger("werkzeug")
    saved, level = root.handlers[:], werkzeug.level
    root.handlers.clear()
    werkzeug.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.handlers[:] = saved
        werkzeug.setLevel(level)


def test_where_the_app_configured_no_logging_the_librarys_lines_are_json_all_the_same(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in CLOUD_RUN.items():
        monkeypatch.setenv(name, value)
    with in_memory_queue(Settings.from_env()) as queue, app_without_logging():
        server.app = wrap_wsgi_app(view)
        header = {"traceparent": f"00-{TRACE}-{SPAN}-01"}
        assert requests.get(f"{server.url}/signup", headers=header, timeout=10).ok
        welcome, _ = queue.tasks
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]

    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    # The app's own warning, as Python prints a record no handler takes; its INFO line
    # is below Python's default level. Neither is the library's to format.
    assert [line for line in lines if not line.startswith("{")] == ["welcome mail sent"]
    assert {entry["logger"] for entry in entries} == {"cloudtasks_deferred.receive.handler"}
    task_name = welcome.name.rsplit("/", 1)[-1]
    [ran] = [e for e in entries if "ran tests.tasks.log_in_task" in e["message"]]
    assert ran["severity"] == "INFO"
    assert ran["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE}"
    assert ran["logging.googleapis.com/labels"] == {
        "queue_name": "default",
        "task_name": task_name,
        "attempt": "1",
    }
    assert [e["severity"] for e in entries if "permanent failure" in e["message"]] == ["ERROR"]
