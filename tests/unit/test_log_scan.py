"""The log scan (tests/logscan.py) finds what it is there to find: this test can fail."""

from __future__ import annotations

import base64
import logging

import pytest

from cloudtasks_deferred import deferred
from cloudtasks_deferred.payload.frame import SigningKey
from cloudtasks_deferred.testing import in_memory_queue
from tests.logscan import SCAN
from tests.oidc import Issuer

_logger = logging.getLogger("cloudtasks_deferred.tests")


@pytest.fixture(autouse=True)
def nothing_found_before() -> None:
    assert SCAN.take() == []


def test_a_token_in_a_log_line_is_found(issuer: Issuer) -> None:
    token = issuer.token()
    _logger.debug("refused %s", token)
    _logger.info("signature only: ...%s", token.rsplit(".", 1)[1][-60:])
    assert SCAN.take() == [
        "cloudtasks_deferred.tests DEBUG: an ID token",
        "cloudtasks_deferred.tests INFO: an ID token",
    ]


def test_a_signing_secret_is_found_in_any_of_its_forms() -> None:
    secret = bytes(range(40, 80))
    SigningKey("k1", secret)
    for form in (repr(secret), base64.urlsafe_b64encode(secret).decode(), secret.hex()):
        logging.getLogger("myapp").warning("key %s", form)
    assert SCAN.take() == ["myapp WARNING: a signing key"] * 3


def test_payload_bytes_in_a_traceback_are_found() -> None:
    with in_memory_queue() as queue:
        deferred.defer(print, "a fairly distinctive argument for the payload")
        [task] = queue.tasks
    body = task.http_request.body
    try:
        raise ValueError(body[:80])
    except ValueError:
        _logger.exception("could not read")
    assert SCAN.take() == ["cloudtasks_deferred.tests ERROR: payload bytes"]


def test_ordinary_lines_are_not_findings(issuer: Issuer) -> None:
    issuer.token()
    _logger.warning("task 123 (queue default): ran builtins.print in 3 ms, sha256 %s", "ab" * 32)
    assert SCAN.take() == []
