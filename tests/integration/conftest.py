"""Integration fixtures: both emulators started once per session on 127.0.0.1, and servers.

A missing emulator skips its tests on a developer's machine and fails them under
``CI=true``, so CI can never pass without having run them.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import tasks_v2
from werkzeug.serving import make_server

from cloudtasks_deferred import Settings
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator
from cloudtasks_deferred.enqueue.transports.cloud_tasks import shared_client
from cloudtasks_deferred.settings import queue_path
from tests.services import require

PROJECT = "integration-project"
LOCATION = "us-central1"
QUEUES = ("default", "mail")


@pytest.fixture(scope="session")
def emulator_logs() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cloudtasks-deferred-emulators-") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def tasks_emulator(emulator_logs: Path) -> Iterator[CloudTasksEmulator]:
    require(
        CloudTasksEmulator.available(),
        "gcloud-tasks-emulator is not installed: "
        "pip install --no-deps gcloud-tasks-emulator==0.6.2",
    )
    queues = [queue_path(PROJECT, LOCATION, queue) for queue in QUEUES]
    with (
        (emulator_logs / "tasks.log").open("wb") as log,
        CloudTasksEmulator(queues=queues, log=log) as emulator,
    ):
        yield emulator


@pytest.fixture(scope="session")
def datastore_emulator(emulator_logs: Path) -> Iterator[DatastoreEmulator]:
    require(
        DatastoreEmulator.script() is not None,
        "the Datastore emulator is not installed (Google Cloud SDK component "
        "cloud-datastore-emulator)",
    )
    with (
        (emulator_logs / "datastore.log").open("wb") as log,
        DatastoreEmulator(project=PROJECT, log=log) as emulator,
    ):
        yield emulator


@pytest.fixture
def tasks_client(tasks_emulator: CloudTasksEmulator) -> Iterator[tasks_v2.CloudTasksClient]:
    """The process's client for the emulator; queues are purged after each test."""
    client = shared_client(tasks_emulator.host)
    yield client
    for queue in QUEUES:
        client.purge_queue(name=queue_path(PROJECT, LOCATION, queue))


@pytest.fixture
def datastore(
    datastore_emulator: DatastoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> DatastoreEmulator:
    """The Datastore emulator, emptied, with NDB pointed at it."""
    for name, value in datastore_emulator.env.items():
        monkeypatch.setenv(name, value)
    datastore_emulator.reset()
    return datastore_emulator


class Server:
    """A threaded WSGI server (werkzeug) on 127.0.0.1 serving :attr:`app`.

    It starts before its app exists because apps need the server's URL in their
    settings; until :attr:`app` is set it answers 503.
    """

    def __init__(self) -> None:
        self.app: Any = None
        self._server = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _dispatch(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no app yet"]
        return self.app(environ, start_response)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    """A WSGI server on loopback for the test's duration; set its ``app``."""
    running = Server()
    yield running
    running.stop()


@pytest.fixture
def dev_settings(tasks_emulator: CloudTasksEmulator, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for the emulator in dev mode, pointing tasks at ``base_url``."""

    def make(base_url: str, **changes: Any) -> Settings:
        values: dict[str, Any] = {
            "project": PROJECT,
            "location": LOCATION,
            "base_url": base_url,
            "emulator_host": tasks_emulator.host,
            "dev_mode": True,
            "dev_key_file": tmp_path / "dev-key.pem",
            "ndb": False,
        }
        values.update(changes)
        return Settings(**values)

    return make
