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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudtasks_deferred.client import current_client, run_from_datastore
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
