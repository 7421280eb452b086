"""``cloudtasks-deferred dev`` and ``emulator`` as a developer runs them: real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import requests

from cloudtasks_deferred.emulators import CloudTasksEmulator, free_port
from cloudtasks_deferred.transports.cloud_tasks import shared_client
from tests.integration.conftest import require
from tests.integration.processes import Command, port_open, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def installed_tasks_emulator() -> None:
    require(
        CloudTasksEmulator.available(),
        "gcloud-tasks-emulator is not installed: "
        "pip install --no-deps gcloud-tasks-emulator==0.6.2",
    )


@pytest.mark.usefixtures("installed_tasks_emulator")
def test_dev_serves_an_app_on_an_emulator_it_starts_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    dev = Command.cli("dev", "tests.dev_app:app", "--port", str(port), "--no-datastore")
    try:
        dev.wait_for_line("[dev] ready")
        emulator_line = dev.wait_for_line("[dev] Cloud Tasks emulator on ")
        tasks_port = int(emulator_line.split("127.0.0.1:")[1].split(",")[0])
        assert f"export CLOUDTASKS_DEFERRED_BASE_URL=http://127.0.0.1:{port}" in dev.output
        assert "export CLOUDTASKS_DEFERRED_DEV_MODE=true" in dev.output
        assert "export CLOUDTASKS_DEFERRED_NDB=false" in dev.output
        assert f"export CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:{tasks_port}" in dev.output

        report = tmp_path / "report.json"
        url = f"http://127.0.0.1:{port}/defer"
        assert requests.get(url, params={"path": str(report)}, timeout=10).text == "deferred"
        wait_until("the deferred task to run", report.exists)
        assert json.loads(report.read_text())["text"] == "from dev"

        assert dev.stop(signal.SIGINT) == 0
    finally:
        dev.close()
    assert "[dev] stopping" in dev.output
    assert not port_open(port), "the app is still running"
    assert not port_open(tasks_port), "the emulator is still running"


def test_dev_says_when_the_app_cannot_start(tasks_emulator: CloudTasksEmulator) -> None:
    dev = Command.cli(
        "dev", "no_such_module:app", "--port", str(free_port()), "--no-datastore",
        "--tasks-emulator", tasks_emulator.host,
    )  # fmt: skip
    try:
        assert dev.process.wait(60) == 1
    finally:
        dev.close()
    assert "cannot load no_such_module:app" in dev.output
    assert "cloudtasks-deferred dev: no_such_module:app did not start" in dev.output


@pytest.mark.usefixtures("installed_tasks_emulator")
def test_emulator_creates_the_queues_of_queue_yaml_and_tfvars(tmp_path: Path) -> None:
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: mail\n  rate: 5/s\n")
    tfvars = tmp_path / "queues.tfvars.json"
    tfvars.write_text(json.dumps({"queues": {"reports": {"max_attempts": 5}}}))
    port = free_port()
    emulator = Command.cli(
        "emulator", "--port", str(port), "--project", "files-project",
        "--queue-yaml", str(queue_yaml), "--queues-json", str(tfvars),
    )  # fmt: skip
    try:
        emulator.wait_for_line(f"export CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:{port}")
        parent = "projects/files-project/locations/us-central1"
        queues = shared_client(f"127.0.0.1:{port}").list_queues(parent=parent)
        assert sorted(queue.name.rsplit("/", 1)[1] for queue in queues) == [
            "default",
            "mail",
            "reports",
        ]
        assert emulator.stop() == 0
    finally:
        emulator.close()
    assert not port_open(port)
