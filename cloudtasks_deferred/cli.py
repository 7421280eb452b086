"""The ``cloudtasks-deferred`` command.

Exit codes: 0 success, 1 failure, 2 usage error (argparse), 3 an emulator is not
installed or did not start.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from . import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_FAILURE
    code: int = args.run(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudtasks-deferred",
        description="Tools for cloudtasks_deferred: the App Engine deferred API on Cloud Tasks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    emulator = commands.add_parser(
        "emulator",
        help="run the Cloud Tasks emulator on 127.0.0.1 for local development",
        description=(
            "Runs gcloud-tasks-emulator on 127.0.0.1 until interrupted, with the given "
            "queues. Point your app at it with CLOUD_TASKS_EMULATOR_HOST and turn on "
            "CLOUDTASKS_DEFERRED_DEV_MODE so tasks carry tokens the handler accepts."
        ),
    )
    emulator.add_argument("--port", type=int, default=8123, help="TCP port (default 8123)")
    emulator.add_argument("--project", default="local-project", help="project of the queues")
    emulator.add_argument("--location", default="us-central1", help="location of the queues")
    emulator.add_argument(
        "--queue",
        action="append",
        default=None,
        metavar="NAME",
        help="queue ID to create; repeat for several (default: default)",
    )
    emulator.add_argument(
        "--python",
        default=None,
        help="interpreter that has gcloud-tasks-emulator installed (default: this one)",
    )
    emulator.set_defaults(run=_run_emulator)

    sweep = commands.add_parser(
        "sweep",
        help="create transactional tasks whose creation after commit never happened",
        description=(
            "Creates the task of every outbox entry (defer(_transactional=True)) older "
            "than --older-than seconds, as the app's process would have right after its "
            "transaction committed. Configured from the environment, like the app."
        ),
    )
    sweep.add_argument(
        "--older-than",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="minimum age of an entry (default 300)",
    )
    sweep.add_argument(
        "--limit", type=int, default=200, help="entries to handle, oldest first (default 200)"
    )
    sweep.set_defaults(run=_run_sweep)
    return parser


def _run_sweep(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from .client import Client
    from .errors import ConfigurationError
    from .sweeper import sweep

    if args.older_than < 0 or args.limit < 1:
        print("cloudtasks-deferred sweep: need --older-than >= 0 and --limit >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = sweep(Client(), older_than=timedelta(seconds=args.older_than), limit=args.limit)
    except ConfigurationError as exc:
        print(f"cloudtasks-deferred sweep: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"swept the outbox: {report.summary()}")
    return EXIT_OK if report.failed == 0 else EXIT_FAILURE


def _run_emulator(args: argparse.Namespace) -> int:
    from .emulators import CloudTasksEmulator, EmulatorUnavailableError
    from .settings import queue_path

    queues = [queue_path(args.project, args.location, q) for q in args.queue or ["default"]]
    if not CloudTasksEmulator.available(args.python):
        print(
            "gcloud-tasks-emulator is not installed: "
            "pip install --no-deps gcloud-tasks-emulator==0.6.2",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    emulator = CloudTasksEmulator(queues=queues, port=args.port, python=args.python)
    try:
        emulator.start()
    except EmulatorUnavailableError as exc:
        print(f"cloudtasks-deferred emulator: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"Cloud Tasks emulator on {emulator.host}; queues:")
    for queue in queues:
        print(f"  {queue}")
    print(f"export CLOUD_TASKS_EMULATOR_HOST={emulator.host}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        emulator.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
