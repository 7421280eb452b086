"""What became of a request to the handler, and the status Cloud Tasks reads. Pure.

:func:`outcome_of` classifies how a run ended, :func:`response_for` maps an outcome to
its response; both are pure, so each row of the table is one test
(Cloud Tasks retries every non-2xx):

=====================================================  ======  ========
outcome                                                status  retried?
=====================================================  ======  ========
the callable returned                                  200     no
``PermanentTaskFailure``, or a body that is no payload  200     no (logged, dead letter)
the task's own ``_retry_options`` are exhausted        200     no (logged, dead letter)
``SingularTaskFailure``                                408     yes
any other exception, incl. missing code                500     yes
a frame written by a newer release (rolling deploy)    500     yes (a warning, no traceback)
caller not authenticated                               403     yes
payload unsigned, badly signed, or outside allowlist   403     yes (nothing unpickled)
no certificates to verify tokens with                  503     yes
method other than POST                                 405     n/a
body larger than a task (1 MB)                         413     n/a
malformed ``Content-Length`` or truncated body         400     yes
=====================================================  ======  ========
"""

from __future__ import annotations

import dataclasses
import enum
from http import HTTPStatus
from typing import Final

from cloudtasks_deferred.errors import (
    PayloadRefusedError,
    PermanentTaskFailure,
    SingularTaskFailure,
)
from cloudtasks_deferred.receive.wsgi import Response

__all__ = ["Attempt", "Outcome", "Response", "outcome_of", "response_for"]

_TEXT: Final = ("Content-Type", "text/plain; charset=utf-8")


class Outcome(enum.Enum):
    """What became of one request to the handler."""

    SUCCESS = "Success"
    PERMANENT_FAILURE = "PermanentTaskFailure"
    RETRIES_EXHAUSTED = "RetryLimitReached"
    SINGULAR_FAILURE = "SingularTaskFailure"
    ERROR = "Error"
    UNAUTHENTICATED = "Forbidden"
    AUTH_UNAVAILABLE = "ServiceUnavailable"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    TOO_LARGE = "PayloadTooLarge"
    BAD_REQUEST = "BadRequest"


_STATUS: Final = {
    Outcome.SUCCESS: HTTPStatus.OK,
    Outcome.PERMANENT_FAILURE: HTTPStatus.OK,
    Outcome.RETRIES_EXHAUSTED: HTTPStatus.OK,
    Outcome.SINGULAR_FAILURE: HTTPStatus.REQUEST_TIMEOUT,
    Outcome.ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    Outcome.UNAUTHENTICATED: HTTPStatus.FORBIDDEN,
    Outcome.AUTH_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    Outcome.METHOD_NOT_ALLOWED: HTTPStatus.METHOD_NOT_ALLOWED,
    Outcome.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Outcome.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
}


def response_for(outcome: Outcome, detail: str = "") -> Response:
    """Maps an outcome to the response Cloud Tasks reads. Pure.

    Args:
        outcome: What happened.
        detail: A reason safe to show the caller (e.g. which auth check failed).

    Returns:
        ``(body, status, headers)``.
    """
    headers = [_TEXT]
    if outcome is Outcome.METHOD_NOT_ALLOWED:
        headers.append(("Allow", "POST"))
    body = f"{outcome.value}: {detail}" if detail else outcome.value
    return body, _STATUS[outcome], headers


def outcome_of(error: BaseException | None, *, retries_exhausted: bool = False) -> Outcome:
    """Classifies how running a task ended. Pure.

    Args:
        error: What the task raised, or ``None`` if it returned.
        retries_exhausted: The task's own ``_retry_options`` allow no more attempts
            (see :func:`cloudtasks_deferred.receive.retry.exhausted`); turns a retryable
            failure into :attr:`Outcome.RETRIES_EXHAUSTED`.
    """
    if error is None:
        return Outcome.SUCCESS
    if isinstance(error, PayloadRefusedError):
        # The payload failed authentication: retried, so a fixed configuration drains it.
        return Outcome.UNAUTHENTICATED
    if isinstance(error, PermanentTaskFailure):
        return Outcome.PERMANENT_FAILURE
    if retries_exhausted:
        return Outcome.RETRIES_EXHAUSTED
    if isinstance(error, SingularTaskFailure):
        return Outcome.SINGULAR_FAILURE
    return Outcome.ERROR


@dataclasses.dataclass(frozen=True)
class Attempt:
    """What became of one request: its outcome, a detail safe to show the caller, and
    what the task raised (re-raised by :meth:`.TaskHandler.run_from_request`)."""

    outcome: Outcome
    detail: str = ""
    error: Exception | None = None
