"""Signing keys and the unpickling allowlist together with Datastore-backed payloads.

The security rules apply to every body the library runs: the task that points at a
stored payload, the stored payload itself, and transactional tasks.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from http import HTTPStatus

import pytest
from google.cloud import ndb

from cloudtasks_deferred import deferred
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import SigningKey, decode
from cloudtasks_deferred.storage import entities as storage
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import tasks
from tests.integration.conftest import PROJECT
from tests.integration.entities import counts
from tests.tasks import RECORDER, fingerprint

pytestmark = pytest.mark.integration

KEYS = {"k1": b"s" * 32}
HARDENED = dataclasses.replace(
    TEST_SETTINGS,
    project=PROJECT,
    signing_keys=(SigningKey("k1", KEYS["k1"]),),
    allowed_modules=("tests",),
)
BLOB = random.Random(7).randbytes(1_500_000)  # noqa: S311 - incompressible: stored


@pytest.fixture
def queue(datastore: DatastoreEmulator) -> Iterator[InMemoryQueue]:
    with in_memory_queue(HARDENED) as recorded:
        yield recorded


def test_a_stored_payload_is_signed_allowed_and_runs(queue: InMemoryQueue) -> None:
    task = deferred.defer(tasks.digest, BLOB)
    assert decode(task.http_request.body, keys=KEYS, require_signature=True).key_id == "k1"
    assert counts() == {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1}
    assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("digest") == [fingerprint(BLOB)]
    assert counts() == {}


def test_an_unsigned_stored_payload_is_refused_before_unpickling(queue: InMemoryQueue) -> None:
    deferred.defer(tasks.digest, BLOB)
    with ndb.Client(project=PROJECT).context():
        [entity] = storage.DeferredTaskEntity.query(namespace=storage.NAMESPACE).fetch()
        # Someone with Datastore access swaps the stored payload for an unsigned one.
        entity.data = serialize(tasks.Canary)
        entity.chunks = None
        entity.put()
    assert set(queue.run_pending()) == {HTTPStatus.FORBIDDEN}
    assert RECORDER.named("canary") == []
    assert RECORDER.named("digest") == []


def test_a_transactional_task_is_signed_allowed_and_runs(queue: InMemoryQueue) -> None:
    def work() -> None:
        deferred.defer(tasks.record, "hardened", _transactional=True)

    with ndb.Client(project=PROJECT).context():
        ndb.transaction(work)
    [task] = queue.tasks
    assert decode(task.http_request.body, keys=KEYS, require_signature=True).key_id == "k1"
    assert queue.run_pending() == [HTTPStatus.OK]
    assert RECORDER.named("record") == ["hardened"]
