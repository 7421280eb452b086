"""Every exception cloudtasks_deferred raises, in one tree.

The legacy names keep the meaning they had in ``google.appengine.ext.deferred``
and ``google.appengine.api.taskqueue``::

    Error
     ├── PermanentTaskFailure      raise it in a task: log, do not retry (HTTP 200)
     │    └── payload.frame.InvalidPayloadError      the body is no payload (truncated, corrupt)
     │         └── payload.budget.DecodeLimitError  ... or costs more than its budget
     ├── SingularTaskFailure       raise it in a task: retry without an error log (HTTP 408)
     ├── TaskAlreadyExistsError    defer(_name=...) reused a name Cloud Tasks still holds
     │    └── TombstonedTaskError   ... a name whose task ended within the dedupe window
     ├── BadTransactionStateError  defer(_transactional=True) outside an NDB transaction
     ├── PayloadTooLargeError      a payload too big even for Datastore: nothing was sent
     ├── ConfigurationError        a setting is missing or invalid; the message names it
     ├── DeadLetterError           a dead letter does not exist, or cannot be replayed now
     ├── PayloadRefusedError       a task body failed a payload check before running (403)
     │    ├── payload.frame.PayloadSignatureError  ... unsigned, badly signed, or signed
     │    │                         for another service or too long ago (binding)
     │    └── payload.allowlist.DisallowedReferenceError  ... names or runs code outside
     │                              the allowlist, or would fill in an object it named
     ├── payload.frame.UnsupportedPayloadError  a newer version of the library wrote it (500)
     ├── receive.auth.oidc.AuthenticationError  the request is not from an allowed caller (403)
     ├── receive.auth.certs.CertsUnavailableError  no certificates to verify tokens (503)
     └── devtools.queue_yaml.QueueYamlError  a queue.yaml cannot be converted (a ValueError)

Invalid arguments to :func:`~cloudtasks_deferred.defer` raise the built-in
``TypeError`` or ``ValueError``, naming the offending option. Errors from the Cloud
Tasks API itself propagate as ``google.api_core.exceptions.GoogleAPICallError``
with a note saying what to check: ``DeadlineExceeded`` when the task was not created
within ``CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT`` (the API unavailable), and
``ServiceUnavailable`` naming Datastore when a payload too large for a task could
not be stored there. ``defer`` warns, without raising, with
``payload.retry.RetryOptionsWarning`` when a task's retry options hold backoff, which Cloud
Tasks sets per queue. The development tools (the emulators, the CLI's ``dev``,
``inspect`` and ``dead-letters``) raise their own errors, which the CLI turns into exit
codes.
"""

from __future__ import annotations

__all__ = [
    "BadTransactionStateError",
    "ConfigurationError",
    "DeadLetterError",
    "Error",
    "PayloadRefusedError",
    "PayloadTooLargeError",
    "PermanentTaskFailure",
    "SingularTaskFailure",
    "TaskAlreadyExistsError",
    "TombstonedTaskError",
]


class Error(Exception):
    """Base class of every exception defined by cloudtasks_deferred."""


class PermanentTaskFailure(Error):
    """The task failed and will never succeed: it is logged and not retried.

    The handler answers 200 so that Cloud Tasks drops the task, logs the failure with
    its traceback and records a dead letter. A payload that cannot be decoded counts
    as a permanent failure too.
    """


class SingularTaskFailure(Error):
    """The task failed this once: Cloud Tasks retries it without an error being logged.

    The handler answers 408, which Cloud Tasks retries under the queue's retry
    configuration.
    """


class TaskAlreadyExistsError(Error):
    """A task with this name exists, or existed too recently, in the queue.

    Raised by ``defer(_name=...)`` when Cloud Tasks answers ``ALREADY_EXISTS``. Cloud
    Tasks keeps a name reserved for about an hour after its task ends (up to 9 days
    on queues created from queue.yaml).
    """


class TombstonedTaskError(TaskAlreadyExistsError):
    """The task name belonged to a task that ended within the dedupe window.

    A subclass of :class:`TaskAlreadyExistsError` because Cloud Tasks reports both
    cases with the same status code; code that catches either legacy name keeps
    working.
    """


class ConfigurationError(Error):
    """A setting is missing or invalid; the message names the setting and the fix."""


class DeadLetterError(Error):
    """A dead letter does not exist, or cannot be replayed in its current status.

    Raised by :mod:`cloudtasks_deferred.dead_letters` (and the ``dead-letters``
    command); the message names the record and says why, e.g. that its task was
    already replayed, or run by a later delivery from its queue.
    """


class BadTransactionStateError(Error):
    """``defer(_transactional=True)`` was called outside an NDB transaction.

    The legacy ``taskqueue`` name for the same mistake. A transactional task is
    enqueued if and only if the surrounding transaction commits, so without one
    there is nothing to tie it to.
    """


class PayloadTooLargeError(Error):
    """A deferred call's payload is too large even for the Datastore fallback.

    Raised by :func:`~cloudtasks_deferred.defer` before anything is written or
    enqueued; the message gives the size and the limit. Pass a reference to the
    data (a Datastore key, a Cloud Storage object) instead of the data itself.
    """


class PayloadRefusedError(Error):
    """An authenticated request's body failed a payload check, before it was unpickled.

    Raised when signing keys are configured and the body is unsigned or its
    signature does not verify, or when an allowlist is configured and the pickle
    names code outside it. The handler answers 403, which Cloud Tasks retries: the
    usual cause is a configuration mismatch between the enqueuer and the handler, and
    fixing it drains the queue instead of dropping tasks. ``str(error)`` says which
    check failed and never holds a secret.
    """
