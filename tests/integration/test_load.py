"""The load benchmark R1, CI-sized: 1,000 tasks through the emulator and gunicorn into Datastore.

``python -m benchmarks R1`` runs 10,000 (README, Reliability); this run asserts
what the full one reports: nothing lost, and every duplicate execution explained by
a retry we caused (every 100th task fails once, on purpose, after recording).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import r1_load
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator
from cloudtasks_deferred.settings import queue_path
from tests.integration.conftest import LOCATION, PROJECT
from tests.services import require

pytestmark = pytest.mark.integration

TASKS = 1000


def test_1000_tasks_none_lost_every_duplicate_explained(
    datastore: DatastoreEmulator, tmp_path: Path
) -> None:
    require(CloudTasksEmulator.available(), "gcloud-tasks-emulator is not installed")
    queues = [queue_path(PROJECT, LOCATION, f"load-{i}") for i in range(r1_load.QUEUES)]
    with (
        (tmp_path / "tasks.log").open("wb") as log,
        CloudTasksEmulator(queues=queues, log=log) as emulator,
    ):
        report = r1_load.measure(
            TASKS,
            tasks_host=emulator.host,
            datastore_host=datastore.host,
            workdir=tmp_path,
            project=PROJECT,
        )
    assert report.defer_errors == [], report.summary()
    assert report.sent == TASKS
    assert report.lost == 0, report.summary()
    assert report.ran == TASKS
    assert report.injected == TASKS // r1_load.FAIL_EVERY
    # Each injected failure was retried (at least once), and nothing else ran twice.
    assert report.explained == report.injected, report.summary()
    assert report.unexplained == 0, report.summary()
    assert report.duplicates == report.injected
