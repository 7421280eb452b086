"""The Datastore entities the library writes, through google-cloud-ndb (the ``ndb`` extra).

=========================  ====================================================================
kind                       holds
=========================  ====================================================================
``_DeferredTaskEntity``    a payload too large for a task, as the legacy library stored it:
                           an unindexed blob ``data``. A payload larger than one entity keeps
                           its first chunk in ``data`` and the number of chunks in ``chunks``;
``_DeferredTaskChunk``     chunk *i* (1-based) of such a payload, a child of its head entity
``_DeferredOutbox``        a transactional task whose creation is not confirmed yet: the task
                           message, and when it was deferred (indexed, for the sweeper)
``_DeferredOutboxRun``     a transactional task that has not run to completion yet, and the
                           lease of the delivery running it
=========================  ====================================================================

All of them live in the default namespace, whatever the caller's, so that one
sweep finds every outbox entry. Every read and write bypasses NDB's caches: these
entities are shared between processes and read once.

Sizes: a payload is cut into chunks of
:data:`~cloudtasks_deferred.storage.chunks.CHUNK_BYTES` (below Datastore's 1,048,487-byte
limit on an unindexed property), at most
:data:`~cloudtasks_deferred.storage.chunks.MAX_CHUNKS` of them, all written in **one
transaction** so that a payload is stored whole or not at all (the reasons for the
cap are in :mod:`cloudtasks_deferred.storage.chunks`).

This module imports ``google.cloud.ndb``; import it only where Datastore is needed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC
from types import MappingProxyType
from typing import Any, Final

from google.cloud import ndb  # type: ignore[attr-defined]

from cloudtasks_deferred.errors import PayloadTooLargeError, PermanentTaskFailure
from cloudtasks_deferred.payload.frame import InvalidPayloadError
from cloudtasks_deferred.storage.chunks import CHUNK_BYTES, MAX_CHUNKS, MAX_STORED_BYTES

__all__ = [
    "DeferredOutbox",
    "DeferredOutboxRun",
    "DeferredTaskChunk",
    "DeferredTaskEntity",
    "delete",
    "delete_payload",
    "describe",
    "discard",
    "load_payload",
    "new_id",
    "parse_key",
    "store_payload",
]

_logger = logging.getLogger(__name__)

#: The default namespace, whatever the caller's context uses.
NAMESPACE: Final = ""
#: Per-operation options: no context cache, no global cache.
NO_CACHE: Final[Mapping[str, Any]] = MappingProxyType(
    {"use_cache": False, "use_global_cache": False}
)


class DeferredTaskEntity(ndb.Expando):  # type: ignore[misc]
    """A stored payload: kind ``_DeferredTaskEntity``, the legacy library's.

    An ``Expando`` so that a payload in one entity carries ``data`` and nothing
    else, exactly as the legacy library wrote it; only a chunked payload's head
    carries ``chunks`` too. Dynamic properties are unindexed.
    """

    _default_indexed = False
    data = ndb.BlobProperty(required=True)

    @classmethod
    def _get_kind(cls) -> str:
        return "_DeferredTaskEntity"


class DeferredTaskChunk(ndb.Model):  # type: ignore[misc]
    """Chunk *i* (its integer ID, from 1) of a payload; child of the head entity."""

    data = ndb.BlobProperty(required=True)

    @classmethod
    def _get_kind(cls) -> str:
        return "_DeferredTaskChunk"


class DeferredOutbox(ndb.Model):  # type: ignore[misc]
    """A transactional task written in the caller's transaction, until it is created.

    Attributes:
        task: The serialized ``google.cloud.tasks_v2.Task``, its name included.
        created: When it was deferred (indexed: the sweeper queries it).
    """

    task = ndb.BlobProperty(required=True)
    created = ndb.DateTimeProperty(required=True, tzinfo=UTC)

    @classmethod
    def _get_kind(cls) -> str:
        return "_DeferredOutbox"


class DeferredOutboxRun(ndb.Model):  # type: ignore[misc]
    """A transactional task that has not run to completion; same ID as its outbox entry.

    Attributes:
        lease_seconds: How long a delivery holds the task while running it.
        leased_until: When the running delivery's lease ends; ``None`` when free.
        lease_token: Identifies the delivery holding the lease.
    """

    lease_seconds = ndb.IntegerProperty(indexed=False, required=True)
    leased_until = ndb.DateTimeProperty(indexed=False, tzinfo=UTC)
    lease_token = ndb.TextProperty()

    @classmethod
    def _get_kind(cls) -> str:
        return "_DeferredOutboxRun"


def describe(key: ndb.Key) -> str:
    """``Key('kind', id, ...)``, computed now: NDB's own ``repr`` needs a context,
    which a log handler formatting the record later may not have."""
    return "Key(" + ", ".join(repr(part) for part in key.flat()) + ")"


def new_id() -> str:
    """A random key name: 32 hex digits, scattered as Datastore recommends."""
    return secrets.token_hex(16)


def store_payload(data: bytes, *, name: str | None = None) -> list[ndb.Key]:
    """Stores a payload as a ``_DeferredTaskEntity`` (and chunks) in one transaction.

    Inside a transaction the writes join it, and commit or roll back with it;
    otherwise a single entity is one put and a chunked payload gets a transaction
    of its own. Needs an NDB context.

    Args:
        data: The bytes to store (a task body frame).
        name: The head entity's key name; a random one (:func:`new_id`) when ``None``.
            Storing under a name that exists replaces that payload (a retried write).

    Returns:
        The keys written, the head entity's first.

    Raises:
        PayloadTooLargeError: ``data`` is over :data:`MAX_STORED_BYTES`; nothing is
            written.
    """
    if len(data) > MAX_STORED_BYTES:
        raise PayloadTooLargeError(
            f"the payload is {len(data):,} bytes; Datastore stores at most "
            f"{MAX_STORED_BYTES:,} ({MAX_CHUNKS} entities of {CHUNK_BYTES:,} bytes written "
            "in one transaction): pass a reference to the data (a Datastore key, a Cloud "
            "Storage object) instead of the data"
        )
    key = ndb.Key(DeferredTaskEntity, name or new_id(), namespace=NAMESPACE)
    parts = [data[start : start + CHUNK_BYTES] for start in range(0, len(data), CHUNK_BYTES)]
    head = DeferredTaskEntity(key=key, data=parts[0])
    if len(parts) > 1:
        head.chunks = len(parts)
    entities = [head] + [
        DeferredTaskChunk(parent=key, id=index, data=part)
        for index, part in enumerate(parts[1:], start=1)
    ]
    if len(entities) == 1 or ndb.in_transaction():
        ndb.put_multi(entities, **NO_CACHE)
    else:
        ndb.transaction(lambda: ndb.put_multi(entities, **NO_CACHE))
    return [entity.key for entity in entities]


def load_payload(key: ndb.Key) -> tuple[bytes, list[ndb.Key]] | None:
    """Reads a stored payload, chunk by chunk.

    Chunks are read one at a time: a lookup of several ~1 MB entities could exceed
    the 4 MiB gRPC response limit of google-cloud-ndb's production channel. Needs an
    NDB context.

    Args:
        key: The head entity's key.

    Returns:
        The payload and every key it occupies (to delete them), or ``None`` if the
        head entity does not exist.

    Raises:
        PermanentTaskFailure: A chunk is missing or the head is malformed.
    """
    head = key.get(**NO_CACHE)
    if head is None:
        return None
    count = getattr(head, "chunks", None) or 1
    data = head.data
    if not isinstance(count, int) or count < 1 or not isinstance(data, bytes):
        raise PermanentTaskFailure(f"the stored payload {describe(key)} is malformed")
    parts = [data]
    keys = [key]
    for index in range(1, count):
        chunk_key = ndb.Key(DeferredTaskChunk, index, parent=key)
        chunk = chunk_key.get(**NO_CACHE)
        if chunk is None:
            raise PermanentTaskFailure(
                f"the stored payload {describe(key)} lacks chunk {index} of {count}"
            )
        parts.append(chunk.data)
        keys.append(chunk_key)
    return b"".join(parts), keys


def delete(keys: Sequence[ndb.Key]) -> None:
    """Deletes entities by key, outside any transaction (which may have ended)."""
    ndb.non_transactional()(ndb.delete_multi)(list(keys), **NO_CACHE)


def delete_payload(key: ndb.Key) -> bool:
    """Deletes a stored payload and its chunks, outside any transaction.

    Args:
        key: The head entity's key.

    Returns:
        Whether the payload existed.
    """
    head = key.get(**NO_CACHE)
    if head is None:
        return False
    count = getattr(head, "chunks", None)
    chunks = range(1, count) if isinstance(count, int) else range(0)
    delete([key, *(ndb.Key(DeferredTaskChunk, index, parent=key) for index in chunks)])
    return True


def parse_key(value: object, model: type[Any]) -> ndb.Key:
    """Reads a key of ``model``'s kind from what a task carries.

    Args:
        value: An ``ndb.Key``, or its URL-safe string (``str`` or ``bytes``) — what
            the legacy library passed (``str(db.Key)`` was the URL-safe form).
        model: The model whose kind the key must have.

    Returns:
        The key.

    Raises:
        InvalidPayloadError: ``value`` is not a key, or a key of another kind (a
            permanent failure).
    """
    if isinstance(value, ndb.Key):
        key = value
    elif isinstance(value, (str, bytes)):
        try:
            key = ndb.Key(urlsafe=value)
        except Exception as exc:
            # Neither the value nor the error's text: both come from the task's argument.
            raise InvalidPayloadError(
                f"the {type(value).__name__} given is not a URL-safe Datastore key "
                f"({type(exc).__module__}.{type(exc).__qualname__})"
            ) from None
    else:
        raise InvalidPayloadError(
            f"expected a Datastore key or its URL-safe string, got {type(value).__name__}"
        )
    kind = model._get_kind()
    if key.kind() != kind:
        raise InvalidPayloadError(f"{describe(key)} is not a {kind} key")
    return key


def discard(keys: Sequence[ndb.Key], why: str) -> None:
    """Deletes a stored payload's entities, logging (never raising) when that fails.

    Used once a task is finished or was never created: raising would turn a finished
    task into a retry, so a leftover is logged with its key instead.

    Args:
        keys: The payload's entities, head first.
        why: Why they go, for the log line.
    """
    try:
        delete(keys)
    except Exception:
        _logger.exception("could not delete the stored payload %s after %s", describe(keys[0]), why)
