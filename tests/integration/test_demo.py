"""The README's first command: the Flask counter sample, driven through both emulators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloudtasks_deferred.emulators import CloudTasksEmulator, DatastoreEmulator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_the_counter_sample_to_30(
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
