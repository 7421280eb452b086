"""Client.defer: options, metadata, errors from the service, settings resolution."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
import warnings
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred import (
    BadTransactionStateError,
    Client,
    ConfigurationError,
    Settings,
    TaskAlreadyExistsError,
    TaskRetryOptions,
    TombstonedTaskError,
    deferred,
    testing,
)
from cloudtasks_deferred.client import current_client, default_client
from cloudtasks_deferred.enqueue import sender as sender_module
from cloudtasks_deferred.enqueue.transports.cloud_tasks import CloudTasksTransport, shared_client
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.frame import decode
from cloudtasks_deferred.payload.retry import RetryOptionsWarning
from cloudtasks_deferred.settings import ENVIRONMENT_VARIABLES, Platform, environment_key
from tests import tasks

SETTINGS = Settings(
    project="p",
    location="us-central1",
    base_url="https://svc.example",
    service_account="t@p.iam.gserviceaccount.com",
    ndb=False,
)


class Refusing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        raise self.error


def client(transport: Any = None, **changes: Any) -> Client:
    return Client(
        dataclasses.replace(SETTINGS, **changes), transport=transport or InMemoryTransport()
    )


def test_defer_returns_the_created_task_in_the_default_queue() -> None:
    task = client().defer(tasks.record, 1)
    assert task.name.startswith("projects/p/locations/us-central1/queues/default/tasks/")


def test_queue_option_and_setting() -> None:
    assert "/queues/mail/" in client().defer(tasks.record, _queue="mail").name
    assert "/queues/bulk/" in client(queue="bulk").defer(tasks.record).name


def test_retry_options_travel_in_the_frame() -> None:
    task = client().defer(
        tasks.record, _retry_options=TaskRetryOptions(task_retry_limit=3), _countdown=10
    )
    metadata = decode(task.http_request.body).metadata
    assert metadata["retry"] == {"task_retry_limit": 3}
    assert metadata["t0"] == pytest.approx(task.schedule_time.timestamp(), abs=0.01)


def test_no_metadata_without_retry_options() -> None:
    metadata = decode(client().defer(tasks.record).http_request.body).metadata
    assert metadata == {}


def test_backoff_retry_options_warn_that_the_queue_decides() -> None:
    with pytest.warns(RetryOptionsWarning, match="min_backoff_seconds, max_doublings"):
        client().defer(
            tasks.record, _retry_options=TaskRetryOptions(min_backoff_seconds=1, max_doublings=2)
        )


def test_retry_limits_alone_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client().defer(tasks.record, _retry_options=TaskRetryOptions(task_age_limit=60))


def test_transactional_outside_a_transaction_is_refused_and_nothing_is_enqueued() -> None:
    transport = InMemoryTransport()
    with pytest.raises(BadTransactionStateError, match="inside an NDB transaction") as caught:
        client(transport).defer(tasks.record, _transactional=True)
    assert "no NDB context is active" in str(caught.value)
    assert transport.tasks == []


def test_serialization_errors_happen_before_anything_is_sent() -> None:
    transport = InMemoryTransport()
    with pytest.raises(Exception, match="lambda"):
        client(transport).defer(lambda: None)
    assert transport.tasks == []


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Requested entity already exists", TaskAlreadyExistsError),
        (
            "The task cannot be created because a task with this name existed too recently.",
            TombstonedTaskError,
        ),
    ],
)
def test_already_exists_maps_to_the_legacy_errors(message: str, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        client(Refusing(exceptions.AlreadyExists(message))).defer(tasks.record, _name="n1")
    assert "tasks/n1" in str(caught.value)
    assert isinstance(caught.value, TaskAlreadyExistsError)


@pytest.mark.parametrize(
    ("error", "note"),
    [
        (exceptions.NotFound("Queue does not exist."), "check that the queue"),
        (exceptions.FailedPrecondition("Queue x does not exist."), "check that the queue"),
        (exceptions.PermissionDenied("denied"), "roles/cloudtasks.enqueuer"),
    ],
)
def test_service_errors_propagate_with_a_note(error: Exception, note: str) -> None:
    with pytest.raises(type(error)) as caught:
        client(Refusing(error)).defer(tasks.record)
    assert any(note in n for n in caught.value.__notes__)


def test_other_service_errors_propagate_unchanged() -> None:
    with pytest.raises(exceptions.InternalServerError):
        client(Refusing(exceptions.InternalServerError("oops"))).defer(tasks.record)


def test_missing_location_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CLOUDTASKS_DEFERRED_LOCATION is not set"):
        client(location=None).defer(tasks.record)


def test_missing_project_without_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="set GOOGLE_CLOUD_PROJECT"):
        client(project=None).defer(tasks.record)


def test_project_comes_from_application_default_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google.auth

    monkeypatch.setattr(google.auth, "default", lambda: (object(), "adc-project"))
    assert client(project=None).queue_path() == (
        "projects/adc-project/locations/us-central1/queues/default"
    )


def test_app_engine_location_comes_from_the_metadata_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    monkeypatch.setattr(sender_module, "_metadata_region", lambda: "europe-west1")
    settings = Settings(project="p", platform=Platform.APP_ENGINE)
    assert Client(settings).queue_path("q") == "projects/p/locations/europe-west1/queues/q"


def test_the_default_transport_is_cloud_tasks_on_the_configured_emulator() -> None:
    transport = Client(dataclasses.replace(SETTINGS, emulator_host="127.0.0.1:9")).transport
    assert isinstance(transport, CloudTasksTransport)
    assert transport.client is shared_client("127.0.0.1:9")


def test_default_client_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_QUEUE", "first")
    first = current_client()
    assert first.settings.queue == "first"
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_QUEUE", "second")
    assert current_client() is default_client()
    assert current_client().settings.queue == "second"
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_QUEUE", "first")
    assert current_client() is not first  # rebuilt, not looked up among old ones
    assert current_client().settings.queue == "first"


def test_concurrent_first_calls_build_one_default_client(monkeypatch: pytest.MonkeyPatch) -> None:
    read = Settings.from_env
    reads: list[Settings] = []

    def slow_read(cls: type[Settings], *args: Any, **kwargs: Any) -> Settings:
        time.sleep(0.05)  # widen the window in which a second thread could miss too
        reads.append(read(*args, **kwargs))
        return reads[-1]

    monkeypatch.setattr(Settings, "from_env", classmethod(slow_read))
    start = threading.Barrier(4)
    got: list[Client] = []

    def first_request() -> None:
        start.wait()
        got.append(default_client())

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4
    assert {id(each) for each in got} == {id(default_client())}
    assert len(reads) == 1


def test_a_failed_default_client_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_DEV_MODE", "maybe")
    with pytest.raises(ConfigurationError):
        default_client()
    monkeypatch.delenv("CLOUDTASKS_DEFERRED_DEV_MODE")
    assert default_client() is default_client()


def test_bind_is_scoped_to_the_block() -> None:
    mine = client()
    with mine.bind():
        assert current_client() is mine
        with client().bind() as inner:
            assert current_client() is inner
        assert current_client() is mine
    assert current_client() is not mine


def test_module_defer_uses_the_bound_client() -> None:
    transport = InMemoryTransport()
    with client(transport).bind():
        deferred.defer(tasks.record, "bound")
    assert len(transport.tasks) == 1


def test_ndb_context_off_is_a_no_op() -> None:
    with client(ndb=False).ndb_context() as context:
        assert context is None


def test_ndb_context_auto_without_configuration_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auto = client(ndb=None)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with auto.ndb_context():
                pass
    warnings_logged = [r for r in caplog.records if "cannot open an NDB context" in r.getMessage()]
    assert len(warnings_logged) == 1
    assert "DATASTORE_EMULATOR_HOST" in warnings_logged[0].getMessage()


def test_ndb_context_on_without_configuration_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot open an NDB context"):
        client(ndb=True).ndb_context()


def test_ndb_context_required_opens_one_even_when_ndb_is_off() -> None:
    with pytest.raises(ConfigurationError) as caught:
        client(ndb=False).ndb_context(required_for="an oversized payload")
    message = str(caught.value)
    assert message.startswith("an oversized payload needs Datastore, but cannot open an NDB")
    assert "DATASTORE_EMULATOR_HOST" in message
    assert "cloudtasks-deferred[ndb]" not in message  # installed: no hint to install it


def test_frame_payload_is_what_open_payload_reads() -> None:
    mine = client()
    pickled = deferred.serialize(tasks.record, 7)
    for compress in (False, True):
        framed = mine.frame_payload(pickled, {"retry": {"task_retry_limit": 1}}, compress=compress)
        opened = mine.open_payload(framed)
        assert opened.metadata == {"retry": {"task_retry_limit": 1}}
        assert (opened.func, opened.args) == (tasks.record, (7,))


def test_default_client_is_not_rebuilt_while_the_environment_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = Settings.from_env
    reads: list[Settings] = []

    def counted(cls: type[Settings], *args: Any, **kwargs: Any) -> Settings:
        reads.append(read(*args, **kwargs))
        return reads[-1]

    monkeypatch.setattr(Settings, "from_env", classmethod(counted))
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_LOCATION", "europe-west1")
    clients = {id(default_client()) for _ in range(100)}
    monkeypatch.setenv("UNRELATED_VARIABLE", "changed")  # not one from_env reads
    clients.add(id(default_client()))
    assert len(clients) == 1
    assert len(reads) == 1


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        (
            "CLOUDTASKS_DEFERRED_BASE_URL",
            "https://second.example",
            "base_url",
            "https://second.example",
        ),
        ("GOOGLE_CLOUD_PROJECT", "other-project", "project", "other-project"),
        ("GAE_ENV", "standard", "platform", Platform.APP_ENGINE),
        ("GAE_VERSION", "v7", "app_engine_version", "v7"),
        ("CLOUD_TASKS_EMULATOR_HOST", "127.0.0.1:9", "emulator_host", "127.0.0.1:9"),
    ],
)
def test_every_variable_settings_read_rebuilds_the_default_client(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: Any
) -> None:
    before = default_client()
    monkeypatch.setenv(variable, value)
    after = default_client()
    assert after is not before
    assert getattr(after.settings, field) == expected


def test_defer_uses_the_base_url_set_after_the_first_defer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = InMemoryTransport()
    monkeypatch.setattr(
        "cloudtasks_deferred.enqueue.transports.cloud_tasks.CloudTasksTransport",
        lambda emulator_host, **options: transport,
    )
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_LOCATION", "us-central1")
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT", "t@p.iam.gserviceaccount.com")
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_BASE_URL", "https://old.example")
    deferred.defer(tasks.record, 1)
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_BASE_URL", "https://new.example")
    deferred.defer(tasks.record, 2)
    assert [task.http_request.url for task in transport.tasks] == [
        "https://old.example/_ah/queue/deferred",
        "https://new.example/_ah/queue/deferred",
    ]


def test_reset_default_client_is_public_and_cache_clear_still_works() -> None:
    first = default_client()
    testing.reset_default_client()
    second = default_client()
    assert second is not first
    default_client.cache_clear()  # type: ignore[attr-defined]
    assert default_client() is not second


def test_the_environment_key_reads_what_from_env_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {name: f"value-of-{name}" for name in ENVIRONMENT_VARIABLES}
    assert environment_key(environ) == tuple(environ.values())
    before = environment_key()
    for name in ENVIRONMENT_VARIABLES:
        old = os.environ.get(name)
        monkeypatch.setenv(name, "changed")
        assert environment_key() != before, name
        if old is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, old)
    assert environment_key() == before


def test_ndb_context_without_google_cloud_ndb_says_to_install_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.ndb", None)  # import raises ModuleNotFoundError
    with pytest.raises(ConfigurationError, match=r"pip install 'cloudtasks-deferred\[ndb\]'"):
        client(ndb=True).ndb_context()
