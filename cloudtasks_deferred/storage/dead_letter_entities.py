"""Dead letters in Datastore: the ``_DeferredDeadLetter`` kind, through google-cloud-ndb.

One entity per record (:class:`~cloudtasks_deferred.storage.dead_letters.DeadLetter`),
keyed by the record's ID in the default namespace, like the library's other kinds.
Indexed: ``status``, ``cause``, ``queue_name`` and ``last_failed_at`` (single-property
indexes, which Datastore builds by itself: no ``index.yaml``); everything else is
unindexed. Every change is a read-modify-write in a transaction applying the rules of
:mod:`~cloudtasks_deferred.storage.dead_letters`, and bypasses NDB's caches.

Sizes: a body of up to :data:`INLINE_PAYLOAD_BYTES` is kept in the entity; a larger
one (a task holds up to 1 MB, an entity 1,048,572 bytes with everything else) in a
``_DeferredTaskEntity`` named ``dl-ID``
(:func:`~cloudtasks_deferred.storage.entities.store_payload`), which :func:`purge`
deletes with the record. Reads fetch entities a few at a time, so
that no response nears the 4 MiB gRPC limit.

This module imports ``google.cloud.ndb``; every function needs an NDB context.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from google.cloud import ndb  # type: ignore[attr-defined]

from cloudtasks_deferred.errors import DeadLetterError
from cloudtasks_deferred.storage import entities
from cloudtasks_deferred.storage.dead_letters import (
    Cause,
    DeadLetter,
    Status,
    claimed,
    merged,
    replay_finished,
    replay_started,
)

__all__ = [
    "INLINE_PAYLOAD_BYTES",
    "DeferredDeadLetter",
    "begin_replay",
    "claim",
    "find",
    "finish_replay",
    "get",
    "purge",
    "record",
]

#: The largest body kept inside the record's entity, in bytes.
INLINE_PAYLOAD_BYTES: Final = 900_000
#: Entities fetched per lookup: each may hold up to ~1 MB.
_BATCH: Final = 3


class DeferredDeadLetter(ndb.Model):  # type: ignore[misc]
    """A dead letter: kind ``_DeferredDeadLetter`` (the fields of ``DeadLetter``).

    ``payload`` holds the body, or ``payload_key`` the URL-safe key of the
    ``_DeferredTaskEntity`` holding a body too large for the entity.
    """

    cause = ndb.StringProperty(required=True)
    status = ndb.StringProperty(required=True)
    queue_name = ndb.StringProperty()
    last_failed_at = ndb.DateTimeProperty(required=True, tzinfo=UTC)
    first_failed_at = ndb.DateTimeProperty(indexed=False, required=True, tzinfo=UTC)
    task_name = ndb.TextProperty()
    reason = ndb.TextProperty(required=True)
    traceback = ndb.TextProperty()
    retry_count = ndb.IntegerProperty(indexed=False)
    execution_count = ndb.IntegerProperty(indexed=False)
    url = ndb.TextProperty()
    app_engine_service = ndb.TextProperty()
    headers = ndb.JsonProperty()
    callable_name = ndb.TextProperty()
    payload = ndb.BlobProperty()
    payload_key = ndb.TextProperty()
    payload_sha256 = ndb.TextProperty()
    payload_bytes = ndb.IntegerProperty(indexed=False)
    stored_payload = ndb.TextProperty()
    deliveries = ndb.IntegerProperty(indexed=False, required=True)
    replays = ndb.IntegerProperty(indexed=False, required=True)
    replay_task = ndb.TextProperty()
    replayed_at = ndb.DateTimeProperty(indexed=False, tzinfo=UTC)
    resolved_at = ndb.DateTimeProperty(indexed=False, tzinfo=UTC)

    @classmethod
    def _get_kind(cls) -> str:
        return "_DeferredDeadLetter"


def record(letter: DeadLetter) -> None:
    """Stores ``letter``, merged into the record of the same ID if there is one."""

    def write() -> None:
        entity = _key(letter.id).get(**entities.NO_CACHE)
        existing = _letter(entity) if entity is not None else None
        _put(merged(existing, letter), entity)

    ndb.transaction(write)


def claim(letter_id: str) -> bool:
    """Claims a redelivered task's record (:func:`~.dead_letters.claimed`)."""
    if _key(letter_id).get(**entities.NO_CACHE) is None:  # the usual case: one lookup
        return True

    def take() -> bool:
        entity = _key(letter_id).get(**entities.NO_CACHE)
        allowed, updated = claimed(
            _letter(entity) if entity is not None else None, datetime.now(UTC)
        )
        if updated is not None:
            _put(updated, entity)
        return allowed

    allowed: bool = ndb.transaction(take)
    return allowed


def get(letter_id: str) -> DeadLetter | None:
    """The record with this ID, or ``None``."""
    entity = _key(letter_id).get(**entities.NO_CACHE)
    return _letter(entity) if entity is not None else None


def find(
    *,
    queue: str | None,
    since: datetime | None,
    statuses: Collection[Status] | None,
    limit: int | None,
) -> list[DeadLetter]:
    """Records, most recently failed first (see ``DeadLetterStore.find``).

    The query orders by ``last_failed_at`` alone, so it needs no composite index;
    the queue and status are filtered as the records are read.
    """
    found: list[DeadLetter] = []
    for entity in _entities(since=since, before=None):
        letter = _letter(entity)
        if queue is not None and letter.queue_name != queue:
            continue
        if statuses is not None and letter.status not in statuses:
            continue
        found.append(letter)
        if limit is not None and len(found) >= limit:
            break
    return found


def begin_replay(letter_id: str) -> DeadLetter:
    """Applies :func:`~.dead_letters.replay_started` in a transaction."""

    def start() -> DeadLetter:
        entity = _key(letter_id).get(**entities.NO_CACHE)
        started = replay_started(_letter(entity) if entity is not None else None, letter_id)
        _put(started, entity)
        return started

    started: DeadLetter = ndb.transaction(start)
    return started


def finish_replay(letter_id: str, number: int, task_name: str) -> DeadLetter:
    """Applies :func:`~.dead_letters.replay_finished` in a transaction."""

    def finish() -> DeadLetter:
        entity = _key(letter_id).get(**entities.NO_CACHE)
        existing = _letter(entity) if entity is not None else None
        done = replay_finished(existing, letter_id, number, task_name, datetime.now(UTC))
        if done is not existing:
            _put(done, entity)
        return done

    done: DeadLetter = ndb.transaction(finish)
    return done


def purge(before: datetime) -> int:
    """Deletes the records last recorded before ``before``, with the payloads they kept.

    Returns:
        How many records were deleted.
    """
    count = 0
    for entity in _entities(since=None, before=before):
        for urlsafe in (entity.payload_key, entity.stored_payload):
            if urlsafe:
                entities.delete_payload(ndb.Key(urlsafe=urlsafe))
        entities.delete([entity.key])
        count += 1
    return count


def _key(letter_id: str) -> ndb.Key:
    if not (isinstance(letter_id, str) and 0 < len(letter_id) <= 500):
        raise DeadLetterError(f"{letter_id!r} is not a dead letter ID")
    return ndb.Key(DeferredDeadLetter, letter_id, namespace=entities.NAMESPACE)


def _entities(*, since: datetime | None, before: datetime | None) -> Iterator[Any]:
    """Entities by ``last_failed_at``, newest first, fetched a few at a time."""
    model = DeferredDeadLetter
    query = model.query(namespace=entities.NAMESPACE)
    if since is not None:
        query = query.filter(model.last_failed_at >= since)
    if before is not None:
        query = query.filter(model.last_failed_at < before)
    keys = query.order(-model.last_failed_at).iter(keys_only=True)
    while batch := list(itertools.islice(keys, _BATCH)):
        for entity in ndb.get_multi(batch, **entities.NO_CACHE):
            if entity is not None:  # deleted since the query ran
                yield entity


def _put(letter: DeadLetter, entity: Any | None) -> None:
    """Writes ``letter`` over ``entity`` (its stored form), or as a new entity."""
    values: dict[str, Any] = {
        field.name: getattr(letter, field.name)
        for field in dataclasses.fields(letter)
        if field.name not in ("id", "payload", "cause", "status", "headers")
    }
    values.update(
        cause=letter.cause.value,
        status=letter.status.value,
        headers=[list(pair) for pair in letter.headers],
    )
    payload = letter.payload
    if entity is not None and (entity.payload_key or entity.payload is not None):
        # The same ID is the same body: keep where it is.
        values.update(payload=entity.payload, payload_key=entity.payload_key)
    elif payload is not None and len(payload) > INLINE_PAYLOAD_BYTES:
        [head, *_] = entities.store_payload(payload, name=f"dl-{letter.id}")
        values.update(payload=None, payload_key=head.urlsafe().decode("ascii"))
    else:
        values.update(payload=payload, payload_key=None)
    DeferredDeadLetter(key=_key(letter.id), **values).put(**entities.NO_CACHE)


def _letter(entity: Any) -> DeadLetter:
    """The record an entity holds."""
    payload = entity.payload
    if entity.payload_key:
        loaded = entities.load_payload(ndb.Key(urlsafe=entity.payload_key))
        payload = loaded[0] if loaded is not None else None
    return DeadLetter(
        id=entity.key.id(),
        cause=Cause(entity.cause),
        status=Status(entity.status),
        reason=entity.reason,
        traceback=entity.traceback,
        queue_name=entity.queue_name,
        task_name=entity.task_name,
        retry_count=entity.retry_count,
        execution_count=entity.execution_count,
        url=entity.url,
        app_engine_service=entity.app_engine_service,
        headers=tuple((str(name), str(value)) for name, value in entity.headers or ()),
        callable_name=entity.callable_name,
        payload=payload,
        payload_sha256=entity.payload_sha256,
        payload_bytes=entity.payload_bytes,
        stored_payload=entity.stored_payload,
        deliveries=entity.deliveries,
        first_failed_at=entity.first_failed_at,
        last_failed_at=entity.last_failed_at,
        replays=entity.replays,
        replay_task=entity.replay_task,
        replayed_at=entity.replayed_at,
        resolved_at=entity.resolved_at,
    )
