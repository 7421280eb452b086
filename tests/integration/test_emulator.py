"""Our launcher of the Cloud Tasks emulator: loopback only, and a queue survives a purge."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator
from cloudtasks_deferred.settings import queue_path
from tests.integration.conftest import LOCATION, PROJECT, Server
from tests.tasks import RECORDER

pytestmark = pytest.mark.integration


def test_the_emulator_listens_on_127_0_0_1_only(tasks_emulator: CloudTasksEmulator) -> None:
    # Bound to every interface (what the emulator's own CLI does), it would also answer
    # on 127.0.0.2; bound to 127.0.0.1, nothing listens there.
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", tasks_emulator.port)) == 0
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.2", tasks_emulator.port)) != 0


def test_a_queue_keeps_dispatching_after_a_purge_during_dispatch(
    tasks_client: tasks_v2.CloudTasksClient, server: Server
) -> None:
    def slow_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        RECORDER.add("hit", environ["PATH_INFO"])
        time.sleep(0.05)
        start_response("200 OK", [])
        return [b""]

    server.app = slow_app
    queue = queue_path(PROJECT, LOCATION, "purged")
    tasks_client.create_queue(
        parent=queue.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=queue)
    )
    try:
        for _ in range(30):
            tasks_client.create_task(parent=queue, task=_task(f"{server.url}/early"))
        RECORDER.wait_for("hit")
        tasks_client.purge_queue(name=queue)  # while the dispatch loop holds a snapshot
        tasks_client.create_task(parent=queue, task=_task(f"{server.url}/after"))
        deadline = time.monotonic() + 10
        while "/after" not in RECORDER.named("hit") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "/after" in RECORDER.named("hit")
    finally:
        tasks_client.delete_queue(name=queue)


def _task(url: str) -> tasks_v2.Task:
    return tasks_v2.Task(http_request=tasks_v2.HttpRequest(url=url, body=b"x"))
