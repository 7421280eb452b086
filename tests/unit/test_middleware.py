"""wrap_wsgi_app: task paths to the handler, the rest to the app (bare WSGI, Flask, Django)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtasks_deferred import Client, Handler, Settings, deferred, wrap_wsgi_app
from cloudtasks_deferred.client import current_client
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.middleware import DeferredMiddleware
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.testing import in_memory_queue
from tests import tasks
from tests.oidc import AUDIENCE, INVOKER, Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ

SETTINGS = Settings(
    project="p", location="us-central1", base_url=AUDIENCE, service_account=INVOKER, ndb=False
)


def hello_app(env: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + env["PATH_INFO"].encode()]


def test_the_deferred_path_goes_to_the_handler_and_the_rest_to_the_app() -> None:
    app = wrap_wsgi_app(hello_app, settings=SETTINGS)
    assert call(app, environ(path="/anything", method="GET")).body == b"hello /anything"
    assert call(app, environ(payload(), path="/_ah/queue/deferred")).code == 403
    assert call(app, environ(path="/_ah/queue/deferred", method="GET")).code == 405


def test_paths_are_matched_exactly() -> None:
    app = wrap_wsgi_app(hello_app, settings=SETTINGS)
    for path in ("/_ah/queue/deferred/", "/_ah/queue/deferredx", "/_ah/queue"):
        assert call(app, environ(path=path)).body == f"hello {path}".encode()


def test_extra_paths_go_to_the_handler() -> None:
    app = wrap_wsgi_app(hello_app, settings=SETTINGS, paths=["/custom/path"])
    assert call(app, environ(payload(), path="/custom/path")).code == 403


def test_use_deferred_false_routes_nothing() -> None:
    app = wrap_wsgi_app(hello_app, use_deferred=False, settings=SETTINGS)
    assert call(app, environ(path="/_ah/queue/deferred")).body == b"hello /_ah/queue/deferred"


def test_a_given_handler_is_used() -> None:
    custom = Handler(SETTINGS)
    app = wrap_wsgi_app(hello_app, handler=custom)
    assert isinstance(app, DeferredMiddleware)
    assert app.handler is custom


def test_explicit_settings_are_bound_for_app_requests() -> None:
    seen: list[Settings] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(current_client().settings)
        return hello_app(env, start_response)

    call(wrap_wsgi_app(app, settings=SETTINGS), environ(path="/x", method="GET"))
    assert seen == [SETTINGS]


def test_without_explicit_settings_the_current_client_is_used() -> None:
    with in_memory_queue() as queue:
        app = wrap_wsgi_app(hello_app)
        call(app, environ(path="/x"))
        deferred.defer(tasks.record, 1)
        assert len(queue.tasks) == 1


@pytest.mark.parametrize("bad", [["relative"], [b"/bytes"]])
def test_bad_paths_are_refused(bad: list[Any]) -> None:
    with pytest.raises(TypeError, match="must be strings starting with '/'"):
        wrap_wsgi_app(hello_app, paths=bad)


def test_non_callables_are_refused() -> None:
    with pytest.raises(TypeError, match="needs a WSGI callable"):
        wrap_wsgi_app("app")


def test_legacy_positional_and_keyword_forms_are_accepted() -> None:
    wrap_wsgi_app(hello_app, True, use_legacy_context_mode=False, settings=SETTINGS)


def payload() -> bytes:
    return encode(serialize(tasks.record, "task"))


def test_flask(signed_client: Client, issuer: Issuer) -> None:
    import flask

    app = flask.Flask(__name__)

    @app.route("/hello")
    def hello() -> str:
        deferred.defer(tasks.record, "from flask")
        return "hello from flask"

    app.wsgi_app = wrap_wsgi_app(app.wsgi_app, client=signed_client)  # type: ignore[method-assign]
    test_client = app.test_client()
    assert test_client.get("/hello").text == "hello from flask"
    assert isinstance(signed_client.transport, InMemoryTransport)
    [task] = signed_client.transport.tasks
    response = test_client.post(
        "/_ah/queue/deferred",
        data=task.http_request.body,
        headers={"Authorization": f"Bearer {issuer.token()}", "X-CloudTasks-TaskName": "t"},
    )
    assert (response.status_code, response.text) == (200, "Success")
    assert RECORDER.named("record") == ["from flask"]
    assert test_client.post("/_ah/queue/deferred", data=task.http_request.body).status_code == 403


def test_django(signed_client: Client, issuer: Issuer) -> None:
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(
            ROOT_URLCONF="tests.django_urls", ALLOWED_HOSTS=["*"], SECRET_KEY="test", DEBUG=False
        )
    from django.core.wsgi import get_wsgi_application

    application = wrap_wsgi_app(get_wsgi_application(), client=signed_client)
    response = call(application, environ(path="/hello", method="GET"))
    assert response.body == b"hello from django"
    assert isinstance(signed_client.transport, InMemoryTransport)
    [task] = signed_client.transport.tasks
    env = environ(task.http_request.body, headers={"Authorization": f"Bearer {issuer.token()}"})
    assert call(application, env).code == 200
    assert RECORDER.named("record") == ["from django"]


def test_a_custom_handler_uses_the_wrapped_apps_settings(
    signed_client: Client, issuer: Issuer
) -> None:
    """A Handler built without a client (docs/migration.md's custom handler) must not
    fall back to the environment: signing keys and the allowlist still apply."""
    import dataclasses

    from cloudtasks_deferred.payload.frame import SigningKey

    key = SigningKey("k1", b"k" * 32)
    settings = dataclasses.replace(signed_client.settings, signing_keys=(key,))
    client = Client(settings, transport=signed_client.transport,
                    authenticator=signed_client.authenticator)  # fmt: skip
    app = wrap_wsgi_app(hello_app, handler=Handler(), client=client)
    token = {"Authorization": f"Bearer {issuer.token()}"}
    signed = encode(serialize(tasks.record, "signed"), signing_key=key)
    assert call(app, environ(signed, headers=token)).code == 200
    unsigned = call(app, environ(payload(), headers=token))
    assert (unsigned.code, unsigned.body) == (403, b"Forbidden: the payload is not signed")
    assert RECORDER.named("record") == ["signed"]


def test_a_streamed_response_runs_with_the_bound_client_until_closed() -> None:
    seen: list[Settings] = []
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Any:
            seen.append(current_client().settings)  # produced while the server iterates
            yield b"chunk"

        def close(self) -> None:
            closed.append(True)

    def streaming_app(env: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    assert (
        call(wrap_wsgi_app(streaming_app, settings=SETTINGS), environ(path="/x")).body == b"chunk"
    )
    assert seen == [SETTINGS]
    assert closed == [True]
    assert current_client().settings != SETTINGS  # unbound once the server closed it


def test_an_app_that_raises_leaves_nothing_bound() -> None:
    def broken(env: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("broken app")

    with pytest.raises(RuntimeError, match="broken app"):
        call(wrap_wsgi_app(broken, settings=SETTINGS), environ(path="/x"))
    assert current_client().settings != SETTINGS


class ScopeRecordingClient(Client):
    """A client whose per-request NDB context only records when it ends."""

    def __init__(self) -> None:
        super().__init__(SETTINGS)
        self.opened = 0
        self.ended = 0

    def ndb_context(self, *, required_for: str | None = None) -> Any:
        @contextlib.contextmanager
        def scope() -> Iterator[None]:
            self.opened += 1
            yield
            self.ended += 1

        return scope()


def no_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def test_an_unclosed_response_leaves_nothing_bound_in_the_caller() -> None:
    app = wrap_wsgi_app(hello_app, settings=SETTINGS)
    response = app(environ(path="/x"), no_start_response)  # never iterated nor closed
    assert current_client().settings != SETTINGS
    assert response is not None


def test_the_request_scope_ends_when_the_response_is_exhausted() -> None:
    client = ScopeRecordingClient()
    closed: list[bool] = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def app(env: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body([b"a", b"b"])

    response = wrap_wsgi_app(app, client=client)(environ(path="/x"), no_start_response)
    assert client.ended == 0
    assert list(response) == [b"a", b"b"]  # read to the end, not closed
    assert client.ended == 1
    response.close()  # type: ignore[attr-defined]  # the app's close still runs, once
    response.close()  # type: ignore[attr-defined]
    assert (client.ended, closed) == (1, [True, True])


def test_the_request_scope_ends_when_an_unread_response_is_dropped() -> None:
    client = ScopeRecordingClient()
    app = wrap_wsgi_app(hello_app, client=client)
    response = app(environ(path="/x"), no_start_response)
    assert (client.opened, client.ended) == (1, 0)
    del response
    gc.collect()
    assert client.ended == 1
