"""A stored payload that cannot be decoded is never dropped: its entity is kept and logged.

On the Datastore emulator: a ``_DeferredTaskEntity`` the legacy library wrote, or one
this library stored, whose bytes do not decode, is answered 200 (delivering it again
cannot help), recorded as a dead letter, logged at ERROR with the entity's key and the
payload's size and hash, and left in Datastore to run once a deployment reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import pytest
from google.cloud import datastore as cloud_datastore

from cloudtasks_deferred import Client, Handler
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters, LoggingDeadLetters
from cloudtasks_deferred.storage.dead_letters import Cause
from tests import tasks
from tests.conftest import SIGNED_SETTINGS
from tests.integration.conftest import PROJECT
from tests.integration.entities import counts
from tests.legacy import legacy_task
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ

pytestmark = pytest.mark.integration

#: Bytes that are not a payload: a pickle cut short inside its arguments.
UNDECODABLE = serialize(tasks.record, "private argument")[:-7]


def store_legacy_entity(entity_id: int, data: bytes) -> cloud_datastore.Key:
    """A ``_DeferredTaskEntity`` as the legacy library wrote it."""
    store = cloud_datastore.Client(project=PROJECT)
    key = store.key("_DeferredTaskEntity", entity_id)
    entity = cloud_datastore.Entity(key, exclude_from_indexes=("data",))
    entity["data"] = data
    store.put(entity)
    return key


def run_pointer_task(key: cloud_datastore.Key, client: Client, issuer: Issuer) -> tuple[int, bytes]:
    body = legacy_task("run_from_datastore", key.to_legacy_urlsafe(location_prefix="s~").decode())
    auth = {"Authorization": f"Bearer {issuer.token()}", "X-CloudTasks-TaskName": "legacy-1"}
    response = call(Handler(client=client), environ(body, headers=auth))
    return response.code, response.body


@pytest.fixture
def client(signed_client: Client) -> Client:
    settings = dataclasses.replace(SIGNED_SETTINGS, project=PROJECT)
    return Client(
        settings, authenticator=signed_client.authenticator, dead_letters=InMemoryDeadLetters()
    )


def test_an_undecodable_stored_payload_keeps_its_entity_and_is_logged(
    datastore: DatastoreEmulator,
    client: Client,
    issuer: Issuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = store_legacy_entity(5150, UNDECODABLE)
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred"):
        code, body = run_pointer_task(key, client, issuer)

    assert (code, body) == (200, b"PermanentTaskFailure")
    assert counts() == {"_DeferredTaskEntity": 1}  # kept: nothing ran
    digest = hashlib.sha256(UNDECODABLE).hexdigest()
    [logged] = [r for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    message = logged.getMessage()
    assert "Key('_DeferredTaskEntity', 5150)" in message
    assert f"{len(UNDECODABLE)} bytes, sha256 {digest}" in message
    assert "private argument" not in caplog.text
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    [letter] = client.dead_letters.letters
    assert letter.task_name == "legacy-1"
    assert "Key('_DeferredTaskEntity', 5150)" in letter.reason
    assert "the entity is kept" in letter.reason
    assert letter.cause is Cause.INVALID_PAYLOAD


def test_the_kept_entity_runs_once_its_payload_is_readable(
    datastore: DatastoreEmulator, client: Client, issuer: Issuer
) -> None:
    key = store_legacy_entity(5151, UNDECODABLE)
    assert run_pointer_task(key, client, issuer)[0] == 200
    # A fix (here: the kept entity's bytes repaired) and the same task again: it runs.
    store = cloud_datastore.Client(project=PROJECT)
    kept = store.get(key)
    assert kept is not None
    kept["data"] = serialize(tasks.record, "repaired")
    store.put(kept)
    assert run_pointer_task(key, client, issuer) == (200, b"Success")
    assert RECORDER.named("record") == ["repaired"]
    assert counts() == {}


def test_a_task_that_fails_permanently_deletes_its_entity_unless_its_dead_letter_keeps_it(
    datastore: DatastoreEmulator, client: Client, issuer: Issuer
) -> None:
    key = store_legacy_entity(5152, serialize(tasks.fail_permanently))
    assert run_pointer_task(key, client, issuer) == (200, b"PermanentTaskFailure")
    assert counts() == {"_DeferredTaskEntity": 1}  # the dead letter keeps it, for a replay
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    [letter] = client.dead_letters.letters
    assert (letter.cause, letter.stored_payload) == (
        Cause.PERMANENT_FAILURE,
        key.to_legacy_urlsafe(location_prefix="s~").decode(),
    )
    logged_only = Client(
        client.settings, authenticator=client.authenticator, dead_letters=LoggingDeadLetters()
    )
    assert run_pointer_task(key, logged_only, issuer) == (200, b"PermanentTaskFailure")
    assert counts() == {}  # it ran, and nothing can replay it: the legacy rule applies
