"""What every benchmark shares: the result row and interleaved timing."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.enqueue.transports.cloud_tasks import (
    CloudTasksTransport,
    shared_client,
)
from cloudtasks_deferred.settings import queue_path

#: Where the emulator benchmarks enqueue: a queue kept paused, so nothing dispatches.
PROJECT = "bench-project"
QUEUE = queue_path(PROJECT, "us-central1", "bench")


@dataclasses.dataclass(frozen=True)
class Result:
    """One row of the report.

    Attributes:
        key: Short id, e.g. ``"P1"``.
        title: What is compared.
        value: The measured ratio or quantity.
        unit: ``"x"`` for ratios, else the unit of ``value``.
        target: The bound ``value`` should stay within; ``None`` for a figure
            reported for information.
        detail: The raw measurements behind ``value``.
        higher_is_better: Whether ``target`` is a lower bound.
    """

    key: str
    title: str
    value: float
    unit: str
    target: float | None
    detail: str
    higher_is_better: bool = False

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def row(self) -> tuple[str, str, str, str, str]:
        if self.target is None:
            return self.key, self.title, self._format(self.value), "(info)", ""
        bound = ">=" if self.higher_is_better else "<="
        target = f"{bound} {self._format(self.target)}"
        return self.key, self.title, self._format(self.value), target, "yes" if self.met else "NO"

    def _format(self, number: float) -> str:
        return f"{number:.2f}x" if self.unit == "x" else f"{number:.0f} {self.unit}"


def interleaved(
    a: Callable[[], None], b: Callable[[], None], *, rounds: int, between: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """Times ``a`` and ``b`` alternately (ABBA order cancels drift), ``between`` after each.

    Returns:
        Seconds per round for ``a`` and for ``b``.
    """
    times_a: list[float] = []
    times_b: list[float] = []
    for index in range(rounds):
        order = ((a, times_a), (b, times_b)) if index % 2 == 0 else ((b, times_b), (a, times_a))
        for func, times in order:
            started = time.perf_counter()
            func()
            times.append(time.perf_counter() - started)
            between()
    return times_a, times_b


def median(values: list[float]) -> float:
    return statistics.median(values)


def paused_queue_client(emulator_host: str) -> tuple[Client, Any]:
    """Pauses :data:`QUEUE` on the emulator and returns a client that defers into it.

    Returns:
        The library's client and the ``CloudTasksClient`` under it (one gRPC channel).
    """
    api = shared_client(emulator_host)
    api.pause_queue(name=QUEUE)
    return bench_client(api, emulator_host), api


def bench_client(api: Any, emulator_host: str | None = None) -> Client:
    """A client that defers HTTP tasks into :data:`QUEUE` through ``api``, a
    ``CloudTasksClient``."""
    settings = Settings(
        project=PROJECT,
        location="us-central1",
        queue="bench",
        base_url="https://bench.example",
        service_account=f"invoker@{PROJECT}.iam.gserviceaccount.com",
        emulator_host=emulator_host,
        ndb=False,
    )
    return Client(settings, transport=CloudTasksTransport(client=api))


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the block (google-cloud-ndb reads the emulator's
    address from the environment), then restores them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
