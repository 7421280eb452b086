"""``cloudtasks-deferred dev``: an app on the local emulators, with one command.

Starts the Datastore emulator and the Cloud Tasks emulator on 127.0.0.1 (or
attaches to running ones), then serves the app in a child process whose
environment points the library at them in dev mode (see
:func:`cloudtasks_deferred.devtools.localdev.app_environment`):

* a WSGI app (``MODULE:ATTRIBUTE``) with ``python -m cloudtasks_deferred.devtools.devserver``;
* or a functions-framework target with ``functions-framework --target NAME
  --source FILE --host 127.0.0.1 --port PORT``, optionally with the task entry
  point (:func:`cloudtasks_deferred.functions.deferred_task`) as a second function
  that tasks are sent to, as when the two are deployed as separate functions.

The app's output streams to this terminal. Ctrl-C or SIGTERM stops the app and
the emulators this command started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Final

from cloudtasks_deferred.devtools.emulators import (
    CloudTasksEmulator,
    DatastoreEmulator,
    EmulatorUnavailableError,
    PortInUseError,
    free_port,
    stop_process_group,
)
from cloudtasks_deferred.devtools.localdev import app_environment, full_queue_names, start_emulators
from cloudtasks_deferred.devtools.ports import port_free, port_in_use
from cloudtasks_deferred.devtools.tooling import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    LOOPBACK,
)

__all__ = ["DevOptions", "check", "run_dev"]

_READY_TIMEOUT: Final = 60.0  # seconds for the app to accept connections


@dataclasses.dataclass(frozen=True)
class DevOptions:
    """What ``cloudtasks-deferred dev`` was asked to do.

    Attributes:
        app: ``MODULE:ATTRIBUTE`` of a WSGI app; ``None`` with ``functions_target``.
        functions_target: A functions-framework target to serve instead.
        tasks_target: A second functions-framework target that receives the tasks.
        source: The functions' source file, relative to ``app_dir``.
        app_dir: Directory the app is imported from and runs in.
        port: Port of the app on 127.0.0.1; 0 picks a free one.
        project: Project ID of the emulators.
        location: Location of the queues.
        queue_ids: Queues to create.
        tasks_emulator: ``host:port`` of a running Cloud Tasks emulator to use.
        datastore_emulator: ``host:port`` of a running Datastore emulator to use.
        datastore: Start a Datastore emulator when none is given.
        dev_key_file: The dev-mode signing key; a new one per session when ``None``.
    """

    app: str | None
    functions_target: str | None = None
    tasks_target: str | None = None
    source: str = "main.py"
    app_dir: Path = Path()
    port: int = 8080
    project: str = "local-project"
    location: str = "us-central1"
    queue_ids: Sequence[str] = ("default",)
    tasks_emulator: str | None = None
    datastore_emulator: str | None = None
    datastore: bool = True
    dev_key_file: Path | None = None


def say(message: str) -> None:
    """Prints a line of this command's own output, marked as such."""
    print(f"[dev] {message}", flush=True)


def _fail(message: str, code: int) -> int:
    print(f"cloudtasks-deferred dev: {message}", file=sys.stderr, flush=True)
    return code


def run_dev(options: DevOptions) -> int:
    """Runs the app on the emulators until interrupted.

    Returns:
        0 after Ctrl-C/SIGTERM (or when the app exits with status 0); 1 if the
        app's port is in use, or the app did not start or exited with an error; 2
        for options naming what does not exist (see :func:`check`); 3 if an
        emulator or the server the app needs is not installed, or an emulator did
        not start or answer.
    """
    problem = check(options)
    if problem is not None:
        return _fail(*problem)
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with contextlib.ExitStack() as stack:
            return _serve(options, stack, stop)
    except PortInUseError as exc:  # an emulator's port, taken while it started
        return _fail(f"{exc.holder}: stop it and try again", EXIT_FAILURE)
    except EmulatorUnavailableError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check(options: DevOptions) -> tuple[str, int] | None:
    """What stops the command before it starts anything.

    Returns:
        ``(message, exit code)``: 2 for options naming what does not exist (the
        app's directory, source file or module), 1 for the app's port in use, 3 for
        a missing emulator or server; ``None`` when nothing does.
    """
    if not options.app_dir.is_dir():
        return f"--app-dir {options.app_dir} is not a directory", EXIT_USAGE
    if options.functions_target and not (options.app_dir / options.source).is_file():
        return f"no {options.source} in {options.app_dir} (--source)", EXIT_USAGE
    if options.app is not None:
        top = options.app.partition(":")[0].split(".")[0]
        if PathFinder.find_spec(top, [str(options.app_dir), *sys.path]) is None:
            return (
                f"no module {top!r} in {options.app_dir.resolve()}: APP is MODULE:ATTRIBUTE "
                "of a module there (--app-dir), e.g. main:app for app in main.py",
                EXIT_USAGE,
            )
    if options.port and not port_free(options.port):
        return f"{port_in_use(options.port)}: stop it or pass another --port", EXIT_FAILURE
    missing = _missing_tool(options)
    return (missing, EXIT_UNAVAILABLE) if missing else None


def _missing_tool(options: DevOptions) -> str | None:
    if options.functions_target:
        if importlib.util.find_spec("functions_framework") is None:
            return "functions-framework is not installed: pip install functions-framework"
    elif importlib.util.find_spec("werkzeug") is None:
        return "the dev server needs werkzeug: pip install werkzeug"
    if options.tasks_emulator is None and (problem := CloudTasksEmulator.problem()):
        return f"{problem} (or attach to a running one with --tasks-emulator HOST:PORT)"
    if (
        options.datastore
        and options.datastore_emulator is None
        and importlib.util.find_spec("google.cloud.ndb") is not None
        and (problem := DatastoreEmulator.problem())
    ):
        return (
            f"NDB code needs the Datastore emulator, and {problem}; or attach to a running "
            "one with --datastore-emulator HOST:PORT, or pass --no-datastore if the app "
            "does not use NDB"
        )
    return None


def _serve(options: DevOptions, stack: contextlib.ExitStack, stop: threading.Event) -> int:
    datastore = options.datastore and (
        options.datastore_emulator is not None or DatastoreEmulator.problem() is None
    )
    if options.datastore and not datastore:  # google-cloud-ndb is not installed either
        say(f"running without Datastore: {DatastoreEmulator.problem()}")
    emulators = start_emulators(
        stack,
        project=options.project,
        queues=full_queue_names(options.project, options.location, options.queue_ids),
        tasks_host=options.tasks_emulator,
        datastore_host=options.datastore_emulator,
        datastore=datastore,
        announce=say,
    )
    port = options.port or free_port()
    tasks_port = free_port() if options.tasks_target else port
    key_file = options.dev_key_file
    if key_file is None:
        key_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dev-key.pem"
    variables = app_environment(
        emulators,
        location=options.location,
        base_url=f"http://{LOOPBACK}:{tasks_port}",
        dev_key_file=key_file,
    )
    say(f"Cloud Tasks emulator on {emulators.tasks_host}, queues: {', '.join(options.queue_ids)}")
    if emulators.datastore_host:
        say(f"Datastore emulator on {emulators.datastore_host}, project {emulators.project}")
    say("the app's environment (export it to defer tasks from another shell):")
    for name, value in variables.items():
        if name != "PYTHONUNBUFFERED":
            print(f"  export {name}={value}", flush=True)

    servers = [(options.functions_target or options.app, port)]
    if options.tasks_target:
        servers.append((options.tasks_target, tasks_port))
    # The children inherit this environment (PATH, HOME...) plus the variables above.
    env = {**os.environ, **variables}
    children = []
    for target, server_port in servers:
        child = _spawn(_command(options, target, server_port), options.app_dir, env, stack)
        if not _wait_ready(server_port, child, stop):
            if stop.is_set():
                return EXIT_OK
            return _fail(f"{target} did not start (its message is above)", EXIT_FAILURE)
        say(f"serving {target} on http://{LOOPBACK}:{server_port}/")
        children.append(child)
    say("ready; Ctrl-C stops the app and the emulators")
    return _supervise(children, stop)


def _supervise(children: Sequence[subprocess.Popen[bytes]], stop: threading.Event) -> int:
    while not stop.wait(0.2):
        for child in children:
            code = child.poll()
            if code is not None:
                say(f"the app exited with status {code}; stopping")
                return EXIT_OK if code == 0 else EXIT_FAILURE
    say("stopping")
    return EXIT_OK


def _command(options: DevOptions, target: str | None, port: int) -> list[str]:
    if options.functions_target:
        return [
            sys.executable, "-m", "functions_framework", "--target", str(target),
            "--source", options.source, "--host", LOOPBACK, "--port", str(port),
        ]  # fmt: skip
    return [
        sys.executable, "-m", "cloudtasks_deferred.devtools.devserver", str(target),
        "--port", str(port), "--app-dir", ".",
    ]  # fmt: skip


def _spawn(
    command: list[str], cwd: Path, env: dict[str, str], stack: contextlib.ExitStack
) -> subprocess.Popen[bytes]:
    # Its own session: Ctrl-C reaches only this command, which then stops the whole
    # process group (gunicorn's workers included) in order.
    child = subprocess.Popen(  # noqa: S603 - argv built here, no shell
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True
    )
    stack.callback(stop_process_group, child)
    return child


def _wait_ready(port: int, child: subprocess.Popen[bytes], stop: threading.Event) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        if child.poll() is not None:
            return False
        if _answers(port):
            return True
        stop.wait(0.1)
    return False


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0
