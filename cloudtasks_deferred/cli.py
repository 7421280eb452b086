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
from pathlib import Path

from . import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
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

    queue_yaml = commands.add_parser(
        "queue-yaml",
        help="convert an App Engine queue.yaml into the Terraform module's queues",
        description=(
            "Converts an App Engine queue.yaml into the queues variable of the Terraform "
            "module terraform/modules/cloudtasks_deferred, as the rules of gcloud app "
            "deploy map it to Cloud Tasks. Settings Cloud Tasks cannot carry over (pull "
            "queues, acl, bucket_size, total_storage_limit) are listed as warnings on "
            "stderr. Exits 1, naming the queue and the field, when a value is invalid."
        ),
    )
    queue_yaml.add_argument("path", metavar="PATH", help="the queue.yaml file, or - for stdin")
    queue_yaml.add_argument(
        "--format",
        choices=("json", "hcl"),
        default="json",
        help="json: a .tfvars.json file (default); hcl: a .tfvars file",
    )
    queue_yaml.add_argument(
        "--output", metavar="FILE", default=None, help="write to FILE instead of stdout"
    )
    queue_yaml.set_defaults(run=_run_queue_yaml)
    return parser


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


def _run_queue_yaml(args: argparse.Namespace) -> int:
    from .queue_yaml import QueueYamlError, convert, render_hcl, render_json

    stdin = args.path == "-"
    source = "<stdin>" if stdin else args.path
    try:
        conversion = convert(sys.stdin.read() if stdin else Path(source).read_text("utf-8"))
    except QueueYamlError as exc:
        print(f"cloudtasks-deferred queue-yaml: {source}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cloudtasks-deferred queue-yaml: cannot read {source}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for warning in conversion.warnings:
        print(f"cloudtasks-deferred queue-yaml: warning: {warning}", file=sys.stderr)
    rendered = (render_hcl if args.format == "hcl" else render_json)(conversion)
    if args.output is None:
        sys.stdout.write(rendered)
        return EXIT_OK
    try:
        Path(args.output).write_text(rendered, encoding="utf-8")
    except OSError as exc:
        print(f"cloudtasks-deferred queue-yaml: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
