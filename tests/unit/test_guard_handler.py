"""The handler hands a transactional task to guard.run_once, on the Datastore emulator.

A transactional task's frame names its ``_DeferredOutboxRun`` entry; the handler runs
the task under that entry's lease, so that a second delivery of a task that ran is a
duplicate that runs nothing (the end-to-end runs are in
``tests/integration/test_transactional.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import pytest
from google.cloud import ndb

from cloudtasks_deferred import Client
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.calls import RUN_ENTRY, serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.receive.auth import authenticator_for
from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters
from cloudtasks_deferred.receive.handler import TaskHandler
from cloudtasks_deferred.storage import entities as storage
from tests import tasks
from tests.conftest import SIGNED_SETTINGS
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import environ

pytestmark = pytest.mark.integration

#: The project test_guard.py uses: the process's shared NDB client for it points at
#: this session's emulator.
PROJECT = "guard-unit-tests"


@pytest.fixture
def client(datastore: DatastoreEmulator, issuer: Issuer) -> Client:
    settings = dataclasses.replace(SIGNED_SETTINGS, project=PROJECT, ndb=True)
    return Client(
        settings,
        transport=InMemoryTransport(),
        authenticator=authenticator_for(settings, certs=StaticCerts(issuer.certs)),
        dead_letters=InMemoryDeadLetters(),
    )


def run_entry() -> ndb.Key:
    """Writes a run entry and its outbox entry, as a transactional defer does."""
    ident = storage.new_id()
    with ndb.Client(project=PROJECT).context():
        run_key = ndb.Key(storage.DeferredOutboxRun, ident)
        ndb.put_multi(
            [
                storage.DeferredOutbox(
                    key=ndb.Key(storage.DeferredOutbox, ident),
                    task=b"task",
                    created=datetime.now(UTC),
                ),
                storage.DeferredOutboxRun(key=run_key, lease_seconds=600),
            ],
            **storage.NO_CACHE,
        )
    return run_key


def exists(key: ndb.Key) -> bool:
    with ndb.Client(project=PROJECT).context():
        return key.get(**storage.NO_CACHE) is not None


def delivery(issuer: Issuer, body: bytes, retry_count: int) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {issuer.token()}",
        "X-CloudTasks-QueueName": "default",
        "X-CloudTasks-TaskName": "task-1",
        "X-CloudTasks-TaskRetryCount": str(retry_count),
    }
    return environ(body, headers=headers)


def test_a_transactional_task_runs_once_under_its_run_entry_and_a_redelivery_runs_nothing(
    client: Client, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    key = run_entry()
    body = encode(serialize(tasks.record, "credited"), {RUN_ENTRY: key.urlsafe().decode()})
    handler = TaskHandler(client)
    assert handler.post(delivery(issuer, body, retry_count=0))[:2] == ("Success", HTTPStatus.OK)
    assert RECORDER.named("record") == ["credited"]
    assert not exists(key)  # finished: the run entry is gone
    guard_logger = "cloudtasks_deferred.receive.guard"
    with caplog.at_level(logging.INFO, logger=guard_logger):
        again = handler.post(delivery(issuer, body, retry_count=1))
    assert again[:2] == ("Success", HTTPStatus.OK)
    assert RECORDER.named("record") == ["credited"]  # not run twice
    assert [r.getMessage() for r in caplog.records if r.name == guard_logger] == [
        f"transactional task {key.id()} already ran: this delivery is a duplicate and does nothing"
    ]
