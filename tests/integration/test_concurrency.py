"""``defer`` from many threads at once, through one default client and one gRPC channel.

32 threads each defer 100 calls with ``deferred.defer``, configured by the
environment as an app is, into a paused queue of the Cloud Tasks emulator: every
call returns its task, none raises, and the queue then holds exactly the 3,200
tasks, each carrying its own call. (Two sweepers at once: test_transactional.py.)
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred import deferred
from cloudtasks_deferred.client import current_client
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator
from cloudtasks_deferred.settings import queue_path
from tests import tasks
from tests.integration.conftest import LOCATION, PROJECT

pytestmark = pytest.mark.integration

THREADS = 32
PER_THREAD = 100
QUEUE = queue_path(PROJECT, LOCATION, "threads")


@pytest.fixture
def paused_queue(tasks_client: tasks_v2.CloudTasksClient) -> Iterator[str]:
    """A queue of its own, paused: tasks stay in it to be listed."""
    tasks_client.create_queue(parent=QUEUE.rsplit("/queues/", 1)[0], queue={"name": QUEUE})
    tasks_client.pause_queue(name=QUEUE)
    yield QUEUE
    tasks_client.purge_queue(name=QUEUE)
    tasks_client.delete_queue(name=QUEUE)


def test_32_threads_defer_100_tasks_each_none_lost_no_error(
    paused_queue: str,
    tasks_emulator: CloudTasksEmulator,
    tasks_client: tasks_v2.CloudTasksClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "CLOUDTASKS_DEFERRED_LOCATION": LOCATION,
        "CLOUDTASKS_DEFERRED_QUEUE": "threads",
        "CLOUDTASKS_DEFERRED_BASE_URL": "https://app.test",
        "CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT": f"tasks@{PROJECT}.iam.gserviceaccount.com",
        "CLOUD_TASKS_EMULATOR_HOST": tasks_emulator.host,
        "CLOUDTASKS_DEFERRED_NDB": "false",
    }.items():
        monkeypatch.setenv(name, value)
    start = threading.Barrier(THREADS)

    def defer_many(thread: int) -> list[str]:
        start.wait(30)  # every thread's first defer at once: the default client is built then
        return [deferred.defer(tasks.record, (thread, index)).name for index in range(PER_THREAD)]

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(defer_many, thread) for thread in range(THREADS)]
        errors = [f.exception() for f in concurrent.futures.as_completed(futures)]
    assert errors == [None] * THREADS
    returned = [name for future in futures for name in future.result()]
    assert len(set(returned)) == THREADS * PER_THREAD

    listed = list(
        tasks_client.list_tasks(
            request={"parent": paused_queue, "response_view": tasks_v2.Task.View.FULL}
        )
    )
    assert sorted(task.name for task in listed) == sorted(returned)
    client = current_client()
    calls = {client.open_payload(task.http_request.body).args[0] for task in listed}
    assert calls == {(thread, index) for thread in range(THREADS) for index in range(PER_THREAD)}
