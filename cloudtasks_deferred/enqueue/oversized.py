"""Payloads too large for a task: the size decision, and the Datastore fallback.

``defer`` decides from the size of the whole task it would create — body, URL,
headers, OIDC token fields, everything the ``Task`` message carries — against
:data:`MAX_INLINE_TASK_BYTES`, Cloud Tasks' 1 MB limit on a task
(:data:`~cloudtasks_deferred.limits.MAX_TASK_BYTES`, "payload, URL and headers
together") less a :data:`MARGIN_BYTES` margin for what Cloud Tasks adds or counts
beyond the message we send (the OIDC token it mints, its ``X-CloudTasks-*``
headers):

1. the framed pickle travels **inline** as it is when the task fits;
2. otherwise **inline, zlib-compressed** (the frame's compressed flag; the
   handler inflates it with a bound) when the compressed task fits;
3. otherwise the frame — compressed if that is smaller — is **stored in Datastore**
   as a ``_DeferredTaskEntity`` (split into chunk entities written in one
   transaction when it exceeds one entity; see :mod:`cloudtasks_deferred.storage.entities`),
   and the task carries ``run_from_datastore(key)``, exactly as the legacy library
   did. If creating that task fails, the entity is deleted and the error propagates;
4. a payload over :data:`MAX_STORED_BYTES` (4 MB) after compression, or a pickle
   over :data:`~cloudtasks_deferred.payload.frame.MAX_PICKLE_BYTES` (which the handler
   refuses to inflate), raises :class:`~cloudtasks_deferred.errors.PayloadTooLargeError`
   before anything is written or enqueued.

:func:`run_from_datastore` loads the payload, runs it and returns the result; it
deletes the entity after a success and after a permanent failure (including a
failure after which the task's own ``_retry_options`` give up), and keeps it when
the failure will be retried. A missing entity is a permanent failure, logged with
its key. A stored payload that does not decode is a permanent failure too, but
its entity is kept (nothing ran), logged at ERROR with its key, size and hash.

Only step 3 touches Datastore (through google-cloud-ndb, imported then): a payload
that fits inline, compressed or not, costs no Datastore round trip.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from google.api_core import exceptions

from cloudtasks_deferred import limits
from cloudtasks_deferred.errors import PayloadTooLargeError
from cloudtasks_deferred.payload.calls import RUN_FROM_DATASTORE, library_call
from cloudtasks_deferred.payload.frame import MAX_PICKLE_BYTES
from cloudtasks_deferred.storage.chunks import CHUNK_BYTES, MAX_CHUNKS, MAX_STORED_BYTES

if TYPE_CHECKING:
    from google.cloud import tasks_v2

    from cloudtasks_deferred.enqueue.sender import SendingClient

__all__ = [
    "MARGIN_BYTES",
    "MAX_INLINE_TASK_BYTES",
    "Placement",
    "enqueue_stored",
    "place",
    "pointer_body",
    "task_bytes",
]

_logger = logging.getLogger(__name__)

#: Room left under Cloud Tasks' 1 MB for what it adds or counts beyond our message.
MARGIN_BYTES: Final = 16 * 1024
#: The largest task (serialized ``Task`` message) ``defer`` sends, in bytes.
MAX_INLINE_TASK_BYTES: Final = limits.MAX_TASK_BYTES - MARGIN_BYTES

#: Builds the task for a body; raises what ``enqueue.build_task`` raises.
TaskBuilder = Callable[[bytes], "tasks_v2.Task"]
#: Creates a built task; raises what ``enqueue.create_task`` raises.
TaskCreator = Callable[["tasks_v2.Task"], "tasks_v2.Task"]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a payload goes: exactly one of the attributes is set.

    Attributes:
        task: The task carrying the payload inline (compressed or not), ready to create.
        stored: The frame to store in Datastore, for a ``run_from_datastore`` task.
    """

    task: tasks_v2.Task | None = None
    stored: bytes | None = None


def task_bytes(task: tasks_v2.Task) -> int:
    """The size of ``task`` as sent to Cloud Tasks: its serialized ``Task`` message."""
    size: int = type(task).pb(task).ByteSize()
    return size


def place(
    client: SendingClient,
    pickled: bytes,
    metadata: dict[str, Any],
    build: TaskBuilder,
    *,
    max_task_bytes: int = MAX_INLINE_TASK_BYTES,
) -> Placement:
    """Decides how a payload travels (see the module docstring). Touches no network.

    Args:
        client: Frames the payload (:meth:`.Sender.frame_payload`).
        pickled: The pickled call.
        metadata: The frame's metadata.
        build: Builds the task for a body, with every option applied.
        max_task_bytes: The largest task to send inline.

    Returns:
        The inline task, or the frame to store.

    Raises:
        PayloadTooLargeError: The payload fits neither inline nor in Datastore.
    """
    body = client.frame_payload(pickled, metadata)
    task = build(body)
    size = task_bytes(task)
    if size <= max_task_bytes:
        return Placement(task=task)
    if client.settings.cross_compatible_payloads:
        # Python 2 reads neither our compression nor our chunks, and one legacy entity
        # holds no more than a task: the payload must travel inline.
        raise PayloadTooLargeError(
            f"the task is {size:,} bytes, over the {max_task_bytes:,} a task holds; a "
            "cross-compatible payload (CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_PAYLOADS) is "
            "neither compressed nor stored in Datastore: pass a reference instead"
        )
    if len(pickled) > MAX_PICKLE_BYTES:
        raise PayloadTooLargeError(
            f"the pickled call is {len(pickled):,} bytes; the handler unpickles at most "
            f"{MAX_PICKLE_BYTES:,}: pass a reference to the data (a Datastore key, a Cloud "
            "Storage object) instead of the data"
        )
    compressed = client.frame_payload(pickled, metadata, compress=True)
    if size - len(body) + len(compressed) <= max_task_bytes:
        task = build(compressed)
        if task_bytes(task) <= max_task_bytes:
            return Placement(task=task)
    stored = min(body, compressed, key=len)
    if len(stored) > MAX_STORED_BYTES:
        raise PayloadTooLargeError(
            f"the payload is {len(stored):,} bytes after compression; a task holds at most "
            f"{max_task_bytes:,} and the Datastore fallback at most {MAX_STORED_BYTES:,} "
            f"({MAX_CHUNKS} entities of {CHUNK_BYTES:,} bytes, written in one transaction): "
            "pass a reference to the data (a Datastore key, a Cloud Storage object) instead "
            "of the data"
        )
    return Placement(stored=stored)


def pointer_body(client: SendingClient, key: Any, metadata: dict[str, Any]) -> bytes:
    """The body of a task that runs ``run_from_datastore(key)``.

    Args:
        client: Frames the body.
        key: The stored payload's ``ndb.Key``; the task carries its URL-safe string,
            as the legacy library carried ``str(key)``.
        metadata: The frame's metadata (the handler enforces it on the outer task).
    """
    urlsafe = key.urlsafe().decode("ascii")
    return client.frame_payload(library_call(RUN_FROM_DATASTORE, urlsafe), metadata)


def enqueue_stored(
    client: SendingClient,
    stored: bytes,
    metadata: dict[str, Any],
    build: TaskBuilder,
    create: TaskCreator,
) -> tasks_v2.Task:
    """Stores a payload in Datastore and creates the task that runs it from there.

    The entities are written outside any transaction the caller has open (a
    non-transactional ``defer`` enqueues at once, as in the legacy library). If
    ``create`` fails they are deleted; should the service have created the task all
    the same (a timeout), that task finds no entity: a permanent failure logged with
    the key, never a silent drop.

    Args:
        client: Its NDB context is used (one is opened if none is active).
        stored: The frame to store.
        metadata: The frame's metadata, repeated on the pointer task.
        build: Builds the task for a body.
        create: Creates the task.

    Returns:
        The created task.

    Raises:
        ConfigurationError: No NDB context can be opened; says what to configure.
        google.api_core.exceptions.ServiceUnavailable: Datastore was unavailable
            (google-cloud-ndb gave up retrying): the message names Datastore, and
            NDB's error is its ``__cause__``. Nothing was stored or enqueued.
        google.api_core.exceptions.GoogleAPICallError: Datastore refused the write,
            with a note naming Datastore. Nothing was stored or enqueued.
        Exception: What ``create`` raised, after the entities were deleted.
    """
    # google-cloud-ndb (the ndb extra) loads only for a payload that needs Datastore.
    from google.cloud import ndb  # type: ignore[attr-defined]

    from cloudtasks_deferred.storage import entities as storage

    with client.ndb_context(required_for="a payload over Cloud Tasks' task size limit"):
        try:
            keys = ndb.non_transactional()(storage.store_payload)(stored)
        except exceptions.GoogleAPICallError as exc:
            exc.add_note(f"cloudtasks_deferred: {_not_stored(len(stored))}")
            raise
        except exceptions.GoogleAPIError as exc:
            # google-cloud-ndb's RetryError (its retries of an unavailable Datastore ran
            # out) is no GoogleAPICallError, and names neither Datastore nor the cause.
            cause = exc.cause if isinstance(exc, exceptions.RetryError) else None
            raise exceptions.ServiceUnavailable(
                f"Datastore is unavailable: {_not_stored(len(stored))}; defer again "
                f"later (NDB: {cause or exc})"
            ) from exc
        try:
            return create(build(pointer_body(client, keys[0], metadata)))
        except Exception:
            storage.discard(keys, "its task could not be created")
            raise


def _not_stored(size: int) -> str:
    return (
        f"Datastore could not store this task's {size:,}-byte payload (too large for a "
        "task, it travels in a _DeferredTaskEntity); nothing was enqueued"
    )
