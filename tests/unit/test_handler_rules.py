"""The handler's rules one by one: the header log level, a handler without a client, and
what an overriding ``run_from_request`` that cannot be recorded leaves in the log."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.receive.handler import HeaderLogLevel, TaskHandler
from cloudtasks_deferred.receive.wsgi import Response
from tests.wsgi import environ

HANDLER_LOGGER = "cloudtasks_deferred.receive.handler"


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
