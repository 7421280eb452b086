"""defer and the client from many threads at once: every task created once, no error.

The same through the Cloud Tasks emulator's gRPC channel: tests/integration/test_bulk.py.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred import Call, Client, Settings, deferred
from cloudtasks_deferred.enqueue.transports.cloud_tasks import shared_client
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.frame import SigningKey
from cloudtasks_deferred.testing import TEST_SETTINGS, in_memory_queue
from tests import tasks

THREADS = 16
PER_THREAD = 200
SETTINGS = dataclasses.replace(TEST_SETTINGS, ndb=False)
SIGNED = dataclasses.replace(SETTINGS, signing_keys=(SigningKey("k1", bytes(range(32))),))


def all_at_once(work: Callable[[int], Any], threads: int = THREADS) -> list[BaseException]:
    """Runs ``work(thread_index)`` in ``threads`` threads released together; their errors."""
    start = threading.Barrier(threads, timeout=10)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait()
            work(index)
        except BaseException as exc:
            errors.append(exc)

    running = [threading.Thread(target=run, args=(index,)) for index in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(60)
    assert not any(thread.is_alive() for thread in running)
    return errors


def calls_in(client: Client, created: list[tasks_v2.Task]) -> list[tuple[Any, ...]]:
    """The arguments of each task's call, decoded (and verified) as the handler would."""
    return [client.open_payload(task.http_request.body).args for task in created]


def expected(threads: int = THREADS, per_thread: int = PER_THREAD) -> list[tuple[Any, ...]]:
    return sorted(((thread, index),) for thread in range(threads) for index in range(per_thread))


@pytest.mark.parametrize("settings", [SETTINGS, SIGNED], ids=["unsigned", "signed"])
def test_many_threads_defer_through_one_client_and_none_is_lost(settings: Settings) -> None:
    transport = InMemoryTransport()
    client = Client(settings, transport=transport)
    errors = all_at_once(
        lambda thread: [client.defer(tasks.record, (thread, i)) for i in range(PER_THREAD)]
    )
    assert errors == []
    created = transport.tasks
    assert sorted(calls_in(client, created)) == expected()
    assert len({task.name for task in created}) == THREADS * PER_THREAD


def test_many_threads_defer_through_the_module_function_into_one_queue() -> None:
    with in_memory_queue(SETTINGS) as queue:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:  # the code under test's threads
            futures = [
                pool.submit(deferred.defer, tasks.record, (thread, i))
                for thread in range(THREADS)
                for i in range(PER_THREAD // 4)
            ]
            results = [future.result() for future in futures]
        assert len(results) == THREADS * PER_THREAD // 4
        assert sorted(calls_in(queue.client, queue.tasks)) == expected(per_thread=PER_THREAD // 4)


def test_many_threads_defer_many_at_once_through_one_client() -> None:
    transport = InMemoryTransport()
    client = Client(SETTINGS, transport=transport)
    results: dict[int, list[tasks_v2.Task | Exception]] = {}

    def batch(thread: int) -> None:
        calls = [Call(tasks.record, (thread, i)) for i in range(PER_THREAD)]
        results[thread] = client.defer_many(calls, max_workers=8)

    assert all_at_once(batch, threads=4) == []
    for thread, outcomes in results.items():
        assert all(isinstance(outcome, tasks_v2.Task) for outcome in outcomes)
        assert calls_in(client, outcomes) == [((thread, i),) for i in range(PER_THREAD)]
    assert sorted(calls_in(client, transport.tasks)) == expected(threads=4)


def test_threads_racing_for_a_new_client_share_one_transport_and_one_cloud_tasks_client() -> None:
    shared_client.cache_clear()  # type: ignore[attr-defined]
    client = Client(dataclasses.replace(SETTINGS, emulator_host="127.0.0.1:9"))
    seen: list[tuple[object, object]] = []
    lock = threading.Lock()

    def look(_: int) -> None:
        transport = client.transport
        found = (transport, transport.client)  # type: ignore[attr-defined]
        with lock:
            seen.append(found)

    try:
        assert all_at_once(look) == []
        assert len(seen) == THREADS
        assert len({id(transport) for transport, _ in seen}) == 1
        assert len({id(api) for _, api in seen}) == 1
    finally:
        shared_client.cache_clear()  # type: ignore[attr-defined]
