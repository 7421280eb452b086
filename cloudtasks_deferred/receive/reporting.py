"""How a task's run is reported: the log line for each outcome, and its dead letter.

A task given up on (a permanent failure, its own ``_retry_options`` exhausted) is
logged with its traceback and recorded in the client's dead-letter sink; a body that
did not decode is logged with its size and SHA-256, never its bytes; a refused
payload is one warning (refused by the allowlist, a dead letter too); a frame from a
newer release one warning, without a traceback (a rolling deploy); a retried failure an
error with its traceback.
"""

from __future__ import annotations

import hashlib
import logging
import time

from cloudtasks_deferred.payload.allowlist import DisallowedReferenceError
from cloudtasks_deferred.payload.calls import OpenedPayload
from cloudtasks_deferred.payload.frame import UnsupportedPayloadError
from cloudtasks_deferred.receive.context import TaskInfo
from cloudtasks_deferred.receive.deadletters import (
    Cause,
    DeadLetterSink,
    cause_of,
    letter_for,
    record_or_log,
)
from cloudtasks_deferred.receive.outcomes import Attempt, Outcome, outcome_of
from cloudtasks_deferred.receive.retry import exhausted

__all__ = ["conclude"]

_logger = logging.getLogger("cloudtasks_deferred.receive.handler")


def conclude(
    dead_letters: DeadLetterSink,
    task: TaskInfo,
    body: bytes | None,
    *,
    payload: OpenedPayload | None,
    error: Exception | None,
    elapsed: float,
) -> Attempt:
    """Classifies a run, logs it, and records a dead letter for what is given up.

    ``body`` is ``None`` when the handler never read it (a ``run_from_request``
    override raised before calling the base class). A body that did not decode is
    logged with its size and SHA-256, never its bytes, so that the dead letter and
    the log line can be matched to the task later.
    """
    reason = None
    if outcome_of(error) in (Outcome.SINGULAR_FAILURE, Outcome.ERROR):
        reason = exhausted(payload.metadata if payload is not None else {}, task, time.time())
    outcome = outcome_of(error, retries_exhausted=reason is not None)
    where = f"task {task.task_name} (queue {task.queue_name}, retry {task.retry_count})"
    if payload is not None:
        what = payload.callable_name
    elif body is None:
        what = f"a request its run_from_request override failed ({type(error).__name__})"
    else:
        what = (
            f"a payload that could not be loaded ({type(error).__name__}; "
            f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()})"
        )
    if outcome is Outcome.SUCCESS:
        _logger.info("%s: ran %s in %.0f ms", where, what, elapsed * 1000)
    elif outcome is Outcome.UNAUTHENTICATED:
        _logger.warning("%s: refused the payload: %s", where, error)
        if isinstance(error, DisallowedReferenceError):  # signed by us, if signing is on
            _dead_letter(dead_letters, task, body, payload, cause=Cause.REFUSED, error=error)
        return Attempt(outcome, detail=str(error))
    elif outcome is Outcome.PERMANENT_FAILURE:
        _logger.exception("%s: permanent failure running %s", where, what, exc_info=error)
        cause = cause_of(error, payload, body)
        _dead_letter(dead_letters, task, body, payload, cause=cause, error=error)
    elif outcome is Outcome.RETRIES_EXHAUSTED:
        _logger.error("%s: %s failed and will not be retried: %s", where, what, reason,
                      exc_info=error)  # fmt: skip
        _dead_letter(dead_letters, task, body, payload, cause=Cause.RETRIES_EXHAUSTED, error=error,
                     reason=reason)  # fmt: skip
    elif outcome is Outcome.SINGULAR_FAILURE:
        _logger.debug("%s: %s raised SingularTaskFailure; retry forced", where, what)
    elif isinstance(error, UnsupportedPayloadError):
        # A rolling deploy: the newer release's instances will run it.
        _logger.warning(
            "%s: the payload was written by a newer release of cloudtasks_deferred (%s); "
            "Cloud Tasks retries it until this service runs that release",
            where,
            error,
        )
    else:
        _logger.error("%s: %s failed; Cloud Tasks will retry it", where, what, exc_info=error)
    return Attempt(outcome, error=error)


def _dead_letter(
    dead_letters: DeadLetterSink,
    task: TaskInfo,
    body: bytes | None,
    payload: OpenedPayload | None,
    *,
    cause: Cause,
    error: Exception | None,
    reason: str | None = None,
) -> None:
    shown = reason or f"{type(error).__name__}: {error}"
    letter = letter_for(task, body, payload, cause=cause, reason=shown, error=error)
    record_or_log(dead_letters, letter)
