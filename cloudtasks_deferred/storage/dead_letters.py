"""Dead letters: the record of a task the handler gave up on, and the rules of its life.

A task the handler gives up on — it raised ``PermanentTaskFailure``, exhausted its own
``_retry_options``, or its body is not a payload — is answered 200 and Cloud Tasks
drops it. A payload the allowlist refuses is answered 403 and Cloud Tasks retries it,
under the queue's retry configuration, until the configuration is fixed or the queue
gives up. Either way the handler records a :class:`DeadLetter`, so that an operator
can find the task and run it again once the cause is fixed
(:mod:`cloudtasks_deferred.dead_letters`, ``cloudtasks-deferred dead-letters``).

**One record per task.** A record's ID is derived from the task's queue, name and
payload (:func:`letter_id`): the repeated refusals of one task, or a duplicate
delivery, update one record (its ``deliveries`` count) rather than pile up.

**Status.** A record is ``new`` when recorded; ``replaying`` while an operator's replay
creates the task that runs it again; ``replayed`` once that task exists; ``resolved``
when a later delivery of the task by its own queue took it over (the allowlist was
widened and Cloud Tasks' retry ran it).

**A task runs once, whoever runs it again.** A record is the single claim on its task:
before a *redelivered* task runs (Cloud Tasks' retry count above 0), the handler claims
its record (:func:`claimed`): a ``new`` record becomes ``resolved`` and the delivery
runs; a ``replaying`` or ``replayed`` record makes the delivery do nothing (200: the
replay runs the task instead). A replay, for its part, starts only from a ``new``
record (:func:`replay_started`) and refuses a ``resolved`` one. Both transitions are
transactions on the record, so of a replay and Cloud Tasks' own retry exactly one runs
the task. (A first delivery, retry count 0, is not checked: it cannot follow a record.)

The record holds what a replay needs — the body, the URL it was sent to, the headers
**without credentials** (never ``Authorization``, cookies or anything named like a
token, key or secret) — and what an operator needs to judge it: reason, traceback,
attempt counts, timestamps. It is as sensitive as the payload: who can read the
records can read the task's arguments. Where records are kept is the
:class:`DeadLetterSink`'s business (:mod:`cloudtasks_deferred.storage.dead_letter_sinks`).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol, runtime_checkable

from cloudtasks_deferred.errors import DeadLetterError

__all__ = [
    "MAX_REASON_CHARS",
    "MAX_TRACEBACK_CHARS",
    "Cause",
    "DeadLetter",
    "DeadLetterSink",
    "DeadLetterStore",
    "Status",
    "claimed",
    "letter_id",
    "merged",
    "replay_finished",
    "replay_started",
]

#: Characters of a traceback kept (its end, where the error is).
MAX_TRACEBACK_CHARS: Final = 16_000
#: Characters of a reason kept.
MAX_REASON_CHARS: Final = 2_000


class Cause(enum.Enum):
    """Why the handler gave the task up."""

    #: The callable raised ``PermanentTaskFailure``.
    PERMANENT_FAILURE = "permanent-failure"
    #: The task's own ``_retry_options`` allow no more attempts.
    RETRIES_EXHAUSTED = "retries-exhausted"
    #: The body is not a payload (or costs more to decode than its budget).
    INVALID_PAYLOAD = "invalid-payload"
    #: The allowlist refused the payload (403: Cloud Tasks retries the task).
    REFUSED = "refused"


class Status(enum.Enum):
    """Where a dead letter stands (see the module docstring)."""

    NEW = "new"
    REPLAYING = "replaying"
    REPLAYED = "replayed"
    RESOLVED = "resolved"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A task given up on (or refused), as recorded.

    Attributes:
        id: The record's ID (:func:`letter_id`).
        cause: Why the task was given up.
        reason: The failure's type and message, or the exhausted retry limit.
        traceback: The failure's traceback, its last :data:`MAX_TRACEBACK_CHARS`.
        queue_name: Short queue ID the task came from.
        task_name: Short task ID.
        retry_count: Cloud Tasks' retry count on the last recorded delivery.
        execution_count: Cloud Tasks' execution count on the last recorded delivery.
        url: Where the task was delivered: the absolute URL of an HTTP task, or the
            relative URI of an App Engine task.
        app_engine_service: For an App Engine task, the service that received it.
        headers: The request's headers, credentials removed, as ``(name, value)``.
        callable_name: ``module.qualname`` of the callable; ``None`` if the payload
            did not decode.
        payload: The request body; ``None`` when the handler never read it (an
            overriding ``run_from_request`` failed first): such a record cannot be
            replayed.
        payload_sha256: Hex SHA-256 of the body (``None`` if unread).
        payload_bytes: The body's size (``None`` if unread).
        stored_payload: For a payload too large for a task, the URL-safe key of the
            ``_DeferredTaskEntity`` holding it, which is kept for the replay.
        deliveries: Deliveries recorded into this record (a refused task's retries).
        first_failed_at: When the first of them was recorded (aware UTC).
        last_failed_at: When the last of them was recorded (aware UTC).
        status: Where the record stands.
        replays: Replays started (the replay task of replay *n* is named after the
            record ID and *n*).
        replay_task: Full name of the last replay's task.
        replayed_at: When the last replay's task was created.
        resolved_at: When a later delivery from the queue took the task over.
    """

    id: str
    cause: Cause
    reason: str
    traceback: str | None = None
    queue_name: str | None = None
    task_name: str | None = None
    retry_count: int | None = None
    execution_count: int | None = None
    url: str | None = None
    app_engine_service: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    callable_name: str | None = None
    payload: bytes | None = None
    payload_sha256: str | None = None
    payload_bytes: int | None = None
    stored_payload: str | None = None
    deliveries: int = 1
    first_failed_at: datetime
    last_failed_at: datetime
    status: Status = Status.NEW
    replays: int = 0
    replay_task: str | None = None
    replayed_at: datetime | None = None
    resolved_at: datetime | None = None

    @classmethod
    def new(
        cls,
        *,
        cause: Cause,
        reason: str,
        payload: bytes | None,
        queue_name: str | None,
        task_name: str | None,
        now: datetime | None = None,
        **fields: Any,
    ) -> DeadLetter:
        """A record of one delivery, with its ID, sizes and timestamps filled in.

        Args:
            cause: Why the task was given up.
            reason: The failure's type and message (cut to :data:`MAX_REASON_CHARS`).
            payload: The body, ``None`` if unread.
            queue_name: Short queue ID.
            task_name: Short task ID.
            now: When (aware UTC); the current time when ``None``.
            **fields: Any other attribute (``traceback`` is cut to its end).
        """
        when = now or datetime.now(UTC)
        digest = hashlib.sha256(payload).hexdigest() if payload is not None else None
        traceback = fields.pop("traceback", None)
        return cls(
            id=letter_id(queue_name, task_name, digest),
            cause=cause,
            reason=reason[:MAX_REASON_CHARS],
            traceback=traceback[-MAX_TRACEBACK_CHARS:] if traceback else None,
            payload=payload,
            payload_sha256=digest,
            payload_bytes=len(payload) if payload is not None else None,
            queue_name=queue_name,
            task_name=task_name,
            first_failed_at=when,
            last_failed_at=when,
            **fields,
        )

    @property
    def attempts(self) -> int | None:
        """Attempts Cloud Tasks made up to the last recorded one (retry count + 1)."""
        return self.retry_count + 1 if self.retry_count is not None else None

    def as_json(self, *, traceback: bool = True) -> dict[str, Any]:
        """The record as JSON values: everything but the payload's bytes.

        Args:
            traceback: Include the traceback (logs carry it already).
        """
        record: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "payload" or (field.name == "traceback" and not traceback):
                continue
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif field.name == "headers":
                value = dict(value)
            record[field.name] = value
        return record


def letter_id(queue_name: str | None, task_name: str | None, payload_sha256: str | None) -> str:
    """The ID of a task's record: 32 hex digits.

    Derived from the queue, the task's name and its payload's hash, so that every
    delivery of one task names one record (and a reused task name with another
    payload another); random when the task has no name (a request that did not come
    from a queue). Hashed, as Datastore recommends for keys.
    """
    if task_name is None:
        return os.urandom(16).hex()  # what secrets.token_hex does, without importing random
    source = f"{queue_name or ''}\n{task_name}\n{payload_sha256 or ''}"
    return hashlib.sha256(source.encode()).hexdigest()[:32]


# The rules, pure: each store applies them inside its own transaction.


def merged(existing: DeadLetter | None, letter: DeadLetter) -> DeadLetter:
    """The record after ``letter``, a new delivery of the same task, is recorded.

    The delivery's facts replace the old ones and the count grows; a ``resolved``
    record is ``new`` again (the task failed after its queue took it over), while a
    ``replaying`` or ``replayed`` one keeps its status: its replay owns the task.
    """
    if existing is None:
        return letter
    keeps = existing.status in (Status.REPLAYING, Status.REPLAYED)
    return dataclasses.replace(
        letter,
        first_failed_at=existing.first_failed_at,
        deliveries=existing.deliveries + 1,
        payload=letter.payload if letter.payload is not None else existing.payload,
        stored_payload=letter.stored_payload or existing.stored_payload,
        status=existing.status if keeps else Status.NEW,
        replays=existing.replays,
        replay_task=existing.replay_task,
        replayed_at=existing.replayed_at,
        resolved_at=None,
    )


def claimed(existing: DeadLetter | None, now: datetime) -> tuple[bool, DeadLetter | None]:
    """Whether a redelivery of the record's task may run, and the record after it.

    Returns:
        ``(may run, the record to write or None)``: no record or a ``resolved`` one:
        run, nothing to write; ``new``: run, and the record becomes ``resolved``;
        ``replaying`` or ``replayed``: do not run (the replay runs the task).
    """
    if existing is None or existing.status is Status.RESOLVED:
        return True, None
    if existing.status is Status.NEW:
        return True, dataclasses.replace(existing, status=Status.RESOLVED, resolved_at=now)
    return False, None


def replay_started(existing: DeadLetter | None, record_id: str) -> DeadLetter:
    """The record once a replay of it starts: ``replaying``, with its replay number.

    A ``new`` record gets the next replay number; a ``replaying`` one (a replay
    interrupted before it finished) keeps its number, so that resuming it names the
    same task.

    Raises:
        DeadLetterError: No such record, its body was never read, or it was replayed
            already or resolved by its queue.
    """
    if existing is None:
        raise DeadLetterError(f"no dead letter {record_id}")
    if existing.payload is None:
        raise DeadLetterError(
            f"dead letter {record_id} has no payload (the handler never read the request "
            "body): there is nothing to replay"
        )
    if existing.status is Status.REPLAYED:
        raise DeadLetterError(
            f"dead letter {record_id} was replayed already, as task {existing.replay_task} "
            f"at {_shown(existing.replayed_at)}; if that task failed too, it has a dead letter "
            "of its own"
        )
    if existing.status is Status.RESOLVED:
        raise DeadLetterError(
            f"dead letter {record_id} is resolved: a later delivery from queue "
            f"{existing.queue_name} ran its task at {_shown(existing.resolved_at)}, so a "
            "replay would run it twice"
        )
    if existing.status is Status.REPLAYING:
        return existing
    return dataclasses.replace(existing, status=Status.REPLAYING, replays=existing.replays + 1)


def replay_finished(
    existing: DeadLetter | None, record_id: str, number: int, task_name: str, now: datetime
) -> DeadLetter:
    """The record once replay ``number`` created its task: ``replayed``.

    Raises:
        DeadLetterError: The record is gone, or is not in replay ``number`` (another
            replay finished it, or it was purged meanwhile).
    """
    if existing is not None and existing.status is Status.REPLAYED and existing.replays == number:
        return existing  # finished already: a retried finish
    if existing is None or existing.status is not Status.REPLAYING or existing.replays != number:
        shown = "gone" if existing is None else f"{existing.status.value}"
        raise DeadLetterError(
            f"dead letter {record_id} is {shown}, not in replay {number}: its task "
            f"{task_name} was created, but the record was changed meanwhile"
        )
    return dataclasses.replace(
        existing, status=Status.REPLAYED, replay_task=task_name, replayed_at=now
    )


def _shown(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "an unknown time"


class DeadLetterSink(Protocol):
    """Where the handler records the tasks it gives up on: what the handler needs."""

    @property
    def keeps_payloads(self) -> bool:
        """Whether records keep payloads, to be replayed: a stored payload's
        ``_DeferredTaskEntity`` is then kept when its task is given up."""
        ...

    def record(self, letter: DeadLetter) -> None:
        """Stores ``letter``, or merges it into the record of the same ID (:func:`merged`)."""
        ...

    def claim(self, letter_id: str) -> bool:
        """Claims a redelivered task's record before it runs (:func:`claimed`).

        Returns:
            Whether the delivery may run the task.
        """
        ...


@runtime_checkable
class DeadLetterStore(DeadLetterSink, Protocol):
    """A sink whose records can be read back, replayed and purged: the operator's side."""

    def get(self, letter_id: str) -> DeadLetter | None:
        """The record with this ID, or ``None``."""
        ...

    def find(
        self,
        *,
        queue: str | None = None,
        since: datetime | None = None,
        statuses: Collection[Status] | None = None,
        limit: int | None = None,
    ) -> Sequence[DeadLetter]:
        """Records, most recently failed first.

        Args:
            queue: Only this queue's (short ID).
            since: Only those last recorded at or after this time.
            statuses: Only these; every status when ``None``.
            limit: At most this many; all when ``None``.
        """
        ...

    def begin_replay(self, letter_id: str) -> DeadLetter:
        """Applies :func:`replay_started` in a transaction; returns the record."""
        ...

    def finish_replay(self, letter_id: str, number: int, task_name: str) -> DeadLetter:
        """Applies :func:`replay_finished` in a transaction; returns the record."""
        ...

    def purge(self, before: datetime) -> int:
        """Deletes the records last recorded before ``before`` (and the stored
        payloads they kept); returns how many."""
        ...
