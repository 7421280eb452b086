"""Bulk enqueue: many deferred calls, their ``create_task`` round trips at once.

Cloud Tasks creates one task per ``CreateTask`` call: its v2 API has no batch RPC.
Deferring thousands of tasks (a fan-out, a backfill) one ``defer`` after another
waits for each round trip in turn, about 20 ms from Cloud Run; :func:`enqueue_many`
overlaps them instead, over the client's one transport (a ``CloudTasksClient``'s
gRPC channel is thread-safe and carries concurrent calls over one connection).

How a batch goes:

1. In the calling thread, in input order, each call is prepared exactly as ``defer``
   prepares it (:func:`cloudtasks_deferred.enqueue.defer.prepare`): options, pickle,
   frame, signature, task message. Whatever reads the caller's context (its NDB
   transaction, the request it serves) reads it there.
2. Each prepared task's ``create_task`` goes to a pool of at most ``max_workers``
   threads as soon as it is ready, so the pickling overlaps the network. It runs in
   a copy of the caller's context variables (as ``asyncio.to_thread`` runs a call),
   so what follows the caller's context there (a trace's span) follows it. At most
   :data:`AHEAD` times ``max_workers`` tasks are prepared and not yet created:
   preparing waits beyond that, so a batch of any size holds a bounded number of
   task bodies in memory.
3. A payload too large for a task is stored in Datastore and its task created in
   the calling thread, as ``defer`` does it (through the caller's NDB context).
4. ``_transactional=True`` calls write their outbox entries in the caller's
   transaction; once it commits, their tasks are created together, concurrently
   (:func:`cloudtasks_deferred.enqueue.outbox.created_together`).

Every call gets a result, in input order: the created task, or the exception its
``defer`` would have raised; one call's failure stops no other. Tasks reach the
queue in no particular order (Cloud Tasks does not run tasks in order either).
This module loads ``google.cloud.tasks_v2`` when a batch is sent, not at import.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Final

from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.sender import SendingClient

if TYPE_CHECKING:
    from google.cloud import tasks_v2

__all__ = ["AHEAD", "DEFAULT_MAX_WORKERS", "Call", "enqueue_many"]

_logger = logging.getLogger(__name__)

#: ``create_task`` calls in flight at once, by default: at ~20 ms a round trip, about
#: 1,600 tasks a second from one process, far under Cloud Tasks' default quota of
#: 6,000,000 API requests a minute (its quotas page).
DEFAULT_MAX_WORKERS: Final = 32
#: Tasks prepared and not yet created, per thread: enough to keep every thread busy.
AHEAD: Final = 2
#: Options a call's own value replaces together: a call's ``_eta`` drops a shared
#: ``_countdown`` (``defer`` refuses the two together).
_SCHEDULE: Final = frozenset({"_countdown", "_eta"})


@dataclasses.dataclass(frozen=True, init=False)
class Call:
    """One call for :func:`~cloudtasks_deferred.defer_many`, written as ``defer`` takes it.

    ``Call(func, *args, **kwargs)`` stands for ``defer(func, *args, **kwargs)``:
    keyword arguments starting with ``_`` are the task's options (``_countdown``,
    ``_name``, ``_queue``, ...) and never reach ``func``. Nothing is checked or
    pickled until the batch is sent.

    Attributes:
        obj: The callable (see :mod:`cloudtasks_deferred.payload.calls`).
        args: Its positional arguments.
        kwargs: Its keyword arguments, and this task's ``_`` options.
    """

    obj: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]

    def __init__(self, obj: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "obj", obj)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)


def enqueue_many(
    client: SendingClient,
    calls: Iterable[Call],
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
    options: Mapping[str, Any] | None = None,
) -> list[tasks_v2.Task | Exception]:
    """Defers every call with ``client``; see :func:`cloudtasks_deferred.defer_many`.

    Raises:
        TypeError: ``calls`` holds something other than :class:`Call`, or a shared
            option is unknown, mistyped or not ``_``-prefixed.
        ValueError: ``max_workers`` is under 1, a shared option's value is invalid,
            or ``_name`` is shared.
    """
    batch = _checked_calls(calls)
    shared = _checked_options(options or {})
    _check_workers(max_workers)
    if not batch:
        return []
    # google.cloud.tasks_v2 loads on the first batch, not at import (cold starts).
    from cloudtasks_deferred.enqueue.defer import prepare

    outcomes: dict[int, tasks_v2.Task | Exception] = {}
    in_flight: dict[Future[tasks_v2.Task], int] = {}
    in_this_thread: list[tuple[int, Callable[[], tasks_v2.Task]]] = []
    pending: set[Future[tasks_v2.Task]] = set()  # submitted, not yet done
    with ThreadPoolExecutor(
        max_workers=min(max_workers, len(batch)), thread_name_prefix="cloudtasks-deferred-bulk"
    ) as pool:
        try:
            with _transactional_together(client, batch, shared, max_workers):
                for index, call in enumerate(batch):
                    try:
                        prepared = prepare(
                            client, call.obj, call.args, _merged(shared, call.kwargs)
                        )
                    except Exception as exc:
                        outcomes[index] = exc
                        continue
                    if prepared.thread_safe:
                        if len(pending) >= AHEAD * max_workers:
                            pending = wait(pending, return_when=FIRST_COMPLETED).not_done
                        context = contextvars.copy_context()
                        future = pool.submit(context.run, prepared.send)
                        in_flight[future] = index
                        pending.add(future)
                    else:
                        in_this_thread.append((index, prepared.send))
            for index, send in in_this_thread:
                try:
                    outcomes[index] = send()
                except Exception as exc:
                    outcomes[index] = exc
            for future, index in in_flight.items():
                outcomes[index] = _outcome(future)
        except BaseException:
            # Interrupted: calls not yet sent never are; those in flight finish.
            pool.shutdown(cancel_futures=True)
            raise
    results = [outcomes[index] for index in range(len(batch))]  # a KeyError, never a gap
    _log_failures(results)
    return results


def _outcome(future: Future[tasks_v2.Task]) -> tasks_v2.Task | Exception:
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, Exception):
        return error
    raise error  # KeyboardInterrupt, SystemExit: not a call's result


def _merged(shared: Mapping[str, Any], own: Mapping[str, Any]) -> Mapping[str, Any]:
    if not shared:
        return own
    if _SCHEDULE & own.keys():
        shared = {name: value for name, value in shared.items() if name not in _SCHEDULE}
    return {**shared, **own}


def _transactional_together(
    client: SendingClient, batch: list[Call], shared: Mapping[str, Any], max_workers: int
) -> contextlib.AbstractContextManager[None]:
    if not any(_merged(shared, call.kwargs).get("_transactional") for call in batch):
        return contextlib.nullcontext()
    try:  # the outbox needs google-cloud-ndb: the ndb extra, loaded on use
        from cloudtasks_deferred.enqueue.outbox import created_together
    except ModuleNotFoundError:
        return contextlib.nullcontext()  # each such call gets defer's ConfigurationError
    return created_together(client, max_workers=max_workers)


def _checked_calls(calls: Iterable[Call]) -> list[Call]:
    if isinstance(calls, (Call, str, bytes)) or not isinstance(calls, Iterable):
        raise TypeError(
            f"defer_many() takes an iterable of Call, got {type(calls).__name__}: pass "
            "[Call(func, *args, **kwargs), ...]"
        )
    batch = list(calls)
    for index, call in enumerate(batch):
        if not isinstance(call, Call):
            raise TypeError(
                f"defer_many() calls[{index}] is a {type(call).__name__}, not a Call: write "
                "each call as Call(func, *args, **kwargs), the arguments defer takes"
            )
    return batch


def _checked_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    plain = sorted(name for name in options if not name.startswith("_"))
    if plain:
        raise TypeError(
            f"defer_many() got an unexpected keyword argument {', '.join(plain)}: options "
            "shared by every call start with '_' as defer's do (_queue, _countdown, ...); "
            "the callable's own arguments go in each Call"
        )
    if "_name" in options:
        raise ValueError(
            "_name cannot be shared: every task would get the same name and all but one "
            "would fail; give each Call its own _name"
        )
    split_options(options)  # an unknown or invalid option raises here, before any task
    return options


def _check_workers(max_workers: int) -> None:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(
            f"max_workers must be an int (create_task calls in flight at once), got "
            f"{type(max_workers).__name__}"
        )
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers}")


def _log_failures(results: list[tasks_v2.Task | Exception]) -> None:
    failed = collections.Counter(type(r).__name__ for r in results if isinstance(r, Exception))
    if failed:
        _logger.warning(
            "defer_many: %d of %d calls failed (%s); each one's exception is in the list "
            "defer_many returned, at the call's index",
            failed.total(),
            len(results),
            ", ".join(f"{count} {name}" for name, count in failed.most_common()),
        )
