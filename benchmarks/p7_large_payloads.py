"""P7: large payloads. What stays inline costs no Datastore round trip; what does not, costs one.

Starts a Datastore emulator and a Cloud Tasks emulator (its queue paused, so it only
stores tasks) on loopback, and defers through the real transport:

* **P7-inline**: ``defer(process_blob, 600 KB of compressible bytes)``. The task fits
  Cloud Tasks' 1 MB, so it travels inline; every Datastore RPC google-cloud-ndb makes
  is counted while it runs (there must be none).
* **P7**: a 900 KB incompressible payload, inline (it fits) against the Datastore
  fallback it would take if it did not (the same code path ``defer`` runs for a task
  too large to send: the compression attempt, the ``_DeferredTaskEntity`` write, and a
  ``run_from_datastore`` task), interleaved, medians. Informational: the fallback pays
  a Datastore commit on top of a much smaller ``create_task``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import random
import time
from collections.abc import Iterator
from typing import Any

from cloudtasks_deferred import Client
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator
from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.oversized import enqueue_stored, place
from cloudtasks_deferred.enqueue.tasks import create_task, task_builder
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import decode

from .common import PROJECT, QUEUE, Result, environment, interleaved, median, paused_queue_client
from .tasks import process_blob

INLINE_BYTES = 600 * 1024
FALLBACK_BYTES = 900 * 1024
#: Forces the fallback for a payload that would fit: a task budget only a pointer meets.
POINTER_ONLY = 64 * 1024


class RpcCounter:
    """Counts the Datastore RPCs google-cloud-ndb makes, by name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def installed(self) -> Iterator[RpcCounter]:
        from google.cloud.ndb import _datastore_api

        original = _datastore_api.make_call

        def counting(rpc_name: str, *args: Any, **kwargs: Any) -> Any:
            self.calls[rpc_name] += 1
            return original(rpc_name, *args, **kwargs)

        _datastore_api.make_call = counting
        try:
            yield self
        finally:
            _datastore_api.make_call = original

    def total(self) -> int:
        return sum(self.calls.values())


def run(quick: bool = False) -> list[Result]:
    rounds = 4 if quick else 16
    inline_defers = 5 if quick else 20
    with (
        DatastoreEmulator(project=PROJECT) as datastore,
        CloudTasksEmulator(queues=[QUEUE]) as tasks_emulator,
        environment(datastore.env),
    ):
        from google.cloud import ndb

        client, api = paused_queue_client(tasks_emulator.host)
        with ndb.Client(project=PROJECT).context():
            inline = _inline_without_datastore(client, api, QUEUE, inline_defers)
            fallback = _fallback_against_inline(client, api, QUEUE, datastore, rounds)
    return [inline, fallback]


def _inline_without_datastore(client: Client, api: Any, queue: str, defers: int) -> Result:
    words = b"order 4711 shipped to warehouse 12; " * (INLINE_BYTES // 36 + 1)
    blob = words[:INLINE_BYTES]
    client.defer(process_blob, blob)  # warm up
    api.purge_queue(name=queue)
    counter = RpcCounter()
    started = time.perf_counter()
    with counter.installed():
        for _ in range(defers):
            task = client.defer(process_blob, blob)
    elapsed_ms = (time.perf_counter() - started) / defers * 1000
    api.purge_queue(name=queue)
    body = task.http_request.body
    frame = decode(body)
    how = "compressed" if frame.compressed else "uncompressed: it fits"
    return Result(
        key="P7-inline",
        title="600 KB compressible payload: Datastore RPCs per defer",
        value=counter.total() / defers,
        unit="RPCs",
        target=0,
        detail=(
            f"{defers} defers stayed inline, task body {len(body):,} bytes ({how}); "
            f"{counter.total()} Datastore RPCs; {elapsed_ms:.1f} ms per defer"
        ),
    )


def _fallback_against_inline(
    client: Client, api: Any, queue: str, datastore: DatastoreEmulator, rounds: int
) -> Result:
    blob = random.Random(7).randbytes(FALLBACK_BYTES)  # noqa: S311 - benchmark data
    options, _ = split_options({})
    parent = client.queue_path("bench")
    create = functools.partial(create_task, client.transport, parent)
    counter = RpcCounter()

    def inline() -> None:
        task = client.defer(process_blob, blob)
        assert decode(task.http_request.body).pickled[-16:] == serialize(process_blob, blob)[-16:]

    def fallback() -> None:
        # What defer() runs for a payload that does not fit, from the pickle on.
        build = task_builder(client, options, parent)
        pickled = serialize(process_blob, blob)
        placement = place(client, pickled, {}, build, max_task_bytes=POINTER_ONLY)
        assert placement.stored is not None
        enqueue_stored(client, placement.stored, {}, build, create)

    def between() -> None:
        api.purge_queue(name=queue)
        datastore.reset()

    inline(), fallback(), between()  # warm both paths
    with counter.installed():
        fallback()
    rpcs_per_fallback = counter.total()
    between()
    times_inline, times_fallback = interleaved(inline, fallback, rounds=rounds, between=between)
    inline_ms = median(times_inline) * 1000
    fallback_ms = median(times_fallback) * 1000
    rpcs = ", ".join(f"{name} x{count}" for name, count in sorted(counter.calls.items()))
    return Result(
        key="P7",
        title="900 KB incompressible: Datastore fallback / inline, per defer",
        value=fallback_ms / inline_ms,
        unit="x",
        target=None,
        detail=(
            f"fallback {fallback_ms:.1f} ms ({rpcs_per_fallback} Datastore RPCs: {rpcs}) vs "
            f"inline {inline_ms:.1f} ms; medians of {rounds} interleaved rounds on the "
            "emulators (a loaded shared machine: noisy)"
        ),
    )
