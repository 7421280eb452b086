"""The functions entry point under both servers functions-framework runs, on 127.0.0.1.

``functions-framework --debug`` serves with werkzeug's development server (and its
reloader, in a child process); without it, with gunicorn. functions-framework reads
what is left of each request body after the function returns, so the entry point
must read the body through the request's own stream: under werkzeug, a body read
around it made that final read wait on the socket, and the task request hung.
Each task is posted as Cloud Tasks would post it (the body and dev-mode token
``defer`` builds), with a client timeout well under the server's patience.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.devtools.emulators import free_port
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from tests import file_tasks, tasks
from tests.integration.conftest import LOCATION, PROJECT
from tests.integration.processes import ROOT, isolated_env, wait_until

pytestmark = pytest.mark.integration

#: The client gives up long before a hung request would end on its own.
TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class FunctionServer:
    url: str
    client: Client  # builds tasks exactly as defer sends them to Cloud Tasks


@pytest.fixture(scope="module", params=["werkzeug", "gunicorn"])
def function_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key_file = tmp_path_factory.mktemp("functions-servers") / "dev-key.pem"
    settings = Settings(
        project=PROJECT,
        location=LOCATION,
        base_url=url,
        dev_mode=True,
        dev_key_file=key_file,
        ndb=False,
    )
    env = isolated_env(
        PYTHONPATH=str(ROOT),
        GOOGLE_CLOUD_PROJECT=PROJECT,
        CLOUDTASKS_DEFERRED_LOCATION=LOCATION,
        CLOUDTASKS_DEFERRED_BASE_URL=url,
        CLOUDTASKS_DEFERRED_DEV_MODE="true",
        CLOUDTASKS_DEFERRED_DEV_KEY_FILE=str(key_file),
        CLOUDTASKS_DEFERRED_NDB="false",
    )
    argv = [
        sys.executable, "-m", "functions_framework", "--target", "deferred_task",
        "--source", str(ROOT / "tests" / "functions_main.py"),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if request.param == "werkzeug":
        argv.append("--debug")
    log = (tmp_path_factory.getbasetemp() / f"functions-{request.param}.log").open("wb")
    # Its own process group: --debug's reloader serves from a child process.
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            f"functions-framework ({request.param}) to answer",
            lambda: _answering(process, url),
            60,
        )
        yield FunctionServer(url, Client(settings, transport=InMemoryTransport()))
    finally:
        _stop(process)
        log.close()


def _answering(process: subprocess.Popen[Any], url: str) -> bool:
    """Whether the app answers: an open port is not enough, since --debug's reloader
    listens before its child has imported the app."""
    if process.poll() is not None:
        raise AssertionError(f"functions-framework exited with {process.returncode}")
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


def _stop(process: subprocess.Popen[Any]) -> None:
    group = process.pid  # the session leader's pid is its group's id
    if process.poll() is None:
        os.killpg(group, signal.SIGTERM)  # the reloader's child too
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait(10)
    with contextlib.suppress(AssertionError):
        wait_until("the server's process group to end", lambda: not _group_alive(group), 10)
    if _group_alive(group):
        os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)  # signal 0: only asks whether a member is left
    except ProcessLookupError:
        return False
    return True


def post(server: FunctionServer, func: Any, *args: Any) -> requests.Response:
    """Sends ``func(*args)`` the way Cloud Tasks would deliver the task ``defer`` creates."""
    task = server.client.defer(func, *args)
    return requests.post(
        task.http_request.url,
        data=task.http_request.body,
        headers={**task.http_request.headers, "X-CloudTasks-QueueName": "default"},
        timeout=TIMEOUT_SECONDS,
    )


def test_a_task_runs_and_is_answered_at_once(
    function_server: FunctionServer, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    response = post(function_server, file_tasks.write_report, str(report), "ran")
    assert (response.status_code, response.text) == (200, "Success")
    assert json.loads(report.read_text())["text"] == "ran"


def test_every_outcome_is_answered(function_server: FunctionServer) -> None:
    assert post(function_server, tasks.fail_permanently).status_code == 200
    assert post(function_server, tasks.always_singular).status_code == 408
    assert post(function_server, tasks.crash).status_code == 500


def test_a_refused_request_is_answered_too(function_server: FunctionServer) -> None:
    task = function_server.client.defer(tasks.record, "unsigned")
    response = requests.post(
        task.http_request.url, data=task.http_request.body, timeout=TIMEOUT_SECONDS
    )  # no token
    assert response.status_code == 403


def test_several_tasks_on_one_connection(function_server: FunctionServer, tmp_path: Path) -> None:
    with requests.Session() as session:
        for n in range(3):
            task = function_server.client.defer(
                file_tasks.write_report, str(tmp_path / f"{n}"), "s"
            )
            response = session.post(
                task.http_request.url,
                data=task.http_request.body,
                headers=dict(task.http_request.headers),
                timeout=TIMEOUT_SECONDS,
            )
            assert response.status_code == 200
    assert sorted(path.name for path in tmp_path.iterdir()) == ["0", "1", "2"]
