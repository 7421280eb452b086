"""The handler: every row of the status table, authentication before reading, context."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred import (
    Client,
    Handler,
    PermanentTaskFailure,
    Settings,
    SingularTaskFailure,
    TaskRetryOptions,
    current_task,
    deferred,
)
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.allowlist import DisallowedReferenceError
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import (
    MAGIC,
    InvalidPayloadError,
    PayloadSignatureError,
    SigningKey,
    UnsupportedPayloadError,
    encode,
)
from cloudtasks_deferred.receive.auth import authenticator_for
from cloudtasks_deferred.receive.auth.certs import CachedCerts
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters
from cloudtasks_deferred.receive.outcomes import Outcome, outcome_of, response_for
from tests import tasks
from tests.oidc import AUDIENCE, INVOKER, CertsServer, Issuer
from tests.security import allowed_tasks
from tests.tasks import RECORDER
from tests.wsgi import call, environ

SETTINGS = Settings(
    project="p",
    location="us-central1",
    base_url=AUDIENCE,
    service_account=INVOKER,
    ndb=False,
)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.SUCCESS, 200),
        (Outcome.PERMANENT_FAILURE, 200),
        (Outcome.RETRIES_EXHAUSTED, 200),
        (Outcome.SINGULAR_FAILURE, 408),
        (Outcome.ERROR, 500),
        (Outcome.UNAUTHENTICATED, 403),
        (Outcome.AUTH_UNAVAILABLE, 503),
        (Outcome.METHOD_NOT_ALLOWED, 405),
        (Outcome.TOO_LARGE, 413),
        (Outcome.BAD_REQUEST, 400),
    ],
)
def test_status_table(outcome: Outcome, status: int) -> None:
    body, got, headers = response_for(outcome)
    assert got == status
    assert body == outcome.value
    assert ("Content-Type", "text/plain; charset=utf-8") in headers
    assert (("Allow", "POST") in headers) is (outcome is Outcome.METHOD_NOT_ALLOWED)


def test_detail_goes_in_the_body() -> None:
    assert response_for(Outcome.UNAUTHENTICATED, "the token has expired")[0] == (
        "Forbidden: the token has expired"
    )


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, Outcome.SUCCESS),
        (PermanentTaskFailure("x"), Outcome.PERMANENT_FAILURE),
        (InvalidPayloadError("x"), Outcome.PERMANENT_FAILURE),
        (SingularTaskFailure("x"), Outcome.SINGULAR_FAILURE),
        (RuntimeError("x"), Outcome.ERROR),
        (ImportError("x"), Outcome.ERROR),
        (UnsupportedPayloadError("x"), Outcome.ERROR),
        (PayloadSignatureError("x"), Outcome.UNAUTHENTICATED),
        (DisallowedReferenceError("x"), Outcome.UNAUTHENTICATED),
    ],
)
def test_outcome_of(error: BaseException | None, outcome: Outcome) -> None:
    assert outcome_of(error) is outcome


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, Outcome.SUCCESS),
        (PermanentTaskFailure("x"), Outcome.PERMANENT_FAILURE),
        (PayloadSignatureError("x"), Outcome.UNAUTHENTICATED),
        (SingularTaskFailure("x"), Outcome.RETRIES_EXHAUSTED),
        (RuntimeError("x"), Outcome.RETRIES_EXHAUSTED),
    ],
)
def test_exhausted_retry_options_end_only_retryable_failures(
    error: BaseException | None, outcome: Outcome
) -> None:
    assert outcome_of(error, retries_exhausted=True) is outcome


@pytest.fixture
def client(signed_client: Client) -> Client:
    return signed_client


@pytest.fixture
def handler(client: Client) -> Handler:
    return Handler(client=client)


@pytest.fixture
def auth(issuer: Issuer) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {issuer.token()}",
        "X-CloudTasks-QueueName": "default",
        "X-CloudTasks-TaskName": "task-1",
        "X-CloudTasks-TaskRetryCount": "0",
        "X-CloudTasks-TaskExecutionCount": "0",
        "X-CloudTasks-TaskETA": "1767225600.5",
    }


def payload(func: Any, *args: Any, _meta: dict[str, Any] | None = None, **kwargs: Any) -> bytes:
    return encode(serialize(func, *args, **kwargs), _meta)


def test_success(handler: Handler, auth: dict[str, str]) -> None:
    response = call(handler, environ(payload(tasks.record, 42), headers=auth))
    assert (response.code, response.body) == (200, b"Success")
    assert RECORDER.named("record") == [42]


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH"])
def test_other_methods_get_405_on_every_path(
    handler: Handler, auth: dict[str, str], method: str
) -> None:
    env = environ(pickle.dumps(tasks.Canary()), method=method, path="/anything", headers=auth)
    response = call(handler, env)
    assert response.code == 405
    assert response.header("Allow") == "POST"
    assert env["wsgi.input"].reads == 0


def test_unauthenticated_requests_get_403_and_nothing_is_read_or_unpickled(
    handler: Handler,
) -> None:
    body = pickle.dumps((tasks.canary, (), {}))  # would call canary if unpickled
    env = environ(body + pickle.dumps(tasks.Canary()))
    response = call(handler, env)
    assert response.code == 403
    assert response.body == b"Forbidden: the request has no Authorization: Bearer token"
    assert env["wsgi.input"].reads == 0
    assert RECORDER.named("canary") == []


def test_spoofed_queue_headers_off_app_engine_get_403(handler: Handler) -> None:
    env = environ(
        pickle.dumps(tasks.Canary()),
        headers={"X-AppEngine-QueueName": "default", "X-CloudTasks-QueueName": "default"},
    )
    response = call(handler, env)
    assert (response.code, response.body) == (
        403,
        b"Forbidden: the request has no Authorization: Bearer token",
    )
    assert env["wsgi.input"].reads == 0
    assert RECORDER.named("canary") == []


def test_bad_token_gets_403_naming_the_check(handler: Handler, issuer: Issuer) -> None:
    env = environ(
        payload(tasks.record), headers={"Authorization": f"Bearer {issuer.token(aud='x')}"}
    )
    response = call(handler, env)
    assert response.code == 403
    assert response.body == b"Forbidden: the token audience is not this service"
    assert env["wsgi.input"].reads == 0


def test_oversized_body_gets_413_unread(handler: Handler, auth: dict[str, str]) -> None:
    env = environ(b"x", headers=auth, content_length=str(1024 * 1024 + 1))
    response = call(handler, env)
    assert (response.code, response.body) == (
        413,
        b"PayloadTooLarge: a task body is at most 1048576 bytes",
    )
    assert env["wsgi.input"].reads == 0


def test_chunked_body_within_the_limit_runs(handler: Handler, auth: dict[str, str]) -> None:
    env = environ(payload(tasks.record, "chunked"), headers=auth, content_length="")
    env["wsgi.input_terminated"] = True
    assert call(handler, env).code == 200
    assert RECORDER.named("record") == ["chunked"]


@pytest.mark.parametrize(
    ("content_length", "detail"),
    [
        ("abc", b"invalid Content-Length"),
        ("-5", b"invalid Content-Length"),
        ("\u00b2", b"invalid Content-Length"),  # "2" superscript: str.isdigit() says yes
        ("1\u0663", b"invalid Content-Length"),  # an Arabic-Indic digit
        ("9999", b"shorter than its Content-Length"),
    ],
)
def test_malformed_lengths_get_400(
    handler: Handler, auth: dict[str, str], content_length: str, detail: bytes
) -> None:
    response = call(
        handler, environ(payload(tasks.record), headers=auth, content_length=content_length)
    )
    assert response.code == 400
    assert detail in response.body
    assert RECORDER.calls == []


def test_certs_unavailable_gets_503(
    issuer: Issuer, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    certs = CachedCerts("https://certs.invalid", fetch=lambda url: (500, {}, b""))
    client = Client(SETTINGS, authenticator=authenticator_for(SETTINGS, certs=certs))
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred"):
        response = call(Handler(client=client), environ(payload(tasks.record), headers=auth))
    [record] = [r for r in caplog.records if r.name == "cloudtasks_deferred.receive.handler"]
    assert record.getMessage().startswith(
        "cannot verify task requests: cannot fetch token certificates from https://certs.invalid"
    )
    assert (response.code, response.body) == (
        503,
        b"ServiceUnavailable: token verification is unavailable",
    )
    assert RECORDER.calls == []


def test_permanent_failure_gets_200_logged_and_dead_lettered(
    handler: Handler, client: Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred"):
        response = call(handler, environ(payload(tasks.fail_permanently), headers=auth))
    assert (response.code, response.body) == (200, b"PermanentTaskFailure")
    failure = next(r for r in caplog.records if "permanent failure" in r.getMessage())
    assert failure.exc_info is not None
    assert "tests.tasks.fail_permanently" in failure.getMessage()
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    [letter] = client.dead_letters.letters
    assert letter.callable_name == "tests.tasks.fail_permanently"
    assert letter.task_name == "task-1"
    assert letter.reason == "PermanentTaskFailure: this task cannot succeed"


@pytest.mark.parametrize(
    "body", [b"garbage", b"\x80\x05\x95truncated", MAGIC + b"\x01\x00\x00\x00nonsense"]
)
def test_a_body_that_is_no_payload_is_a_permanent_failure(
    handler: Handler, client: Client, auth: dict[str, str], body: bytes
) -> None:
    response = call(handler, environ(body, headers=auth))
    assert (response.code, response.body) == (200, b"PermanentTaskFailure")
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    assert client.dead_letters.letters[0].callable_name is None


def test_singular_failure_gets_408_logged_at_debug(
    handler: Handler, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cloudtasks_deferred"):
        response = call(handler, environ(payload(tasks.always_singular), headers=auth))
    assert (response.code, response.body) == (408, b"SingularTaskFailure")
    record = next(r for r in caplog.records if "SingularTaskFailure" in r.getMessage())
    assert record.levelno == logging.DEBUG


def test_other_exceptions_get_500(handler: Handler, auth: dict[str, str]) -> None:
    response = call(handler, environ(payload(tasks.crash), headers=auth))
    assert (response.code, response.body) == (500, b"Error")
    assert RECORDER.named("crash") == [None]


def test_missing_code_gets_500_so_a_deploy_can_fix_it(
    handler: Handler, auth: dict[str, str]
) -> None:
    body = payload(tasks.record).replace(b"tests.tasks", b"tests.gone!")
    response = call(handler, environ(body, headers=auth))
    assert (response.code, response.body) == (500, b"Error")


def test_newer_frame_gets_500(handler: Handler, auth: dict[str, str]) -> None:
    body = MAGIC + b"\x02\x00\x00\x00" + serialize(tasks.record)
    assert call(handler, environ(body, headers=auth)).code == 500


def test_current_task_inside_and_outside(handler: Handler, auth: dict[str, str]) -> None:
    auth |= {"X-CloudTasks-TaskPreviousResponse": "500", "X-CloudTasks-TaskRetryReason": "x"}
    call(handler, environ(payload(tasks.record_task_info), headers=auth))
    [info] = RECORDER.named("task_info")
    assert info.queue_name == "default"
    assert info.task_name == "task-1"
    assert info.retry_count == 0
    assert info.execution_count == 0
    assert info.eta is not None
    assert info.eta.timestamp() == 1767225600.5
    assert info.previous_response == 500
    assert info.retry_reason == "x"
    assert current_task() is None


def test_queue_headers_logged_at_set_log_level_without_secrets(
    handler: Handler, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    deferred.set_log_level(logging.WARNING)
    try:
        with caplog.at_level(logging.DEBUG, logger="cloudtasks_deferred"):
            call(handler, environ(payload(tasks.record), headers=auth))
    finally:
        deferred.set_log_level(logging.INFO)
    [record] = [r for r in caplog.records if "X_CLOUDTASKS_QUEUENAME:default" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "Bearer" not in caplog.text
    assert auth["Authorization"].split()[1] not in caplog.text


def test_set_log_level_rejects_non_levels() -> None:
    with pytest.raises(TypeError, match="log level must be an int"):
        deferred.set_log_level("DEBUG")  # type: ignore[arg-type]


def test_handler_log_level_overrides_the_legacy_one(
    client: Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cloudtasks_deferred"):
        call(
            Handler(client=client, header_log_level=logging.DEBUG),
            environ(payload(tasks.record), headers=auth),
        )
    [record] = [r for r in caplog.records if "X_CLOUDTASKS_TASKNAME:task-1" in r.getMessage()]
    assert record.levelno == logging.DEBUG


def test_post_returns_the_legacy_triple_and_never_raises(
    handler: Handler, auth: dict[str, str]
) -> None:
    body, status, headers = handler.post(environ(payload(tasks.crash), headers=auth))
    assert (body, status) == ("Error", HTTPStatus.INTERNAL_SERVER_ERROR)
    assert headers == [("Content-Type", "text/plain; charset=utf-8")]


def test_run_from_request_raises_the_task_failures(handler: Handler, auth: dict[str, str]) -> None:
    with pytest.raises(SingularTaskFailure):
        handler.run_from_request(environ(payload(tasks.always_singular), headers=auth))
    with pytest.raises(PermanentTaskFailure):
        handler.run_from_request(environ(b"garbage", headers=auth))
    with pytest.raises(RuntimeError, match="boom"):
        handler.run_from_request(environ(payload(tasks.crash), headers=auth))
    assert handler.run_from_request(environ(payload(tasks.record), headers=auth))[1] == 200


def test_run_from_request_answers_refusals_without_raising(handler: Handler) -> None:
    assert handler.run_from_request(environ(payload(tasks.record)))[:2] == (
        "Forbidden: the request has no Authorization: Bearer token",
        403,
    )


@pytest.mark.parametrize(
    ("retry_count", "expected"), [("1", 500), ("2", 200)], ids=["retries left", "exhausted"]
)
def test_per_task_retry_limit(
    handler: Handler, client: Client, auth: dict[str, str], retry_count: str, expected: int
) -> None:
    meta = {"retry": TaskRetryOptions(task_retry_limit=2).to_metadata()}
    auth["X-CloudTasks-TaskRetryCount"] = retry_count
    response = call(handler, environ(payload(tasks.crash, _meta=meta), headers=auth))
    assert response.code == expected
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    letters = client.dead_letters.letters
    assert len(letters) == (expected == 200)
    if letters:
        assert letters[0].reason == "task_retry_limit=2 reached after 2 retries"
        assert response.body == b"RetryLimitReached"


def test_per_task_age_limit_counts_from_the_scheduled_time(
    handler: Handler, auth: dict[str, str]
) -> None:
    old = {"retry": {"task_age_limit": 60}, "t0": 1.0}
    assert (
        call(handler, environ(payload(tasks.always_singular, _meta=old), headers=auth)).code == 200
    )
    import time

    fresh = {"retry": {"task_age_limit": 60}, "t0": time.time()}
    assert (
        call(handler, environ(payload(tasks.always_singular, _meta=fresh), headers=auth)).code
        == 408
    )


def test_tasks_defer_through_the_handlers_client(
    handler: Handler, client: Client, auth: dict[str, str]
) -> None:
    assert call(handler, environ(payload(tasks.defer_another, "next"), headers=auth)).code == 200
    assert isinstance(client.transport, InMemoryTransport)
    [task] = client.transport.tasks
    assert task.http_request.url == f"{AUDIENCE}/_ah/queue/deferred"


def test_handler_without_settings_uses_the_bound_client(
    client: Client, auth: dict[str, str]
) -> None:
    with client.bind():
        assert call(Handler(), environ(payload(tasks.record, 1), headers=auth)).code == 200
    assert RECORDER.named("record") == [1]


KEY = SigningKey("handler-key", b"k" * 32)


def test_handler_built_from_settings_applies_their_keys_and_allowlist(
    certs_server: CertsServer, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dataclasses.replace(
        SETTINGS,
        oidc_certs_url=certs_server.url,
        signing_keys=(KEY,),
        allowed_modules=("tests.tasks",),
    )
    # The process's own configuration trusts the same tokens with neither keys nor an
    # allowlist: a handler falling back to it would run what its settings refuse.
    for name, value in {
        "GOOGLE_CLOUD_PROJECT": "p",
        "CLOUDTASKS_DEFERRED_LOCATION": "us-central1",
        "CLOUDTASKS_DEFERRED_BASE_URL": AUDIENCE,
        "CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT": INVOKER,
        "CLOUDTASKS_DEFERRED_OIDC_CERTS_URL": certs_server.url,
        "CLOUDTASKS_DEFERRED_NDB": "false",
    }.items():
        monkeypatch.setenv(name, value)
    handler = Handler(settings)
    auth = {"Authorization": f"Bearer {issuer.token()}"}

    def send(body: bytes) -> tuple[int, bytes]:
        response = call(handler, environ(body, headers=auth))
        return response.code, response.body

    signed = encode(serialize(tasks.record, "signed"), signing_key=KEY)
    assert send(signed) == (200, b"Success")
    assert send(encode(serialize(tasks.record, "unsigned"))) == (
        403,
        b"Forbidden: the payload is not signed",
    )
    outside = encode(serialize(allowed_tasks.record, "outside"), signing_key=KEY)
    code, body = send(outside)
    assert code == 403
    assert body.startswith(b"Forbidden: the payload references 'tests.security.allowed_tasks")
    assert RECORDER.named("record") == ["signed"]
    assert RECORDER.named("allowed_record") == []
    # The process default, for contrast, runs the unsigned task.
    response = call(Handler(), environ(encode(serialize(tasks.record, "default")), headers=auth))
    assert (response.code, RECORDER.named("record")) == (200, ["signed", "default"])


# --- reading the body: lengths, chunking, exact limits ------------------------------------


def test_without_a_length_or_chunking_the_body_is_not_read(
    handler: Handler, client: Client, auth: dict[str, str]
) -> None:
    # Neither Content-Length nor chunked encoding: the body is empty (HTTP/1.1), and
    # reading the stream could block until the client gives up.
    env = environ(payload(tasks.record, "unread"), headers=auth, content_length="")
    response = call(handler, env)
    assert (response.code, response.body) == (200, b"PermanentTaskFailure")
    assert env["wsgi.input"].reads == 0
    assert RECORDER.calls == []
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    [letter] = client.dead_letters.letters
    assert letter.reason.startswith("InvalidPayloadError: the body is not a deferred task")


def test_a_missing_wsgi_input_is_an_empty_body(handler: Handler, auth: dict[str, str]) -> None:
    env = environ(b"", headers=auth, content_length="5")
    del env["wsgi.input"]
    response = call(handler, env)
    assert (response.code, response.body) == (
        400,
        b"BadRequest: the body is shorter than its Content-Length",
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_runs_and_one_byte_more_gets_413(
    client: Client, auth: dict[str, str], chunked: bool
) -> None:
    body = payload(tasks.record, "at the limit")

    def send(limit: int) -> tuple[int, bytes, int]:
        env = environ(body, headers=auth, content_length="" if chunked else None)
        if chunked:
            env["wsgi.input_terminated"] = True
        response = call(Handler(client=client, max_body_bytes=limit), env)
        return response.code, response.body, env["wsgi.input"].reads

    code, text, _ = send(len(body))
    assert (code, text) == (200, b"Success")
    code, text, reads = send(len(body) - 1)
    assert (code, text) == (
        413,
        f"PayloadTooLarge: a task body is at most {len(body) - 1} bytes".encode(),
    )
    assert reads == (1 if chunked else 0)  # a declared length is refused unread
    assert RECORDER.named("record") == ["at the limit"]


def test_the_default_limit_is_one_mebibyte(handler: Handler, auth: dict[str, str]) -> None:
    # At the limit the length passes (and the short body is then a bad request); one
    # byte more is refused unread.
    at_limit = environ(b"x", headers=auth, content_length=str(1024 * 1024))
    assert call(handler, at_limit).code == 400
    over = environ(b"x", headers=auth, content_length=str(1024 * 1024 + 1))
    response = call(handler, over)
    assert (response.code, response.body) == (
        413,
        b"PayloadTooLarge: a task body is at most 1048576 bytes",
    )
    assert over["wsgi.input"].reads == 0


def test_a_chunked_body_is_read_one_byte_past_the_limit_at_most(
    client: Client, auth: dict[str, str]
) -> None:
    env = environ(b"x" * 500, headers=auth, content_length="")
    env["wsgi.input_terminated"] = True
    sizes: list[int | None] = []
    real_read = env["wsgi.input"].read

    def read(size: int | None = -1) -> bytes:
        sizes.append(size)
        return real_read(size)

    env["wsgi.input"].read = read
    assert call(Handler(client=client, max_body_bytes=100), env).code == 413
    assert sizes == [101]


def test_misconfigured_environment_gets_500_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_QUEUE", "not a queue")
    response = call(deferred.application, environ(pickle.dumps(tasks.Canary())))
    assert response.code == 500
    assert "misconfigured" in caplog.text
    assert RECORDER.calls == []


def test_unconfigured_environment_refuses_with_403(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K_SERVICE", "svc")
    env = environ(pickle.dumps(tasks.Canary()), headers={"X-CloudTasks-QueueName": "default"})
    response = call(deferred.application, env)
    assert response.code == 403
    assert b"not configured" in response.body
    assert RECORDER.calls == []


def test_an_undecodable_payload_is_logged_with_its_size_and_hash_never_its_bytes(
    handler: Handler, client: Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    body = b"\x80\x02csecret_module\nsecret-argument-bytes"  # a pickle that does not load
    with caplog.at_level(logging.DEBUG):
        response = call(handler, environ(body, headers=auth))
    assert response.code == 200
    digest = hashlib.sha256(body).hexdigest()
    [logged] = [r for r in caplog.records if "could not be loaded" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert "task task-1" in logged.getMessage()
    assert f"{len(body)} bytes, sha256 {digest}" in logged.getMessage()
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    [letter] = client.dead_letters.letters
    assert (letter.payload_bytes, letter.payload_sha256) == (len(body), digest)
    assert "secret-argument" not in caplog.text
