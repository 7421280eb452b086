"""cloudtasks_deferred: the App Engine ``deferred`` API on Google Cloud Tasks.

Migrating code changes its imports and keeps its calls::

    from cloudtasks_deferred import deferred, wrap_wsgi_app

    app.wsgi_app = wrap_wsgi_app(app.wsgi_app, use_deferred=True)
    deferred.defer(do_something_later, key, 20, _countdown=60)

``import cloudtasks_deferred as deferred`` works too: the package exposes the
same names as :mod:`cloudtasks_deferred.deferred`. Importing the package and
building the handler import neither ``google.cloud.tasks_v2`` nor ``google.auth``;
they load when first needed, to keep cold starts short.
"""

from __future__ import annotations

from cloudtasks_deferred import deferred
from cloudtasks_deferred.client import Client
from cloudtasks_deferred.dead_letters import DeadLetters
from cloudtasks_deferred.deferred import (
    Call,
    application,
    defer,
    defer_many,
    invoke_member,
    run,
    run_from_datastore,
    serialize,
    set_log_level,
)
from cloudtasks_deferred.errors import (
    BadTransactionStateError,
    ConfigurationError,
    DeadLetterError,
    Error,
    PayloadTooLargeError,
    PermanentTaskFailure,
    SingularTaskFailure,
    TaskAlreadyExistsError,
    TombstonedTaskError,
)
from cloudtasks_deferred.handler import Handler
from cloudtasks_deferred.middleware import wrap_wsgi_app
from cloudtasks_deferred.payload.retry import TaskRetryOptions
from cloudtasks_deferred.receive.context import TaskInfo, current_task
from cloudtasks_deferred.settings import Settings

__version__ = "0.1.0"

__all__ = [
    # The legacy deferred API.
    "Handler",
    "TaskRetryOptions",
    "application",
    "current_task",
    "defer",
    "deferred",
    "invoke_member",
    "run",
    "run_from_datastore",
    "serialize",
    "set_log_level",
    "wrap_wsgi_app",
    # Bulk enqueue: many defer calls, their round trips to Cloud Tasks at once.
    "Call",
    "defer_many",
    # Exceptions: the legacy names, then this library's.
    "Error",
    "PermanentTaskFailure",
    "SingularTaskFailure",
    "TaskAlreadyExistsError",
    "TombstonedTaskError",
    "BadTransactionStateError",
    "ConfigurationError",
    "DeadLetterError",
    "PayloadTooLargeError",
    # Configuration and context.
    "Client",
    "Settings",
    "TaskInfo",
    # Operations.
    "DeadLetters",
]
