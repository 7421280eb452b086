"""The local emulators, started on 127.0.0.1 for development, demos and tests.

Why this module is long: both emulators share one process lifecycle (start, readiness
by a real API call, a port already taken, cleanup on interrupt), kept beside them.

* :class:`CloudTasksEmulator` runs ``gcloud-tasks-emulator`` (PyPI; install it with
  ``pip install --no-deps gcloud-tasks-emulator==0.6.2``). It creates tasks and
  dispatches HTTP tasks to their URLs, retrying non-2xx answers every ~0.1 s; it
  ignores ``oidc_token`` (use dev mode), does not deduplicate task names and does not
  enforce the 1 MB task limit.
* :class:`DatastoreEmulator` runs the Google Cloud SDK's Datastore emulator (Java),
  found next to ``gcloud``; it is not installable from a package registry.

Both pick a free port when given 0 and refuse a port already in use
(:class:`PortInUseError`, naming the process that holds it when known). Each is
ready once it answers a real request of its API — ``ListQueues`` over gRPC, a
Datastore ``lookup`` — not merely a TCP connect, which any program on the port
would accept. They stop their whole process group on :meth:`stop`, at the end of a
``with`` block, and when starting fails or is interrupted (Ctrl-C): each runs in a
session of its own, which a terminal's Ctrl-C does not reach, so nothing else would
stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from cloudtasks_deferred.devtools.java import java_problem
from cloudtasks_deferred.devtools.ports import port_free, port_in_use
from cloudtasks_deferred.devtools.tooling import LOOPBACK

__all__ = [
    "CloudTasksEmulator",
    "DatastoreEmulator",
    "EmulatorUnavailableError",
    "PortInUseError",
    "free_port",
    "stop_process_group",
]

_STOP_TIMEOUT: Final = 10.0  # seconds for a process group to exit after SIGTERM, then SIGKILL
_PROBE_TIMEOUT: Final = 2.0  # seconds one readiness request may take
_TASKS_EMULATOR: Final = "gcloud-tasks-emulator==0.6.2"


class EmulatorUnavailableError(RuntimeError):
    """An emulator is not installed or did not start; the message says how to fix it."""


class PortInUseError(EmulatorUnavailableError):
    """The port an emulator was asked to listen on is taken by another process.

    Attributes:
        port: The port.
        holder: ``port P on 127.0.0.1 is in use by process N (command)``, the
            process named when this one may see it.
    """

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.holder = port_in_use(port)
        super().__init__(f"{self.holder}: the {name} cannot listen there")


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = _STOP_TIMEOUT) -> None:
    """Stops a child started with ``start_new_session=True``, and its children.

    Sends SIGTERM to its process group, then SIGKILL if it is still running after
    ``timeout`` seconds. Does nothing if the child has already exited (its process
    ID may be in use by another process by then).

    Args:
        process: The child, leader of its own process group.
        timeout: Seconds to wait after each signal.

    Raises:
        subprocess.TimeoutExpired: It survived SIGKILL for ``timeout`` seconds.
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


class _Process:
    """A child process in its own session, stopped with its children."""

    name = "emulator"

    def __init__(self, port: int, log: IO[bytes] | None) -> None:
        self.port = port or free_port()
        self._chosen_port = bool(port)
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._cwd: str | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Self:
        """Starts the process and waits until it answers.

        Whatever ends the wait early — an error, Ctrl-C (``KeyboardInterrupt``) —
        stops the process before it propagates.

        Raises:
            PortInUseError: Its port is taken (checked before starting it, and again
                if it exits while starting).
            EmulatorUnavailableError: It is missing, exited, or did not answer in time.
        """
        try:
            if self._chosen_port and not port_free(self.port):
                raise PortInUseError(self.port, self.name)
            self._process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                self._command(),
                stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self._cwd,
            )
            self._wait_ready(self._process, timeout)
        except BaseException:
            # Its own session: a terminal's Ctrl-C never reaches it, so stop it here.
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                if not port_free(self.port):  # another process took it meanwhile
                    raise PortInUseError(self.port, self.name)
                raise EmulatorUnavailableError(
                    f"the {self.name} exited with status {code}{self._log_hint()}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        raise EmulatorUnavailableError(
            f"the {self.name} did not answer within {timeout:.0f} s{self._log_hint()}"
        )

    def _log_hint(self) -> str:
        name = getattr(self._log, "name", None)
        return f" (its output is in {name})" if isinstance(name, str) else ""

    def stop(self) -> None:
        """Stops the process and its children (idempotent)."""
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class CloudTasksEmulator(_Process):
    """gcloud-tasks-emulator on 127.0.0.1.

    Args:
        queues: Full queue names to create, ``projects/P/locations/L/queues/Q``.
        port: TCP port; 0 picks a free one.
        python: Interpreter that has ``gcloud_tasks_emulator``; this one by default.
        max_retries: Attempts after which a failing task is dropped; -1 retries forever.
        log: Where the emulator's output goes; discarded when ``None``.
    """

    name = "Cloud Tasks emulator"

    def __init__(
        self,
        *,
        queues: Iterable[str] = (),
        port: int = 0,
        python: str | None = None,
        max_retries: int = -1,
        log: IO[bytes] | None = None,
    ) -> None:
        super().__init__(port, log)
        self.queues = tuple(queues)
        self.python = python or sys.executable
        self.max_retries = max_retries

    def _command(self) -> Sequence[str]:
        queue_args = [arg for queue in self.queues for arg in ("--queue", queue)]
        return [
            self.python, "-m", "cloudtasks_deferred.devtools.tasks_emulator",
            "--port", str(self.port), "--max-retries", str(self.max_retries),
            *queue_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        """Whether ``ListQueues`` answers, listing every queue it was asked to create."""
        # Lazy: google-cloud-tasks and grpc are heavy, and only this probe needs them here.
        import grpc
        from google.api_core import exceptions
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

        parents = {queue.rsplit("/queues/", 1)[0] for queue in self.queues}
        # A channel per probe: one that failed to connect would wait out gRPC's
        # reconnect backoff (a second and more) before trying again. Its own
        # subchannel pool too: channels with equal arguments share connections, so
        # the probe would otherwise wait out another channel's backoff (an app's,
        # reconnecting after the emulator's restart) or cut it short.
        channel = grpc.insecure_channel(self.host, options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
            listed = set()
            for parent in parents or {"projects/readiness/locations/us-central1"}:
                pager = client.list_queues(parent=parent, retry=None, timeout=_PROBE_TIMEOUT)
                listed |= {queue.name for queue in pager}
        except exceptions.GoogleAPIError:
            return False
        finally:
            channel.close()
        return set(self.queues) <= listed

    @staticmethod
    def available(python: str | None = None) -> bool:
        """Whether ``python`` can run the emulator (see :meth:`problem`)."""
        return CloudTasksEmulator.problem(python) is None

    @staticmethod
    def problem(python: str | None = None) -> str | None:
        """What keeps ``python`` from running the emulator, and how to fix it.

        Args:
            python: The interpreter; this one when ``None``.

        Returns:
            ``None`` if it can import ``gcloud_tasks_emulator`` and this library's
            runner of it; otherwise a sentence naming what is missing.
        """
        interpreter = python or sys.executable
        pip = "pip" if python is None else f"{interpreter} -m pip"
        code = (
            "import gcloud_tasks_emulator.server, cloudtasks_deferred.devtools.tasks_emulator; "
            "print('importable')"
        )
        try:
            result = subprocess.run(  # noqa: S603 - argv built here, no shell
                [interpreter, "-c", code], capture_output=True, text=True, check=False
            )
        except OSError as exc:
            return f"cannot run {interpreter}: {exc.strerror or exc}"
        if result.returncode == 0 and result.stdout.strip() == "importable":
            return None
        last = (result.stderr.strip().splitlines() or [""])[-1]
        if result.returncode == 0 or "Error" not in last:
            return f"{interpreter} is not a Python interpreter: give one with --python"
        if "gcloud_tasks_emulator" in last:
            return (
                f"gcloud-tasks-emulator is not installed: {pip} install --no-deps {_TASKS_EMULATOR}"
            )
        if "cloudtasks_deferred" in last:
            return (
                f"{interpreter} does not have cloudtasks-deferred installed, whose runner starts "
                f"the emulator: {pip} install /path/to/this/repository"
            )
        return f"{interpreter} cannot run the Cloud Tasks emulator ({last})"


class DatastoreEmulator(_Process):
    """The Cloud SDK's Datastore emulator on 127.0.0.1, in memory.

    Args:
        port: TCP port; 0 picks a free one.
        consistency: Fraction of eventually-consistent queries that see the latest
            writes; 1.0 (the default) makes kind queries deterministic for tests.
        project: Project ID clients should use.
        log: Where the emulator's output goes; discarded when ``None``.
    """

    name = "Datastore emulator"

    def __init__(
        self,
        *,
        port: int = 0,
        consistency: float = 1.0,
        project: str = "local-project",
        log: IO[bytes] | None = None,
    ) -> None:
        super().__init__(port, log)
        self.consistency = consistency
        self.project = project
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        """Starts the emulator in a directory of its own, and waits until it answers.

        Its queries write ``WEB-INF/appengine-generated/datastore-indexes-auto.xml``
        into its working directory: a temporary one, not the caller's project,
        removed by :meth:`stop` — which a failed or interrupted start calls too.

        Raises:
            EmulatorUnavailableError: It is missing, exited, or did not answer in time.
        """
        self._workdir = tempfile.TemporaryDirectory(prefix="datastore-emulator-")
        self._cwd = self._workdir.name
        return super().start(timeout)

    @property
    def workdir(self) -> Path | None:
        """The emulator's working directory while it runs."""
        return Path(self._cwd) if self._workdir is not None and self._cwd else None

    def stop(self) -> None:
        """Stops the emulator and removes its directory (idempotent)."""
        try:
            super().stop()
        finally:
            workdir, self._workdir = self._workdir, None
            if workdir is not None:
                workdir.cleanup()

    @property
    def env(self) -> dict[str, str]:
        """The variables google-cloud-ndb reads to use this emulator."""
        return {"DATASTORE_EMULATOR_HOST": self.host, "DATASTORE_PROJECT_ID": self.project}

    @staticmethod
    def problem() -> str | None:
        """What keeps the emulator from running here, and what to install; ``None`` if nothing.

        Checks that the Cloud SDK's component is installed and that Java, which runs
        it, is on the ``PATH`` (see :func:`cloudtasks_deferred.devtools.java.java_problem`).
        """
        if DatastoreEmulator.script() is None:
            return (
                "the Datastore emulator is not installed: install the Google Cloud SDK and "
                "run `gcloud components install cloud-datastore-emulator` (or the "
                "google-cloud-cli-datastore-emulator package)"
            )
        return java_problem("the Datastore emulator")

    @staticmethod
    def script() -> Path | None:
        """The SDK's ``cloud_datastore_emulator`` script, or ``None`` if not installed."""
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            return None
        sdk_root = Path(os.path.realpath(gcloud)).parent.parent
        script = sdk_root / "platform" / "cloud-datastore-emulator" / "cloud_datastore_emulator"
        return script if script.exists() else None

    def _command(self) -> Sequence[str]:
        script, problem = self.script(), self.problem()
        if script is None or problem is not None:
            raise EmulatorUnavailableError(problem or "the Datastore emulator is not installed")
        return [
            str(script), "start", f"--host={LOOPBACK}", f"--port={self.port}",
            f"--consistency={self.consistency}", "--store_on_disk=false",
        ]  # fmt: skip

    def _ready(self) -> bool:
        """Whether a Datastore ``lookup`` of a key answers as the Datastore API does."""
        body = json.dumps({"keys": [{"path": [{"kind": "ReadinessCheck", "name": "probe"}]}]})
        request = urllib.request.Request(
            f"http://{self.host}/v1/projects/{self.project}:lookup",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT) as response:  # noqa: S310 - loopback
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return isinstance(answer, dict) and ("missing" in answer or "found" in answer)

    def reset(self) -> None:
        """Deletes every entity (the emulator's ``/reset``)."""
        request = urllib.request.Request(f"http://{self.host}/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass
