"""Dead letters: a record of every task the handler gives up on.

A task that raises :class:`~cloudtasks_deferred.errors.PermanentTaskFailure` (or
whose body is not a payload), or that exhausts its own ``_retry_options``, is
answered with 200 so Cloud Tasks drops it. So that it is not lost without a
trace, the handler hands a :class:`DeadLetter` to a :class:`DeadLetterSink`. The
default sink logs it as a structured record on the ``cloudtasks_deferred.dead_letters``
logger (route it with a Cloud Logging sink); tests collect them in memory.

A dead letter names the task and the callable and fingerprints the payload; it
never holds the payload or the arguments, which may carry secrets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from datetime import UTC, datetime
from typing import Any, Protocol

from cloudtasks_deferred.receive.context import TaskInfo

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "InMemoryDeadLetters",
    "LoggingDeadLetters",
    "record_or_log",
]


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A task given up on.

    Attributes:
        reason: Why: the failure's type and message, or the exhausted retry limit.
        task: The task's headers, as :func:`~cloudtasks_deferred.current_task` saw them.
        callable_name: ``module.qualname`` of the callable, ``None`` if the payload
            did not decode.
        payload_sha256: Hex SHA-256 of the request body; ``None`` when the handler
            never read it (a ``run_from_request`` override failed before calling the
            base class).
        payload_bytes: Size of the request body; ``None`` likewise.
        recorded_at: When the handler gave up (aware UTC).
    """

    reason: str
    task: TaskInfo
    callable_name: str | None
    payload_sha256: str | None
    payload_bytes: int | None
    recorded_at: datetime

    @classmethod
    def for_payload(
        cls, *, reason: str, task: TaskInfo, callable_name: str | None, payload: bytes | None
    ) -> DeadLetter:
        """Builds a dead letter for ``payload`` (``None``: not read) recorded now."""
        return cls(
            reason=reason,
            task=task,
            callable_name=callable_name,
            payload_sha256=hashlib.sha256(payload).hexdigest() if payload is not None else None,
            payload_bytes=len(payload) if payload is not None else None,
            recorded_at=datetime.now(UTC),
        )

    def as_json(self) -> dict[str, Any]:
        """The record as JSON-compatible values (for structured logs)."""
        record = dataclasses.asdict(self)
        record["recorded_at"] = self.recorded_at.isoformat()
        eta = self.task.eta
        record["task"]["eta"] = eta.isoformat() if eta else None
        return record


class DeadLetterSink(Protocol):
    """Receives the tasks the handler gives up on."""

    def record(self, letter: DeadLetter) -> None:
        """Stores or forwards ``letter``; must not raise."""
        ...


class LoggingDeadLetters:
    """Logs dead letters at ERROR as structured records (``extra={"json_fields": ...}``)."""

    logger = logging.getLogger("cloudtasks_deferred.dead_letters")

    def record(self, letter: DeadLetter) -> None:
        """Logs ``letter``."""
        self.logger.error(
            "dead letter: task %s on queue %s (%s; payload %s bytes, sha256 %s): %s",
            letter.task.task_name,
            letter.task.queue_name,
            letter.callable_name or "undecodable payload",
            letter.payload_bytes if letter.payload_bytes is not None else "unread",
            letter.payload_sha256 or "-",
            letter.reason,
            extra={"json_fields": {"dead_letter": letter.as_json()}},
        )


class InMemoryDeadLetters:
    """Keeps dead letters in a list, for tests. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._letters: list[DeadLetter] = []

    def record(self, letter: DeadLetter) -> None:
        """Appends ``letter``."""
        with self._lock:
            self._letters.append(letter)

    @property
    def letters(self) -> list[DeadLetter]:
        """The letters recorded so far, oldest first."""
        with self._lock:
            return list(self._letters)


def record_or_log(sink: DeadLetterSink, letter: DeadLetter) -> None:
    """Hands ``letter`` to ``sink``; if the sink raises, logs the letter instead.

    The task is answered 200 either way, so its record must not depend on the sink.
    """
    try:
        sink.record(letter)
    except Exception:
        LoggingDeadLetters.logger.exception(
            "the dead-letter sink %s failed; logging the dead letter instead", type(sink).__name__
        )
        LoggingDeadLetters().record(letter)
