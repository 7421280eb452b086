"""The Cloud Tasks API transport, on ``google-cloud-tasks``.

One ``CloudTasksClient`` serves the whole process: it is created on the first
``create_task`` (not at import, not at startup) and shared by every transport with
the same endpoint. With ``CLOUD_TASKS_EMULATOR_HOST`` set it talks to the emulator
over an insecure gRPC channel; otherwise to ``cloudtasks.googleapis.com`` with
application default credentials.

**When the API is unavailable.** ``CreateTask`` is retried with google-api-core's
exponential backoff (from 0.1 s up to 1 s between attempts) while the service
answers ``UNAVAILABLE`` (it did not take the request, so a retry cannot create a
second task), each attempt getting the time left. If the task is not created
within ``timeout`` seconds (``CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT``, 30 by default),
:meth:`CloudTasksTransport.create_task` raises
``google.api_core.exceptions.DeadlineExceeded`` — a ``GoogleAPICallError``, as every
other error of the API — chained to google-api-core's ``RetryError`` and, through
it, to the last ``ServiceUnavailable``. An attempt that itself runs out of time
raises ``DeadlineExceeded`` too; the service may then have created the task.

**When it comes back.** gRPC backs off between attempts to reconnect a channel
(by default from 1 s, growing 1.6 times per failure up to 120 s), so after a long
outage a process would wait up to two minutes for its channel to try again, every
``defer`` failing meanwhile. The channels here reconnect at least once a second
(:data:`RECONNECT_OPTIONS`) and ``defer`` retries as often, so the first ``defer``
after an outage succeeds within about two seconds of the API's return (benchmark R2
measures it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import grpc
from google.api_core import exceptions, retry
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from cloudtasks_deferred._memo import once_per_process
from cloudtasks_deferred.settings import DEFAULT_ENQUEUE_TIMEOUT

__all__ = ["RECONNECT_OPTIONS", "CloudTasksTransport", "create_retry", "shared_client"]

#: gRPC channel arguments: reconnect after 0.1 s, then at least once a second.
RECONNECT_OPTIONS: Final[Sequence[tuple[str, int]]] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
#: google-api-core's ``TimeToDeadlineTimeout`` gives an attempt begun in the last
#: second before the deadline the whole timeout again; retrying stops this much
#: earlier, so that every attempt ends by the deadline.
_LAST_ATTEMPT_MARGIN: Final = 1.0


def create_retry(timeout: float) -> retry.Retry:
    """The retry policy of ``CreateTask``: only ``UNAVAILABLE``, within ``timeout`` seconds.

    Args:
        timeout: The enqueue timeout, in seconds.
    """
    return retry.Retry(
        predicate=retry.if_exception_type(exceptions.ServiceUnavailable),
        initial=0.1,
        maximum=1.0,  # as often as the channel reconnects: a returning API is seen at once
        timeout=max(timeout - _LAST_ATTEMPT_MARGIN, 0.0),
    )


@once_per_process
def shared_client(emulator_host: str | None) -> tasks_v2.CloudTasksClient:
    """Returns the process's client for the API, or for the emulator at ``emulator_host``.

    Its channel reconnects with :data:`RECONNECT_OPTIONS`.

    Args:
        emulator_host: ``host:port`` of a Cloud Tasks emulator, or ``None``.
    """
    if emulator_host is None:
        return tasks_v2.CloudTasksClient(transport=_grpc_transport)
    channel = grpc.insecure_channel(emulator_host, options=list(RECONNECT_OPTIONS))
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def _grpc_transport(**kwargs: Any) -> CloudTasksGrpcTransport:
    # The client passes what it resolved (credentials, endpoint, client info).
    return CloudTasksGrpcTransport(channel=_reconnecting_channel, **kwargs)


def _reconnecting_channel(host: str, *, options: Sequence[Any] = (), **kwargs: Any) -> Any:
    return CloudTasksGrpcTransport.create_channel(
        host, options=[*options, *RECONNECT_OPTIONS], **kwargs
    )


class CloudTasksTransport:
    """Creates tasks through the Cloud Tasks API.

    Args:
        emulator_host: ``host:port`` of an emulator, or ``None`` for the real API.
        client: A ready client to use instead of the shared one (benchmarks, tests).
        timeout: Seconds one :meth:`create_task` may take, retries included.
    """

    def __init__(
        self,
        emulator_host: str | None = None,
        *,
        client: tasks_v2.CloudTasksClient | None = None,
        timeout: float = DEFAULT_ENQUEUE_TIMEOUT,
    ) -> None:
        self._emulator_host = emulator_host
        self._client = client
        self.timeout = timeout
        self._retry = create_retry(timeout)

    @property
    def client(self) -> tasks_v2.CloudTasksClient:
        """The ``CloudTasksClient`` in use, created on first access."""
        if self._client is None:
            self._client = shared_client(self._emulator_host)
        return self._client

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        """Creates ``task`` in ``parent``; see :class:`.Transport`.

        Raises:
            google.api_core.exceptions.DeadlineExceeded: The task was not created
                within :attr:`timeout` seconds (see the module docstring).
            google.api_core.exceptions.GoogleAPICallError: The service refused it.
        """
        try:
            return self.client.create_task(
                parent=parent, task=task, retry=self._retry, timeout=self.timeout
            )
        except exceptions.RetryError as exc:
            # google-api-core's RetryError is no GoogleAPICallError: callers catching
            # the API's errors would miss an outage. Every attempt was refused with
            # UNAVAILABLE, so the task does not exist.
            raise exceptions.DeadlineExceeded(
                f"Cloud Tasks was unavailable and did not create the task within "
                f"{self.timeout:g} s (CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT); last error: "
                f"{exc.cause or exc}"
            ) from exc
