"""Dead-letter records, their rules, the three sinks, and the setting that picks one."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudtasks_deferred import ConfigurationError, DeadLetterError, Settings
from cloudtasks_deferred.settings import DeadLetterStorage
from cloudtasks_deferred.storage import datastore as datastore_module
from cloudtasks_deferred.storage.datastore import Datastore
from cloudtasks_deferred.storage.dead_letter_sinks import (
    DatastoreDeadLetters,
    InMemoryDeadLetters,
    LoggingDeadLetters,
    sink_for,
)
from cloudtasks_deferred.storage.dead_letters import (
    MAX_REASON_CHARS,
    MAX_TRACEBACK_CHARS,
    Cause,
    DeadLetter,
    DeadLetterStore,
    Status,
    claimed,
    letter_id,
    merged,
    replay_finished,
    replay_started,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def letter(**changes: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "cause": Cause.PERMANENT_FAILURE,
        "reason": "PermanentTaskFailure: no",
        "payload": b"body",
        "queue_name": "default",
        "task_name": "task-1",
        "now": T0,
    }
    values.update(changes)
    return DeadLetter.new(**values)


# The record.


def test_a_record_is_named_by_its_queue_task_and_payload() -> None:
    first = letter()
    assert first.id == letter(now=T0 + timedelta(hours=1), reason="other").id
    assert len(first.id) == 32
    assert int(first.id, 16) >= 0
    assert letter(queue_name="mail").id != first.id
    assert letter(task_name="task-2").id != first.id
    assert letter(payload=b"other body").id != first.id  # a reused name, another task


def test_a_request_without_a_task_name_gets_a_record_of_its_own() -> None:
    assert letter_id("default", None, "ab") != letter_id("default", None, "ab")


def test_a_record_holds_sizes_and_cut_texts() -> None:
    made = letter(reason="r" * 5000, traceback="t" * 20_000 + "END")
    assert (made.payload_bytes, made.payload_sha256) == (4, hashlib.sha256(b"body").hexdigest())
    assert len(made.reason) == MAX_REASON_CHARS
    assert made.traceback is not None
    assert len(made.traceback) == MAX_TRACEBACK_CHARS
    assert made.traceback.endswith("END")  # the end, where the error is
    assert (made.first_failed_at, made.last_failed_at, made.status) == (T0, T0, Status.NEW)


def test_as_json_never_holds_the_payload_bytes() -> None:
    made = letter(payload=b"secret-argument", headers=(("X-Custom", "v"),), traceback="tb")
    record = made.as_json()
    assert "payload" not in record
    assert "secret-argument" not in repr(record)
    assert record["headers"] == {"X-Custom": "v"}
    assert record["status"] == "new"
    assert record["cause"] == "permanent-failure"
    assert record["last_failed_at"] == "2025-01-01T00:00:00+00:00"
    assert record["traceback"] == "tb"
    assert "traceback" not in made.as_json(traceback=False)


def test_attempts_count_from_the_retry_count() -> None:
    assert letter(retry_count=4).attempts == 5
    assert letter().attempts is None


# The rules.


def test_a_new_delivery_merges_into_the_record() -> None:
    first = letter()
    again = letter(now=T0 + timedelta(minutes=5), retry_count=3, reason="again")
    after = merged(first, again)
    assert (after.deliveries, after.first_failed_at, after.last_failed_at) == (
        2,
        T0,
        T0 + timedelta(minutes=5),
    )
    assert (after.retry_count, after.reason, after.status) == (3, "again", Status.NEW)
    assert merged(None, first) is first


@pytest.mark.parametrize(
    ("status", "after"),
    [
        (Status.NEW, Status.NEW),
        (Status.RESOLVED, Status.NEW),  # failed again after its queue took it over
        (Status.REPLAYING, Status.REPLAYING),  # the replay owns the task
        (Status.REPLAYED, Status.REPLAYED),
    ],
)
def test_a_new_delivery_keeps_a_replay_and_reopens_a_resolved_record(
    status: Status, after: Status
) -> None:
    existing = dataclasses.replace(letter(), status=status, replays=1, replay_task="t")
    merged_letter = merged(existing, letter())
    assert merged_letter.status is after
    assert (merged_letter.replays, merged_letter.replay_task) == (1, "t")


@pytest.mark.parametrize(
    ("status", "runs", "after"),
    [
        (None, True, None),
        (Status.NEW, True, Status.RESOLVED),
        (Status.RESOLVED, True, None),
        (Status.REPLAYING, False, None),
        (Status.REPLAYED, False, None),
    ],
)
def test_a_redelivery_runs_unless_the_record_was_replayed(
    status: Status | None, runs: bool, after: Status | None
) -> None:
    existing = dataclasses.replace(letter(), status=status) if status else None
    allowed, updated = claimed(existing, T0 + timedelta(hours=1))
    assert allowed is runs
    assert (updated.status if updated else None) is after
    if updated is not None:
        assert updated.resolved_at == T0 + timedelta(hours=1)


def test_a_replay_starts_from_a_new_record_with_the_next_number() -> None:
    started = replay_started(dataclasses.replace(letter(), replays=2), "x")
    assert (started.status, started.replays) == (Status.REPLAYING, 3)
    # An interrupted replay resumes with its own number: the same task name.
    assert replay_started(started, "x") is started


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        (None, "no dead letter x"),
        (dataclasses.replace(letter(), payload=None), "has no payload"),
        (
            dataclasses.replace(letter(), status=Status.REPLAYED, replay_task="q/tasks/r"),
            "was replayed already, as task q/tasks/r",
        ),
        (
            dataclasses.replace(letter(), status=Status.RESOLVED, resolved_at=T0),
            "resolved: a later delivery from queue default ran its task at 2025-01-01T00:00:00",
        ),
    ],
)
def test_a_replay_is_refused_when_it_could_lose_or_double_the_task(
    existing: DeadLetter | None, message: str
) -> None:
    with pytest.raises(DeadLetterError) as raised:
        replay_started(existing, "x")
    assert message in str(raised.value)


def test_a_replay_finishes_only_the_replay_it_started() -> None:
    started = replay_started(letter(), "x")
    done = replay_finished(started, "x", 1, "q/tasks/x-replay-1", T0)
    assert (done.status, done.replay_task, done.replayed_at) == (
        Status.REPLAYED,
        "q/tasks/x-replay-1",
        T0,
    )
    assert replay_finished(done, "x", 1, "q/tasks/x-replay-1", T0) is done  # retried finish
    with pytest.raises(DeadLetterError, match="not in replay 2"):
        replay_finished(started, "x", 2, "t", T0)
    with pytest.raises(DeadLetterError, match="is gone"):
        replay_finished(None, "x", 1, "t", T0)


# The in-memory store.


def test_the_in_memory_store_applies_the_rules() -> None:
    store = InMemoryDeadLetters()
    assert isinstance(store, DeadLetterStore)
    store.record(letter())
    store.record(letter(now=T0 + timedelta(minutes=1)))
    [one] = store.letters
    assert one.deliveries == 2
    assert store.claim(one.id) is True
    assert store.get(one.id).status is Status.RESOLVED  # type: ignore[union-attr]
    store.record(letter(now=T0 + timedelta(minutes=2)))
    started = store.begin_replay(one.id)
    assert store.claim(one.id) is False  # the replay runs it, not the queue's retry
    done = store.finish_replay(one.id, started.replays, "q/tasks/r")
    assert done.status is Status.REPLAYED
    assert store.get("missing") is None


def test_the_in_memory_store_finds_newest_first_and_filters() -> None:
    store = InMemoryDeadLetters()
    store.record(letter(task_name="a", now=T0))
    store.record(letter(task_name="b", now=T0 + timedelta(hours=1), queue_name="mail"))
    store.record(letter(task_name="c", now=T0 + timedelta(hours=2)))
    assert [x.task_name for x in store.find()] == ["c", "b", "a"]
    assert [x.task_name for x in store.find(queue="mail")] == ["b"]
    assert [x.task_name for x in store.find(since=T0 + timedelta(hours=1))] == ["c", "b"]
    assert [x.task_name for x in store.find(limit=1)] == ["c"]
    store.begin_replay(store.find(queue="mail")[0].id)
    assert [x.task_name for x in store.find(statuses={Status.REPLAYING})] == ["b"]
    assert store.purge(T0 + timedelta(minutes=90)) == 2
    assert [x.task_name for x in store.find()] == ["c"]


# The logging sink.


def test_the_logging_sink_logs_the_record_without_its_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LoggingDeadLetters()
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred.dead_letters"):
        sink.record(letter(payload=b"secret-argument", callable_name="m.f", traceback="tb"))
    [logged] = caplog.records
    digest = hashlib.sha256(b"secret-argument").hexdigest()
    assert logged.getMessage() == (
        f"dead letter: task task-1 on queue default (m.f; payload 15 bytes, sha256 {digest}): "
        "PermanentTaskFailure: no"
    )
    fields = logged.json_fields["dead_letter"]  # type: ignore[attr-defined]
    assert fields["cause"] == "permanent-failure"
    assert "traceback" not in fields
    assert "secret-argument" not in caplog.text
    assert sink.keeps_payloads is False
    assert sink.claim("anything") is True  # nothing kept: nothing replayed


def test_the_logging_sink_leaves_a_refusal_to_the_handlers_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cloudtasks_deferred"):
        LoggingDeadLetters().record(letter(cause=Cause.REFUSED))
    assert caplog.records == []


# The setting, and the sink it picks.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, DeadLetterStorage.AUTO),
        ("auto", DeadLetterStorage.AUTO),
        ("Datastore", DeadLetterStorage.DATASTORE),
        ("log", DeadLetterStorage.LOG),
    ],
)
def test_the_setting_is_read_from_the_environment(
    value: str | None, expected: DeadLetterStorage
) -> None:
    env = {"CLOUDTASKS_DEFERRED_DEAD_LETTERS": value} if value else {}
    assert Settings.from_env(env).dead_letters is expected


def test_a_bad_setting_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"CLOUDTASKS_DEFERRED_DEAD_LETTERS": "ndb"})
    assert str(raised.value) == (
        "CLOUDTASKS_DEFERRED_DEAD_LETTERS='ndb': expected auto/datastore/log."
    )
    with pytest.raises(ConfigurationError, match=r"Settings.dead_letters \(CLOUDTASKS_DEFERRED"):
        Settings(dead_letters="log")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "ndb", "installed", "expected", "required"),
    [
        (DeadLetterStorage.AUTO, None, True, DatastoreDeadLetters, False),
        (DeadLetterStorage.AUTO, True, True, DatastoreDeadLetters, True),
        (DeadLetterStorage.AUTO, False, True, LoggingDeadLetters, None),
        (DeadLetterStorage.AUTO, None, False, LoggingDeadLetters, None),
        (DeadLetterStorage.DATASTORE, False, True, DatastoreDeadLetters, True),
        (DeadLetterStorage.LOG, True, True, LoggingDeadLetters, None),
    ],
)
def test_the_default_sink_follows_the_ndb_rules(
    monkeypatch: pytest.MonkeyPatch,
    *,
    mode: DeadLetterStorage,
    ndb: bool | None,
    installed: bool,
    expected: type,
    required: bool | None,
) -> None:
    monkeypatch.setattr(datastore_module, "ndb_installed", lambda: installed)
    monkeypatch.setattr(
        "cloudtasks_deferred.storage.dead_letter_sinks.ndb_installed", lambda: installed
    )
    settings = Settings(ndb=ndb, dead_letters=mode)
    sink = sink_for(settings, Datastore(settings))
    assert type(sink) is expected
    if required is not None:
        assert sink._required is required  # type: ignore[attr-defined]


def test_in_auto_mode_an_unreachable_datastore_logs_the_letter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No credentials and no emulator (the test environment): NDB cannot make a client.
    settings = Settings(project="p", ndb=None)
    sink = DatastoreDeadLetters(Datastore(settings), required=False)
    with caplog.at_level(logging.WARNING, logger="cloudtasks_deferred"):
        sink.record(letter())
        assert sink.claim(letter().id) is True
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("dead letter: task task-1") for m in messages)
    assert sum("cannot open an NDB context" in m for m in messages) == 1  # warned once


def test_the_datastore_store_says_what_to_configure_when_required() -> None:
    settings = Settings(project="p", ndb=None)
    sink = DatastoreDeadLetters(Datastore(settings), required=True)
    with pytest.raises(ConfigurationError) as raised:
        sink.record(letter())
    assert str(raised.value).startswith(
        "the dead-letter store needs Datastore, but cannot open an NDB context"
    )
    assert "DATASTORE_EMULATOR_HOST" in str(raised.value)
    # The operator's side needs Datastore whatever the handler's mode.
    lenient = DatastoreDeadLetters(Datastore(settings), required=False)
    with pytest.raises(ConfigurationError):
        lenient.find()
