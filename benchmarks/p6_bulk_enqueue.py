"""P6: bulk enqueue. ``defer_many`` against one ``defer`` after another, and against a raw pool.

Cloud Tasks has no batch RPC, so what bulk enqueue can win is overlapping the
``create_task`` round trips. Two measurements, 1,000 tasks each
(``defer(process, "user-42", i)`` and its ``Call``), with ``defer_many``'s default of
32 threads:

* **P6**, modelled service latency: a **real gRPC hop with injected latency**. A
  loopback gRPC server in a process of its own (:mod:`benchmarks.latency_server`)
  implements ``CloudTasks/CreateTask``, sleeps 20 ms per call (the order of magnitude
  of a ``CreateTask`` round trip from Cloud Run) and answers with the named task; the
  library talks to it through a real ``CloudTasksClient`` on one insecure channel,
  exactly as it talks to the emulator. Sequential ``defer`` pays the
  20 ms per task; ``defer_many`` overlaps them. Goal >= 5x, aim 10x.
* **P6-emulator**: the same on the Cloud Tasks emulator (its queue paused, so it only
  stores tasks), beside the ceiling: a raw ``ThreadPoolExecutor`` of 32 threads
  calling ``CloudTasksClient.create_task`` with task messages built in advance, on
  the same channel. Goal: ``defer_many`` reaches >= 80 % of the raw pool's
  throughput. **P6-emulator-seq** (information) is ``defer_many`` against sequential
  ``defer`` there: the emulator, a Python gRPC server, not the library, caps what
  concurrency gains on it.

The emulator rounds alternate between ``defer_many`` and the raw pool (ABBA order),
with the queue purged after each, and report medians.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from cloudtasks_deferred import Call
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator
from cloudtasks_deferred.enqueue.bulk import DEFAULT_MAX_WORKERS

from .common import QUEUE, Result, bench_client, interleaved, paused_queue_client
from .tasks import process

TASKS = 1000
LATENCY = 0.020
SPEEDUP_GOAL = 5.0
CEILING_GOAL = 80.0


def run(quick: bool = False) -> list[Result]:
    return [_modelled(quick), *_emulator(quick)]


def _modelled(quick: bool) -> Result:
    total = 100 if quick else TASKS
    with _latency_server(LATENCY) as host:
        channel = grpc.insecure_channel(host)
        api = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        client = bench_client(api)
        client.defer(process, "user-42", 0), client.defer_many([Call(process, "user-42", 0)])
        started = time.perf_counter()
        for index in range(total):
            client.defer(process, "user-42", index)
        sequential = time.perf_counter() - started
        bulk_times = []
        for _ in range(1 if quick else 3):
            started = time.perf_counter()
            results = client.defer_many([Call(process, "user-42", i) for i in range(total)])
            bulk_times.append(time.perf_counter() - started)
            assert all(isinstance(result, tasks_v2.Task) for result in results)
        channel.close()
    bulk = statistics.median(bulk_times)
    return Result(
        key="P6",
        title=f"defer_many / sequential defer, {total} tasks, 20 ms gRPC create_task",
        value=sequential / bulk,
        unit="x",
        target=SPEEDUP_GOAL,
        higher_is_better=True,
        detail=(
            f"{sequential * 1000:.0f} ms vs {bulk * 1000:.0f} ms for {total} tasks "
            f"({total / bulk:.0f} tasks/s; {DEFAULT_MAX_WORKERS} threads; goal >= 5x, aim 10x) "
            "through a loopback gRPC CreateTask server (own process) sleeping 20 ms a call"
        ),
    )


def _emulator(quick: bool) -> list[Result]:
    total = 200 if quick else TASKS
    rounds = 2 if quick else 6
    with CloudTasksEmulator(queues=[QUEUE]) as emulator:
        client, api = paused_queue_client(emulator.host)
        prebuilt = [client.defer(process, "user-42", index) for index in range(total)]
        for task in prebuilt:
            task.name = ""  # let the emulator name it, as it names defer's
        api.purge_queue(name=QUEUE)

        def sequential() -> None:
            for index in range(total):
                client.defer(process, "user-42", index)

        def bulk() -> None:
            results = client.defer_many([Call(process, "user-42", i) for i in range(total)])
            assert all(isinstance(result, tasks_v2.Task) for result in results)

        def raw_pool() -> None:
            with ThreadPoolExecutor(max_workers=DEFAULT_MAX_WORKERS) as pool:
                list(pool.map(lambda task: api.create_task(parent=QUEUE, task=task), prebuilt))

        def purge() -> None:
            api.purge_queue(name=QUEUE)

        bulk(), raw_pool(), purge()  # warm both paths
        times_bulk, times_raw = interleaved(bulk, raw_pool, rounds=rounds, between=purge)
        times_sequential = _timed(sequential, rounds=1 if quick else 2, between=purge)
    per_bulk = statistics.median(times_bulk)
    per_raw = statistics.median(times_raw)
    per_sequential = statistics.median(times_sequential)
    return [
        Result(
            key="P6-emulator",
            title=f"defer_many / a raw 32-thread create_task pool, {total} tasks on the emulator",
            value=per_raw / per_bulk * 100,
            unit="%",
            target=CEILING_GOAL,
            higher_is_better=True,
            detail=(
                f"{total / per_bulk:.0f} vs {total / per_raw:.0f} tasks/s "
                f"({per_bulk * 1000:.0f} vs {per_raw * 1000:.0f} ms, medians of {rounds})"
            ),
        ),
        Result(
            key="P6-emulator-seq",
            title=f"defer_many / sequential defer, {total} tasks on the emulator",
            value=per_sequential / per_bulk,
            unit="x",
            target=None,
            detail=(
                f"{per_sequential * 1000:.0f} ms vs {per_bulk * 1000:.0f} ms "
                "(informational: the emulator caps what concurrency gains)"
            ),
        ),
    ]


def _timed(func: Callable[[], None], *, rounds: int, between: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
        between()
    return times


@contextmanager
def _latency_server(latency: float) -> Iterator[str]:
    """Runs :mod:`benchmarks.latency_server` in a process of its own.

    Yields:
        Its ``host:port``.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency_server", f"{latency * 1000:g}"],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()  # it stops when its stdin closes
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
