"""A task the legacy library queued for an oversized payload, run on the Datastore emulator."""

from __future__ import annotations

import dataclasses

import pytest
from google.cloud import datastore as cloud_datastore

from cloudtasks_deferred import Client, Handler
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.payload.calls import serialize
from tests import tasks
from tests.conftest import SIGNED_SETTINGS
from tests.integration.conftest import PROJECT
from tests.integration.entities import counts
from tests.legacy import LEGACY_MODULE, legacy_task
from tests.oidc import Issuer
from tests.tasks import RECORDER, fingerprint
from tests.wsgi import call, environ

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("allowlist", [(), ("tests.tasks.digest",)], ids=["open", "allowlist"])
def test_a_legacy_run_from_datastore_task_runs_through_the_handler(
    datastore: DatastoreEmulator,
    signed_client: Client,
    issuer: Issuer,
    allowlist: tuple[str, ...],
) -> None:
    # The entity as the legacy library wrote it: integer ID, a bare pickle in "data".
    store = cloud_datastore.Client(project=PROJECT)
    key = store.key("_DeferredTaskEntity", 4243)
    entity = cloud_datastore.Entity(key, exclude_from_indexes=("data",))
    entity["data"] = serialize(tasks.digest, b"queued before the switch")
    store.put(entity)
    # Its task: google.appengine.ext.deferred.deferred.run_from_datastore("s~...").
    body = legacy_task("run_from_datastore", key.to_legacy_urlsafe(location_prefix="s~").decode())
    assert LEGACY_MODULE.encode() in body

    settings = dataclasses.replace(SIGNED_SETTINGS, project=PROJECT, allowed_modules=allowlist)
    client = Client(settings, authenticator=signed_client.authenticator)
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(Handler(client=client), environ(body, headers=auth))

    assert (response.code, response.body) == (200, b"Success")
    assert RECORDER.named("digest") == [fingerprint(b"queued before the switch")]
    assert counts() == {}  # deleted after the success, as the legacy library did
