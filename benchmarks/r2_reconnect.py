"""R2: how long the first ``defer`` after a Cloud Tasks outage waits for the channel to reconnect.

Starts the Cloud Tasks emulator on a fixed port, connects two clients to it — the
library's (:func:`~cloudtasks_deferred.enqueue.transports.cloud_tasks.shared_client`, whose
channel reconnects at least once a second) and one on a channel with gRPC's default
reconnect backoff (1 s, growing 1.6 times per failure up to 120 s) — and creates a
task with each. Then it stops the emulator, lets each client fail once (a process
that deferred during the outage), waits out the outage, starts the emulator again on
the same port and, once it answers a fresh channel, has both clients create a task
at the same moment, each retrying ``UNAVAILABLE`` with ``defer``'s retry policy
(:func:`~cloudtasks_deferred.enqueue.transports.cloud_tasks.create_retry`). Reported: the
time from the emulator's return to each client's success.
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, free_port
from cloudtasks_deferred.enqueue.transports.cloud_tasks import create_retry, shared_client

from .common import QUEUE, Result

OUTAGE = 60.0
QUICK_OUTAGE = 5.0
#: The first defer after the outage should not wait longer than this, in milliseconds.
TARGET_MS = 2000.0
#: How long the measured calls keep retrying before the measurement gives up.
PATIENCE = 180.0


def run(quick: bool = False) -> Result:
    outage = QUICK_OUTAGE if quick else OUTAGE
    port = free_port()
    emulator = CloudTasksEmulator(queues=[QUEUE], port=port).start()
    ours = shared_client(emulator.host)
    # Its own subchannel pool: channels with equal arguments share connections, and
    # the emulator's readiness probe would otherwise reconnect this one for it.
    default_channel = grpc.insecure_channel(
        emulator.host, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    defaults = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=default_channel))
    try:
        _pause(emulator.host)
        for client in (ours, defaults):
            _create(client, retry_for=10)
        emulator.stop()
        for client in (ours, defaults):
            try:
                _create(client, retry_for=None)
            except exceptions.ServiceUnavailable:
                pass  # the outage, noticed
            else:
                raise RuntimeError("the emulator still answered after it was stopped")
        time.sleep(outage)
        emulator = CloudTasksEmulator(queues=[QUEUE], port=port).start()
        _pause(emulator.host)
        back = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waits = list(pool.map(lambda client: _waited(client, back), (ours, defaults)))
    finally:
        emulator.stop()
        default_channel.close()
    ours_wait, default_wait = waits
    return Result(
        key="R2",
        title=f"first defer after a {outage:.0f} s Cloud Tasks outage: how long it waits",
        value=ours_wait * 1000,
        unit="ms",
        target=TARGET_MS,
        detail=(
            f"{ours_wait:.2f} s after the emulator answered again; on a channel with gRPC's "
            f"default reconnect backoff: {default_wait:.2f} s"
        ),
    )


def _pause(host: str) -> None:
    # A fresh channel: the queue is paused so that the created tasks only stay there.
    channel = grpc.insecure_channel(host)
    try:
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        client.pause_queue(name=QUEUE, timeout=10)
    finally:
        channel.close()


def _create(client: tasks_v2.CloudTasksClient, retry_for: float | None) -> None:
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(url="https://bench.example/_ah/queue/deferred")
    )
    # defer's own retry policy, or a single attempt.
    policy = create_retry(retry_for) if retry_for is not None else None
    client.create_task(parent=QUEUE, task=task, retry=policy, timeout=10)


def _waited(client: tasks_v2.CloudTasksClient, since: float) -> float:
    _create(client, retry_for=PATIENCE)
    return time.monotonic() - since
