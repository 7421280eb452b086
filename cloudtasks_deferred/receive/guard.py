"""The handler side of transactional tasks: each delivery claims the task's run entry.

A transactional task's frame names its ``_DeferredOutboxRun`` entry (see
:mod:`cloudtasks_deferred.enqueue.outbox` for the whole design and the guarantee).
The handler (:class:`~cloudtasks_deferred.receive.handler.TaskHandler`) hands such a
task to :func:`run_once`, which, in an NDB transaction:

* finds no entry: the call already succeeded or failed permanently, so this
  delivery is a duplicate — it returns without running anything (200);
* finds the entry leased by another delivery until a time still to come: raises
  :class:`~cloudtasks_deferred.errors.SingularTaskFailure` (408), and Cloud Tasks
  retries this delivery later;
* otherwise leases the entry for the task's dispatch deadline and runs the call.

After the call, the entry (and the outbox entry, if still there) is deleted when
the call succeeded, failed permanently, or exhausted the task's own retry options;
on any other failure the lease is released, so that Cloud Tasks' retry runs the
call again.
"""

from __future__ import annotations

import enum
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import ndb  # type: ignore[attr-defined]

from cloudtasks_deferred.errors import PermanentTaskFailure, SingularTaskFailure
from cloudtasks_deferred.payload.calls import OpenedPayload
from cloudtasks_deferred.receive.context import current_task
from cloudtasks_deferred.receive.receiver import ReceivingClient
from cloudtasks_deferred.receive.retry import gives_up
from cloudtasks_deferred.storage import entities as storage

__all__ = ["run_once"]

_logger = logging.getLogger(__name__)


class _Claim(enum.Enum):
    TAKEN = "taken"
    BUSY = "busy"
    DONE = "done"


def run_once(client: ReceivingClient, entry: object, payload: OpenedPayload) -> Any:
    """Runs a transactional task's call unless it already ran (see the module docstring).

    Args:
        client: Opens the NDB context the claim and the cleanup run in.
        entry: The ``_DeferredOutboxRun`` key's URL-safe string, from the frame.
        payload: The opened task.

    Returns:
        What the call returned; ``None`` for a duplicate delivery.

    Raises:
        InvalidPayloadError: ``entry`` is not a run entry key (a permanent failure).
        SingularTaskFailure: Another delivery is running the call now.
        ConfigurationError: No NDB context can be opened; says what to configure.
        Exception: What the call raised.
    """
    with client.ndb_context(required_for="a transactional task"):
        key = storage.parse_key(entry, storage.DeferredOutboxRun)
        token = secrets.token_hex(8)
        claim = ndb.transaction(lambda: _claim(key, token))
        if claim is _Claim.DONE:
            _logger.info(
                "transactional task %s already ran: this delivery is a duplicate and does nothing",
                key.id(),
            )
            return None
        if claim is _Claim.BUSY:
            raise SingularTaskFailure(
                f"another delivery is running transactional task {key.id()}; "
                "Cloud Tasks retries this one later"
            )
        try:
            result = payload.func(*payload.args, **payload.kwargs)
        except PermanentTaskFailure:
            _finish(key)
            raise
        except Exception:
            if gives_up(payload.metadata, current_task()):
                _finish(key)
            else:
                _release(key, token)
            raise
        _finish(key)
        return result


def _claim(key: ndb.Key, token: str) -> _Claim:
    run = key.get(**storage.NO_CACHE)
    if run is None:
        return _Claim.DONE
    now = datetime.now(UTC)
    if run.leased_until is not None and run.leased_until > now:
        return _Claim.BUSY
    run.leased_until = now + timedelta(seconds=run.lease_seconds)
    run.lease_token = token
    run.put(**storage.NO_CACHE)
    return _Claim.TAKEN


def _finish(key: ndb.Key) -> None:
    entry_key = ndb.Key(storage.DeferredOutbox, key.id(), namespace=key.namespace() or "")
    try:
        storage.delete([key, entry_key])
    except Exception:
        # Raising would make Cloud Tasks retry a finished call; log the leftover instead.
        shown = storage.describe(key)
        _logger.exception("could not delete the run entry %s of a finished task", shown)


def _release(key: ndb.Key, token: str) -> None:
    def release() -> None:
        run = key.get(**storage.NO_CACHE)
        if run is not None and run.lease_token == token:
            run.leased_until = None
            run.lease_token = None
            run.put(**storage.NO_CACHE)

    try:
        ndb.transaction(release)
    except Exception:
        _logger.warning(
            "could not release the lease on %s; the retry runs once the lease expires",
            storage.describe(key),
            exc_info=True,
        )
