"""Tasks and wrapped requests run in an NDB context, on the real Datastore emulator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from google.cloud import ndb, tasks_v2

from cloudtasks_deferred import Client, Handler, Settings, deferred, wrap_wsgi_app
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from tests.integration.conftest import PROJECT, Server
from tests.ndb_tasks import Counter, increment
from tests.tasks import RECORDER

pytestmark = pytest.mark.integration


def read_count(key: str) -> int | None:
    with ndb.Client(project=PROJECT).context():
        entity = Counter.get_by_id(key)
        return entity.count if entity else None


def test_tasks_run_in_an_ndb_context(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
) -> None:
    client = Client(dev_settings(server.url, ndb=True))
    server.app = Handler(client=client)
    client.defer(increment, "tasks", 5)
    client.defer(increment, "tasks", 7)
    RECORDER.wait_for("increment", count=2)
    assert read_count("tasks") == 12


def test_wrapped_app_requests_run_in_an_ndb_context(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
) -> None:
    import flask

    app = flask.Flask(__name__)

    @app.route("/increment")
    def view() -> str:
        deferred.defer(increment, "view", 3)
        return str(Counter.get_or_insert("view", count=0).count)

    server.app = wrap_wsgi_app(app.wsgi_app, settings=dev_settings(server.url, ndb=True))
    assert requests.get(f"{server.url}/increment", timeout=10).text == "0"
    RECORDER.wait_for("increment")
    assert requests.get(f"{server.url}/increment", timeout=10).text == "3"
