"""R1: 10,000 tasks via Cloud Tasks and gunicorn into Datastore: none lost, duplicates explained.

Starts the Datastore emulator (``--consistency=1.0``) and the Cloud Tasks emulator
on 127.0.0.1, and gunicorn (several sync workers) serving
:mod:`benchmarks.load_app` — an app wrapped with ``wrap_wsgi_app``, configured by
its environment in dev mode, NDB on. This process defers ``record_index(run, i)``
for every index with ``deferred.defer``, spread over several queues (the emulator
dispatches one task at a time per queue), one call after the other, timing each.
Every task records its index in an ``R1Record`` entity through NDB, idempotently,
with one entry per execution. Every 100th task fails once on purpose *after*
recording (a 500): Cloud Tasks retries it, and the retry is a duplicate execution
that a retry we caused explains.

Reported: tasks sent (``defer`` returned), distinct indexes that ran, lost (sent
but never ran), duplicate executions and what explains each — a retry after a
failure we injected (expected); a retry after a failure we did not cause; a
redelivery of the same attempt; or a second task for one ``defer`` — the enqueue
rate, the p50/p99 of ``defer``'s latency and the drain rate (distinct indexes run
per second, from the first ``defer`` to the last execution).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cloudtasks_deferred import Client, Settings, deferred
from cloudtasks_deferred.devtools.emulators import CloudTasksEmulator, DatastoreEmulator, free_port
from cloudtasks_deferred.settings import queue_path

from .common import Result, environment
from .load_app import record_index

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "load-project"
LOCATION = "us-central1"
TASKS = 10_000
QUICK_TASKS = 200
WORKERS = 4
QUEUES = 4
FAIL_EVERY = 100
#: Seconds without a new execution after which the tasks not run count as lost.
STALL_TIMEOUT = 60.0


@dataclasses.dataclass
class LoadReport:
    """What one load run measured (see the module docstring)."""

    sent: int = 0
    defer_errors: list[str] = dataclasses.field(default_factory=list)
    injected: int = 0
    ran: int = 0
    executions: int = 0
    explained: int = 0
    retried: int = 0
    redelivered: int = 0
    enqueued_twice: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    enqueue_seconds: float = 0.0
    drain_seconds: float = 0.0
    workers: int = 0
    queues: int = 0

    @property
    def lost(self) -> int:
        """Tasks ``defer`` created that never ran."""
        return self.sent - self.ran

    @property
    def duplicates(self) -> int:
        """Executions beyond the first of their index."""
        return self.executions - self.ran

    @property
    def unexplained(self) -> int:
        """Duplicate executions no retry we caused explains."""
        return self.duplicates - self.explained

    def percentile_ms(self, fraction: float) -> float:
        """The latency of ``defer`` under which ``fraction`` of the calls fell, in ms."""
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[round(fraction * 100) - 1] * 1000

    def summary(self) -> str:
        """One paragraph for logs and assertion messages."""
        return (
            f"sent {self.sent:,} ({len(self.defer_errors)} defer errors), ran {self.ran:,} "
            f"distinct, lost {self.lost:,}; {self.duplicates:,} duplicate executions: "
            f"{self.explained:,} after a failure we injected ({self.injected:,} injected), "
            f"{self.retried:,} after a failure we did not cause, {self.redelivered:,} "
            f"redelivered, {self.enqueued_twice:,} from a second task; enqueue "
            f"{self.sent / self.enqueue_seconds:,.0f}/s (p50 {self.percentile_ms(0.5):.1f} ms, "
            f"p99 {self.percentile_ms(0.99):.1f} ms), drain "
            f"{self.ran / self.drain_seconds:,.0f}/s over {self.drain_seconds:.1f} s; "
            f"{self.queues} queues, {self.workers} gunicorn workers"
        )


def run(quick: bool = False) -> list[Result]:
    """Runs the load on emulators of its own (``python -m benchmarks R1``)."""
    tasks = QUICK_TASKS if quick else TASKS
    with tempfile.TemporaryDirectory(prefix="r1-") as directory:
        logs = Path(directory)
        queues = [queue_path(PROJECT, LOCATION, f"load-{i}") for i in range(QUEUES)]
        with (
            (logs / "datastore.log").open("wb") as datastore_log,
            (logs / "tasks.log").open("wb") as tasks_log,
            DatastoreEmulator(project=PROJECT, consistency=1.0, log=datastore_log) as datastore,
            CloudTasksEmulator(queues=queues, log=tasks_log) as emulator,
        ):
            report = measure(
                tasks, tasks_host=emulator.host, datastore_host=datastore.host, workdir=logs
            )
    return results(report, tasks)


def results(report: LoadReport, tasks: int) -> list[Result]:
    """The report as rows of the benchmark table."""
    return [
        Result(
            key="R1",
            title=f"{tasks:,} tasks via the emulator and gunicorn into Datastore: lost",
            value=report.lost,
            unit="tasks",
            target=0,
            detail=report.summary(),
        ),
        Result(
            key="R1-dup",
            title="duplicate executions no retry we caused explains",
            value=report.unexplained,
            unit="executions",
            target=0,
            detail=(
                f"{report.duplicates:,} duplicate executions, {report.explained:,} of them the "
                f"retry of a task that failed on purpose after recording (every "
                f"{FAIL_EVERY}th task, {report.injected:,} in all)"
            ),
        ),
        Result(
            key="R1-enqueue",
            title="defer() to the emulator, one thread: tasks per second",
            value=report.sent / report.enqueue_seconds,
            unit="tasks/s",
            target=None,
            detail=(
                f"{report.sent:,} in {report.enqueue_seconds:.1f} s; latency p50 "
                f"{report.percentile_ms(0.5):.2f} ms, p99 {report.percentile_ms(0.99):.2f} ms"
            ),
        ),
        Result(
            key="R1-p99",
            title="defer() latency, 99th percentile (p50 in the detail)",
            value=report.percentile_ms(0.99),
            unit="ms",
            target=None,
            detail=f"p50 {report.percentile_ms(0.5):.2f} ms",
        ),
        Result(
            key="R1-drain",
            title="drain: distinct tasks run per second, first defer to last execution",
            value=report.ran / report.drain_seconds,
            unit="tasks/s",
            target=None,
            detail=(
                f"{report.ran:,} in {report.drain_seconds:.1f} s; the emulator dispatches "
                f"one task at a time per queue ({report.queues} queues, "
                f"{report.workers} gunicorn workers)"
            ),
        ),
    ]


def measure(
    tasks: int,
    *,
    tasks_host: str,
    datastore_host: str,
    workdir: Path,
    project: str = PROJECT,
    queues: int = QUEUES,
    workers: int = WORKERS,
    fail_every: int = FAIL_EVERY,
) -> LoadReport:
    """Defers ``tasks`` tasks through running emulators and gunicorn, and reports.

    Args:
        tasks: How many tasks to defer.
        tasks_host: The Cloud Tasks emulator; it must have the queues
            ``load-0`` ... ``load-{queues - 1}`` of ``project`` in ``us-central1``.
        datastore_host: The Datastore emulator, started with ``--consistency=1.0``.
        workdir: Where the dev key and gunicorn's log go.
        project: The project of the queues and of the Datastore entities.
        queues: Queues the tasks are spread over.
        workers: gunicorn's sync workers.
        fail_every: Every ``fail_every``-th task fails once after recording.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = Settings(
        project=project,
        location=LOCATION,
        base_url=base_url,
        emulator_host=tasks_host,
        dev_mode=True,
        dev_key_file=workdir / "dev-key.pem",
        ndb=False,
    )
    datastore_env = {"DATASTORE_EMULATOR_HOST": datastore_host, "DATASTORE_PROJECT_ID": project}
    server_env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "CLOUDTASKS_DEFERRED_LOCATION": LOCATION,
        "CLOUDTASKS_DEFERRED_BASE_URL": base_url,
        "CLOUDTASKS_DEFERRED_DEV_MODE": "true",
        "CLOUDTASKS_DEFERRED_DEV_KEY_FILE": str(settings.dev_key_file),
        "CLOUDTASKS_DEFERRED_NDB": "true",
        **datastore_env,
    }
    run_id = uuid.uuid4().hex[:12]
    report = LoadReport(workers=workers, queues=queues)
    with (
        (workdir / "gunicorn.log").open("wb") as log,
        gunicorn(port, workers, server_env, log),
        environment(datastore_env),
    ):
        from google.cloud import ndb

        started = time.time()
        _enqueue(
            Client(settings), run_id, tasks, queues=queues, fail_every=fail_every, report=report
        )
        with ndb.Client(project=project).context():
            _drain(run_id, report)
            last = _analyse(run_id, report)
    report.drain_seconds = max(last - started, 1e-9)
    return report


@contextlib.contextmanager
def gunicorn(port: int, workers: int, env: dict[str, str], log: IO[bytes]) -> Iterator[None]:
    """Serves :mod:`benchmarks.load_app` on ``127.0.0.1:port`` until the block ends."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
    process_env = {name: value for name, value in os.environ.items() if name in keep}
    process_env.update(
        PYTHONPATH=str(ROOT),
        GOOGLE_APPLICATION_CREDENTIALS="/nonexistent/credentials.json",
        NO_GCE_CHECK="true",
        **env,
    )
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--timeout", "120", "--graceful-timeout", "5",
            "benchmarks.load_app:application",
        ],
        cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_until_serving(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return
        except OSError:  # refused, or accepted by the master while workers still boot
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer on port {port} within {timeout:.0f} s")


def _enqueue(
    client: Client, run_id: str, tasks: int, *, queues: int, fail_every: int, report: LoadReport
) -> None:
    started = time.perf_counter()
    with client.bind():
        for index in range(tasks):
            fail_once = fail_every > 0 and index % fail_every == fail_every - 1
            begun = time.perf_counter()
            try:
                deferred.defer(
                    record_index, run_id, index, fail_once, _queue=f"load-{index % queues}"
                )
            except Exception as exc:  # counted and reported: an error the caller sees is no loss
                report.defer_errors.append(f"{index}: {type(exc).__name__}: {exc}")
                continue
            finally:
                report.latencies.append(time.perf_counter() - begun)
            report.sent += 1
            report.injected += fail_once
    report.enqueue_seconds = time.perf_counter() - started


def _drain(run_id: str, report: LoadReport) -> None:
    """Waits until every index ran and every injected failure was retried, or a stall."""
    from .load_app import R1Record

    query = R1Record.query(R1Record.run == run_id)
    progress: tuple[int, int] = (-1, -1)
    changed = time.monotonic()
    while time.monotonic() - changed < STALL_TIMEOUT:
        ran = query.count(use_cache=False)
        executions = report.executions
        if ran >= report.sent:
            executions = sum(len(r.executions) for r in query.fetch(use_cache=False))
            if executions >= report.sent + report.injected:
                return
        if (ran, executions) != progress:
            progress, changed = (ran, executions), time.monotonic()
        time.sleep(0.5)


def _analyse(run_id: str, report: LoadReport) -> float:
    """Counts what ran and explains each duplicate; returns when the last execution ran."""
    from .load_app import R1Record

    last = 0.0
    for record in R1Record.query(R1Record.run == run_id).fetch(use_cache=False):
        executions = sorted(record.executions, key=lambda e: e["at"])
        report.ran += 1
        report.executions += len(executions)
        last = max([last, *(e["at"] for e in executions)])
        for position, execution in enumerate(executions[1:], start=1):
            earlier = executions[:position]
            same_task = [e for e in earlier if e["task"] == execution["task"]]
            if not same_task:
                report.enqueued_twice += 1
            elif execution["retry"] <= max(e["retry"] for e in same_task):
                report.redelivered += 1
            elif any(e["injected"] for e in same_task):
                report.explained += 1
            else:
                report.retried += 1
    return last
