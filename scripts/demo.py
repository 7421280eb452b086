"""The demo: the Flask counter sample on both local emulators, driven end to end.

Starts the Datastore emulator and the Cloud Tasks emulator on 127.0.0.1, serves
samples/flask/main.py (the App Engine docs' sample with only its imports changed)
in dev mode, then:

1. GET /counter/increment, which defers three tasks: one now, one with
   ``_countdown=20``, one with ``_countdown=40`` to the custom ``/custom/path``;
2. defers ``demo_tasks.flaky``, which raises SingularTaskFailure on its first
   attempt and succeeds on the retry;
3. defers ``demo_tasks.summarize`` with a 1.5 MB payload, too large for a task: it
   is stored in Datastore and the task runs ``run_from_datastore``;
4. records a deposit in an NDB transaction that defers ``demo_tasks.notify_deposit``
   with ``_transactional=True`` (it runs once, after the commit), then a deposit whose
   transaction rolls back (its task is never enqueued);
5. waits until all of them ran, printing what the app logs, and prints the final
   counter (30); then stops everything.

Before starting anything it checks what it needs — the Datastore emulator and the Java
that runs it, the Cloud Tasks emulator, the app's port — and says what to install or
free. Exit codes: 0 all ran, 1 something did not happen or the port is in use, 2 usage,
3 a prerequisite is missing.

Run it with ``scripts/demo`` (which installs what is needed first).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud import ndb

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.devtools.cli_args import host_port, port
from cloudtasks_deferred.devtools.emulators import (
    CloudTasksEmulator,
    DatastoreEmulator,
    EmulatorUnavailableError,
    free_port,
)
from cloudtasks_deferred.devtools.localdev import app_environment, start_emulators
from cloudtasks_deferred.devtools.ports import port_free, port_in_use
from cloudtasks_deferred.settings import queue_path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "flask"
PROJECT = "demo-project"
LOCATION = "us-central1"
EXPECTED_COUNT = 30


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return str(response.read().decode())


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def relay(stream: object) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        print(f"[app ] {line.rstrip()}", flush=True)


def fail(message: str, code: int) -> int:
    print(f"scripts/demo: {message}", file=sys.stderr, flush=True)
    return code


def prerequisites(args: argparse.Namespace) -> tuple[str, int] | None:
    """What the demo needs and lacks, with what to do: ``(message, exit code)``."""
    if args.datastore_emulator is None and (problem := DatastoreEmulator.problem()):
        return problem, 3
    if args.tasks_emulator is None and (problem := CloudTasksEmulator.problem()):
        return f"{problem} (scripts/bootstrap installs it)", 3
    if args.port and not port_free(args.port):
        return f"{port_in_use(args.port)}: stop it, or pass --port (0: a free one)", 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=port, default=8080, help="the app's port (default 8080; 0: a free one)"
    )
    parser.add_argument(
        "--tasks-emulator", type=host_port, metavar="HOST:PORT", help="use a running one"
    )
    parser.add_argument(
        "--datastore-emulator", type=host_port, metavar="HOST:PORT", help="use a running one"
    )
    args = parser.parse_args(argv)
    problem = prerequisites(args)
    if problem is not None:
        return fail(*problem)
    queue = queue_path(PROJECT, LOCATION, "default")
    with contextlib.ExitStack() as stack:
        try:
            emulators = start_emulators(
                stack,
                project=PROJECT,
                queues=[queue],
                tasks_host=args.tasks_emulator,
                datastore_host=args.datastore_emulator,
                announce=say,
            )
        except EmulatorUnavailableError as exc:
            return fail(str(exc), 3)
        say(
            f"Datastore emulator on {emulators.datastore_host}, "
            f"Cloud Tasks emulator on {emulators.tasks_host}"
        )
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cloudtasks-demo-"))
        base_url = f"http://127.0.0.1:{args.port or free_port()}"
        # The app and this driver read the same configuration from the environment.
        os.environ.update(
            app_environment(
                emulators,
                location=LOCATION,
                base_url=base_url,
                dev_key_file=Path(workdir) / "dev-key.pem",
            )
        )
        return drive(base_url)


def drive(base_url: str) -> int:
    port = base_url.rsplit(":", 1)[1]
    say(f"serving samples/flask/main.py on {base_url} (dev mode: locally signed task tokens)")
    app = subprocess.Popen(
        [sys.executable, "-m", "cloudtasks_deferred.devtools.devserver", "main:app", "--port", port,
         "--app-dir", str(SAMPLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    threading.Thread(target=relay, args=(app.stdout,), daemon=True).start()
    try:

        def app_ready() -> bool:
            if app.poll() is not None:
                raise TimeoutError(f"the app exited with status {app.returncode}")
            return _answers(f"{base_url}/counter/get")

        wait_until("the app", app_ready, timeout=30)
        say(f"GET /counter/get -> {get(f'{base_url}/counter/get')}")
        say(f"GET /counter/increment -> {get(f'{base_url}/counter/increment')!r}")

        # Deferred from this process: the same settings, read from the same environment.
        sys.path.insert(0, str(SAMPLE))
        import demo_tasks

        client = Client(Settings.from_env())
        task = client.defer(demo_tasks.flaky, "demo")
        say(f"deferred demo_tasks.flaky('demo') as {task.name.rsplit('/', 1)[1]}")

        with ndb.Client(project=PROJECT).context():
            wait_until("demo_tasks.flaky to succeed", lambda: _flaky_succeeded(demo_tasks), 30)
            attempt = demo_tasks.DemoAttempt.get_by_id("demo", use_cache=False)
        say(f"demo_tasks.flaky succeeded after {attempt.attempts} attempts (one retry)")

        with ndb.Client(project=PROJECT).context():
            oversized(client, demo_tasks)
            transactional(client, demo_tasks)

        counts: list[str] = []
        for target in ("10", "20", "30"):
            when = {"10": "now", "20": "after _countdown=20", "30": "after _countdown=40"}[target]
            say(f"waiting for the counter to reach {target} (the task deferred {when})...")
            wait_until(f"counter {target}", lambda t=target: _counter(base_url, counts) == t, 70)
        final = get(f"{base_url}/counter/get")
        say(f"final counter: {final}")
        if int(final) != EXPECTED_COUNT:
            say(f"expected {EXPECTED_COUNT}")
            return 1
        say("all tasks ran; stopping the app and the emulators")
        return 0
    except TimeoutError as exc:
        say(str(exc))
        return 1
    finally:
        app.terminate()
        app.wait(10)


def oversized(client: Client, demo_tasks: Any) -> None:
    blob = os.urandom(1_500_000)  # incompressible: even zlib cannot fit it in a task
    task = client.defer(demo_tasks.summarize, "demo", blob)
    runs = client.open_payload(task.http_request.body).callable_name
    say(
        f"deferred demo_tasks.summarize with {len(blob):,} bytes: too large for a task, "
        f"stored in Datastore; the {len(task.http_request.body)}-byte task runs {runs}"
    )
    wait_until("demo_tasks.summarize", lambda: _summary(demo_tasks) is not None, 30)
    summary = _summary(demo_tasks)
    if summary.sha256 != hashlib.sha256(blob).hexdigest():
        raise TimeoutError("demo_tasks.summarize received other bytes")
    wait_until("the stored payload's deletion", lambda: not _stored_payloads(), 10)
    say(f"demo_tasks.summarize got all {summary.size:,} bytes; its entity is deleted")


def transactional(client: Client, demo_tasks: Any) -> None:
    account_model = demo_tasks.DemoAccount

    def deposit(amount: int, commit: bool) -> None:
        account = account_model.get_by_id("demo") or account_model(id="demo")
        account.balance += amount
        account.put()
        client.defer(demo_tasks.notify_deposit, "demo", amount, _transactional=True)
        if not commit:
            raise RuntimeError("the deposit is refused: roll back")

    ndb.transaction(lambda: deposit(25, commit=True))
    say("deposited 25 in a transaction that deferred notify_deposit(_transactional=True)")
    with contextlib.suppress(RuntimeError):
        ndb.transaction(lambda: deposit(1000, commit=False))
    say("rolled back a deposit of 1000: its transactional task was never enqueued")
    wait_until("demo_tasks.notify_deposit", lambda: bool(_account(demo_tasks).notified), 30)
    account = _account(demo_tasks)
    if account.notified != [25] or account.balance != 25:
        raise TimeoutError(f"unexpected account state: {account}")
    say(f"notify_deposit ran once, for 25 only; the balance is {account.balance}")


def _stored_payloads() -> list[Any]:
    query = ndb.Query(kind="_DeferredTaskEntity", namespace="")
    return list(query.fetch(1, keys_only=True, use_cache=False))


def _summary(demo_tasks: Any) -> Any:
    return demo_tasks.DemoSummary.get_by_id("demo", use_cache=False, use_global_cache=False)


def _account(demo_tasks: Any) -> Any:
    return demo_tasks.DemoAccount.get_by_id("demo", use_cache=False, use_global_cache=False)


def _answers(url: str) -> bool:
    try:
        get(url)
    except OSError:
        return False
    return True


def _counter(base_url: str, seen: list[str]) -> str:
    value = get(f"{base_url}/counter/get")
    if not seen or seen[-1] != value:
        seen.append(value)
        say(f"counter is {value}")
    return value


def _flaky_succeeded(demo_tasks: object) -> bool:
    model = demo_tasks.DemoAttempt  # type: ignore[attr-defined]
    record = model.get_by_id("demo", use_cache=False, use_global_cache=False)
    return bool(record and record.succeeded)


if __name__ == "__main__":
    sys.exit(main())
