"""Transactional tasks: ``defer(..., _transactional=True)`` enqueues iff the transaction commits.

Cloud Tasks cannot take part in a Datastore transaction, so a transactional
``defer`` goes through an *outbox* in Datastore (google-cloud-ndb), on App Engine
and Cloud Run alike:

1. **Inside the caller's NDB transaction** it writes two entities under one random
   ID: a ``_DeferredOutbox`` entry (the complete task message, and when it was
   deferred) and a ``_DeferredOutboxRun`` entry (the task has yet to run). A
   payload too large for a task is stored in the same transaction. If the
   transaction rolls back, none of it exists and nothing is ever enqueued.
2. **After the commit** (NDB's ``call_on_commit``) it creates the task and deletes
   the outbox entry. A failure there is logged, never raised: the transaction has
   committed, and the sweeper finishes the job.
3. **The sweeper** (:mod:`cloudtasks_deferred.enqueue.sweep`: ``cloudtasks-deferred
   sweep``, or ``POST /_ah/queue/deferred/sweep`` from Cloud Scheduler) creates the
   task of every outbox entry older than a threshold (5 minutes by default): a
   process that died between the commit and step 2 loses nothing.
4. **The handler** runs the task under its run entry (:mod:`cloudtasks_deferred.receive.guard`):
   it claims the entry with a lease in a transaction, runs the call, and deletes
   the entry once the call succeeded or failed permanently; on a retryable failure
   it releases the lease, so Cloud Tasks' retry runs the call again.

The task's name is derived from the outbox key: a SHA-256 prefix of the key, then
its ID (hash-prefixed, not sequential, as Cloud Tasks recommends for throughput).
The same entry always yields the same name, so when the sweeper re-creates a task
that was in fact created, Cloud Tasks answers ``ALREADY_EXISTS`` within its dedupe
window (about an hour after the task ends) and the sweeper counts it as created.

**The guarantee.** The task is created if and only if the transaction commits
(eventually, by the sweeper, if the process dies right after the commit). Each
delivery that finds the run entry gone — the call already succeeded or failed
permanently — does nothing and answers 200, so duplicate deliveries (the sweeper's
re-creation, Cloud Tasks' at-least-once delivery, a name reused after the dedupe
window, the emulator, which never deduplicates) run nothing. A delivery that finds
another one holding the lease answers 408 and Cloud Tasks retries it later. The
call itself runs at least once and, barring one failure, at most once: it can run
a second time only if the process dies (or Datastore fails) after the call returned
and before its run entry is deleted, or if a run outlasts its lease (the task's
dispatch deadline, 10 minutes by default) while a retry arrives. A failed run is
always retried, as any task's.

Not supported with ``_transactional=True``: ``_name`` (the name comes from the
outbox, as the legacy ``taskqueue`` refused names on transactional tasks).

**Many at once.** Inside :func:`created_together` (what ``defer_many`` opens), step 2
is one step for all the block's tasks: after the commit they are created
concurrently, then their outbox entries deleted in one batch; the guarantee is the
same. Each transactional task writes two root entities (two entity groups) and its
whole task message into the transaction: Firestore in Datastore mode bounds a
transaction at 10 MiB, and legacy Datastore, like the Datastore emulator, at 25
entity groups, i.e. at most 12 transactional tasks, fewer beside the caller's own
writes (Datastore's limits page). Past a limit the commit fails and nothing is enqueued.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from google.cloud import ndb, tasks_v2  # type: ignore[attr-defined]

from cloudtasks_deferred import limits
from cloudtasks_deferred.enqueue.options import TaskOptions
from cloudtasks_deferred.enqueue.oversized import place, pointer_body
from cloudtasks_deferred.enqueue.sender import SendingClient
from cloudtasks_deferred.enqueue.tasks import create_task, task_builder
from cloudtasks_deferred.errors import BadTransactionStateError, TaskAlreadyExistsError
from cloudtasks_deferred.payload.calls import RUN_ENTRY
from cloudtasks_deferred.storage import entities as storage

__all__ = [
    "create_after_commit",
    "create_all_after_commit",
    "create_once",
    "created_together",
    "enqueue_transactional",
    "task_id",
]

_logger = logging.getLogger(__name__)

#: Inside :func:`created_together`: the block's outbox entries and their tasks.
_together: contextvars.ContextVar[list[tuple[ndb.Key, tasks_v2.Task]] | None] = (
    contextvars.ContextVar("cloudtasks_deferred_outbox_together", default=None)
)


def enqueue_transactional(
    client: SendingClient,
    pickled: bytes,
    metadata: dict[str, Any],
    options: TaskOptions,
    parent: str,
) -> tasks_v2.Task:
    """Writes a transactional task to the outbox of the current NDB transaction.

    Args:
        client: Builds and, after the commit, creates the task.
        pickled: The pickled call.
        metadata: The frame's metadata; the run entry is added to it.
        options: Validated ``defer`` options.
        parent: The queue's full name.

    Returns:
        The task as it will be created once the transaction commits.

    Raises:
        BadTransactionStateError: No NDB transaction is active.
        ValueError: ``_name`` was given.
        PayloadTooLargeError: The payload is too large even for Datastore.
    """
    context = _transaction_context()
    if options.name is not None:
        raise ValueError(
            f"_name={options.name!r} cannot be used with _transactional=True: a "
            "transactional task is named after its outbox entry (as the legacy taskqueue "
            "refused names on transactional tasks)"
        )
    ident = storage.new_id()
    entry_key = ndb.Key(storage.DeferredOutbox, ident, namespace=storage.NAMESPACE)
    run_key = ndb.Key(storage.DeferredOutboxRun, ident, namespace=storage.NAMESPACE)
    build = task_builder(client, dataclasses.replace(options, name=task_id(entry_key)), parent)
    metadata = {**metadata, RUN_ENTRY: run_key.urlsafe().decode("ascii")}
    placement = place(client, pickled, metadata, build)
    if placement.task is not None:
        task = placement.task
    else:
        assert placement.stored is not None  # noqa: S101 - place() sets one of the two
        payload_keys = storage.store_payload(placement.stored)  # joins the transaction
        task = build(pointer_body(client, payload_keys[0], metadata))
    deadline = options.dispatch_deadline or limits.DEFAULT_DISPATCH_DEADLINE
    ndb.put_multi(
        [
            storage.DeferredOutbox(
                key=entry_key, task=tasks_v2.Task.serialize(task), created=datetime.now(UTC)
            ),
            storage.DeferredOutboxRun(
                key=run_key, lease_seconds=max(1, int(deadline.total_seconds()))
            ),
        ],
        **storage.NO_CACHE,
    )
    together = _together.get()
    if together is not None:
        together.append((entry_key, task))
    else:
        context.call_on_commit(functools.partial(_after_commit, client, entry_key, task))
    return task


@contextlib.contextmanager
def created_together(client: SendingClient, *, max_workers: int) -> Iterator[None]:
    """Creates the block's transactional tasks together after the commit.

    The transactional tasks deferred in the block (in this context) register one
    step to run after the commit instead of one each: it creates their tasks with
    up to ``max_workers`` concurrent ``create_task`` calls and deletes their outbox
    entries in one batch (:func:`create_all_after_commit`). The step is registered
    on leaving the block, however it is left: entries written in a transaction that
    then commits always get it.

    Args:
        client: Creates the tasks.
        max_workers: The most ``create_task`` calls in flight at once.

    Yields:
        Nothing; defer inside the block.
    """
    entries: list[tuple[ndb.Key, tasks_v2.Task]] = []
    token = _together.set(entries)
    try:
        yield
    finally:
        _together.reset(token)
        if entries:
            ndb.get_context().call_on_commit(
                functools.partial(_after_commit_all, client, entries, max_workers)
            )


def create_all_after_commit(
    client: SendingClient,
    entries: Sequence[tuple[ndb.Key, tasks_v2.Task]],
    *,
    max_workers: int,
) -> None:
    """Runs once the transaction committed: creates the tasks concurrently, then
    deletes the outbox entries of those created, in one batch.

    Never raises, as :func:`create_after_commit`: a task not created, or an entry
    not deleted, is logged and left to the sweeper.

    Args:
        client: Its transport creates the tasks (thread-safe).
        entries: Outbox keys and their tasks.
        max_workers: The most ``create_task`` calls in flight at once.
    """
    with ThreadPoolExecutor(
        max_workers=max(1, min(max_workers, len(entries))),
        thread_name_prefix="cloudtasks-deferred-outbox",
    ) as pool:
        # Each in a copy of this thread's context variables, as asyncio.to_thread runs a call.
        futures = [
            pool.submit(contextvars.copy_context().run, _create_or_log, client, task)
            for _, task in entries
        ]
        created = [future.result() for future in futures]
    done = [key for (key, _), ok in zip(entries, created, strict=True) if ok]
    if not done:
        return
    try:
        storage.delete(done)  # in this thread: its NDB context
    except Exception:
        _logger.warning(
            "could not delete %d outbox entries after creating their tasks; the sweeper "
            "will find the tasks exist",
            len(done),
            exc_info=True,
        )


def _create_or_log(client: SendingClient, task: tasks_v2.Task) -> bool:
    try:
        create_once(client, task)
    except Exception:
        _logger.exception(
            "transactional task %s committed but could not be created; the outbox sweeper "
            "will create it",
            task.name,
        )
        return False
    return True


def task_id(entry_key: ndb.Key) -> str:
    """The task ID of an outbox entry: 16 hex digits of SHA-256 of its key, ``-``, its ID."""
    digest = hashlib.sha256(entry_key.urlsafe()).hexdigest()[:16]
    return f"{digest}-{entry_key.id()}"


def create_once(client: SendingClient, task: tasks_v2.Task) -> bool:
    """Creates an outbox task, treating ``ALREADY_EXISTS`` as done.

    Args:
        client: Its transport creates the task.
        task: The named task.

    Returns:
        ``True`` if this call created it, ``False`` if Cloud Tasks already had it
        (``TaskAlreadyExistsError`` or ``TombstonedTaskError``: created before).

    Raises:
        google.api_core.exceptions.GoogleAPICallError: Any other refusal.
    """
    parent = task.name.rsplit("/tasks/", 1)[0]
    try:
        create_task(client.transport, parent, task)
    except TaskAlreadyExistsError:
        return False
    return True


def create_after_commit(client: SendingClient, entry_key: ndb.Key, task: tasks_v2.Task) -> None:
    """Runs once the transaction committed: creates the task, deletes the outbox entry.

    Never raises: the caller's transaction has committed, and whatever is left
    undone the sweeper does.
    """
    if not _create_or_log(client, task):
        return
    try:
        storage.delete([entry_key])
    except Exception:
        _logger.warning(
            "could not delete outbox entry %s after creating its task; the sweeper will "
            "find the task exists",
            storage.describe(entry_key),
            exc_info=True,
        )


def _after_commit(client: SendingClient, entry_key: ndb.Key, task: tasks_v2.Task) -> None:
    # Looked up at call time, so a test can simulate a crash after the commit.
    create_after_commit(client, entry_key, task)


def _after_commit_all(
    client: SendingClient, entries: Sequence[tuple[ndb.Key, tasks_v2.Task]], max_workers: int
) -> None:
    # Looked up at call time, so a test can simulate a crash after the commit.
    create_all_after_commit(client, entries, max_workers=max_workers)


def _transaction_context() -> Any:
    context = ndb.get_context(raise_context_error=False)
    if context is not None and context.in_transaction():
        return context
    hint = (
        "; no NDB context is active either (open one with ndb.Client().context(), or "
        "serve the app through wrap_wsgi_app with CLOUDTASKS_DEFERRED_NDB on)"
        if context is None
        else ""
    )
    raise BadTransactionStateError(
        "defer(_transactional=True) must be called inside an NDB transaction "
        "(ndb.transaction(...) or @ndb.transactional()): the task is enqueued when that "
        f"transaction commits{hint}"
    )
