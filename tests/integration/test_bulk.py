"""defer_many and concurrent defer on the real emulators: nothing lost, transactions kept."""

from __future__ import annotations

import dataclasses
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import ndb, tasks_v2

from cloudtasks_deferred import (
    BadTransactionStateError,
    Call,
    Client,
    Handler,
    Settings,
    deferred,
)
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator
from cloudtasks_deferred.enqueue import outbox
from cloudtasks_deferred.enqueue.sweep import sweep
from cloudtasks_deferred.settings import queue_path
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import tasks
from tests.integration.conftest import LOCATION, PROJECT, Server
from tests.integration.entities import counts
from tests.ndb_tasks import Counter
from tests.tasks import RECORDER, fingerprint

pytestmark = pytest.mark.integration

THREADS = 8
PER_THREAD = 100
#: Transactional tasks per transaction: the Datastore emulator allows 25 entity groups
#: in one, each task writes two, and the test's own entity is one more.
TRANSACTIONAL = 12
#: The in-memory queue's settings, in the Datastore emulator's project.
SETTINGS = dataclasses.replace(TEST_SETTINGS, project=PROJECT)


@pytest.fixture
def paused_queue(tasks_client: tasks_v2.CloudTasksClient) -> Iterator[str]:
    """A queue of its own on the emulator, paused: tasks stay there to be counted."""
    name = queue_path(PROJECT, LOCATION, f"bulk-{uuid.uuid4().hex[:8]}")
    tasks_client.create_queue(parent=name.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=name))
    tasks_client.pause_queue(name=name)
    yield name
    tasks_client.delete_queue(name=name)


@pytest.fixture
def emulator_client(tasks_emulator: CloudTasksEmulator, paused_queue: str) -> Client:
    """A client whose tasks go to ``paused_queue`` over the emulator's one gRPC channel."""
    return Client(
        Settings(
            project=PROJECT,
            location=LOCATION,
            queue=paused_queue.rsplit("/", 1)[1],
            base_url="https://bulk.test",
            service_account=f"invoker@{PROJECT}.iam.gserviceaccount.com",
            emulator_host=tasks_emulator.host,
            ndb=False,
        )
    )


def queued_calls(
    client: Client, api: tasks_v2.CloudTasksClient, queue: str
) -> list[tuple[Any, ...]]:
    """The arguments of the calls the tasks in ``queue`` carry, decoded as the handler would."""
    listed = api.list_tasks(request={"parent": queue, "response_view": tasks_v2.Task.View.FULL})
    return sorted(client.open_payload(task.http_request.body).args for task in listed)


def test_many_threads_defer_into_the_emulator_through_one_client(
    emulator_client: Client, tasks_client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    start = threading.Barrier(THREADS, timeout=30)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            start.wait()
            for index in range(PER_THREAD):
                emulator_client.defer(tasks.record, (thread, index))
        except BaseException as exc:
            errors.append(exc)

    running = [threading.Thread(target=work, args=(thread,)) for thread in range(THREADS)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(120)
    assert errors == []
    expected = sorted(((t, i),) for t in range(THREADS) for i in range(PER_THREAD))
    assert queued_calls(emulator_client, tasks_client, paused_queue) == expected


def test_defer_many_into_the_emulator_creates_every_task_once(
    emulator_client: Client, tasks_client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    results = emulator_client.defer_many([Call(tasks.record, index) for index in range(500)])
    assert [type(result) for result in results] == [tasks_v2.Task] * 500
    assert [emulator_client.open_payload(task.http_request.body).args for task in results] == [
        (index,) for index in range(500)
    ]
    assert queued_calls(emulator_client, tasks_client, paused_queue) == [
        (index,) for index in range(500)
    ]


def test_a_call_the_emulator_refuses_is_its_result_and_the_others_are_created(
    emulator_client: Client, tasks_client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    results = emulator_client.defer_many(
        [Call(tasks.record, 0), Call(tasks.record, 1, _queue="missing"), Call(tasks.record, 2)]
    )
    assert isinstance(results[1], exceptions.FailedPrecondition)  # the emulator's NOT_FOUND
    assert "cloudtasks-deferred emulator --queue" in "".join(results[1].__notes__)
    assert queued_calls(emulator_client, tasks_client, paused_queue) == [(0,), (2,)]


def test_tasks_from_defer_many_run_through_the_emulator(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
) -> None:
    client = Client(dev_settings(server.url))
    server.app = Handler(client=client)
    results = client.defer_many([Call(tasks.record, index) for index in range(30)], _queue="mail")
    assert all(isinstance(result, tasks_v2.Task) for result in results)
    assert sorted(RECORDER.wait_for("record", 30)) == list(range(30))


@pytest.fixture
def queue(datastore: DatastoreEmulator) -> Iterator[InMemoryQueue]:
    with in_memory_queue(SETTINGS) as recorded:
        yield recorded


def in_transaction(work: Callable[[], Any]) -> Any:
    with ndb.Client(project=PROJECT).context():
        return ndb.transaction(work)


def credit_and_defer_many(count: int, **options: Any) -> Callable[[], list[Any]]:
    def work() -> list[Any]:
        Counter(id="bulk", count=1).put()
        return deferred.defer_many(
            [Call(tasks.record, index) for index in range(count)], _transactional=True, **options
        )

    return work


def test_a_transactions_tasks_are_created_together_after_its_commit(queue: InMemoryQueue) -> None:
    def work() -> list[Any]:
        results = credit_and_defer_many(TRANSACTIONAL)()
        assert queue.tasks == []  # nothing before the commit
        return results

    results = in_transaction(work)
    assert all(isinstance(result, tasks_v2.Task) for result in results)
    assert sorted(task.name for task in queue.tasks) == sorted(task.name for task in results)
    assert counts() == {"_DeferredOutboxRun": TRANSACTIONAL}  # the outbox entries went
    assert queue.run_pending() == [HTTPStatus.OK] * TRANSACTIONAL
    assert sorted(RECORDER.named("record")) == list(range(TRANSACTIONAL))
    assert counts() == {}


def test_a_rolled_back_transaction_enqueues_none_of_its_tasks(queue: InMemoryQueue) -> None:
    class Rollback(Exception):
        pass

    def work() -> None:
        credit_and_defer_many(10)()
        raise Rollback

    with pytest.raises(Rollback):
        in_transaction(work)
    assert queue.tasks == []
    assert counts() == {}


def test_a_transaction_over_datastores_limit_fails_whole_and_enqueues_nothing(
    queue: InMemoryQueue,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="too many entity groups"):
        in_transaction(credit_and_defer_many(TRANSACTIONAL + 1))
    assert queue.tasks == []
    assert counts() == {}


def test_tasks_of_a_process_that_died_after_the_commit_are_created_by_the_sweeper(
    queue: InMemoryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "create_all_after_commit", lambda *args, **kwargs: None)
    in_transaction(credit_and_defer_many(10))
    assert queue.tasks == []
    assert counts() == {"_DeferredOutbox": 10, "_DeferredOutboxRun": 10}
    monkeypatch.undo()
    assert sweep(queue.client, older_than=timedelta(0)).created == 10
    assert queue.run_pending() == [HTTPStatus.OK] * 10
    assert sorted(RECORDER.named("record")) == list(range(10))


def test_a_task_not_created_after_the_commit_keeps_its_outbox_entry_for_the_sweeper(
    queue: InMemoryQueue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    create = queue.transport.create_task

    def refuse_one(parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        if queue.client.open_payload(task.http_request.body).args == (3,):
            raise exceptions.ServiceUnavailable("Cloud Tasks is unavailable")
        return create(parent, task)

    monkeypatch.setattr(queue.transport, "create_task", refuse_one)
    in_transaction(credit_and_defer_many(6))
    assert len(queue.tasks) == 5
    assert counts() == {"_DeferredOutbox": 1, "_DeferredOutboxRun": 6}
    assert "the outbox sweeper will create it" in caplog.text


def test_transactional_calls_outside_a_transaction_each_get_the_error(
    queue: InMemoryQueue,
) -> None:
    with ndb.Client(project=PROJECT).context():
        results = deferred.defer_many(
            [Call(tasks.record, 1), Call(tasks.record, 2)], _transactional=True
        )
    assert [type(result) for result in results] == [BadTransactionStateError] * 2
    assert queue.tasks == []
    assert counts() == {}


def test_in_a_transaction_only_the_transactional_calls_wait_for_the_commit(
    queue: InMemoryQueue,
) -> None:
    def work() -> None:
        deferred.defer_many(
            [Call(tasks.record, "now"), Call(tasks.record, "after", _transactional=True)]
        )
        assert [queue.client.open_payload(t.http_request.body).args for t in queue.tasks] == [
            ("now",)
        ]

    in_transaction(work)
    assert queue.run_pending() == [HTTPStatus.OK] * 2
    assert sorted(RECORDER.named("record")) == ["after", "now"]


def test_a_payload_too_large_for_a_task_is_stored_and_runs(queue: InMemoryQueue) -> None:
    blob = random.Random(7).randbytes(1_500_000)  # noqa: S311 - test data, incompressible
    results = deferred.defer_many([Call(tasks.digest, blob), Call(tasks.record, "small")])
    assert all(isinstance(result, tasks_v2.Task) for result in results)
    assert counts() == {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1}
    assert queue.run_pending() == [HTTPStatus.OK] * 2
    assert RECORDER.named("digest") == [fingerprint(blob)]
    assert counts() == {}
