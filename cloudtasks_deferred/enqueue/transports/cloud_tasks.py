"""The Cloud Tasks API transport, on ``google-cloud-tasks``.

One ``CloudTasksClient`` serves the whole process: it is created on the first
``create_task`` (not at import, not at startup) and shared by every transport with
the same endpoint. With ``CLOUD_TASKS_EMULATOR_HOST`` set it talks to the emulator
over an insecure gRPC channel; otherwise to ``cloudtasks.googleapis.com`` with
application default credentials.
"""

from __future__ import annotations

from typing import Final

from google.api_core import exceptions, retry
from google.cloud import tasks_v2

from cloudtasks_deferred._memo import once_per_process

__all__ = ["CREATE_RETRY", "CloudTasksTransport", "shared_client"]

#: ``CreateTask`` is retried only when the service was unavailable, i.e. did not take
#: the request; google-api-core's backoff, for at most 30 seconds.
CREATE_RETRY: Final = retry.Retry(
    predicate=retry.if_exception_type(exceptions.ServiceUnavailable),
    initial=0.1,
    maximum=5.0,
    timeout=30.0,
)
#: Seconds a single ``CreateTask`` call may take.
CREATE_TIMEOUT: Final = 20.0


@once_per_process
def shared_client(emulator_host: str | None) -> tasks_v2.CloudTasksClient:
    """Returns the process's client for the API, or for the emulator at ``emulator_host``.

    Args:
        emulator_host: ``host:port`` of a Cloud Tasks emulator, or ``None``.
    """
    if emulator_host is None:
        return tasks_v2.CloudTasksClient()
    # grpc's channel and transport load only for an emulator.
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


class CloudTasksTransport:
    """Creates tasks through the Cloud Tasks API.

    Args:
        emulator_host: ``host:port`` of an emulator, or ``None`` for the real API.
        client: A ready client to use instead of the shared one (benchmarks, tests).
    """

    def __init__(
        self, emulator_host: str | None = None, *, client: tasks_v2.CloudTasksClient | None = None
    ) -> None:
        self._emulator_host = emulator_host
        self._client = client

    @property
    def client(self) -> tasks_v2.CloudTasksClient:
        """The ``CloudTasksClient`` in use, created on first access."""
        if self._client is None:
            self._client = shared_client(self._emulator_host)
        return self._client

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        """Creates ``task`` in ``parent``; see :class:`.Transport`."""
        return self.client.create_task(
            parent=parent, task=task, retry=CREATE_RETRY, timeout=CREATE_TIMEOUT
        )
