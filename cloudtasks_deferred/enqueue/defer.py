"""``defer``'s work: options, payload, placement, and the task's creation.

:func:`enqueue` splits the ``_`` options from the call's arguments, pickles the call
(the legacy rules, or Python 2's with ``CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_PAYLOADS``),
adds what the handler enforces to the frame's metadata (the task's own retry limits;
with signing keys, the destination and issue time the signature binds,
:mod:`cloudtasks_deferred.payload.binding`), and sends the task: inline, compressed or
through Datastore (:mod:`cloudtasks_deferred.enqueue.oversized`), or through the outbox
for ``_transactional=True`` (:mod:`cloudtasks_deferred.enqueue.outbox`).
:func:`prepare` does all of it but the round trip to Cloud Tasks, which it hands back
(for :mod:`cloudtasks_deferred.enqueue.bulk`, which runs many round trips at once).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.cloud import tasks_v2

from cloudtasks_deferred.enqueue import oversized
from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.sender import SendingClient
from cloudtasks_deferred.enqueue.tasks import create_task, destination_for, task_builder
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.payload import binding
from cloudtasks_deferred.payload.calls import serializer
from cloudtasks_deferred.payload.retry import RetryOptionsWarning, retry_metadata

__all__ = ["Prepared", "enqueue", "prepare"]


def enqueue(
    client: SendingClient, obj: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tasks_v2.Task:
    """Defers ``obj(*args, **kwargs)`` with ``client``; see :func:`cloudtasks_deferred.defer`."""
    return prepare(client, obj, args, kwargs).send()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A deferred call with all done but its round trip to Cloud Tasks.

    Attributes:
        send: Creates the task and returns it (raising what ``defer`` raises); for a
            transactional call, returns the task the outbox will create.
        thread_safe: ``send`` is one ``create_task`` on the client's thread-safe
            transport (or nothing at all) and may run in any thread; otherwise (a
            payload stored in Datastore, through the caller's NDB context) it must
            run in the thread that prepared it.
    """

    send: Callable[[], tasks_v2.Task]
    thread_safe: bool


def prepare(
    client: SendingClient, obj: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Prepared:
    """Does what :func:`enqueue` does up to the call to Cloud Tasks, in this thread.

    What reads the caller's context happens here: the options, the pickle, the
    frame and its signature, the task message, and a transactional call's outbox
    entries, written in the caller's NDB transaction.

    Raises:
        Exception: What :func:`cloudtasks_deferred.defer` raises before sending.
    """
    options, call_kwargs = split_options(kwargs)
    metadata: dict[str, Any] = {}
    if options.retry_options is not None:
        ignored = options.retry_options.queue_level_fields
        if ignored:
            warnings.warn(
                f"TaskRetryOptions {', '.join(ignored)} cannot apply per task: Cloud Tasks "
                "sets backoff per queue (retry_config in terraform/); the queue's backoff "
                "applies.",
                RetryOptionsWarning,
                stacklevel=5,  # prepare, enqueue(_many), Client, facade: the caller
            )
        scheduled_at = options.schedule_time or datetime.now(UTC)
        metadata.update(retry_metadata(options.retry_options, scheduled_at))
    settings = client.settings
    if settings.cross_compatible_payloads and (options.retry_options or options.transactional):
        raise ValueError(
            "_retry_options and _transactional need this library's payload frame, which a "
            "Python 2 handler cannot read: unset CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_PAYLOADS "
            "(once no Python 2 version serves) or drop the option"
        )
    pickled = serializer(for_python2=settings.cross_compatible_payloads)(obj, *args, **call_kwargs)
    parent = client.queue_path(options.queue)
    if client.settings.signing_key is not None:
        destination = destination_for(options, client.settings, parent)
        metadata = binding.bind(metadata, destination, time.time())
    if options.transactional:
        try:  # the outbox needs google-cloud-ndb: the ndb extra, loaded on use
            from cloudtasks_deferred.enqueue.outbox import enqueue_transactional
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"defer(_transactional=True) needs google-cloud-ndb ({exc}): "
                "pip install 'cloudtasks-deferred[ndb]'"
            ) from exc
        task = enqueue_transactional(client, pickled, metadata, options, parent)
        return Prepared(send=functools.partial(_as_is, task), thread_safe=True)
    build = task_builder(client, options, parent)
    placement = oversized.place(client, pickled, metadata, build)
    create = functools.partial(create_task, client.transport, parent)
    if placement.task is not None:
        return Prepared(send=functools.partial(create, placement.task), thread_safe=True)
    assert placement.stored is not None  # noqa: S101 - place() sets one of the two
    send = functools.partial(
        oversized.enqueue_stored, client, placement.stored, metadata, build, create
    )
    return Prepared(send=send, thread_safe=False)


def _as_is(task: tasks_v2.Task) -> tasks_v2.Task:
    return task
