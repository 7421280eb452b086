"""The Django, WSGI and Cloud Run functions samples, run as their READMEs say and driven.

Each sample is started with ``cloudtasks-deferred dev`` attached to the session's
emulators, in a project of its own (so its queue and counter are its own). The
documentation's samples also schedule two tasks 10-40 s ahead; rather than wait,
the test finds them in the emulator (``list_tasks``), checks their URLs and times,
and runs them now (``run_task``, as ``gcloud tasks run`` does), which delivers them
through the sample's routes, the custom ``/custom/path`` one included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import requests
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator, free_port
from cloudtasks_deferred.enqueue.transports.cloud_tasks import shared_client
from cloudtasks_deferred.settings import queue_path
from tests.integration.conftest import LOCATION
from tests.integration.processes import ROOT, Command, wait_until

pytestmark = pytest.mark.integration


class Sample:
    """A sample served by ``cloudtasks-deferred dev`` on the session's emulators."""

    def __init__(self, project: str, dev: Command, port: int, tasks_host: str) -> None:
        self.project = project
        self.dev = dev
        self.url = f"http://127.0.0.1:{port}"
        self.queue = queue_path(project, LOCATION, "default")
        self.tasks = shared_client(tasks_host)

    def get(self, path: str) -> str:
        response = requests.get(self.url + path, timeout=30)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.text

    def pending(self) -> list[tasks_v2.Task]:
        return list(self.tasks.list_tasks(parent=self.queue))

    def run_now(self, task: tasks_v2.Task) -> None:
        # The emulator's dispatcher briefly takes scheduled tasks off the queue to look
        # at them; a run_task at that moment finds nothing and is simply retried.
        for _ in range(50):
            try:
                self.tasks.run_task(name=task.name)
                return
            except exceptions.NotFound:
                time.sleep(0.05)
        raise AssertionError(f"could not run {task.name}")


@pytest.fixture
def start_sample(
    tasks_emulator: CloudTasksEmulator, datastore: DatastoreEmulator
) -> Iterator[Callable[..., Sample]]:
    started: list[Sample] = []

    def start(name: str, *args: str) -> Sample:
        project = f"sample-{name}"
        port = free_port()
        dev = Command.cli(
            "dev", *args, "--app-dir", str(ROOT / "samples" / name), "--port", str(port),
            "--project", project,
            "--tasks-emulator", tasks_emulator.host, "--datastore-emulator", datastore.host,
        )  # fmt: skip
        sample = Sample(project, dev, port, tasks_emulator.host)
        started.append(sample)
        dev.wait_for_line("[dev] ready")
        return sample

    yield start
    for sample in started:
        sample.dev.close()
        # Nothing of a sample's outlives its test in the shared emulator.
        sample.tasks.delete_queue(name=sample.queue)


@pytest.mark.parametrize(("name", "countdowns"), [("django", (10, 20)), ("wsgi", (20, 40))])
def test_docs_sample_counts_to_30(
    start_sample: Callable[..., Sample],
    name: str,
    countdowns: tuple[int, int],
) -> None:
    sample = start_sample(name, "main:app")
    assert sample.get("/counter/get") == "0"
    deferred_at = datetime.now(UTC)
    assert sample.get("/counter/increment") == "Deferred counter increment."
    wait_until("the immediate task", lambda: sample.get("/counter/get") == "10")

    wait_until("the two scheduled tasks", lambda: len(sample.pending()) == 2)
    scheduled = sorted(sample.pending(), key=lambda task: task.schedule_time)
    for task, countdown, path in zip(
        scheduled, countdowns, ("/_ah/queue/deferred", "/custom/path"), strict=True
    ):
        assert task.http_request.url == sample.url + path
        delay = (task.schedule_time - deferred_at).total_seconds()
        assert countdown - 1 <= delay <= countdown + 10, (path, delay)

    for task in scheduled:
        sample.run_now(task)
    wait_until("the scheduled tasks", lambda: sample.get("/counter/get") == "30")
    assert sample.dev.stop() == 0
    assert sample.dev.output.count("ran main.do_something_later") == 3
    assert "Executing deferred task." in sample.dev.output  # the custom _url route


def test_functions_sample_defers_from_one_function_to_the_other(
    start_sample: Callable[..., Sample],
) -> None:
    sample = start_sample(
        "functions", "--functions-target", "counter", "--tasks-target", "deferred_task"
    )
    tasks_url = sample.dev.wait_for_line("[dev] serving deferred_task on ").rsplit(" ", 1)[1]
    assert tasks_url != sample.url + "/"
    assert sample.get("/") == "0"
    assert sample.get("/increment") == "Deferred counter increment."
    wait_until("the task to run in deferred_task", lambda: sample.get("/") == "10")
    assert sample.pending() == []
    assert sample.dev.stop() == 0
    # Logged like the other samples' tasks (issue 15): main.py turns on INFO logging.
    assert sample.dev.output.count("ran main.do_something_later") == 1
