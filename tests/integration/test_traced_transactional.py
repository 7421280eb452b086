"""A transactional task keeps its request's trace: in the outbox, and when swept later."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from http import HTTPStatus

import pytest
from google.cloud import ndb, tasks_v2

from cloudtasks_deferred import deferred, traces
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.enqueue import outbox
from cloudtasks_deferred.enqueue.sweep import sweep
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from cloudtasks_deferred.traces import TraceContext
from tests import tasks
from tests.integration.conftest import PROJECT
from tests.tasks import RECORDER

pytestmark = pytest.mark.integration

REQUEST = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", sampled=True)


@pytest.fixture
def queue(datastore: DatastoreEmulator) -> Iterator[InMemoryQueue]:
    with in_memory_queue(dataclasses.replace(TEST_SETTINGS, project=PROJECT)) as recorded:
        yield recorded


def defer_in_a_traced_transaction() -> tasks_v2.Task:
    with ndb.Client(project=PROJECT).context(), traces.tracing(REQUEST):
        task: tasks_v2.Task = ndb.transaction(
            lambda: deferred.defer(tasks.record_trace, _transactional=True)
        )
        return task


@pytest.mark.parametrize("swept", [False, True], ids=["after-commit", "swept"])
def test_a_transactional_task_carries_the_trace(
    swept: bool, queue: InMemoryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    if swept:  # the process died right after its commit
        monkeypatch.setattr(outbox, "create_after_commit", lambda *args: None)
    defer_in_a_traced_transaction()
    if swept:
        assert queue.tasks == []
        assert sweep(queue.client, older_than=timedelta(0)).created == 1
    assert queue.run_pending() == [HTTPStatus.OK]
    [(carried, _)] = RECORDER.named("trace")
    assert carried.trace_id == REQUEST.trace_id
    assert carried.span_id != REQUEST.span_id
