"""A gunicorn worker SIGKILLed in the middle of a task: Cloud Tasks dispatches it again.

gunicorn (two sync workers) serves an app wrapped with ``wrap_wsgi_app``; the task
carries a payload too large for a task, stored in Datastore. The worker running the
first attempt is killed; the emulator sees the connection drop (a failed attempt,
as Cloud Tasks would), dispatches the task again, another worker runs it from the
stored entity, which survived the kill, and deletes it after the success.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator, free_port
from tests.integration import worker_app
from tests.integration.conftest import LOCATION, PROJECT
from tests.integration.entities import counts
from tests.integration.processes import Command, isolated_env, port_open, wait_until
from tests.services import require
from tests.tasks import fingerprint

pytestmark = pytest.mark.integration

STORED = {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1}


def reports(directory: Path, kind: str) -> list[tuple[int, int]]:
    """``(retry count, pid)`` of each ``kind`` report the task left."""
    found = []
    for path in directory.glob(f"{kind}-*"):
        _, retry, pid = path.name.split("-")
        found.append((int(retry), int(pid)))
    return sorted(found)


@pytest.mark.usefixtures("tasks_client")
def test_a_worker_killed_mid_task_the_task_runs_again_from_its_stored_payload(
    dev_settings: Callable[..., Settings], datastore: DatastoreEmulator, tmp_path: Path
) -> None:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        require(False, "gunicorn is not installed: pip install -e '.[dev]'")
    port = free_port()
    settings = dev_settings(f"http://127.0.0.1:{port}")
    directory = tmp_path / "reports"
    directory.mkdir()
    env = isolated_env(
        GOOGLE_CLOUD_PROJECT=PROJECT,
        CLOUDTASKS_DEFERRED_LOCATION=LOCATION,
        CLOUDTASKS_DEFERRED_BASE_URL=str(settings.base_url),
        CLOUDTASKS_DEFERRED_DEV_MODE="true",
        CLOUDTASKS_DEFERRED_DEV_KEY_FILE=str(settings.dev_key_file),
        CLOUDTASKS_DEFERRED_NDB="true",
        **datastore.env,
        **{worker_app.REPORT_DIR: str(directory)},
    )
    server = Command(
        [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--timeout", "120", "tests.integration.worker_app:application",
        ],
        env=env,
    )  # fmt: skip
    try:
        wait_until("gunicorn", lambda: port_open(port), timeout=60)
        blob = random.Random(5).randbytes(1_500_000)  # noqa: S311 - test data
        Client(settings).defer(worker_app.digest_slowly_the_first_time, blob)
        assert counts() == STORED

        wait_until("the first attempt", lambda: reports(directory, "attempt"), timeout=60)
        [(retry, pid)] = reports(directory, "attempt")
        assert retry == 0
        assert counts() == STORED  # while the task runs
        os.kill(pid, signal.SIGKILL)

        wait_until("the retry", lambda: reports(directory, "done"), timeout=60)
        [(retry, done_by)] = reports(directory, "done")
        assert retry >= 1  # Cloud Tasks' retry, after the failed attempt
        assert done_by != pid
        assert (directory / f"done-{retry}-{done_by}").read_text() == repr(fingerprint(blob))
        wait_until("the stored payload's deletion", lambda: counts() == {})
        time.sleep(0.5)  # the emulator would have dispatched it again by now
        assert len(reports(directory, "done")) == 1
        assert server.process.poll() is None  # gunicorn replaced its worker
    finally:
        server.close()
