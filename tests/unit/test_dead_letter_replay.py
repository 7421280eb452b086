"""Replaying dead letters: once, to their queue and URL, crash-safe, signed afresh."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred import ConfigurationError, DeadLetterError, DeadLetters, Settings
from cloudtasks_deferred.client import Client
from cloudtasks_deferred.payload import binding
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import SigningKey, decode, encode
from cloudtasks_deferred.payload.retry import STARTED_KEY
from cloudtasks_deferred.storage.dead_letter_sinks import InMemoryDeadLetters
from cloudtasks_deferred.storage.dead_letters import Cause, DeadLetter, Status
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import dead_letter_tasks, tasks

KEY = SigningKey("k1", bytes(range(32)))
OTHER_KEY = SigningKey("k1", bytes(range(1, 33)))
SIGNED = dataclasses.replace(TEST_SETTINGS, ndb=False, signing_keys=(KEY,), payload_max_age=3600)


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "fixed"), str(tmp_path / "runs.txt")


def given_up(
    queue: InMemoryQueue, flag: str, report: str, value: str = "one", **options: Any
) -> str:
    """Defers a task that fails until fixed, runs it, and returns its dead letter's ID."""
    queue.client.defer(dead_letter_tasks.append_once_fixed, flag, report, value, **options)
    assert queue.run_pending() == [HTTPStatus.OK]
    return queue.dead_letters[-1].id


def test_a_replay_runs_the_fixed_task_once(files: tuple[str, str]) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        letter_id = given_up(queue, flag, report, _queue="mail", _headers={"X-Custom": "v"})
        letters = DeadLetters(queue.client)
        Path(flag).touch()  # the fix
        done = letters.replay(letter_id)
        parent = "projects/test-project/locations/us-central1/queues/mail"
        assert done.replay_task == f"{parent}/tasks/{letter_id}-replay-1"
        assert (done.status, done.replays) == (Status.REPLAYED, 1)
        assert done.replayed_at is not None
        [task] = queue.tasks
        assert task.name == done.replay_task
        assert task.http_request.url == "https://tasks.test/_ah/queue/deferred"
        assert task.http_request.oidc_token.service_account_email == TEST_SETTINGS.service_account
        # The task's own headers go again; what Cloud Tasks and the network set does not.
        assert dict(task.http_request.headers) == {
            "X-Custom": "v",
            "Content-Type": "application/octet-stream",
        }
        assert queue.run_pending() == [HTTPStatus.OK]
        assert dead_letter_tasks.runs(report) == ["one"]
        with pytest.raises(DeadLetterError, match="was replayed already"):
            letters.replay(letter_id)
    assert dead_letter_tasks.runs(report) == ["one"]


def test_a_failing_replay_records_a_dead_letter_of_its_own(files: tuple[str, str]) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        letter_id = given_up(queue, flag, report)
        DeadLetters(queue.client).replay(letter_id)  # not fixed yet
        assert queue.run_pending() == [HTTPStatus.OK]
    first, second = queue.dead_letters
    assert first.status is Status.REPLAYED
    assert (second.task_name, second.status) == (f"{letter_id}-replay-1", Status.NEW)


class FlakyTransport:
    """The queue's transport, failing the next ``failures`` creations (a lost connection)."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        if self.failures:
            self.failures -= 1
            raise exceptions.ServiceUnavailable("connection lost")
        created: tasks_v2.Task = self.inner.create_task(parent, task)
        return created


def operator(queue: InMemoryQueue, transport: Any = None) -> DeadLetters:
    """The operator's side: the queue's configuration and store, maybe another transport."""
    client = Client(
        queue.client.settings,
        transport=transport or queue.transport,
        dead_letters=queue.client.dead_letters,
    )
    return DeadLetters(client)


def test_a_replay_interrupted_before_its_task_exists_resumes_with_the_same_name(
    files: tuple[str, str],
) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        letter_id = given_up(queue, flag, report)
        Path(flag).touch()
        with pytest.raises(exceptions.ServiceUnavailable):
            operator(queue, FlakyTransport(queue.transport, failures=1)).replay(letter_id)
        stuck = DeadLetters(queue.client).get(letter_id)
        assert (stuck.status, stuck.replays) == (Status.REPLAYING, 1)  # not lost
        assert queue.tasks == []
        done = DeadLetters(queue.client).replay(letter_id)
        assert done.replay_task is not None
        assert done.replay_task.endswith(f"/tasks/{letter_id}-replay-1")
        assert queue.run_pending() == [HTTPStatus.OK]
    assert dead_letter_tasks.runs(report) == ["one"]


def test_a_replay_interrupted_after_its_task_exists_does_not_create_it_twice(
    files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        letter_id = given_up(queue, flag, report)
        Path(flag).touch()
        store = queue.client.dead_letters
        assert isinstance(store, InMemoryDeadLetters)

        def crash(*args: Any) -> None:
            raise SystemExit("the operator's process died")

        with monkeypatch.context() as patch:
            patch.setattr(store, "finish_replay", crash)
            with pytest.raises(SystemExit):
                DeadLetters(queue.client).replay(letter_id)
        [created] = queue.tasks
        assert DeadLetters(queue.client).get(letter_id).status is Status.REPLAYING
        # Run again: Cloud Tasks answers ALREADY_EXISTS for the same name, counted as done.
        done = DeadLetters(queue.client).replay(letter_id)
        assert (done.status, done.replay_task) == (Status.REPLAYED, created.name)
        assert [task.name for task in queue.tasks] == [created.name]
        assert queue.run_pending() == [HTTPStatus.OK]
    assert dead_letter_tasks.runs(report) == ["one"]


def test_a_replay_checks_everything_it_can_before_the_record_changes(
    files: tuple[str, str],
) -> None:
    flag, report = files
    with in_memory_queue(SIGNED) as queue:
        letter_id = given_up(queue, flag, report)
        wrong_keys = dataclasses.replace(SIGNED, signing_keys=(OTHER_KEY,))
        stranger = DeadLetters(
            Client(wrong_keys, transport=queue.transport, dead_letters=queue.client.dead_letters)
        )
        with pytest.raises(DeadLetterError) as raised:
            stranger.replay(letter_id)
        assert str(raised.value) == (
            "the payload signature does not verify with this configuration's signing keys "
            "(CLOUDTASKS_DEFERRED_SIGNING_KEYS): a payload that does not verify is never "
            "signed again"
        )
        unsigned = dataclasses.replace(SIGNED, signing_keys=())
        keyless = DeadLetters(
            Client(unsigned, transport=queue.transport, dead_letters=queue.client.dead_letters)
        )
        with pytest.raises(DeadLetterError, match="the payload is signed: replay it with"):
            keyless.replay(letter_id)
        nowhere = dataclasses.replace(SIGNED, location=None)
        lost = DeadLetters(
            Client(nowhere, transport=queue.transport, dead_letters=queue.client.dead_letters)
        )
        with pytest.raises(ConfigurationError, match="CLOUDTASKS_DEFERRED_LOCATION"):
            lost.replay(letter_id)
        assert DeadLetters(queue.client).get(letter_id).status is Status.NEW
        assert queue.tasks == []


def test_an_unsigned_payload_is_never_signed_by_a_replay(files: tuple[str, str]) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        letter_id = given_up(queue, flag, report)
        signing = Client(SIGNED, transport=queue.transport, dead_letters=queue.client.dead_letters)
        with pytest.raises(DeadLetterError, match="the payload is not signed, and this config"):
            DeadLetters(signing).replay(letter_id)


class Clock:
    """``time`` as a module sees it, moved ``offset`` seconds ahead."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


def test_a_signed_payload_past_its_age_runs_when_replayed(
    files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flag, report = files
    with in_memory_queue(SIGNED) as queue:
        letter_id = given_up(queue, flag, report)
        original = DeadLetters(queue.client).get(letter_id).payload
        assert original is not None
        Path(flag).touch()
        # Two hours later: the original is too old for the handler (max age one hour).
        later = Clock(7200)
        monkeypatch.setattr("cloudtasks_deferred.receive.receiver.time", later)
        monkeypatch.setattr("cloudtasks_deferred.dead_letters.time", later)
        with pytest.raises(Exception, match="signed more than 3600 s ago"):
            queue.client.open_payload(original)
        DeadLetters(queue.client).replay(letter_id)
        [task] = queue.tasks
        replayed = decode(task.http_request.body, keys={"k1": KEY.secret}, require_signature=True)
        first = decode(original, keys={"k1": KEY.secret}, require_signature=True)
        assert replayed.metadata[binding.DESTINATION] == first.metadata[binding.DESTINATION]
        assert replayed.metadata[binding.ISSUED_AT] >= first.metadata[binding.ISSUED_AT] + 7199
        assert replayed.pickled == first.pickled
        assert queue.run_pending() == [HTTPStatus.OK]
    assert dead_letter_tasks.runs(report) == ["one"]


def test_a_replay_restarts_the_tasks_own_retry_clock() -> None:
    store = InMemoryDeadLetters()
    client = Client(dataclasses.replace(TEST_SETTINGS, ndb=False), dead_letters=store)
    with in_memory_queue() as queue:
        old = {"retry": {"task_age_limit": 60}, STARTED_KEY: 1.0}
        body = encode(serialize(tasks.record, "late"), old)
        store.record(
            DeadLetter.new(
                cause=Cause.RETRIES_EXHAUSTED,
                reason="task_age_limit=60 reached",
                payload=body,
                queue_name="default",
                task_name="old-task",
                url="https://tasks.test/_ah/queue/deferred",
            )
        )
        [letter] = store.letters
        DeadLetters(Client(client.settings, transport=queue.transport, dead_letters=store)).replay(
            letter.id
        )
        [task] = queue.tasks
        metadata = decode(task.http_request.body).metadata
        assert metadata["retry"] == {"task_age_limit": 60}
        assert metadata[STARTED_KEY] >= time.time() - 60
        assert queue.run_pending() == [HTTPStatus.OK]
    assert tasks.RECORDER.named("record") == ["late"]


def test_replay_all_list_get_and_purge(files: tuple[str, str]) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        first = given_up(queue, flag, report, "a")
        second = given_up(queue, flag, report, "b", _queue="mail")
        third = given_up(queue, flag, report, "c", _queue="mail")
        letters = DeadLetters(queue.client)
        assert [x.id for x in letters.list()] == [third, second, first]
        assert [x.id for x in letters.list(queue="mail", limit=1)] == [third]
        with pytest.raises(DeadLetterError, match="no dead letter nope"):
            letters.get("nope")
        Path(flag).touch()
        results = letters.replay_all(queue="mail")
        assert [(r.letter_id, r.error) for r in results] == [(third, None), (second, None)]
        assert letters.replay_all(queue="mail") == []  # nothing new left there
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]
        assert sorted(dead_letter_tasks.runs(report)) == ["b", "c"]
        assert [x.id for x in letters.list(statuses={Status.NEW})] == [first]
        assert letters.purge(older_than=timedelta(hours=1)) == 0
        assert letters.purge(older_than=timedelta(0)) == 3
        assert letters.list() == []


def test_dead_letters_that_are_only_logged_cannot_be_read() -> None:
    client = Client(Settings(ndb=False))
    with pytest.raises(ConfigurationError) as raised:
        DeadLetters(client)
    assert str(raised.value).startswith(
        "this client's dead letters go to LoggingDeadLetters, which keeps no records to list "
        "or replay: set CLOUDTASKS_DEFERRED_DEAD_LETTERS=datastore"
    )
