"""Commands under test run as child processes: start, read their output, stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Polls ``check`` until it is true; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Command:
    """A child process whose combined output is collected line by line."""

    def __init__(
        self, argv: Sequence[str], *, cwd: Path = ROOT, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def cli(cls, *args: str, env: Mapping[str, str] | None = None) -> Command:
        """``cloudtasks-deferred ARGS...``, run by this interpreter."""
        return cls([sys.executable, "-m", "cloudtasks_deferred.devtools.cli", *args], env=env)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def wait_for_line(self, start: str, timeout: float = 60.0) -> str:
        """Returns the first output line starting with ``start``; fails if the process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next((line for line in self._lines if line.startswith(start)), None)
            if found is not None:
                return found
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(
                    f"exited with {self.process.returncode} before printing {start!r}:\n"
                    f"{self.output}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no line starting with {start!r} in {timeout:.0f} s:\n{self.output}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Sends ``signum`` and waits; kills the process if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"did not stop on signal {signum}:\n{self.output}") from None
        finally:
            self._reader.join(5)
            if self.process.stdout is not None:
                self.process.stdout.close()
        return code

    def close(self) -> None:
        """Makes sure the process is gone and its pipe closed (test teardown)."""
        if self.process.poll() is None:
            with contextlib.suppress(AssertionError):
                self.stop()
            return
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def isolated_env(**variables: str) -> dict[str, str]:
    """This process's environment without the library's configuration, plus ``variables``."""
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
