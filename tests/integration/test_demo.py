"""The README's first command: the Flask counter sample, driven through both emulators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_the_counter_sample_to_30_and_the_storage_tasks(
    tasks_emulator: CloudTasksEmulator, datastore_emulator: DatastoreEmulator
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--tasks-emulator",
            tasks_emulator.host,
            "--datastore-emulator",
            datastore_emulator.host,
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[demo] final counter: 30" in output
    assert output.count("ran main.do_something_later") == 3
    assert "flaky('demo'): attempt 1 raises SingularTaskFailure" in output
    assert "flaky('demo'): attempt 2 succeeds (retry 1)" in output
    assert "Executing deferred task." in output  # the sample's custom _url route
    # An oversized payload, stored in Datastore and run from there.
    assert "stored in Datastore; the" in output
    assert "task runs cloudtasks_deferred.deferred.run_from_datastore" in output
    assert "summarize('demo'): got 1,500,000 bytes intact" in output
    assert "[demo] demo_tasks.summarize got all 1,500,000 bytes" in output
    # A transactional task runs once, after its commit; the rolled-back one never.
    assert output.count("notify_deposit('demo', 25): runs after its transaction committed") == 1
    assert "notify_deposit('demo', 1000)" not in output
    assert "[demo] rolled back a deposit of 1000" in output
    assert "[demo] notify_deposit ran once, for 25 only; the balance is 25" in output
