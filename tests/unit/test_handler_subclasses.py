"""Legacy extension points: Handler subclasses that override run_from_request (or post)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred import (
    Client,
    Handler,
    PermanentTaskFailure,
    SingularTaskFailure,
    TaskRetryOptions,
    wrap_wsgi_app,
)
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.payload.retry import retry_metadata
from cloudtasks_deferred.receive.deadletters import DeadLetter, InMemoryDeadLetters
from cloudtasks_deferred.receive.wsgi import Response
from tests import tasks
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ


class AroundHandler(Handler):
    """The common legacy override: code around the base class's run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []

    def run_from_request(self, environ: Mapping[str, Any]) -> Response:
        self.seen.append("before")
        try:
            return super().run_from_request(environ)
        finally:
            self.seen.append("after")


class RaisingHandler(Handler):
    """An override that fails by itself, without running anything."""

    def __init__(self, error: Exception, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def run_from_request(self, environ: Mapping[str, Any]) -> Response:
        raise self.error


class AnsweringHandler(Handler):
    """An override that answers by itself."""

    def run_from_request(self, environ: Mapping[str, Any]) -> Response:
        return "handled here", HTTPStatus.ACCEPTED, [("X-Custom", "1")]


def payload(func: Any, *args: Any, meta: dict[str, Any] | None = None) -> bytes:
    return encode(serialize(func, *args), meta)


@pytest.fixture
def auth(issuer: Issuer) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {issuer.token()}",
        "X-CloudTasks-QueueName": "default",
        "X-CloudTasks-TaskName": "task-1",
        "X-CloudTasks-TaskRetryCount": "3",
    }


def letters(client: Client) -> list[DeadLetter]:
    assert isinstance(client.dead_letters, InMemoryDeadLetters)
    return client.dead_letters.letters


def test_post_calls_the_overridden_run_from_request(
    signed_client: Client, auth: dict[str, str]
) -> None:
    handler = AroundHandler(client=signed_client)
    assert handler.post(environ(payload(tasks.record, "x"), headers=auth))[:2] == (
        "Success",
        HTTPStatus.OK,
    )
    assert handler.seen == ["before", "after"]
    assert RECORDER.named("record") == ["x"]


def test_the_wsgi_app_and_wrap_wsgi_app_go_through_the_override(
    signed_client: Client, auth: dict[str, str]
) -> None:
    handler = AroundHandler(client=signed_client)
    assert call(handler, environ(payload(tasks.record, 1), headers=auth)).code == 200
    app = wrap_wsgi_app(lambda env, start: [], handler=handler, client=signed_client)
    assert call(app, environ(payload(tasks.record, 2), headers=auth)).code == 200
    assert handler.seen == ["before", "after"] * 2
    assert RECORDER.named("record") == [1, 2]


@pytest.mark.parametrize(
    ("func", "status", "body"),
    [
        (tasks.fail_permanently, HTTPStatus.OK, "PermanentTaskFailure"),
        (tasks.always_singular, HTTPStatus.REQUEST_TIMEOUT, "SingularTaskFailure"),
        (tasks.crash, HTTPStatus.INTERNAL_SERVER_ERROR, "Error"),
    ],
)
def test_failures_re_raised_through_the_override_map_as_before(
    signed_client: Client, auth: dict[str, str], func: Any, status: HTTPStatus, body: str
) -> None:
    plain = Handler(client=signed_client).post(environ(payload(func), headers=auth))
    overridden = AroundHandler(client=signed_client).post(environ(payload(func), headers=auth))
    assert plain[:2] == overridden[:2] == (body, status)


def test_a_failure_through_the_override_is_logged_and_dead_lettered_once(
    signed_client: Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    handler = AroundHandler(client=signed_client)
    with caplog.at_level(logging.DEBUG, logger="cloudtasks_deferred"):
        handler.post(environ(payload(tasks.fail_permanently), headers=auth))
    assert [letter.callable_name for letter in letters(signed_client)] == [
        "tests.tasks.fail_permanently"
    ]
    assert len([r for r in caplog.records if "permanent failure" in r.getMessage()]) == 1


def test_exhausted_retry_options_through_the_override_still_answer_200(
    signed_client: Client, auth: dict[str, str]
) -> None:
    meta = retry_metadata(TaskRetryOptions(task_retry_limit=2), datetime.now(UTC))
    answer = AroundHandler(client=signed_client).post(
        environ(payload(tasks.crash, meta=meta), headers=auth)
    )
    assert answer[:2] == ("RetryLimitReached", HTTPStatus.OK)
    [letter] = letters(signed_client)
    assert letter.callable_name == "tests.tasks.crash"


def test_a_permanent_failure_the_override_raises_itself_is_recorded(
    signed_client: Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    handler = RaisingHandler(PermanentTaskFailure("refused by the app"), client=signed_client)
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred"):
        answer = handler.post(environ(payload(tasks.record), headers=auth))
    assert answer[:2] == ("PermanentTaskFailure", HTTPStatus.OK)
    [letter] = letters(signed_client)
    assert letter.reason == "PermanentTaskFailure: refused by the app"
    assert letter.task_name == "task-1"
    assert (letter.payload_bytes, letter.payload_sha256) == (None, None)  # never read
    [logged] = [r for r in caplog.records if "permanent failure" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert "task task-1" in logged.getMessage()
    assert RECORDER.named("record") == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (SingularTaskFailure("later"), HTTPStatus.REQUEST_TIMEOUT),
        (RuntimeError("override broke"), HTTPStatus.INTERNAL_SERVER_ERROR),
    ],
)
def test_other_errors_the_override_raises_map_to_retries(
    signed_client: Client, auth: dict[str, str], error: Exception, status: HTTPStatus
) -> None:
    handler = RaisingHandler(error, client=signed_client)
    assert handler.post(environ(payload(tasks.record), headers=auth))[1] == status
    assert letters(signed_client) == []


def test_what_the_override_returns_is_the_answer(signed_client: Client) -> None:
    handler = AnsweringHandler(client=signed_client)
    assert handler.post(environ(b"anything")) == (
        "handled here",
        HTTPStatus.ACCEPTED,
        [("X-Custom", "1")],
    )
    response = call(handler, environ(b"anything"))
    assert (response.code, response.body) == (202, b"handled here")


def test_post_never_raises_even_when_nothing_can_be_recorded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No client and an invalid environment: the failure cannot be dead-lettered.
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_QUEUE", "not a queue!")
    handler = RaisingHandler(PermanentTaskFailure("gone"))
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred"):
        answer = handler.post(environ(b"x"))
    assert answer[1] == HTTPStatus.INTERNAL_SERVER_ERROR  # retried, not dropped
    assert any("cannot record" in r.getMessage() for r in caplog.records)


class BrokenSink:
    keeps_payloads = False

    def record(self, letter: DeadLetter) -> None:
        raise OSError("sink unreachable")

    def claim(self, letter_id: str) -> bool:
        return True


def test_a_failing_dead_letter_sink_falls_back_to_the_log(
    signed_client: Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(
        signed_client.settings,
        transport=signed_client.transport,
        authenticator=signed_client.authenticator,
        dead_letters=BrokenSink(),
    )
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred.dead_letters"):
        answer = Handler(client=client).post(environ(payload(tasks.fail_permanently), headers=auth))
    assert answer[1] == HTTPStatus.OK
    [letter] = [r for r in caplog.records if r.getMessage().startswith("dead letter:")]
    assert "task task-1" in letter.getMessage()
    assert "tests.tasks.fail_permanently" in letter.getMessage()
