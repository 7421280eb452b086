"""The handler's rules one by one: the header log level, a handler without a client, and
what an overriding ``run_from_request`` that cannot be recorded leaves in the log."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred import Client
from cloudtasks_deferred.errors import ConfigurationError, PayloadRefusedError
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.receive import handler as handler_module
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters
from cloudtasks_deferred.receive.handler import HeaderLogLevel, TaskHandler
from cloudtasks_deferred.receive.wsgi import Response
from cloudtasks_deferred.storage.dead_letters import Cause, DeadLetter, Status
from tests import tasks
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import environ

HANDLER_LOGGER = "cloudtasks_deferred.receive.handler"


def delivery(issuer: Issuer, body: bytes, retry_count: int = 0) -> dict[str, Any]:
    """A request from Cloud Tasks for task-1 of queue default."""
    headers = {
        "Authorization": f"Bearer {issuer.token()}",
        "X-CloudTasks-QueueName": "default",
        "X-CloudTasks-TaskName": "task-1",
        "X-CloudTasks-TaskRetryCount": str(retry_count),
    }
    return environ(body, headers=headers)


class SteppedClock:
    """Stands in for the handler's ``time`` module: each ``monotonic()`` is the next value."""

    def __init__(self, *values: float) -> None:
        self._values: Iterator[float] = iter(values)

    def monotonic(self) -> float:
        return next(self._values)


class BrokenOverride(TaskHandler):
    """A legacy override that fails by itself, on a handler built without a client."""

    def run_from_request(self, environ: Mapping[str, Any]) -> Response:
        raise RuntimeError("the override broke")


def test_a_header_log_level_starts_at_info_the_legacy_default() -> None:
    assert HeaderLogLevel().get() == logging.INFO
    assert HeaderLogLevel(logging.DEBUG).get() == logging.DEBUG


def test_a_header_log_level_reads_back_what_was_set() -> None:
    level = HeaderLogLevel()
    level.set(logging.WARNING)
    assert level.get() == logging.WARNING


def test_a_handler_without_a_client_says_to_pass_one() -> None:
    with pytest.raises(ConfigurationError) as raised:
        TaskHandler().current_client()
    assert str(raised.value) == "this handler has no client: pass client="


def test_a_handler_without_a_client_answers_500_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger=HANDLER_LOGGER):
        answer = TaskHandler().post(environ(b"never read"))
    assert answer[:2] == (
        "Error: the task handler is misconfigured",
        HTTPStatus.INTERNAL_SERVER_ERROR,
    )
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.ERROR,
        "the task handler is misconfigured",
    )
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "this handler has no client: pass client="


def test_an_override_s_failure_that_cannot_be_recorded_is_logged_naming_the_subclass_and_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger=HANDLER_LOGGER):
        answer = BrokenOverride().post(environ(b"never read"))
    assert answer[:2] == ("Error", HTTPStatus.INTERNAL_SERVER_ERROR)  # retried, not dropped
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.ERROR,
        "cannot record what BrokenOverride.run_from_request raised: "
        "RuntimeError('the override broke'); Cloud Tasks will retry",
    )
    # The traceback is why it could not be recorded: here, no client to record with.
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ConfigurationError)


def test_a_task_s_run_time_is_logged_in_milliseconds(
    signed_client: Client,
    issuer: Issuer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(handler_module, "time", SteppedClock(100.0, 100.25))
    body = encode(serialize(tasks.record, "x"))
    with caplog.at_level(logging.INFO, logger=HANDLER_LOGGER):
        answer = TaskHandler(signed_client).post(delivery(issuer, body))
    assert answer[:2] == ("Success", HTTPStatus.OK)
    assert [(r.levelno, r.getMessage()) for r in caplog.records if "ran " in r.getMessage()] == [
        (logging.INFO, "task task-1 (queue default, retry 0): ran tests.tasks.record in 250 ms")
    ]


def test_a_redelivery_whose_dead_letter_was_replayed_answers_200_and_runs_nothing(
    signed_client: Client, issuer: Issuer
) -> None:
    # The replay's own task runs it; this delivery (whose answer was lost) must not.
    body = encode(serialize(tasks.record, "x"))
    sink = signed_client.dead_letters
    assert isinstance(sink, InMemoryDeadLetters)
    letter = DeadLetter.new(
        cause=Cause.PERMANENT_FAILURE,
        reason="PermanentTaskFailure: fixed since",
        payload=body,
        queue_name="default",
        task_name="task-1",
    )
    sink.record(dataclasses.replace(letter, status=Status.REPLAYED))
    answer = TaskHandler(signed_client).post(delivery(issuer, body, retry_count=1))
    assert answer[:2] == ("Success: its dead letter was replayed", HTTPStatus.OK)
    assert RECORDER.named("record") == []


def test_the_task_headers_are_logged_in_one_line_as_the_argument_never_the_format(
    signed_client: Client, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    # Header values come from the request: as the format string, a "%" in one would be
    # read as a placeholder by handlers that format record.msg themselves.
    body = encode(serialize(tasks.record, "x"))
    with caplog.at_level(logging.INFO, logger=HANDLER_LOGGER):
        TaskHandler(signed_client).post(delivery(issuer, body))
    [record] = [r for r in caplog.records if "X_CLOUDTASKS_" in r.getMessage()]
    headers = (
        "X_CLOUDTASKS_QUEUENAME:default, X_CLOUDTASKS_TASKNAME:task-1, "
        "X_CLOUDTASKS_TASKRETRYCOUNT:0"
    )
    assert (record.levelno, record.getMessage()) == (logging.INFO, headers)
    assert (record.msg, record.args) == ("%s", (headers,))


def test_a_malformed_content_length_is_named_in_the_400(
    signed_client: Client, issuer: Issuer
) -> None:
    env = delivery(issuer, encode(serialize(tasks.record, "x")))
    env["CONTENT_LENGTH"] = "12a"
    assert TaskHandler(signed_client).post(env)[:2] == (
        "BadRequest: invalid Content-Length",
        HTTPStatus.BAD_REQUEST,
    )
    assert RECORDER.calls == []


def test_a_request_without_a_body_is_dead_lettered_as_zero_bytes(
    signed_client: Client, issuer: Issuer
) -> None:
    # Neither Content-Length nor chunked: HTTP/1.1 says the body is empty.
    env = delivery(issuer, b"")
    env["CONTENT_LENGTH"] = ""
    assert TaskHandler(signed_client).post(env)[:2] == ("PermanentTaskFailure", HTTPStatus.OK)
    assert isinstance(signed_client.dead_letters, InMemoryDeadLetters)
    [letter] = signed_client.dead_letters.letters
    assert (letter.payload, letter.payload_bytes) == (b"", 0)
    assert letter.payload_sha256 == hashlib.sha256(b"").hexdigest()


def test_a_refused_request_is_logged_at_warning_with_what_it_asked_for_and_why(
    signed_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=HANDLER_LOGGER):
        answer = TaskHandler(signed_client).post(environ(b"never read"))
    reason = "the request has no Authorization: Bearer token"
    assert answer[:2] == (f"Forbidden: {reason}", HTTPStatus.FORBIDDEN)
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING,
        f"refused a task request: {reason}",
    )


class RefusingOverride(TaskHandler):
    """An override that checks the payload itself and refuses it."""

    def run_from_request(self, environ: Mapping[str, Any]) -> Response:
        raise PayloadRefusedError("the payload is not signed")


def test_a_payload_an_override_refuses_gets_403_naming_the_check(
    signed_client: Client, issuer: Issuer
) -> None:
    answer = RefusingOverride(signed_client).post(delivery(issuer, b"x"))
    assert answer[:2] == ("Forbidden: the payload is not signed", HTTPStatus.FORBIDDEN)
