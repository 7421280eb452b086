"""P1: ``defer()`` against a raw ``CloudTasksClient.create_task`` of the same bytes.

Both sides create 1,000 HTTP tasks with an OIDC token on the same gRPC channel to
the Cloud Tasks emulator (its queue paused, so it only stores them), interleaved
in rounds of 100. The raw side builds its request the way application code would,
with the payload bytes ``defer`` produced prepared in advance.
"""

from __future__ import annotations

from google.cloud import tasks_v2

from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator

from .common import QUEUE, Result, interleaved, paused_queue_client
from .tasks import process

TASKS = 1000
ROUND = 100
TARGET = 1.05


def run(quick: bool = False) -> Result:
    total = 200 if quick else TASKS
    with CloudTasksEmulator(queues=[QUEUE]) as emulator:
        client, api = paused_queue_client(emulator.host)
        body = client.defer(process, "user-42", 20).http_request.body
        url = "https://bench.example/_ah/queue/deferred"

        def with_defer() -> None:
            for _ in range(ROUND):
                client.defer(process, "user-42", 20)

        def raw() -> None:
            for _ in range(ROUND):
                api.create_task(
                    parent=QUEUE,
                    task=tasks_v2.Task(
                        http_request=tasks_v2.HttpRequest(
                            url=url,
                            http_method=tasks_v2.HttpMethod.POST,
                            headers={"Content-Type": "application/octet-stream"},
                            body=body,
                            oidc_token=tasks_v2.OidcToken(
                                service_account_email=client.settings.service_account,
                                audience="https://bench.example",
                            ),
                        )
                    ),
                )

        with_defer(), raw()  # warm both paths
        times_defer, times_raw = interleaved(
            with_defer, raw, rounds=total // ROUND, between=lambda: api.purge_queue(name=QUEUE)
        )
    per_defer = sum(times_defer) / total * 1000
    per_raw = sum(times_raw) / total * 1000
    return Result(
        key="P1",
        title=f"defer() / raw create_task, {total} tasks on the emulator",
        value=per_defer / per_raw,
        unit="x",
        target=TARGET,
        detail=f"{per_defer:.3f} ms vs {per_raw:.3f} ms per task",
    )
