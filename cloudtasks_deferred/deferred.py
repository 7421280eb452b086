"""The legacy ``google.appengine.ext.deferred`` API, on Cloud Tasks.

Change one import line and existing code keeps working::

    from google.appengine.ext import deferred      # before
    from cloudtasks_deferred import deferred       # after

    deferred.defer(do_something_later, key, 20, _countdown=60)

Which callables may be deferred is listed in :mod:`cloudtasks_deferred.payload.calls`.
Tasks are delivered to ``/_ah/queue/deferred`` unless ``_url`` says otherwise;
serve that path with :func:`wrap_wsgi_app` (or :data:`application`, a WSGI app).
Configuration comes from the environment (:mod:`cloudtasks_deferred.settings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cloudtasks_deferred.client import current_client, run_from_datastore
from cloudtasks_deferred.enqueue.bulk import DEFAULT_MAX_WORKERS, Call
from cloudtasks_deferred.errors import (
    Error,
    PermanentTaskFailure,
    SingularTaskFailure,
    TaskAlreadyExistsError,
    TombstonedTaskError,
)
from cloudtasks_deferred.handler import Handler
from cloudtasks_deferred.middleware import wrap_wsgi_app
from cloudtasks_deferred.payload.calls import invoke_member, run, serialize
from cloudtasks_deferred.payload.retry import TaskRetryOptions
from cloudtasks_deferred.receive.context import current_task
from cloudtasks_deferred.receive.handler import HEADER_LOG_LEVEL

if TYPE_CHECKING:
    from google.cloud import tasks_v2

__all__ = [
    "Call",
    "Error",
    "Handler",
    "PermanentTaskFailure",
    "SingularTaskFailure",
    "TaskAlreadyExistsError",
    "TaskRetryOptions",
    "TombstonedTaskError",
    "application",
    "current_task",
    "defer",
    "defer_many",
    "invoke_member",
    "run",
    "run_from_datastore",
    "serialize",
    "set_log_level",
    "wrap_wsgi_app",
]


def defer(obj: Callable[..., Any], *args: Any, **kwargs: Any) -> tasks_v2.Task:
    """Defers a callable for execution later, as a Cloud Tasks task.

    Keyword arguments starting with ``_`` are options and never reach the callable:

    * ``_countdown`` (``int | float``): seconds from now before the task may run
      (at most 30 days: Cloud Tasks' limit on ``schedule_time``).
    * ``_eta`` (``datetime``): when the task may run; a naive datetime is UTC, as in
      the legacy API. At most 30 days ahead. Not together with ``_countdown``.
    * ``_name`` (``str``): task ID, 1-500 of ``[A-Za-z0-9_-]``; reusing one Cloud
      Tasks still remembers (about an hour after the task ends) raises
      :class:`TaskAlreadyExistsError`.
    * ``_queue`` (``str``): queue ID; default ``CLOUDTASKS_DEFERRED_QUEUE`` or ``default``.
    * ``_url`` (``str``): path the task is delivered to (default
      ``/_ah/queue/deferred``), or an absolute ``http(s)`` URL (an HTTP task).
    * ``_target`` (``str``): App Engine ``[[instance.]version.]service`` to run the
      task on; by default the service and version that defers it.
    * ``_headers`` (``dict[str, str]``): extra request headers, merged over
      ``Content-Type: application/octet-stream``; under 80 KB in total.
    * ``_retry_options`` (:class:`TaskRetryOptions`): per-task retry limits.
    * ``_dispatch_deadline`` (seconds or ``timedelta``): how long Cloud Tasks waits
      for the handler: 15 s to 30 min for HTTP tasks, to 24 h for App Engine tasks.
    * ``_transactional`` (``bool``): enqueue if and only if the surrounding NDB
      transaction commits (see :mod:`cloudtasks_deferred.enqueue.outbox`); outside one it
      raises :class:`~cloudtasks_deferred.errors.BadTransactionStateError`. Not
      together with ``_name``.

    A payload too large for a task is compressed, or stored in Datastore and run by
    :func:`run_from_datastore` (see :mod:`cloudtasks_deferred.enqueue.oversized`).

    Args:
        obj: The callable to run; see :mod:`cloudtasks_deferred.payload.calls`.
        *args: Positional arguments for ``obj``.
        **kwargs: Keyword arguments for ``obj``, and the options above.

    Returns:
        The created ``google.cloud.tasks_v2.Task`` (or the in-memory transport's); with
        ``_transactional=True``, the task as it will be created once the transaction
        commits.

    Raises:
        TypeError: An unknown ``_`` option, or an option of the wrong type.
        ValueError: An invalid option value, or ``obj`` is not callable.
        pickle.PicklingError: ``obj`` or an argument cannot be pickled (a lambda, a
            nested function or class); ``AttributeError`` on some Python versions.
        TaskAlreadyExistsError: ``_name`` is taken.
        PayloadTooLargeError: The payload is too large even for Datastore.
        BadTransactionStateError: ``_transactional=True`` outside an NDB transaction.
        ConfigurationError: The settings do not say where to send the task, or a
            payload needs Datastore and no NDB context can be opened.
        google.api_core.exceptions.DeadlineExceeded: The task was not created within
            ``CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT`` seconds (30 by default): Cloud
            Tasks was unavailable (retried until then) or did not answer.
        google.api_core.exceptions.ServiceUnavailable: A payload too large for a task
            could not be stored because Datastore was unavailable; the message names
            Datastore and google-cloud-ndb's error is the ``__cause__``. Nothing was
            enqueued.
        google.api_core.exceptions.GoogleAPICallError: Cloud Tasks (or, for a stored
            payload, Datastore) refused the task; the base class of the two above.
    """
    return current_client().defer(obj, *args, **kwargs)


def defer_many(
    calls: Iterable[Call], *, max_workers: int = DEFAULT_MAX_WORKERS, **options: Any
) -> list[tasks_v2.Task | Exception]:
    """Defers many calls at once: the bulk form of :func:`defer`, for a fan-out or a backfill.

    Each :class:`Call` is written as the ``defer`` call it replaces::

        calls = [deferred.Call(send_reminder, user.key, _countdown=60) for user in users]
        results = deferred.defer_many(calls, _queue="mail")
        failed = [c for c, r in zip(calls, results) if isinstance(r, Exception)]

    Cloud Tasks has no batch RPC (each ``CreateTask`` call of its v2 API creates one
    task), so enqueuing many tasks one ``defer`` after another waits for each round
    trip in turn, about 20 ms from Cloud Run. Here each call is checked, pickled and
    built exactly as ``defer`` would, in the calling thread and in input order, and
    the ``create_task`` calls run on up to ``max_workers`` threads at once, over the
    current client's one Cloud Tasks client (its gRPC channel is thread-safe). Tasks
    reach the queue in no particular order. A payload too large for a task is stored
    in Datastore and its task created in the calling thread, as ``defer`` does.

    Keyword arguments are ``_`` options shared by every call (``_queue="mail"``); a
    call's own options replace them one by one (its ``_countdown`` or ``_eta``
    replaces the shared schedule whole). ``_name`` cannot be shared.

    ``_transactional=True`` calls, inside an NDB transaction as with ``defer``, are
    all written to the outbox in that transaction; once it commits, their tasks are
    created together, concurrently, before the transaction call returns (see
    :mod:`cloudtasks_deferred.enqueue.outbox`). Each writes two root entities and its
    task message into the transaction, within Datastore's limits on a transaction
    (its limits page): 10 MiB in Firestore in Datastore mode; 25 entity groups in
    legacy Datastore and the Datastore emulator, i.e. 12 transactional tasks at
    most. Past a limit the commit fails and nothing is enqueued.

    Interrupted in the calling thread (``KeyboardInterrupt``), it sends no further
    call, lets those in flight finish and raises: the tasks created so far stay.

    Args:
        calls: The calls, read once into a list.
        max_workers: The most ``create_task`` calls in flight at once (threads):
            32 by default, about 1,600 tasks a second at a 20 ms round trip.
        **options: ``_`` options for every call, as :func:`defer` takes them.

    Returns:
        One result per call, in input order: the created ``google.cloud.tasks_v2.Task``
        (for a transactional call, the task as the outbox will create it), or the
        exception :func:`defer` would have raised for that call (``pickle.PicklingError``,
        :class:`TaskAlreadyExistsError`, ``google.api_core.exceptions.GoogleAPICallError``,
        ...). One call's failure stops no other; the failures are also counted in one
        warning log line. Retrying a failed call may create its task twice if Cloud
        Tasks took it before failing (a timeout): give tasks a ``_name`` to make a
        retry safe.

    Raises:
        TypeError: ``calls`` is not an iterable of :class:`Call`, ``max_workers`` is not
            an ``int``, or a shared option is unknown, of the wrong type or lacks the
            ``_`` prefix. Nothing is sent then.
        ValueError: ``max_workers`` is under 1, a shared option's value is invalid, or
            ``_name`` is shared. Nothing is sent then.
    """
    return current_client().defer_many(calls, max_workers=max_workers, **options)


def set_log_level(log_level: int) -> None:
    """Sets the level at which the handler logs each task's queue headers.

    Args:
        log_level: A ``logging`` level, e.g. ``logging.DEBUG``. The default is INFO.

    Raises:
        TypeError: ``log_level`` is not an ``int``.
    """
    HEADER_LOG_LEVEL.set(log_level)


# Pickled under this module's name, as since release 0.1 (stored payloads' pointers).
run_from_datastore.__module__ = __name__

#: A ready task handler (a WSGI app) configured from the environment.
application = Handler()
