"""guard.run_once, the exactly-once lease of transactional tasks, on the Datastore emulator.

Fast tests of each rule of :mod:`cloudtasks_deferred.receive.guard` (the end-to-end runs are in
``tests/integration/test_transactional.py``): the lease a delivery saves, a delivery
unable to release another's lease, the run entry finished when the call succeeded,
failed permanently or exhausted its retry options, and namespaces. They use the
integration tests' session-scoped emulator fixture (a real Datastore, started once,
about two seconds, from ``conftest.py``); without the emulator they skip, and fail
under ``CI=true``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import ndb

from cloudtasks_deferred import Client, PermanentTaskFailure, SingularTaskFailure
from cloudtasks_deferred.client import current_client
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.payload.calls import OpenedPayload
from cloudtasks_deferred.payload.frame import InvalidPayloadError
from cloudtasks_deferred.receive import guard
from cloudtasks_deferred.receive.context import TaskInfo, running
from cloudtasks_deferred.storage import entities as storage
from cloudtasks_deferred.testing import TEST_SETTINGS

pytestmark = pytest.mark.integration

#: A project of these tests' own, so that the process's shared NDB client for it is made
#: while NDB points at this session's emulator.
PROJECT = "guard-unit-tests"
SETTINGS = dataclasses.replace(TEST_SETTINGS, project=PROJECT, ndb=True)
LEASE_SECONDS = 600
FIRST_ATTEMPT = TaskInfo(queue_name="default", task_name="t", retry_count=0)


@pytest.fixture
def client(datastore: DatastoreEmulator) -> Iterator[Client]:
    client = Client(SETTINGS)
    with client.bind():
        yield client


@pytest.fixture
def ndb_context(datastore: DatastoreEmulator) -> Iterator[None]:
    """An NDB context of the test's own, for reading and writing entries around a run."""
    with ndb.Client(project=PROJECT).context():
        yield


def make_entries(namespace: str = "", **run: Any) -> ndb.Key:
    """Writes a run entry and its outbox entry, as a transactional defer does."""
    ident = storage.new_id()
    run_key = ndb.Key(storage.DeferredOutboxRun, ident, namespace=namespace)
    ndb.put_multi(
        [
            storage.DeferredOutbox(
                key=ndb.Key(storage.DeferredOutbox, ident, namespace=namespace),
                task=b"task",
                created=datetime.now(UTC),
            ),
            storage.DeferredOutboxRun(key=run_key, **{"lease_seconds": LEASE_SECONDS, **run}),
        ],
        **storage.NO_CACHE,
    )
    return run_key


def outbox_key(run_key: ndb.Key) -> ndb.Key:
    return ndb.Key(storage.DeferredOutbox, run_key.id(), namespace=run_key.namespace() or "")


def read(key: ndb.Key) -> Any:
    return key.get(**storage.NO_CACHE)


def opened(func: Callable[..., Any], metadata: dict[str, Any] | None = None) -> OpenedPayload:
    return OpenedPayload(metadata or {}, func, (), {})


def run_once(key: ndb.Key, func: Callable[..., Any], **metadata: Any) -> Any:
    with running(FIRST_ATTEMPT):
        return guard.run_once(current_client(), key.urlsafe().decode(), opened(func, metadata))


# --- claiming --------------------------------------------------------------------------


def test_a_claim_saves_the_lease_before_the_call_runs(client: Client, ndb_context: None) -> None:
    key = make_entries()
    seen: list[Any] = []

    def call() -> str:
        seen.append(read(key))
        return "ran"

    before = datetime.now(UTC)
    assert run_once(key, call) == "ran"
    [entry] = seen
    assert entry.lease_token
    lease = timedelta(seconds=LEASE_SECONDS)
    assert before + lease <= entry.leased_until <= datetime.now(UTC) + lease


def test_each_delivery_leases_under_a_token_of_its_own(client: Client, ndb_context: None) -> None:
    tokens: list[str] = []
    for _ in range(2):
        key = make_entries()
        run_once(key, lambda key=key: tokens.append(read(key).lease_token))
    assert len(set(tokens)) == 2
    assert all(len(token) == 16 for token in tokens)


def test_a_lease_held_by_another_delivery_answers_busy(client: Client, ndb_context: None) -> None:
    held = datetime.now(UTC) + timedelta(minutes=5)
    key = make_entries(leased_until=held, lease_token="other")
    calls: list[str] = []
    with pytest.raises(SingularTaskFailure, match="another delivery is running"):
        run_once(key, lambda: calls.append("ran"))
    assert calls == []
    entry = read(key)
    assert (entry.leased_until, entry.lease_token) == (held, "other")


def test_an_expired_lease_is_taken_over(client: Client, ndb_context: None) -> None:
    key = make_entries(leased_until=datetime.now(UTC) - timedelta(seconds=1), lease_token="old")
    tokens: list[str] = []
    assert run_once(key, lambda: tokens.append(read(key).lease_token)) is None
    assert tokens != ["old"]
    assert read(key) is None


def test_a_delivery_finding_no_run_entry_is_a_duplicate_and_runs_nothing(
    client: Client, ndb_context: None, caplog: pytest.LogCaptureFixture
) -> None:
    key = make_entries()
    ndb.delete_multi([key], **storage.NO_CACHE)
    calls: list[str] = []
    with caplog.at_level(logging.INFO, logger="cloudtasks_deferred.receive.guard"):
        assert run_once(key, lambda: calls.append("ran") or "result") is None
    assert calls == []
    assert f"transactional task {key.id()} already ran" in caplog.text


def test_an_entry_that_is_not_a_run_key_is_an_invalid_payload(client: Client) -> None:
    with pytest.raises(InvalidPayloadError, match="not a URL-safe Datastore key"):
        guard.run_once(client, "not-a-key", opened(lambda: None))
    with ndb.Client(project=PROJECT).context():
        outbox = ndb.Key(storage.DeferredOutbox, "x").urlsafe().decode()
    with pytest.raises(InvalidPayloadError, match="is not a _DeferredOutboxRun key"):
        guard.run_once(client, outbox, opened(lambda: None))


# --- finishing or releasing ------------------------------------------------------------


def test_success_deletes_the_run_and_outbox_entries(client: Client, ndb_context: None) -> None:
    key = make_entries()
    assert run_once(key, lambda: "result") == "result"
    assert read(key) is None
    assert read(outbox_key(key)) is None


def test_a_permanent_failure_finishes_the_run(client: Client, ndb_context: None) -> None:
    key = make_entries()

    def call() -> None:
        raise PermanentTaskFailure("never")

    with pytest.raises(PermanentTaskFailure, match="never"):
        run_once(key, call)
    assert read(key) is None
    assert read(outbox_key(key)) is None


def test_a_retryable_failure_releases_the_lease_for_the_retry(
    client: Client, ndb_context: None
) -> None:
    key = make_entries()

    def call() -> None:
        raise RuntimeError("try again")

    with pytest.raises(RuntimeError, match="try again"):
        run_once(key, call)
    entry = read(key)
    assert (entry.leased_until, entry.lease_token) == (None, None)
    assert read(outbox_key(key)) is not None
    # The retry claims it again and runs the call.
    assert run_once(key, lambda: "second") == "second"


def test_a_failure_with_retry_options_exhausted_finishes_the_run(
    client: Client, ndb_context: None
) -> None:
    key = make_entries()

    def call() -> None:
        raise RuntimeError("last attempt")

    with pytest.raises(RuntimeError, match="last attempt"):
        run_once(key, call, retry={"task_retry_limit": 0})
    assert read(key) is None
    assert read(outbox_key(key)) is None


def test_retry_options_with_retries_left_release_the_lease(
    client: Client, ndb_context: None
) -> None:
    key = make_entries()

    def call() -> None:
        raise RuntimeError("not yet")

    with pytest.raises(RuntimeError, match="not yet"):
        run_once(key, call, retry={"task_retry_limit": 1})
    assert read(key).lease_token is None


def test_a_failed_delivery_cannot_release_another_deliverys_lease(
    client: Client, ndb_context: None
) -> None:
    # This delivery's lease ran out during its call and a retry took the entry over;
    # when this call then fails, the retry's lease must stay.
    key = make_entries()
    taken_over = datetime.now(UTC) + timedelta(minutes=10)

    def call() -> None:
        entry = read(key)
        entry.leased_until, entry.lease_token = taken_over, "the-retry"
        entry.put(**storage.NO_CACHE)
        raise RuntimeError("slow and failed")

    with pytest.raises(RuntimeError, match="slow and failed"):
        run_once(key, call)
    entry = read(key)
    assert (entry.leased_until, entry.lease_token) == (taken_over, "the-retry")


def test_a_failed_release_is_logged_not_raised_over_the_calls_error(
    client: Client,
    ndb_context: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = make_entries()
    real_transaction = ndb.transaction
    transactions: list[str] = []

    def transaction(work: Callable[[], Any]) -> Any:
        transactions.append("tx")
        if len(transactions) == 2:  # the release, after the claim
            raise RuntimeError("Datastore unavailable")
        return real_transaction(work)

    monkeypatch.setattr(guard.ndb, "transaction", transaction)

    def call() -> None:
        raise ValueError("the call's own error")

    with (
        caplog.at_level(logging.WARNING, logger="cloudtasks_deferred.receive.guard"),
        pytest.raises(ValueError, match="the call's own error"),
    ):
        run_once(key, call)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("could not release the lease on Key(")
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "Datastore unavailable"  # why, for the operator
    assert read(key).lease_token is not None  # held until it expires


def test_a_failed_cleanup_is_logged_and_the_result_returned(
    client: Client,
    ndb_context: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = make_entries()

    def delete(keys: Any) -> None:
        raise RuntimeError("Datastore unavailable")

    monkeypatch.setattr(guard.storage, "delete", delete)
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred.receive.guard"):
        assert run_once(key, lambda: "done") == "done"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("could not delete the run entry Key('_DeferredOutboxRun'")
    assert record.exc_info is not None
    assert read(key) is not None


# --- namespaces -------------------------------------------------------------------------


def test_entries_in_the_default_namespace_are_found_from_any_callers_namespace(
    client: Client,
) -> None:
    with ndb.Client(project=PROJECT).context():
        key = make_entries()
        tenant_outbox = ndb.Key(storage.DeferredOutbox, key.id(), namespace="tenant")
        storage.DeferredOutbox(key=tenant_outbox, task=b"other", created=datetime.now(UTC)).put()
    # The caller's context defaults to another namespace; the key says the default one.
    with ndb.Client(project=PROJECT, namespace="tenant").context():
        assert run_once(key, lambda: "ran") == "ran"
    with ndb.Client(project=PROJECT).context():
        assert read(key) is None
        assert read(outbox_key(key)) is None
        assert read(tenant_outbox) is not None  # same ID, the caller's namespace: not it


def test_entries_in_a_namespace_are_finished_in_that_namespace(
    client: Client, ndb_context: None
) -> None:
    key = make_entries(namespace="tenant")
    elsewhere = ndb.Key(storage.DeferredOutbox, key.id(), namespace="")
    storage.DeferredOutbox(key=elsewhere, task=b"other", created=datetime.now(UTC)).put()
    assert run_once(key, lambda: "ran") == "ran"
    assert read(key) is None
    assert read(outbox_key(key)) is None
    assert read(elsewhere) is not None  # same ID, other namespace: not this task's


# --- what the call gets, and what the logs and the retry say ------------------------------


def test_the_call_gets_the_payloads_arguments_and_keyword_arguments(
    client: Client, ndb_context: None
) -> None:
    key = make_entries()
    payload = OpenedPayload({}, lambda *args, **kwargs: (args, kwargs), (1, "two"), {"three": 3})
    with running(FIRST_ATTEMPT):
        result = guard.run_once(client, key.urlsafe().decode(), payload)
    assert result == ((1, "two"), {"three": 3})


def test_a_lease_ending_exactly_now_is_taken_over(
    client: Client, ndb_context: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Leased until a time still to come" answers busy; a lease ending at this very
    # microsecond has run out.
    now = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:
            return cls.fromtimestamp(now.timestamp(), tz)

    monkeypatch.setattr(guard, "datetime", Frozen)
    key = make_entries(leased_until=now, lease_token="expiring")
    tokens: list[str] = []
    run_once(key, lambda: tokens.append(read(key).lease_token))
    assert len(tokens) == 1
    assert tokens[0] != "expiring"


def test_a_busy_delivery_says_who_retries_it(client: Client, ndb_context: None) -> None:
    key = make_entries(leased_until=datetime.now(UTC) + timedelta(minutes=5), lease_token="x")
    with pytest.raises(SingularTaskFailure) as raised:
        run_once(key, lambda: None)
    assert str(raised.value) == (
        f"another delivery is running transactional task {key.id()}; "
        "Cloud Tasks retries this one later"
    )


def test_a_duplicate_delivery_is_logged_in_one_line_at_info(
    client: Client, ndb_context: None, caplog: pytest.LogCaptureFixture
) -> None:
    key = make_entries()
    ndb.delete_multi([key], **storage.NO_CACHE)
    with caplog.at_level(logging.INFO, logger="cloudtasks_deferred.receive.guard"):
        run_once(key, lambda: None)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.INFO,
            f"transactional task {key.id()} already ran: "
            "this delivery is a duplicate and does nothing",
        )
    ]


class _NoDatastore:
    """A receiving client whose NDB context cannot be opened; records what asked for it."""

    def __init__(self) -> None:
        self.required_for: list[str | None] = []

    def ndb_context(self, *, required_for: str | None = None) -> Any:
        self.required_for.append(required_for)
        raise RuntimeError("no Datastore here")


def test_a_transactional_task_requires_a_datastore_context_by_name() -> None:
    # The name goes into the ConfigurationError a missing Datastore raises
    # ("a transactional task needs Datastore, but ..."), and makes the context
    # mandatory whatever CLOUDTASKS_DEFERRED_NDB says.
    client = _NoDatastore()
    with pytest.raises(RuntimeError, match="no Datastore here"):
        guard.run_once(client, "unused", opened(lambda: None))  # type: ignore[arg-type]
    assert client.required_for == ["a transactional task"]
