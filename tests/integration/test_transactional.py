"""defer(_transactional=True) on the real Datastore emulator: commit, rollback, crash, sweep."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.cloud import ndb, tasks_v2

from cloudtasks_deferred import BadTransactionStateError, Client, Settings, deferred, wrap_wsgi_app
from cloudtasks_deferred.devtools import cli
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator, free_port
from cloudtasks_deferred.enqueue import outbox
from cloudtasks_deferred.enqueue.sweep import SWEEP_PATH, sweep
from cloudtasks_deferred.payload.calls import RUN_ENTRY
from cloudtasks_deferred.payload.frame import decode
from cloudtasks_deferred.settings import queue_path
from cloudtasks_deferred.storage import entities as storage
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import tasks
from tests.integration.conftest import LOCATION, PROJECT, Server
from tests.integration.entities import counts, keys
from tests.integration.processes import Command, isolated_env, wait_until
from tests.ndb_tasks import Counter
from tests.tasks import RECORDER, fingerprint

pytestmark = pytest.mark.integration

SETTINGS = dataclasses.replace(TEST_SETTINGS, project=PROJECT)
NOW = timedelta(0)
PENDING_RUN = {"_DeferredOutboxRun": 1}


@pytest.fixture
def queue(datastore: DatastoreEmulator) -> Iterator[InMemoryQueue]:
    with in_memory_queue(SETTINGS) as recorded:
        yield recorded


@pytest.fixture
def no_post_commit_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a process that dies right after its transaction commits."""
    monkeypatch.setattr(outbox, "create_after_commit", lambda *args: None)


def in_transaction(work: Callable[[], Any]) -> Any:
    with ndb.Client(project=PROJECT).context():
        return ndb.transaction(work)


def credit_and_defer(value: str, **options: Any) -> Callable[[], tasks_v2.Task]:
    def work() -> tasks_v2.Task:
        Counter(id=value, count=1).put()
        return deferred.defer(tasks.record, value, _transactional=True, **options)

    return work


def test_commit_enqueues_after_the_commit_and_runs_exactly_once(queue: InMemoryQueue) -> None:
    def work() -> tasks_v2.Task:
        task = credit_and_defer("committed")()
        assert queue.tasks == []  # nothing is enqueued before the commit
        return task

    task = in_transaction(work)
    [created] = queue.tasks
    assert created.name == task.name
    assert decode(created.http_request.body).metadata[RUN_ENTRY]
    assert counts() == PENDING_RUN  # the outbox entry went once the task existed
    assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("record") == ["committed"]
    assert counts() == {}


def test_task_name_is_hash_prefixed_and_derived_from_the_outbox_key(queue: InMemoryQueue) -> None:
    names = [in_transaction(credit_and_defer(f"n{i}")).name.rsplit("/", 1)[1] for i in range(3)]
    with ndb.Client(project=PROJECT).context():
        for name in names:
            prefix, ident = name.split("-")
            key = ndb.Key(storage.DeferredOutbox, ident, namespace="")
            assert outbox.task_id(key) == name
            assert len(prefix) == 16
    assert len({name[:4] for name in names}) == 3  # not sequential


def test_rollback_enqueues_nothing_and_leaves_nothing(queue: InMemoryQueue) -> None:
    def work() -> None:
        credit_and_defer("rolled back", _countdown=5)()
        deferred.defer(tasks.digest, _big(), _transactional=True)  # a stored payload too
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        in_transaction(work)
    assert queue.tasks == []
    assert counts() == {}
    assert queue.run_pending() == []


def test_an_oversized_payload_is_stored_in_the_same_transaction(queue: InMemoryQueue) -> None:
    blob = _big()
    in_transaction(lambda: deferred.defer(tasks.digest, blob, _transactional=True))
    assert counts() == {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1, **PENDING_RUN}
    assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("digest") == [fingerprint(blob)]
    assert counts() == {}


def test_crash_after_commit_the_sweeper_enqueues_it_once(
    queue: InMemoryQueue, no_post_commit_step: None
) -> None:
    in_transaction(credit_and_defer("swept"))
    assert queue.tasks == []
    assert counts() == {"_DeferredOutbox": 1, **PENDING_RUN}
    assert sweep(queue.client).created == 0  # too young: its process may still create it
    report = sweep(queue.client, older_than=NOW)
    assert (report.created, report.existing, report.failed) == (1, 0, 0)
    assert counts() == PENDING_RUN
    assert sweep(queue.client, older_than=NOW).created == 0
    assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("record") == ["swept"]
    assert counts() == {}


def test_a_duplicate_delivery_runs_nothing(queue: InMemoryQueue) -> None:
    in_transaction(credit_and_defer("once"))
    [task] = queue.tasks
    assert queue.deliver(task) == HTTPStatus.OK
    assert queue.deliver(task) == HTTPStatus.OK
    assert RECORDER.named("record") == ["once"]


def test_a_delivery_while_another_holds_the_lease_is_retried_later(
    queue: InMemoryQueue,
) -> None:
    in_transaction(credit_and_defer("leased"))
    [task] = queue.tasks
    run_key = _run_key(task)
    with ndb.Client(project=PROJECT).context():
        run = run_key.get()
        assert run.lease_seconds == 600  # the default dispatch deadline
        run.leased_until = datetime.now(UTC) + timedelta(minutes=1)
        run.put()
    assert queue.deliver(task) == HTTPStatus.REQUEST_TIMEOUT  # SingularTaskFailure
    assert RECORDER.named("record") == []
    with ndb.Client(project=PROJECT).context():
        run = run_key.get()
        run.leased_until = datetime.now(UTC) - timedelta(seconds=1)  # that delivery died
        run.put()
    assert queue.deliver(task) == HTTPStatus.OK
    assert RECORDER.named("record") == ["leased"]


def test_a_failed_run_releases_the_task_for_the_retry(queue: InMemoryQueue) -> None:
    blob = b"retried"
    in_transaction(lambda: deferred.defer(tasks.crash_once_then_digest, blob, _transactional=True))
    assert queue.run_pending() == [HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.OK]
    assert RECORDER.named("attempt") == [0, 1]
    assert RECORDER.named("digest") == [fingerprint(blob)]
    assert counts() == {}


def test_a_permanent_failure_ends_the_task(queue: InMemoryQueue) -> None:
    in_transaction(
        lambda: deferred.defer(tasks.digest_then_fail_permanently, b"x", _transactional=True)
    )
    [task] = queue.tasks
    assert queue.run_pending() == [HTTPStatus.OK]
    assert queue.deliver(task) == HTTPStatus.OK  # a duplicate: nothing runs
    assert len(RECORDER.named("digest_then_fail_permanently")) == 1
    assert counts() == {}


def test_the_sweeper_counts_already_exists_as_created(
    queue: InMemoryQueue, no_post_commit_step: None
) -> None:
    """Cloud Tasks refuses a name it holds with ALREADY_EXISTS (the emulator never does)."""

    class Holding:
        def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
            raise exceptions.AlreadyExists("Requested entity already exists")

    in_transaction(credit_and_defer("exists"))
    report = sweep(Client(SETTINGS, transport=Holding()), older_than=NOW)
    assert (report.created, report.existing, report.failed) == (0, 1, 0)
    assert counts() == PENDING_RUN  # the entry is done with; the task still has to run


def test_a_failed_post_commit_step_is_logged_and_left_to_the_sweeper(
    queue: InMemoryQueue, caplog: pytest.LogCaptureFixture
) -> None:
    class Unavailable:
        def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
            raise exceptions.ServiceUnavailable("try again")

    failing = Client(SETTINGS, transport=Unavailable())
    with failing.bind(), caplog.at_level(logging.ERROR):
        in_transaction(credit_and_defer("later"))  # commits: no exception escapes
    assert "the outbox sweeper will create it" in caplog.text
    assert counts() == {"_DeferredOutbox": 1, **PENDING_RUN}
    report = sweep(failing, older_than=NOW)
    assert (report.created, report.failed) == (0, 1)
    assert counts() == {"_DeferredOutbox": 1, **PENDING_RUN}  # kept for the next sweep
    assert sweep(queue.client, older_than=NOW).created == 1
    assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("record") == ["later"]


def test_the_sweeper_drops_entries_whose_task_already_ran(
    queue: InMemoryQueue, no_post_commit_step: None
) -> None:
    in_transaction(credit_and_defer("ran"))
    with ndb.Client(project=PROJECT).context():
        [run_key] = ndb.Query(kind="_DeferredOutboxRun", namespace="").fetch(keys_only=True)
        run_key.delete()  # as after a run whose outbox entry could not be deleted
    report = sweep(queue.client, older_than=NOW)
    assert (report.created, report.finished) == (0, 1)
    assert counts() == {}
    assert queue.tasks == []


def test_transactional_needs_a_transaction_and_takes_no_name(
    datastore: DatastoreEmulator,
) -> None:
    with Client(SETTINGS).bind(), ndb.Client(project=PROJECT).context():
        with pytest.raises(BadTransactionStateError, match="inside an NDB transaction") as caught:
            deferred.defer(tasks.record, _transactional=True)
        assert "no NDB context" not in str(caught.value)
        with pytest.raises(ValueError, match="_name='n' cannot be used with _transactional"):
            ndb.transaction(lambda: deferred.defer(tasks.record, _transactional=True, _name="n"))
    assert counts() == {}


def test_transactional_end_to_end_through_the_emulator(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
) -> None:
    client = Client(dev_settings(server.url))
    server.app = wrap_wsgi_app(lambda environ, start_response: [], client=client)
    with client.bind():
        in_transaction(credit_and_defer("e2e"))
        with pytest.raises(RuntimeError):
            in_transaction(lambda: (credit_and_defer("rolled back")(), _raise()))
    assert RECORDER.wait_for("record", timeout=30) == ["e2e"]
    _wait_until(lambda: counts() == {})
    assert RECORDER.named("record") == ["e2e"]  # and nothing from the rolled-back one


@pytest.mark.usefixtures("datastore", "no_post_commit_step")
def test_duplicate_created_on_the_emulator_runs_once(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client(dev_settings(server.url))
    server.app = wrap_wsgi_app(lambda environ, start_response: [], client=client)
    with client.bind():
        in_transaction(credit_and_defer("twice"))
    with ndb.Client(project=PROJECT).context():
        [entry] = storage.DeferredOutbox.query(namespace="").fetch()
        task = tasks_v2.Task.deserialize(entry.task)
    parent = task.name.rsplit("/tasks/", 1)[0]
    tasks_client.create_task(parent=parent, task=task)
    tasks_client.create_task(parent=parent, task=task)  # the emulator accepts the same name
    with caplog.at_level(logging.INFO, logger="cloudtasks_deferred.receive.guard"):
        assert RECORDER.wait_for("record", timeout=30) == ["twice"]
        _wait_until(lambda: "this delivery is a duplicate" in caplog.text, timeout=30)
    assert RECORDER.named("record") == ["twice"]


def test_the_sweep_endpoint_is_authenticated_like_tasks_and_enqueues(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
    no_post_commit_step: None,
) -> None:
    client = Client(dev_settings(server.url))
    server.app = wrap_wsgi_app(lambda environ, start_response: [], client=client)
    with client.bind():
        in_transaction(credit_and_defer("via http"))
    url = server.url + SWEEP_PATH
    assert requests.post(url, timeout=10).status_code == 403
    assert requests.get(url, timeout=10).status_code == 405
    token = client.mint_dev_token(server.url, datetime.now(UTC))
    # The endpoint sweeps entries older than 5 minutes: age this one.
    _age_outbox(timedelta(minutes=6))
    answer = requests.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "created 1" in answer.text
    assert RECORDER.wait_for("record", timeout=30) == ["via http"]


@pytest.mark.usefixtures("tasks_client", "datastore", "no_post_commit_step")
def test_the_sweep_command(
    server: Server,
    dev_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = dev_settings(server.url)
    client = Client(settings)
    server.app = wrap_wsgi_app(lambda environ, start_response: [], client=client)
    with client.bind():
        in_transaction(credit_and_defer("via cli"))
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "CLOUDTASKS_DEFERRED_LOCATION": LOCATION,
        "CLOUDTASKS_DEFERRED_BASE_URL": server.url,
        "CLOUD_TASKS_EMULATOR_HOST": settings.emulator_host,
        "CLOUDTASKS_DEFERRED_DEV_MODE": "true",
        "CLOUDTASKS_DEFERRED_DEV_KEY_FILE": str(settings.dev_key_file),
    }.items():
        monkeypatch.setenv(name, str(value))
    assert cli.main(["sweep", "--older-than", "0"]) == 0
    assert "created 1" in capsys.readouterr().out
    assert RECORDER.wait_for("record", timeout=30) == ["via cli"]


@pytest.mark.usefixtures("tasks_client")
def test_a_process_killed_between_its_commit_and_the_enqueue_is_swept_and_runs_once(
    server: Server, dev_settings: Callable[..., Settings], datastore: DatastoreEmulator
) -> None:
    """A real process, SIGKILLed after its transaction committed, before its task exists.

    Its Cloud Tasks endpoint accepts no connection, so after the commit it keeps
    retrying the creation of the task (for up to 120 s) until it is killed; the
    sweeper, run as the CLI, creates the task, which runs once.
    """
    settings = dev_settings(server.url)
    server.app = wrap_wsgi_app(lambda environ, start_response: [], client=Client(settings))
    app_env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "CLOUDTASKS_DEFERRED_LOCATION": LOCATION,
        "CLOUDTASKS_DEFERRED_BASE_URL": server.url,
        "CLOUDTASKS_DEFERRED_DEV_MODE": "true",
        "CLOUDTASKS_DEFERRED_DEV_KEY_FILE": str(settings.dev_key_file),
        **datastore.env,
    }
    child = Command(
        [sys.executable, "-m", "tests.integration.deferring_child", "transactional"],
        env=isolated_env(
            **app_env,
            CLOUD_TASKS_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
            CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT="120",
        ),
    )
    try:
        wait_until("the child's commit", lambda: "_DeferredOutbox" in counts(), timeout=60)
        child.process.send_signal(signal.SIGKILL)
        code = child.process.wait(10)
    finally:
        child.close()
    assert code == -signal.SIGKILL, child.output
    assert "committed" not in child.output
    assert counts() == {"_DeferredOutbox": 1, **PENDING_RUN}
    assert [key.id() for key in keys("Counter")] == ["swept"]  # the transaction committed
    assert RECORDER.named("record") == []

    env = isolated_env(**app_env, CLOUD_TASKS_EMULATOR_HOST=str(settings.emulator_host))
    sweeper = Command.cli("sweep", "--older-than", "0", env=env)
    try:
        assert sweeper.process.wait(60) == 0, sweeper.output
    finally:
        sweeper.close()
    assert "created 1" in sweeper.output
    assert RECORDER.wait_for("record", timeout=30) == ["swept"]
    wait_until("the run entry's deletion", lambda: counts() == {})
    assert sweep(Client(settings), older_than=NOW).created == 0
    assert RECORDER.named("record") == ["swept"]


SWEPT = 30


@pytest.mark.usefixtures("no_post_commit_step")
def test_two_sweepers_at_once_create_each_entrys_task_under_its_one_name(
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
) -> None:
    """Two sweeps racing over the same outbox entries.

    Both may create an entry's task: the name is derived from the entry, so Cloud
    Tasks answers the second with ALREADY_EXISTS (the sweeper counts it as created:
    test_the_sweeper_counts_already_exists_as_created) and a duplicate delivery runs
    nothing (test_duplicate_created_on_the_emulator_runs_once). The emulator does not
    deduplicate names, so here the same name may be listed twice; what must never
    happen is a task under any other name.
    """
    queue = queue_path(PROJECT, LOCATION, "sweep-race")
    tasks_client.create_queue(
        parent=queue.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=queue)
    )
    tasks_client.pause_queue(name=queue)  # the tasks stay, to be listed
    try:
        client = Client(dev_settings("http://127.0.0.1:9", queue="sweep-race"))
        with client.bind():
            for index in range(SWEPT):
                in_transaction(credit_and_defer(f"race {index}"))
        names = {outbox.task_id(key) for key in keys("_DeferredOutbox")}
        assert len(names) == SWEPT
        start = threading.Barrier(2)

        def sweeper() -> Any:
            start.wait(10)
            return sweep(client, older_than=NOW)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda _: sweeper(), range(2)))
        listed = [task.name for task in tasks_client.list_tasks(parent=queue)]
    finally:
        tasks_client.purge_queue(name=queue)
        tasks_client.delete_queue(name=queue)
    assert [report.failed for report in reports] == [0, 0]
    assert sum(report.created + report.existing for report in reports) >= SWEPT
    assert {name.rsplit("/tasks/", 1)[1] for name in listed} == names
    assert all(name.startswith(queue + "/tasks/") for name in listed)
    assert counts() == {"_DeferredOutboxRun": SWEPT}  # every entry swept, none run yet


def _big() -> bytes:
    return random.Random(7).randbytes(1_500_000)  # noqa: S311 - test data


def _raise() -> None:
    raise RuntimeError("roll back")


def _run_key(task: tasks_v2.Task) -> Any:
    with ndb.Client(project=PROJECT).context():
        return storage.parse_key(
            decode(task.http_request.body).metadata[RUN_ENTRY], storage.DeferredOutboxRun
        )


def _age_outbox(age: timedelta) -> None:
    with ndb.Client(project=PROJECT).context():
        for entry in storage.DeferredOutbox.query(namespace="").fetch():
            entry.created = datetime.now(UTC) - age
            entry.put()


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
