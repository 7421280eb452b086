"""Oversized payloads on the real Datastore emulator: size rules, storage, lifecycle."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import datastore as cloud_datastore
from google.cloud import ndb, tasks_v2

from cloudtasks_deferred import (
    Client,
    Handler,
    PayloadTooLargeError,
    PermanentTaskFailure,
    Settings,
    TaskRetryOptions,
    deferred,
)
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.enqueue import oversized
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import InvalidPayloadError, decode, encode
from cloudtasks_deferred.storage import entities as storage
from cloudtasks_deferred.storage.dead_letter_sinks import LoggingDeadLetters
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import tasks
from tests.integration.conftest import PROJECT, Server
from tests.integration.entities import counts
from tests.tasks import RECORDER, fingerprint

pytestmark = pytest.mark.integration

KB = 1024
MB = 1000 * 1000
#: The in-memory queue's settings, in the emulator's project.
SETTINGS = dataclasses.replace(TEST_SETTINGS, project=PROJECT)


def payload(kind: str, size: int) -> bytes:
    if kind == "compressible":
        return (b"a deferred payload, over and over; " * (size // 35 + 1))[:size]
    return random.Random(size).randbytes(size)  # noqa: S311 - test data


def route_of(queue: InMemoryQueue, task: tasks_v2.Task) -> str:
    body = task.http_request.body
    if queue.client.open_payload(body).func is deferred.run_from_datastore:
        return "stored"
    return "compressed" if decode(body).compressed else "inline"


STORED_IN_TWO_ENTITIES = {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1}


@pytest.mark.parametrize(
    ("size", "kind", "route"),
    [
        (10 * KB, "compressible", "inline"),
        (10 * KB, "incompressible", "inline"),
        (900 * KB, "compressible", "inline"),
        (900 * KB, "incompressible", "inline"),
        (int(1.5 * MB), "compressible", "compressed"),
        (int(1.5 * MB), "incompressible", "stored"),
        (5 * MB, "compressible", "compressed"),
    ],
)
def test_each_size_takes_its_route_and_runs_intact(
    datastore: DatastoreEmulator, size: int, kind: str, route: str
) -> None:
    blob = payload(kind, size)
    with in_memory_queue(SETTINGS) as queue:
        task = deferred.defer(tasks.digest, blob)
        assert route_of(queue, task) == route
        assert counts() == (STORED_IN_TWO_ENTITIES if route == "stored" else {})
        assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("digest") == [fingerprint(blob)]
    assert counts() == {}  # the stored payload is deleted after the success


def test_5_mb_incompressible_is_too_large_before_anything_is_written(
    datastore: DatastoreEmulator,
) -> None:
    with in_memory_queue(SETTINGS) as queue:
        with pytest.raises(PayloadTooLargeError, match=r"at most 4,000,000") as caught:
            deferred.defer(tasks.digest, payload("incompressible", 5 * MB))
        assert queue.tasks == []
    assert "pass a reference to the data" in str(caught.value)
    assert counts() == {}


def test_entities_have_the_legacy_shape_and_the_cap_fits_one_commit(
    datastore: DatastoreEmulator,
) -> None:
    client = datastore_client()
    with ndb.Client(project=PROJECT).context():
        [single] = storage.store_payload(b"\x80" + bytes(900 * KB))
        chunked = storage.store_payload(payload("incompressible", int(1.5 * MB)))
        # The cap, in one transaction: within the emulator's 4 MiB gRPC message limit.
        capped = storage.store_payload(payload("incompressible", oversized.MAX_STORED_BYTES))
        with pytest.raises(PayloadTooLargeError):
            storage.store_payload(bytes(oversized.MAX_STORED_BYTES + 1))
        loaded = storage.load_payload(capped[0])
    entity = client.get(single._key)
    assert entity.kind == "_DeferredTaskEntity"
    assert set(entity) == {"data"}  # exactly what the legacy library wrote
    assert entity.exclude_from_indexes == {"data"}
    head, chunk = client.get(chunked[0]._key), client.get(chunked[1]._key)
    assert set(head) == {"data", "chunks"}
    assert head["chunks"] == 2
    assert head.exclude_from_indexes == {"data", "chunks"}
    assert chunk.kind == "_DeferredTaskChunk"
    assert chunk.key.parent == head.key
    assert len(capped) == oversized.MAX_CHUNKS
    assert loaded is not None
    assert loaded[0] == payload("incompressible", oversized.MAX_STORED_BYTES)
    assert counts() == {"_DeferredTaskEntity": 3, "_DeferredTaskChunk": 1 + 3}


def logging_only(queue: InMemoryQueue) -> None:
    """Delivers the queue's tasks to a handler whose dead letters are only logged."""
    queue.app = Handler(
        client=Client(
            SETTINGS,
            transport=queue.transport,
            authenticator=queue.client.authenticator,
            dead_letters=LoggingDeadLetters(),
        )
    )


def test_entity_is_kept_for_the_dead_letter_after_a_permanent_failure(
    datastore: DatastoreEmulator,
) -> None:
    blob = payload("incompressible", int(1.5 * MB))
    with in_memory_queue(SETTINGS) as queue:
        deferred.defer(tasks.digest_then_fail_permanently, blob)
        assert counts() == STORED_IN_TWO_ENTITIES
        assert queue.run_pending() == [HTTPStatus.OK]
        [letter] = queue.dead_letters
    assert RECORDER.named("digest_then_fail_permanently") == [fingerprint(blob)]
    assert "cannot succeed" in letter.reason
    assert counts() == STORED_IN_TWO_ENTITIES  # for a replay: the record points at it
    with ndb.Client(project=PROJECT).context():
        [key] = ndb.Query(kind="_DeferredTaskEntity", namespace="").fetch(keys_only=True)
    assert letter.stored_payload == key.urlsafe().decode()


def test_entity_is_deleted_after_a_permanent_failure_when_dead_letters_are_only_logged(
    datastore: DatastoreEmulator,
) -> None:
    blob = payload("incompressible", int(1.5 * MB))
    with in_memory_queue(SETTINGS) as queue:
        logging_only(queue)
        deferred.defer(tasks.digest_then_fail_permanently, blob)
        assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("digest_then_fail_permanently") == [fingerprint(blob)]
    assert counts() == {}


def test_entity_is_kept_after_a_500_and_deleted_after_the_retry_succeeds(
    datastore: DatastoreEmulator,
) -> None:
    blob = payload("incompressible", int(1.5 * MB))
    with in_memory_queue(SETTINGS) as queue:
        deferred.defer(tasks.crash_once_then_digest, blob)
        task = queue.transport.take()
        assert task is not None
        assert queue.deliver(task) == HTTPStatus.INTERNAL_SERVER_ERROR
        assert counts() == STORED_IN_TWO_ENTITIES  # kept for the retry
        assert queue.deliver(task) == HTTPStatus.OK
    assert RECORDER.named("attempt") == [0, 1]
    assert RECORDER.named("digest") == [fingerprint(blob)]
    assert counts() == {}


def test_entity_is_kept_when_the_tasks_own_retry_options_give_up(
    datastore: DatastoreEmulator,
) -> None:
    blob = payload("incompressible", int(1.5 * MB))
    with in_memory_queue(SETTINGS) as queue:
        deferred.defer(tasks.crash_once_then_digest, blob, _retry_options=_no_retries())
        assert queue.run_pending() == [HTTPStatus.OK]  # given up: 200, dead letter
        assert len(queue.dead_letters) == 1
    assert counts() == STORED_IN_TWO_ENTITIES
    with in_memory_queue(SETTINGS) as queue:
        logging_only(queue)
        deferred.defer(tasks.crash_once_then_digest, blob, _retry_options=_no_retries())
        assert queue.run_pending() == [HTTPStatus.OK]
    assert counts() == STORED_IN_TWO_ENTITIES  # the second one's deleted: log only


def test_a_missing_entity_is_a_permanent_failure_logged_with_its_key(
    datastore: DatastoreEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with in_memory_queue(SETTINGS) as queue:
        deferred.defer(tasks.digest, payload("incompressible", int(1.5 * MB)))
        with ndb.Client(project=PROJECT).context():
            [key] = ndb.Query(kind="_DeferredTaskEntity", namespace="").fetch(keys_only=True)
            key.delete()
            shown = storage.describe(key)
        with caplog.at_level(logging.ERROR):
            assert queue.run_pending() == [HTTPStatus.OK]
        [letter] = queue.dead_letters
    assert RECORDER.named("digest") == []
    assert "does not exist" in letter.reason
    logged = [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    assert logged
    assert all(shown in message for message in logged)


def test_create_task_failure_leaves_no_entity(datastore: DatastoreEmulator) -> None:
    class Unavailable:
        def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
            raise exceptions.PermissionDenied("denied")

    client = Client(SETTINGS, transport=Unavailable())
    with pytest.raises(exceptions.PermissionDenied):
        client.defer(tasks.digest, payload("incompressible", int(1.5 * MB)))
    assert counts() == {}


def test_a_non_transactional_defer_inside_a_transaction_stores_outside_it(
    datastore: DatastoreEmulator,
) -> None:
    """As in the legacy library, the task is enqueued at once, so its payload must exist."""
    blob = payload("incompressible", int(1.5 * MB))
    with in_memory_queue(SETTINGS) as queue:
        with ndb.Client(project=PROJECT).context():

            def work() -> None:
                deferred.defer(tasks.digest, blob)
                raise RuntimeError("roll back")

            with pytest.raises(RuntimeError):
                ndb.transaction(work)
        assert counts() == STORED_IN_TWO_ENTITIES
        assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("digest") == [fingerprint(blob)]


def test_run_from_datastore_reads_legacy_keys_and_returns_the_result(
    datastore: DatastoreEmulator,
) -> None:
    """An entity as the legacy library wrote it: integer ID, bare pickle, 's~' key string."""
    client = datastore_client()
    key = client.key("_DeferredTaskEntity", 4242)
    entity = cloud_datastore.Entity(key, exclude_from_indexes=("data",))
    entity["data"] = serialize(tasks.digest, b"legacy bytes")  # no frame: a bare pickle
    client.put(entity)
    legacy_string = key.to_legacy_urlsafe(location_prefix="s~").decode()
    assert legacy_string != key.to_legacy_urlsafe().decode()
    with Client(SETTINGS).bind():
        assert deferred.run_from_datastore(legacy_string) == fingerprint(b"legacy bytes")
    assert counts() == {}
    # An ndb.Key works too.
    with ndb.Client(project=PROJECT).context():
        [stored] = storage.store_payload(encode(serialize(tasks.digest, b"by key"), {}))
    with Client(SETTINGS).bind():
        assert deferred.run_from_datastore(stored) == fingerprint(b"by key")


def test_run_from_datastore_refuses_keys_of_other_kinds(datastore: DatastoreEmulator) -> None:
    with ndb.Client(project=PROJECT).context():
        other = ndb.Key("Counter", "x").urlsafe().decode()
    with Client(SETTINGS).bind():
        with pytest.raises(InvalidPayloadError, match="is not a _DeferredTaskEntity key"):
            deferred.run_from_datastore(other)
        with pytest.raises(PermanentTaskFailure, match="not a URL-safe Datastore key"):
            deferred.run_from_datastore("not a key")
        with pytest.raises(PermanentTaskFailure, match="got int"):
            deferred.run_from_datastore(42)


def test_900_kb_and_a_stored_payload_end_to_end_through_the_emulator(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
) -> None:
    client = Client(dev_settings(server.url))
    server.app = Handler(client=client)
    inline = payload("incompressible", 900 * KB)
    stored = payload("incompressible", int(1.5 * MB))
    assert len(client.defer(tasks.digest, inline).http_request.body) > 900 * KB
    assert len(client.defer(tasks.digest, stored).http_request.body) < KB
    ran = RECORDER.wait_for("digest", count=2, timeout=60)
    assert sorted(ran) == sorted([fingerprint(inline), fingerprint(stored)])
    assert _eventually_empty()


def datastore_client() -> cloud_datastore.Client:
    return cloud_datastore.Client(project=PROJECT)


def _no_retries() -> Any:
    return TaskRetryOptions(task_retry_limit=0)


def _eventually_empty() -> bool:
    # The task records its call before its entity is deleted: allow a moment.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if counts() == {}:
            return True
        time.sleep(0.1)
    return False


def test_the_emulator_keeps_its_index_file_out_of_the_project(
    datastore: DatastoreEmulator,
) -> None:
    counts()  # a query makes the emulator write WEB-INF/appengine-generated/...
    assert datastore.workdir is not None
    assert (datastore.workdir / "WEB-INF").exists()
    assert not (Path(__file__).resolve().parents[2] / "WEB-INF").exists()
