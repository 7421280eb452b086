"""The cloudtasks-deferred command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cloudtasks_deferred import __version__
from cloudtasks_deferred.devtools import cli


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"cloudtasks-deferred {__version__}"


def test_no_command_is_a_usage_error_with_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: cloudtasks-deferred" in captured.err
    assert "emulator" in captured.err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["emulator", "--help"])
    assert caught.value.code == 0
    assert "127.0.0.1" in capsys.readouterr().out


def test_unknown_arguments_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["emulator", "--nope"])
    assert caught.value.code == 2


def test_emulator_missing_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator

    problem = "gcloud-tasks-emulator is not installed: pip install --no-deps ..."
    monkeypatch.setattr(CloudTasksEmulator, "problem", staticmethod(lambda *_: problem))
    assert cli.main(["emulator", "--port", "0"]) == 3
    assert capsys.readouterr().err == f"cloudtasks-deferred emulator: {problem}\n"


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudtasks_deferred.devtools.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert __version__ in result.stdout
