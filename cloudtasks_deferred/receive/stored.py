"""Running a payload stored in Datastore: the receiving half of oversized payloads.

A payload too large for a task is stored in a ``_DeferredTaskEntity`` (chunked if
needed; :mod:`cloudtasks_deferred.storage.entities`) and its task runs
``run_from_datastore(key)``, as the legacy library's did
(:mod:`cloudtasks_deferred.enqueue.oversized` writes them). :func:`run_stored` loads
the payload, decodes it under the client's rules, runs it and returns the result; it
deletes the entities after a success and after a permanent failure (including a
failure after which the task's own retry options give up) — unless the client's
dead letters keep payloads for a replay (the Datastore store does; purging the dead
letter deletes them) — and keeps them when the failure will be retried, or when the
stored bytes do not decode (for a fix). A missing entity is a permanent failure,
logged with its key.

google-cloud-ndb (the ``ndb`` extra) is imported when a stored payload runs.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from cloudtasks_deferred.errors import PermanentTaskFailure
from cloudtasks_deferred.payload.calls import OpenedPayload
from cloudtasks_deferred.receive.context import current_task
from cloudtasks_deferred.receive.receiver import ReceivingClient
from cloudtasks_deferred.receive.retry import gives_up

__all__ = ["run_stored"]

_logger = logging.getLogger(__name__)


def run_stored(client: ReceivingClient, key: object) -> Any:
    """Runs a payload stored by ``defer`` (or by the legacy library).

    Args:
        client: Opens the NDB context and decodes the payload under its rules.
        key: The ``_DeferredTaskEntity`` key: an ``ndb.Key``, or its URL-safe string.

    Returns:
        What the deferred call returned.

    Raises:
        PermanentTaskFailure: The entity does not exist (logged with its key), is not
            a payload (the entity is kept, logged with its size and hash), or the
            call raised it.
        ConfigurationError: No NDB context can be opened; says what to configure.
        Exception: What the call raised; the entity is kept for the retry unless the
            task's own retry options are exhausted.
    """
    # google-cloud-ndb (the ndb extra) loads when a stored payload runs.
    from cloudtasks_deferred.storage import entities as storage

    with client.ndb_context(required_for="run_from_datastore"):
        entity_key = storage.parse_key(key, storage.DeferredTaskEntity)
        loaded = storage.load_payload(entity_key)
        if loaded is None:
            shown = storage.describe(entity_key)
            _logger.error("deferred task entity %s does not exist", shown)
            raise PermanentTaskFailure(
                f"the deferred task entity {shown} does not exist: the task ran "
                "already, or its entity was deleted"
            )
        data, keys = loaded
        payload = _open_stored(client, entity_key, data)
        metadata = payload.metadata
        try:
            result = payload.func(*payload.args, **payload.kwargs)
        except PermanentTaskFailure:
            if not client.dead_letters.keeps_payloads:
                storage.discard(keys, "its task failed permanently")
            raise
        except Exception:
            if gives_up(metadata, current_task()) and not client.dead_letters.keeps_payloads:
                storage.discard(keys, "its task exhausted its retry options")
            raise
        storage.discard(keys, "its task succeeded")
        return result


def _open_stored(client: ReceivingClient, key: Any, data: bytes) -> OpenedPayload:
    """Decodes a stored payload; one that does not decode keeps its entity.

    Nothing ran, so nothing is deleted: the entity stays for a fix (a deployment that
    reads it) and a later ``run_from_datastore(key)``. The log names the key, the
    size and the SHA-256 of the stored bytes, never the bytes.

    Raises:
        PermanentTaskFailure: The stored bytes are not a payload (the task is given
            up, as for any body that is not a payload).
        Exception: What ``client.open_payload`` raises otherwise (a refused or
            newer payload, missing code: retried).
    """
    from cloudtasks_deferred.storage import entities as storage  # google-cloud-ndb

    try:
        return client.open_payload(data)
    except PermanentTaskFailure as exc:
        shown = storage.describe(key)
        digest = hashlib.sha256(data).hexdigest()
        _logger.error(
            "the payload stored in %s cannot be decoded (%s: %s; %d bytes, sha256 %s): "
            "the entity is kept, to run it with run_from_datastore once this is fixed",
            shown, type(exc).__name__, exc, len(data), digest,
        )  # fmt: skip
        raise PermanentTaskFailure(
            f"the payload stored in {shown} cannot be decoded ({type(exc).__name__}: {exc}; "
            f"{len(data)} bytes, sha256 {digest}); the entity is kept"
        ) from exc
