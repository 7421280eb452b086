"""The functions-framework entry point, served by the real functions-framework server.

functions-framework runs ``tests/functions_main.py`` (which re-exports
``cloudtasks_deferred.functions.deferred_task``) in a child process on 127.0.0.1;
the Cloud Tasks emulator delivers tasks to it in dev mode. The tasks write files,
since they run in that other process.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from google.cloud import tasks_v2

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, free_port
from tests import file_tasks
from tests.integration.conftest import LOCATION, PROJECT
from tests.integration.processes import ROOT, Command, isolated_env, port_open, wait_until
from tests.oidc import Issuer

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class FunctionServer:
    url: str
    settings: Settings
    command: Command


@pytest.fixture(scope="module")
def function_server(
    tasks_emulator: CloudTasksEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        project=PROJECT,
        location=LOCATION,
        base_url=url,
        emulator_host=tasks_emulator.host,
        dev_mode=True,
        dev_key_file=tmp_path_factory.mktemp("functions") / "dev-key.pem",
        ndb=False,
    )
    env = isolated_env(
        PYTHONPATH=str(ROOT),  # the tasks' module, tests.file_tasks
        GOOGLE_CLOUD_PROJECT=PROJECT,
        CLOUDTASKS_DEFERRED_LOCATION=LOCATION,
        CLOUD_TASKS_EMULATOR_HOST=tasks_emulator.host,
        CLOUDTASKS_DEFERRED_BASE_URL=url,
        CLOUDTASKS_DEFERRED_DEV_MODE="true",
        CLOUDTASKS_DEFERRED_DEV_KEY_FILE=str(settings.dev_key_file),
        CLOUDTASKS_DEFERRED_NDB="false",
    )
    command = Command(
        [
            sys.executable, "-m", "functions_framework", "--target", "deferred_task",
            "--source", str(ROOT / "tests" / "functions_main.py"),
            "--host", "127.0.0.1", "--port", str(port),
        ],
        env=env,
    )  # fmt: skip
    try:
        wait_until("functions-framework to listen", lambda: _listening(command, port), 60)
        yield FunctionServer(url, settings, command)
    finally:
        command.close()


def _listening(command: Command, port: int) -> bool:
    if command.process.poll() is not None:
        raise AssertionError(f"functions-framework exited:\n{command.output}")
    return port_open(port)


def test_a_deferred_task_runs_in_the_function(
    function_server: FunctionServer, tasks_client: tasks_v2.CloudTasksClient, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    Client(function_server.settings).defer(file_tasks.write_report, str(report), "ran")
    wait_until("the task to run in functions-framework", report.exists)
    ran = json.loads(report.read_text())
    assert ran["text"] == "ran"
    assert ran["pid"] != os.getpid()
    assert ran["queue"] == "default"
    assert ran["retry_count"] == 0


def test_an_unauthenticated_request_gets_403_and_nothing_is_unpickled(
    function_server: FunctionServer, issuer: Issuer, tmp_path: Path
) -> None:
    tripwire = tmp_path / "unpickled.json"
    body = pickle.dumps(file_tasks.Tripwire(str(tripwire)))
    attempts = [
        {"X-CloudTasks-QueueName": "default", "X-AppEngine-QueueName": "default"},
        # Google-shaped, but not signed by the dev key this function trusts.
        {"Authorization": f"Bearer {issuer.token(aud=function_server.url)}"},
    ]
    for headers in attempts:
        response = requests.post(function_server.url, data=body, headers=headers, timeout=10)
        assert response.status_code == 403
        assert response.text.startswith("Forbidden: ")
    assert not tripwire.exists()


def test_other_methods_get_405(function_server: FunctionServer) -> None:
    response = requests.get(f"{function_server.url}/_ah/queue/deferred", timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
