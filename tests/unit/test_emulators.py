"""Starting and stopping the emulators' processes: whatever ends a start stops the process.

The processes here are stand-ins (``sleep``, a Python that exits) for the emulators,
which the integration tests start for real.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from cloudtasks_deferred.devtools import cli, emulators
from cloudtasks_deferred.devtools.emulators import (
    CloudTasksEmulator,
    DatastoreEmulator,
    EmulatorUnavailableError,
    PortInUseError,
    _Process,
    free_port,
    stop_process_group,
)
from cloudtasks_deferred.devtools.java import java_problem
from cloudtasks_deferred.devtools.ports import port_free, port_in_use, port_owner

SLEEP = ("sleep", "60")
EXIT_4 = (sys.executable, "-c", "raise SystemExit(4)")


class StandIn(_Process):
    """Runs ``command``; asks ``ready`` whether it answers."""

    name = "stand-in"

    def __init__(self, command: Sequence[str], ready: Callable[[StandIn], bool]) -> None:
        super().__init__(0, None)
        self.command = command
        self.ready = ready
        self.started: subprocess.Popen[bytes] | None = None

    def _command(self) -> Sequence[str]:
        return self.command

    def _ready(self) -> bool:
        self.started = self._process
        return self.ready(self)


def interrupt(_: object) -> bool:
    raise KeyboardInterrupt  # what Ctrl-C raises in the waiting thread


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_ctrl_c_while_waiting_stops_the_process() -> None:
    process = StandIn(SLEEP, interrupt)
    with pytest.raises(KeyboardInterrupt):
        process.start(timeout=30)
    assert process.started is not None
    assert process.started.returncode == -signal.SIGTERM
    process.stop()  # still idempotent


def test_a_process_that_does_not_answer_in_time_is_stopped() -> None:
    process = StandIn(SLEEP, lambda _: False)
    with pytest.raises(EmulatorUnavailableError, match="did not answer within 0 s"):
        process.start(timeout=0.3)
    assert process.started is not None
    assert process.started.returncode == -signal.SIGTERM


def test_a_process_that_exits_is_reported_with_its_status() -> None:
    def wait_for_exit(process: StandIn) -> bool:
        assert process.started is not None
        process.started.wait(timeout=30)
        return False

    with pytest.raises(EmulatorUnavailableError, match="stand-in exited with status 4"):
        StandIn(EXIT_4, wait_for_exit).start(timeout=30)


def test_stop_process_group_stops_the_childs_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    child = subprocess.Popen(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the shell did not start its child"
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    stop_process_group(child)
    assert child.returncode is not None
    while not gone(grandchild):
        assert time.monotonic() < deadline, "the grandchild survived SIGTERM to its group"
        time.sleep(0.05)
    stop_process_group(child)  # an exited child: nothing to do


class StandInDatastore(DatastoreEmulator):
    """The Datastore emulator's start and stop, around a stand-in command."""

    def __init__(self, command: Sequence[str] | None, ready: Callable[[object], bool]) -> None:
        super().__init__()
        self.command = command
        self.ready = ready
        self.used: Path | None = None

    def _command(self) -> Sequence[str]:
        self.used = self.workdir
        return super()._command() if self.command is None else self.command

    def _ready(self) -> bool:
        return self.ready(self)


@pytest.mark.parametrize(
    ("command", "ready", "error"),
    [
        (EXIT_4, lambda _: False, EmulatorUnavailableError),
        (None, lambda _: False, EmulatorUnavailableError),  # not installed
        (SLEEP, interrupt, KeyboardInterrupt),
        (SLEEP, lambda _: False, EmulatorUnavailableError),  # no answer in time
    ],
    ids=["exits", "not-installed", "ctrl-c", "timeout"],
)
def test_a_failed_datastore_start_removes_its_directory(
    command: Sequence[str] | None,
    ready: Callable[[object], bool],
    error: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if command is None:
        monkeypatch.setattr(DatastoreEmulator, "script", staticmethod(lambda: None))
    emulator = StandInDatastore(command, ready)
    with pytest.raises(error):
        emulator.start(timeout=1 if command == SLEEP else 30)
    assert emulator.used is not None
    assert not emulator.used.exists()
    assert emulator.workdir is None


def test_the_emulator_command_stops_the_emulator_on_a_signal_while_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    ignored_while_stopping: list[bool] = []
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def sigterm_while_waiting(emulator: CloudTasksEmulator) -> bool:
        assert emulator._process is not None
        started.append(emulator._process)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), "SIGTERM must be handled before the emulator starts"
        handler(signal.SIGTERM, None)  # as if `kill` reached the command now
        return False

    stop = CloudTasksEmulator.stop

    def stop_and_note(emulator: CloudTasksEmulator) -> None:
        ignored_while_stopping.append(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
        stop(emulator)

    monkeypatch.setattr(CloudTasksEmulator, "problem", staticmethod(lambda *_: None))
    monkeypatch.setattr(CloudTasksEmulator, "_command", lambda _: SLEEP)
    monkeypatch.setattr(CloudTasksEmulator, "_ready", sigterm_while_waiting)
    monkeypatch.setattr(CloudTasksEmulator, "stop", stop_and_note)
    assert cli.main(["emulator", "--port", str(emulators.free_port())]) == 0
    assert started[0].returncode == -signal.SIGTERM
    assert ignored_while_stopping[0] is True
    assert {signum: signal.getsignal(signum) for signum in before} == before
    assert "export CLOUD_TASKS_EMULATOR_HOST" not in capsys.readouterr().out


def test_the_emulator_command_stops_the_emulator_on_sigterm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def ready_then_sigterm(emulator: CloudTasksEmulator) -> bool:
        assert emulator._process is not None
        started.append(emulator._process)
        # Checked before sending it: an unhandled SIGTERM would end the test run.
        assert callable(signal.getsignal(signal.SIGTERM))
        threading.Timer(0.2, send_sigterm_if_handled).start()
        return True

    def send_sigterm_if_handled() -> None:
        if callable(signal.getsignal(signal.SIGTERM)):
            os.kill(os.getpid(), signal.SIGTERM)  # to the process, as `kill` sends it

    monkeypatch.setattr(CloudTasksEmulator, "problem", staticmethod(lambda *_: None))
    monkeypatch.setattr(CloudTasksEmulator, "_command", lambda _: SLEEP)
    monkeypatch.setattr(CloudTasksEmulator, "_ready", ready_then_sigterm)
    assert cli.main(["emulator", "--port", str(emulators.free_port())]) == 0
    assert started[0].returncode == -signal.SIGTERM
    assert "export CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:" in capsys.readouterr().out


@pytest.fixture
def impostor() -> Iterator[int]:
    """An HTTP server on loopback answering 200 "Ok" to anything: not an emulator."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"Ok")

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_cloud_tasks_emulator_is_ready_only_when_list_queues_answers(impostor: int) -> None:
    # A TCP connect, which the old check made, succeeds here.
    emulator = CloudTasksEmulator(port=impostor, queues=["projects/p/locations/l/queues/q"])
    assert not emulator._ready()


def test_a_datastore_emulator_is_ready_only_when_lookup_answers(impostor: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{impostor}/", timeout=5) as response:
        assert response.read() == b"Ok"  # what the old check waited for
    assert not DatastoreEmulator(port=impostor)._ready()


@pytest.mark.parametrize("emulator_class", [CloudTasksEmulator, DatastoreEmulator])
def test_a_port_in_use_is_refused_before_starting_anything(
    emulator_class: type[_Process], impostor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: spawned.append(args))
    emulator = emulator_class(port=impostor)  # type: ignore[call-arg]
    with pytest.raises(PortInUseError) as caught:
        emulator.start(timeout=5)
    assert caught.value.port == impostor
    assert str(caught.value) == (
        f"port {impostor} on 127.0.0.1 is in use by process {os.getpid()} "
        f"({caught.value.holder.split('(', 1)[1].rsplit(')', 1)[0]}): the {emulator.name} "
        "cannot listen there"
    )
    assert spawned == []


def test_a_process_that_exits_because_its_port_was_taken_says_so(impostor: int) -> None:
    def exited(process: StandIn) -> bool:
        assert process.started is not None
        process.started.wait(timeout=30)
        return False

    stand_in = StandIn(EXIT_4, exited)
    stand_in.port = impostor  # taken after the check, as by a race with another program
    with pytest.raises(PortInUseError, match=f"port {impostor} on 127.0.0.1 is in use by process"):
        stand_in.start(timeout=30)


def test_the_holder_of_a_port_is_named(impostor: int) -> None:
    holder = port_owner(impostor)
    assert holder is not None
    assert holder.startswith(f"process {os.getpid()} (")
    assert port_in_use(impostor) == f"port {impostor} on 127.0.0.1 is in use by {holder}"
    assert not port_free(impostor)
    assert port_owner(free_port()) is None


def fake_java(tmp_path: Path, version_line: str) -> str:
    """A PATH whose ``java`` prints ``version_line`` as ``java -version`` does (on stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    ("version_line", "problem"),
    [
        ('openjdk version "17.0.15" 2025-04-15', None),
        ('openjdk version "11.0.2" 2019-01-15', None),
        ('java version "1.8.0_301"', "needs Java 11 or later, and {java} is Java 8: install Java"),
        ('openjdk version "10" 2018-03-20', "needs Java 11 or later, and {java} is Java 10"),
        ("something else entirely", None),  # unreadable: the emulator decides
    ],
)
def test_java_is_checked_for_the_datastore_emulator(
    version_line: str, problem: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_java(tmp_path, version_line)
    monkeypatch.setenv("PATH", path)
    found = java_problem("the Datastore emulator")
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem.format(java=f"{path}/java") in found
        assert found.startswith("the Datastore emulator needs Java 11")


def test_no_java_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert java_problem("the Datastore emulator") == (
        "the Datastore emulator runs on Java, and `java` is not on the PATH: install Java 11 "
        "or later (e.g. apt-get install openjdk-17-jre-headless)"
    )
