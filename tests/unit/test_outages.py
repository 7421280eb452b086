"""What ``defer`` raises when a service is down: the enqueue timeout, and reconnecting.

The same faults run against the real emulators in tests/integration/test_outages.py;
these pin each rule on its own, fast.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from cloudtasks_deferred import Client, ConfigurationError, Settings
from cloudtasks_deferred.enqueue.transports import cloud_tasks
from cloudtasks_deferred.enqueue.transports.cloud_tasks import (
    RECONNECT_OPTIONS,
    CloudTasksTransport,
    shared_client,
)
from cloudtasks_deferred.settings import DEFAULT_ENQUEUE_TIMEOUT
from tests import tasks

SETTINGS = Settings(
    project="p",
    location="us-central1",
    base_url="https://svc.example",
    service_account="t@p.iam.gserviceaccount.com",
    ndb=False,
)


class ApiClient:
    """Stands in for ``CloudTasksClient``: applies the retry it is given, as the generated
    client does, to an RPC that raises ``error`` ``times`` times (forever when ``None``)."""

    def __init__(self, error: Exception, times: int | None = None) -> None:
        self.error = error
        self.times = times
        self.attempts = 0

    def create_task(self, *, parent: str, task: tasks_v2.Task, retry: Any, timeout: float) -> Any:
        def attempt() -> tasks_v2.Task:
            self.attempts += 1
            if self.times is None or self.attempts <= self.times:
                raise self.error
            return task

        return retry(attempt)()


def test_the_enqueue_timeout_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).enqueue_timeout == DEFAULT_ENQUEUE_TIMEOUT == 30
    variable = "CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT"
    assert Settings.from_env({variable: "2.5"}).enqueue_timeout == 2.5
    for bad in ("0", "-1", "soon", "inf", "3601"):
        with pytest.raises(ConfigurationError, match=variable):
            Settings.from_env({variable: bad})


def test_the_default_transport_gets_the_enqueue_timeout() -> None:
    settings = dataclasses.replace(SETTINGS, emulator_host="127.0.0.1:9", enqueue_timeout=4)
    transport = Client(settings).transport
    assert isinstance(transport, CloudTasksTransport)
    assert transport.timeout == 4


def test_an_api_unavailable_until_the_timeout_raises_deadline_exceeded() -> None:
    api = ApiClient(exceptions.ServiceUnavailable("connection refused"))  # forever
    transport = CloudTasksTransport(client=api, timeout=1.5)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(exceptions.DeadlineExceeded) as caught:
        Client(SETTINGS, transport=transport).defer(tasks.record)
    elapsed = time.monotonic() - started
    error = caught.value
    assert isinstance(error, exceptions.GoogleAPICallError)
    assert "CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT" in str(error)
    assert "connection refused" in str(error)
    assert isinstance(error.__cause__, exceptions.RetryError)
    assert isinstance(error.__cause__.cause, exceptions.ServiceUnavailable)
    assert any("the task was not created" in note for note in error.__notes__)
    assert api.attempts >= 2  # google-api-core retried it ...
    assert elapsed < 1.5 + 1  # ... within the timeout (retries stop a second early)


def test_a_short_outage_is_ridden_out() -> None:
    api = ApiClient(exceptions.ServiceUnavailable("down"), times=2)
    transport = CloudTasksTransport(client=api, timeout=30)  # type: ignore[arg-type]
    task = tasks_v2.Task(name="projects/p/locations/l/queues/q/tasks/t")
    assert transport.create_task("projects/p/locations/l/queues/q", task) == task
    assert api.attempts == 3


def test_an_attempt_that_times_out_says_the_task_may_exist() -> None:
    api = ApiClient(exceptions.DeadlineExceeded("Deadline Exceeded"))
    transport = CloudTasksTransport(client=api, timeout=5)  # type: ignore[arg-type]
    with pytest.raises(exceptions.DeadlineExceeded) as caught:
        Client(SETTINGS, transport=transport).defer(tasks.record)
    assert api.attempts == 1  # not retried: the service may have created it
    assert any("may have created the task" in note for note in caught.value.__notes__)


def test_other_errors_are_not_retried() -> None:
    api = ApiClient(exceptions.InternalServerError("oops"))
    transport = CloudTasksTransport(client=api, timeout=5)  # type: ignore[arg-type]
    with pytest.raises(exceptions.InternalServerError):
        transport.create_task("projects/p/locations/l/queues/q", tasks_v2.Task())
    assert api.attempts == 1


def test_channels_reconnect_at_least_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC's default reconnect backoff grows to 120 s; ours stays at a second."""
    assert dict(RECONNECT_OPTIONS) == {
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
    created: list[dict[str, Any]] = []

    def create_channel(host: str, **kwargs: Any) -> grpc.Channel:
        created.append({"host": host, **kwargs})
        return grpc.insecure_channel("127.0.0.1:9")

    import google.auth

    monkeypatch.setattr(CloudTasksGrpcTransport, "create_channel", create_channel)
    monkeypatch.setattr(google.auth, "default", lambda **_: (AnonymousCredentials(), "p"))
    shared_client.cache_clear()  # type: ignore[attr-defined]
    try:
        shared_client(None)
    finally:
        shared_client.cache_clear()  # type: ignore[attr-defined]
    [channel] = created
    assert channel["host"] == "cloudtasks.googleapis.com:443"
    options = dict(channel["options"])
    assert options["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    assert options["grpc.max_send_message_length"] == -1  # the client's own are kept
    assert isinstance(channel["credentials"], AnonymousCredentials)


def test_the_emulator_channel_reconnects_at_least_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, Any]] = []
    original = grpc.insecure_channel

    def insecure_channel(target: str, options: Any = None) -> grpc.Channel:
        calls.append((target, options))
        return original(target)

    monkeypatch.setattr(cloud_tasks.grpc, "insecure_channel", insecure_channel)
    shared_client.cache_clear()  # type: ignore[attr-defined]
    try:
        shared_client("127.0.0.1:9")
    finally:
        shared_client.cache_clear()  # type: ignore[attr-defined]
    assert calls == [("127.0.0.1:9", list(RECONNECT_OPTIONS))]
