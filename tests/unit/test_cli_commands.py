"""The inspect and dev commands, and the emulator's queue files: arguments and exit codes.

What needs the emulators (``dev`` serving an app, ``emulator --queue-yaml``) is in
``tests/integration/test_cli_dev.py``.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloudtasks_deferred.devtools import cli
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import SigningKey, encode
from tests import tasks
from tests.tasks import RECORDER


@pytest.mark.parametrize("command", ["emulator", "queue-yaml", "sweep", "dev", "inspect"])
def test_every_command_documents_its_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([command, "--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert f"usage: cloudtasks-deferred {command}" in out
    assert "Exit codes: 0 " in out
    assert ", 2 usage" in out


def test_the_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("emulator", "dev", "inspect"):
        assert command in out


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.bin"
    metadata = {"retry": {"task_retry_limit": 2}}
    key = SigningKey("k1", b"k" * 32)
    pickled = serialize(tasks.record, tasks.Canary(), note="hi")
    path.write_bytes(encode(pickled, metadata, compress=True, signing_key=key))
    return path


def test_inspect_a_file(payload_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(payload_file)]) == 0
    out = capsys.readouterr().out
    assert "callable     tests.tasks.record\n" in out
    assert "arguments    tests.tasks.canary('unpickled')\n" in out
    assert "keywords     note='hi'\n" in out
    assert "flags 0x03 (compressed, signed)" in out
    assert "key 'k1'" in out
    assert "retry limits: task_retry_limit=2" in out
    assert RECORDER.named("canary") == []


def test_inspect_stdin(
    payload_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(payload_file.read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert cli.main(["inspect", "-", "--disassemble"]) == 0
    assert "STACK_GLOBAL" in capsys.readouterr().out


def test_inspect_as_a_command(payload_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudtasks_deferred.devtools.cli", "inspect", "-"],
        input=payload_file.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"tests.tasks.record" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GET / HTTP/1.1", "not a deferred task payload"),
        (b'{"name": "t"}', "neither httpRequest"),
    ],
)
def test_inspect_refuses_what_is_not_a_payload(
    tmp_path: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    assert cli.main(["inspect", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_inspect_a_pickle_that_is_not_a_call_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input"
    path.write_bytes(encode(b"\x80\x05K\x01."))
    assert cli.main(["inspect", str(path)]) == 1
    assert "not a (callable, args, kwargs) tuple" in capsys.readouterr().out


def test_inspect_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["inspect", str(tmp_path / "absent")])
    assert caught.value.code == 2
    assert "absent does not exist" in capsys.readouterr().err


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("def app(environ, start_response): ...\n")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dev"], "give either APP"),
        (["dev", "main:app", "--functions-target", "f"], "give either APP"),
        (["dev", "main:app", "--tasks-target", "t"], "--tasks-target needs --functions-target"),
        (["dev", "main.py"], "'main.py' is not MODULE:ATTRIBUTE"),
        (["dev", "main:app", "--port", "x"], "'x' is not a TCP port"),
        (["dev", "main:app", "--app-dir", "/nonexistent"], "/nonexistent does not exist"),
    ],
)
def test_dev_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_dev_needs_the_functions_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["dev", "--functions-target", "f", "--app-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "no main.py in" in capsys.readouterr().err


def test_dev_needs_the_apps_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dev", "web:app", "--app-dir", str(tmp_path)]) == 2
    assert f"no module 'web' in {tmp_path.resolve()}" in capsys.readouterr().err


def test_dev_finds_an_installed_module_too(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudtasks_deferred.devtools import devcommand

    monkeypatch.setattr(devcommand, "_missing_tool", lambda _: "stop here")
    assert cli.main(["dev", "tests.dev_app:app", "--app-dir", str(app_dir), "--port", "0"]) == 3
    assert capsys.readouterr().err == "cloudtasks-deferred dev: stop here\n"


def test_dev_refuses_a_port_in_use(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["dev", "main:app", "--app-dir", str(app_dir), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use by process {os.getpid()} (" in err
    assert err.endswith("): stop it or pass another --port\n")


def test_dev_reports_a_bad_queue_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "queue.yaml"
    bad.write_text("queue:\n- rate: 1/s\n")
    assert cli.main(["dev", "main:app", "--queue-yaml", str(bad)]) == 1
    assert f"cloudtasks-deferred dev: {bad}: queue entry #1 has no name" in capsys.readouterr().err


def test_emulator_reports_a_bad_queue_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "q.json"
    bad.write_text("{}")
    assert cli.main(["emulator", "--queues-json", str(bad)]) == 1
    assert "cloudtasks-deferred emulator: " in capsys.readouterr().err


def test_dev_without_the_tasks_emulator_exits_3(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudtasks_deferred.devtools import emulators

    problem = "gcloud-tasks-emulator is not installed: pip install --no-deps gcloud-tasks-emulator"
    monkeypatch.setattr(emulators.CloudTasksEmulator, "problem", staticmethod(lambda *_: problem))
    argv = ["dev", "main:app", "--app-dir", str(app_dir), "--port", "0"]
    assert cli.main(argv) == 3
    assert capsys.readouterr().err == (
        f"cloudtasks-deferred dev: {problem} (or attach to a running one with "
        "--tasks-emulator HOST:PORT)\n"
    )


def test_dev_without_the_datastore_emulator_exits_3_when_ndb_is_installed(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudtasks_deferred.devtools import emulators

    monkeypatch.setattr(emulators.DatastoreEmulator, "script", staticmethod(lambda: None))
    argv = ["dev", "main:app", "--app-dir", str(app_dir), "--port", "0"]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "NDB code needs the Datastore emulator, and the Datastore emulator is not" in err
    assert "--no-datastore" in err


def test_importing_the_cli_stays_light() -> None:
    code = (
        "import sys, cloudtasks_deferred.devtools.cli\n"
        "heavy = ('yaml', 'pickletools', 'cloudtasks_deferred.devtools.devcommand',"
        " 'cloudtasks_deferred.payload.inspection', 'google.cloud.tasks_v2')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_dev_attached_to_an_emulator_that_does_not_answer_exits_3(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        argv = ["dev", "main:app", "--app-dir", str(app_dir), "--port", "0", "--no-datastore"]
        assert cli.main([*argv, "--tasks-emulator", host]) == 3
    queue = "projects/local-project/locations/us-central1/queues/default"
    assert f"cannot create the queue {queue} in the Cloud Tasks emulator at {host}" in (
        capsys.readouterr().err
    )
