"""``cloudtasks-deferred dev`` and ``emulator`` as a developer runs them: real processes."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
from pathlib import Path

import pytest
import requests

from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, free_port
from cloudtasks_deferred.enqueue.transports.cloud_tasks import shared_client
from tests.integration.conftest import require
from tests.integration.processes import ROOT, Command, port_open, wait_until

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
        "dev", "main:nosuchattr", "--app-dir", str(ROOT / "samples" / "wsgi"),
        "--port", str(free_port()), "--no-datastore", "--tasks-emulator", tasks_emulator.host,
    )  # fmt: skip
    try:
        assert dev.process.wait(60) == 1
    finally:
        dev.close()
    lines = dev.output.splitlines()
    assert (
        "python -m cloudtasks_deferred.devtools.devserver: cannot load main:nosuchattr: "
        "main has no "
        "attribute 'nosuchattr'"
    ) in lines
    assert "cloudtasks-deferred dev: main:nosuchattr did not start (its message is above)" in lines
    assert "Traceback" not in dev.output


def test_dev_refuses_a_module_that_does_not_exist_before_starting_anything(
    tasks_emulator: CloudTasksEmulator,
) -> None:
    dev = Command.cli(
        "dev", "no_such_module:app", "--port", str(free_port()), "--no-datastore",
        "--tasks-emulator", tasks_emulator.host,
    )  # fmt: skip
    try:
        assert dev.process.wait(60) == 2
    finally:
        dev.close()
    assert dev.output.startswith("cloudtasks-deferred dev: no module 'no_such_module' in ")
    assert "[dev]" not in dev.output


@pytest.mark.usefixtures("installed_tasks_emulator")
@pytest.mark.parametrize("holder", ["a plain listener", "another emulator"])
def test_the_emulator_command_refuses_a_port_in_use_naming_its_holder(
    holder: str, tasks_emulator: CloudTasksEmulator
) -> None:
    with contextlib.ExitStack() as stack:
        if holder == "another emulator":
            port = tasks_emulator.port
        else:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
        emulator = Command.cli("emulator", "--port", str(port))
        try:
            assert emulator.process.wait(60) == 1
        finally:
            emulator.close()
    expected = f"cloudtasks-deferred emulator: port {port} on 127.0.0.1 is in use by process "
    assert emulator.output.startswith(expected), emulator.output
    assert emulator.output.endswith("): stop it or pass another --port")
    if holder == "another emulator":
        assert "cloudtasks_deferred.devtools.tasks_emulator --port" in emulator.output
    assert "export CLOUD_TASKS_EMULATOR_HOST" not in emulator.output
    assert len(emulator.output.splitlines()) == 1


@pytest.mark.usefixtures("installed_tasks_emulator")
def test_emulator_creates_the_queues_of_queue_yaml_and_tfvars(tmp_path: Path) -> None:
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: mail\n  rate: 5/s\n- name: pulled\n  mode: pull\n")
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
        assert (
            f"cloudtasks-deferred emulator: warning: {queue_yaml}: pulled is a pull queue: not "
            "created"
        ) in emulator.output
        assert emulator.stop() == 0
    finally:
        emulator.close()
    assert not port_open(port)
