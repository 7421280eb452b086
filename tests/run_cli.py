"""Runs the real command line in a child process, as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**variables: str) -> dict[str, str]:
    """This environment without the library's configuration or credentials, plus ``variables``."""
    platform = ("GAE_", "K_SERVICE", "K_REVISION", "CLOUD_RUN_JOB", "DATASTORE_")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CLOUDTASKS_DEFERRED_", *platform))
        and name not in ("CLOUD_TASKS_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
    }
    env.update(
        GOOGLE_APPLICATION_CREDENTIALS="/nonexistent/credentials.json",
        NO_GCE_CHECK="true",
        PYTHONUNBUFFERED="1",
        **variables,
    )
    return env


def run(
    argv: list[str],
    *,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Runs ``argv``; returns its exit code and its output as text."""
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="backslashreplace"),
        result.stderr.decode(errors="backslashreplace"),
    )


def cli(
    *args: str,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``cloudtasks-deferred ARGS...`` run by this interpreter."""
    argv = [sys.executable, "-m", "cloudtasks_deferred.devtools.cli", *args]
    return run(argv, cwd=cwd, env=env, stdin=stdin, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The error a command printed: exactly one line starting with ``prefix``, no traceback.

    argparse's usage errors print the usage lines first; they are allowed before it.
    """
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    return lines[0]
