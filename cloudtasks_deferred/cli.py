"""The ``cloudtasks-deferred`` command.

Commands: ``emulator`` (the Cloud Tasks emulator on 127.0.0.1), ``queue-yaml`` (an
App Engine queue.yaml as the Terraform module's queues), ``sweep`` (create the tasks
of committed transactional defers that never got one), ``dev`` (an app on both
emulators), ``inspect`` (what a payload would run, without running it).
Each command's logic lives in its own module, imported when the command runs.

Exit codes: 0 success, 1 failure (bad input, an app that exited with an error), 2
usage error (argparse's, and no command given), 3 an emulator or a tool is not
installed or did not start. Each command's ``--help`` says which it uses.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from ._tooling import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: The arguments after the program's name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code (see the module docstring); 2 when no command is given.
        argparse raises ``SystemExit`` itself: 2 on a usage error, 0 after
        ``--help`` or ``--version``.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
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
            "CLOUDTASKS_DEFERRED_DEV_MODE so tasks carry tokens the handler accepts "
            "(cloudtasks-deferred dev does all of this). Exit codes: 0 stopped, 1 a bad "
            "queue file, 2 usage, 3 the emulator is not installed or did not start."
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
    _add_queue_files(emulator)
    emulator.set_defaults(run=_run_emulator)
    _add_queue_yaml(commands)
    _add_sweep(commands)
    _add_dev(commands)
    _add_inspect(commands)
    return parser


def _run_emulator(args: argparse.Namespace) -> int:
    from .emulators import CloudTasksEmulator, EmulatorUnavailableError
    from .settings import queue_path

    queue_ids = _queue_ids(args)
    if queue_ids is None:
        return EXIT_FAILURE
    queues = [queue_path(args.project, args.location, q) for q in queue_ids]
    if not CloudTasksEmulator.available(args.python):
        print(
            "gcloud-tasks-emulator is not installed: "
            "pip install --no-deps gcloud-tasks-emulator==0.6.2",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    emulator = CloudTasksEmulator(queues=queues, port=args.port, python=args.python)
    # Before start(): a signal while it waits must stop the emulator too, which runs
    # in its own session, out of reach of the terminal's Ctrl-C.
    with _interrupted_by_signals():
        try:
            emulator.start()
            print(f"Cloud Tasks emulator on {emulator.host}; queues:")
            for queue in queues:
                print(f"  {queue}")
            print(f"export CLOUD_TASKS_EMULATOR_HOST={emulator.host}", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        except EmulatorUnavailableError as exc:
            print(f"cloudtasks-deferred emulator: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            emulator.stop()
    return EXIT_OK


@contextmanager
def _interrupted_by_signals() -> Iterator[None]:
    """Makes the first SIGINT or SIGTERM raise ``KeyboardInterrupt``, and ignores the
    ones after it, so that stopping is not itself interrupted."""
    signals = (signal.SIGINT, signal.SIGTERM)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _add_queue_yaml(commands: Any) -> None:
    queue_yaml = commands.add_parser(
        "queue-yaml",
        help="convert an App Engine queue.yaml into the Terraform module's queues",
        description=(
            "Converts an App Engine queue.yaml into the queues variable of the Terraform "
            "module terraform/modules/cloudtasks_deferred, as the rules of gcloud app "
            "deploy map it to Cloud Tasks. Settings Cloud Tasks cannot carry over (pull "
            "queues, acl, bucket_size, total_storage_limit) are listed as warnings on "
            "stderr. Exit codes: 0 converted, 1 the file cannot be read or converted (the "
            "message names the queue and the field) or the output cannot be written, "
            "2 usage."
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


def _add_sweep(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="create transactional tasks whose creation after commit never happened",
        description=(
            "Creates the task of every outbox entry (defer(_transactional=True)) older "
            "than --older-than seconds, as the app's process would have right after its "
            "transaction committed. Configured from the environment, like the app. Exit "
            "codes: 0 every entry handled, 1 an invalid configuration or an entry that "
            "failed, 2 usage."
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


def _add_queue_files(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--queue-yaml",
        type=Path,
        metavar="FILE",
        help="also create the queues this App Engine queue.yaml converts to (see queue-yaml)",
    )
    command.add_argument(
        "--queues-json",
        type=Path,
        metavar="FILE",
        help="also create the queues of this Terraform tfvars JSON file (its queues map's keys)",
    )


def _queue_ids(args: argparse.Namespace) -> list[str] | None:
    from .localdev import QueueFileError, queue_ids

    try:
        return queue_ids(args.queue, args.queue_yaml, args.queues_json)
    except QueueFileError as exc:
        print(f"cloudtasks-deferred: {exc}", file=sys.stderr)
        return None


def _add_dev(commands: Any) -> None:
    dev = commands.add_parser(
        "dev",
        help="run an app locally on the Datastore and Cloud Tasks emulators",
        description=(
            "Starts the Datastore emulator and the Cloud Tasks emulator on 127.0.0.1 (or "
            "attaches to running ones), then serves the app with the environment the "
            "library reads set for it: the emulators' hosts, GOOGLE_CLOUD_PROJECT, "
            "CLOUDTASKS_DEFERRED_LOCATION, CLOUDTASKS_DEFERRED_BASE_URL (the app's URL), "
            "CLOUDTASKS_DEFERRED_DEV_MODE=true and a dev key file. Serves APP, a WSGI app "
            "(MODULE:ATTRIBUTE), with python -m cloudtasks_deferred.devserver, or a "
            "functions-framework target (--functions-target). Prints the URLs and the "
            "variables, streams the app's output, and stops everything on Ctrl-C or "
            "SIGTERM. Exit codes: 0 stopped, 1 bad input (--app-dir, --source, a port in "
            "use, a queue file) or the app did not start or exited with an error, 2 usage, "
            "3 an emulator or server is not installed or did not start."
        ),
    )
    dev.add_argument("app", nargs="?", metavar="APP", help="the WSGI app, e.g. main:app")
    dev.add_argument("--port", type=int, default=8080, help="the app's port (default 8080)")
    dev.add_argument(
        "--app-dir", type=Path, default=Path(), metavar="DIR", help="the app's directory"
    )
    dev.add_argument(
        "--functions-target",
        metavar="NAME",
        help="serve this function of --source with functions-framework instead of APP",
    )
    dev.add_argument(
        "--tasks-target",
        metavar="NAME",
        help=(
            "with --functions-target: serve this function (e.g. deferred_task) on a port "
            "of its own and send the tasks there, as when deployed as two functions"
        ),
    )
    dev.add_argument(
        "--source", default="main.py", metavar="FILE", help="the functions' file (main.py)"
    )
    dev.add_argument("--project", default="local-project", help="project of the emulators")
    dev.add_argument("--location", default="us-central1", help="location of the queues")
    dev.add_argument(
        "--queue", action="append", metavar="NAME", help="queue to create (default: default)"
    )
    _add_queue_files(dev)
    dev.add_argument(
        "--tasks-emulator", metavar="HOST:PORT", help="use this running Cloud Tasks emulator"
    )
    dev.add_argument(
        "--datastore-emulator", metavar="HOST:PORT", help="use this running Datastore emulator"
    )
    dev.add_argument(
        "--no-datastore",
        dest="datastore",
        action="store_false",
        help="do not start the Datastore emulator (the app does not use NDB)",
    )
    dev.add_argument(
        "--dev-key-file",
        type=Path,
        metavar="FILE",
        help="PEM key that signs dev-mode tasks (default: a new key per session)",
    )
    dev.set_defaults(run=_run_dev, parser=dev)


def _run_dev(args: argparse.Namespace) -> int:
    from .devcommand import DevOptions, run_dev

    if (args.app is None) == (args.functions_target is None):
        args.parser.error("give either APP (a WSGI app, e.g. main:app) or --functions-target")
    if args.tasks_target and not args.functions_target:
        args.parser.error("--tasks-target needs --functions-target")
    if args.app is not None and ":" not in args.app:
        args.parser.error(f"APP must be MODULE:ATTRIBUTE, e.g. main:app (got {args.app!r})")
    queue_ids = _queue_ids(args)
    if queue_ids is None:
        return EXIT_FAILURE
    return run_dev(
        DevOptions(
            app=args.app,
            functions_target=args.functions_target,
            tasks_target=args.tasks_target,
            source=args.source,
            app_dir=args.app_dir,
            port=args.port,
            project=args.project,
            location=args.location,
            queue_ids=queue_ids,
            tasks_emulator=args.tasks_emulator,
            datastore_emulator=args.datastore_emulator,
            datastore=args.datastore,
            dev_key_file=args.dev_key_file,
        )
    )


def _add_inspect(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="show what a task payload would run, without running it",
        description=(
            "Reads a task body (a frame, compressed or signed, or a bare pickle) or a task "
            "as JSON from `gcloud tasks describe TASK --queue=QUEUE --response-view=full "
            "--format=json`, and shows the callable, its arguments, every global the "
            "pickle references, and the frame's flags, key ID and metadata. The pickle is "
            "disassembled, never unpickled: nothing is imported or run, and signatures are "
            "not verified. The output shows argument values: treat it like the payload. "
            "Exit codes: 0 shown, 1 not a readable payload or not a deferred call, "
            "2 usage."
        ),
    )
    inspect.add_argument("file", metavar="FILE", help="the payload or task JSON; - for stdin")
    inspect.add_argument(
        "--disassemble",
        action="store_true",
        help="also print the pickle's opcodes (pickletools.dis)",
    )
    inspect.set_defaults(run=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .inspect_payload import MAX_INPUT_BYTES, InspectError, format_inspection, inspect_input

    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(args.file, "rb") as file:
                data = file.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        print(f"cloudtasks-deferred inspect: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        inspection = inspect_input(data)
    except InspectError as exc:
        print(f"cloudtasks-deferred inspect: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(format_inspection(inspection, disassemble=args.disassemble))
    return EXIT_OK if inspection.call is not None else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
