"""wrap_wsgi_app's NDB context per request, driven by Flask's test client (which does not
close responses) against the real Datastore emulator.

Each request gets its own context, which ends with the request: it never leaks into the
test's code, never carries one request's cache into the next, and its pending work is
finished when the response is read, closed, or dropped unread.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from google.cloud import ndb

from cloudtasks_deferred import Settings, wrap_wsgi_app
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from tests.integration.conftest import LOCATION, PROJECT
from tests.ndb_tasks import Counter

pytestmark = pytest.mark.integration


def read_count(key: str) -> int | None:
    with ndb.Client(project=PROJECT).context():
        entity = Counter.get_by_id(key, use_cache=False)
        return entity.count if entity else None


def write_count(key: str, count: int) -> None:
    with ndb.Client(project=PROJECT).context():
        Counter(id=key, count=count).put()


@pytest.fixture
def app(datastore: DatastoreEmulator) -> Iterator[flask.Flask]:
    app = flask.Flask(__name__)
    contexts: list[Any] = []
    app.config["contexts"] = contexts

    @app.route("/count")
    def count() -> str:
        contexts.append(ndb.get_context())
        entity = Counter.get_or_insert("hits", count=0)
        entity.count += 1
        entity.put()
        return str(entity.count)

    @app.route("/later/<key>")
    def later(key: str) -> str:
        # Pending work on the context's event loop: done when the context ends.
        Counter(id=key, count=7).put_async()
        return "queued"

    settings = Settings(project=PROJECT, location=LOCATION, ndb=True)
    app.wsgi_app = wrap_wsgi_app(app.wsgi_app, settings=settings)  # type: ignore[method-assign]
    yield app
    assert ndb.get_context(raise_context_error=False) is None, "a request's context leaked"


def test_an_unclosed_response_leaves_no_context_behind(app: flask.Flask) -> None:
    client = app.test_client()
    response = client.get("/count")  # neither read nor closed
    assert response.status_code == 200
    assert ndb.get_context(raise_context_error=False) is None
    # So the test's own NDB code opens a context as usual.
    assert read_count("hits") == 1


def test_each_request_gets_a_fresh_context_and_sees_writes_made_between(
    app: flask.Flask,
) -> None:
    client = app.test_client()
    assert client.get("/count").status_code == 200
    write_count("hits", 10)  # another instance writes between the two requests
    assert client.get("/count").text == "11"  # a reused context's cache would say 2
    first, second = app.config["contexts"]
    assert first is not second


def test_requests_never_nest_in_each_other(app: flask.Flask) -> None:
    client = app.test_client()
    for _ in range(3):
        client.get("/count")  # unread, unclosed
    assert len({id(context) for context in app.config["contexts"]}) == 3


def test_the_context_ends_when_the_response_is_read(app: flask.Flask) -> None:
    assert app.test_client().get("/later/read").text == "queued"
    assert read_count("read") == 7


def test_the_context_ends_when_the_response_is_closed(app: flask.Flask) -> None:
    with app.test_client().get("/later/closed") as response:
        assert response.status_code == 200
    assert read_count("closed") == 7


def test_the_context_ends_when_an_unread_response_is_dropped(app: flask.Flask) -> None:
    response = app.test_client().get("/later/dropped")
    assert response.status_code == 200
    del response
    gc.collect()
    assert read_count("dropped") == 7
