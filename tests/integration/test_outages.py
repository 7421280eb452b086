"""Services failing under ``defer``, on the real emulators: what it raises, what is left behind.

* Cloud Tasks unavailable: ``defer`` raises ``DeadlineExceeded`` (a
  ``GoogleAPICallError``) within ``CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT``; a payload
  stored in Datastore for the task is deleted, not orphaned; once the API is back,
  the next ``defer`` of the same process succeeds within that timeout (its channel
  reconnects at least once a second; with gRPC's default backoff it would wait
  seconds — benchmark R2 measures both).
* Datastore unavailable while an oversized payload is stored: ``ServiceUnavailable``
  naming Datastore, chained to google-cloud-ndb's error; nothing enqueued.
* Twenty processes deferring for the first time at once, with no dev key yet: they
  share the one key that is created, and every task they created authenticates.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred import Client, Handler, Settings
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator, free_port
from cloudtasks_deferred.settings import queue_path
from cloudtasks_deferred.testing import in_memory_queue
from tests import tasks
from tests.integration.conftest import LOCATION, PROJECT, Server
from tests.integration.entities import counts
from tests.integration.processes import Command, isolated_env, wait_until
from tests.services import require
from tests.tasks import RECORDER, fingerprint

pytestmark = pytest.mark.integration

#: The enqueue timeout of these tests, in seconds.
TIMEOUT = 4.0
#: How long Cloud Tasks stays down. gRPC's default backoff (1 s, then 1.6 times more
#: after each failure, each ±20%) tries to reconnect at about 1, 2.6, 5.2, 9.3 and
#: 15.8 s: a restart at about 11 s falls in the 6.5 s gap, and a channel with those
#: defaults would fail the next defer (TIMEOUT) about 97 times in 100.
OUTAGE = 10.5
QUEUE = queue_path(PROJECT, LOCATION, "default")


class Restartable:
    """A Cloud Tasks emulator of this test's own, stopped and started on one port."""

    def __init__(self, log: Path) -> None:
        require(CloudTasksEmulator.available(), "gcloud-tasks-emulator is not installed")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._log = log
        self._running: CloudTasksEmulator | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._running = CloudTasksEmulator(queues=[QUEUE], port=self.port, log=log).start()

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.stop()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Restartable]:
    emulator = Restartable(tmp_path / "tasks.log")
    emulator.start()
    yield emulator
    emulator.stop()


def test_cloud_tasks_outage_raises_one_documented_error_in_time_and_recovers(
    restartable: Restartable,
    server: Server,
    dev_settings: Callable[..., Settings],
    datastore: DatastoreEmulator,
) -> None:
    client = Client(
        dev_settings(server.url, emulator_host=restartable.host, enqueue_timeout=TIMEOUT)
    )
    server.app = Handler(client=client)
    client.defer(tasks.record, "before")
    assert RECORDER.wait_for("record") == ["before"]

    restartable.stop()
    down = time.monotonic()
    started = time.monotonic()
    with pytest.raises(exceptions.DeadlineExceeded) as caught:
        client.defer(tasks.record, "during")
    elapsed = time.monotonic() - started
    error = caught.value
    assert isinstance(error, exceptions.GoogleAPICallError)  # what callers catch
    assert "CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT" in str(error)
    assert isinstance(error.__cause__, exceptions.RetryError)  # google-api-core retried
    assert isinstance(error.__cause__.cause, exceptions.ServiceUnavailable)
    assert elapsed <= TIMEOUT + 1.5  # bounded by the setting (it was ~30 s)

    # An oversized payload: its entity is deleted when the task cannot be created.
    blob = random.Random(3).randbytes(1_500_000)  # noqa: S311 - test data
    with pytest.raises(exceptions.DeadlineExceeded):
        client.defer(tasks.digest, blob)
    assert counts() == {}

    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
    restartable.start()
    # The same process, the same channel: it must reconnect within the timeout.
    client.defer(tasks.record, "after")
    client.defer(tasks.digest, blob)
    assert RECORDER.wait_for("record", count=2) == ["before", "after"]
    assert RECORDER.wait_for("digest", timeout=30) == [fingerprint(blob)]
    wait_until("the stored payload's deletion", lambda: counts() == {})


def test_datastore_outage_while_storing_a_payload_names_datastore_and_enqueues_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on the port; a project of its own keeps NDB's per-project client
    # (which read the emulator's address when it was built) apart from other tests'.
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    settings = Settings(
        project="datastore-outage",
        location=LOCATION,
        base_url="https://app.test",
        service_account="tasks@datastore-outage.iam.gserviceaccount.com",
    )
    blob = random.Random(4).randbytes(1_500_000)  # noqa: S311 - test data
    with in_memory_queue(settings) as queue:
        with pytest.raises(exceptions.ServiceUnavailable) as caught:
            queue.client.defer(tasks.digest, blob)
        assert queue.tasks == []
    error = caught.value
    assert str(error).startswith("503 Datastore is unavailable")
    assert "nothing was enqueued" in str(error)
    assert isinstance(error, exceptions.GoogleAPICallError)
    # google-cloud-ndb's own error, after its retries, is the cause.
    assert isinstance(error.__cause__, exceptions.RetryError)
    assert "retries exceeded" in str(error.__cause__)
    assert isinstance(error.__cause__.cause, exceptions.ServiceUnavailable)


PROCESSES = 20


def test_processes_starting_at_once_share_one_new_dev_key(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    tmp_path: Path,
) -> None:
    settings = dev_settings(server.url, dev_key_file=tmp_path / "keys" / "dev-key.pem")
    assert settings.dev_key_file is not None
    assert not settings.dev_key_file.exists()
    # The handler reads the key only when the first task arrives, after every process
    # created or read it.
    server.app = Handler(client=Client(settings))
    go = tmp_path / "go"
    env = isolated_env(
        GOOGLE_CLOUD_PROJECT=PROJECT,
        CLOUDTASKS_DEFERRED_LOCATION=LOCATION,
        CLOUDTASKS_DEFERRED_BASE_URL=server.url,
        CLOUD_TASKS_EMULATOR_HOST=str(settings.emulator_host),
        CLOUDTASKS_DEFERRED_DEV_MODE="true",
        CLOUDTASKS_DEFERRED_DEV_KEY_FILE=str(settings.dev_key_file),
        CLOUDTASKS_DEFERRED_NDB="false",
    )
    argv = [sys.executable, "-m", "tests.integration.deferring_child", "first-defer", str(go)]
    children = [Command(argv, env=env) for _ in range(PROCESSES)]
    try:
        for child in children:
            child.wait_for_line("ready", timeout=120)
        go.touch()  # every process makes its first defer now
        for child in children:
            child.wait_for_line("deferred", timeout=60)
        codes = [child.process.wait(30) for child in children]
    finally:
        for child in children:
            child.close()
    assert codes == [0] * PROCESSES
    ran = RECORDER.wait_for("record", count=PROCESSES, timeout=60)
    assert sorted(ran) == sorted(child.process.pid for child in children)
    assert [p.name for p in settings.dev_key_file.parent.iterdir()] == ["dev-key.pem"]
