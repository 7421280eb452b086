"""The ``cloudtasks-deferred`` command.

Commands: ``emulator`` (the Cloud Tasks emulator on 127.0.0.1), ``queue-yaml`` (an
App Engine queue.yaml as the Terraform module's queues), ``sweep`` (create the tasks
of committed transactional defers that never got one), ``dev`` (an app on both
emulators), ``inspect`` (what a payload would run, without running it),
``dead-letters`` (list, show, replay and purge the tasks the handler gave up on).
Each command's logic lives in its own module, imported when the command runs.

Exit codes: 0 success; 1 failure: an input whose content is invalid (a queue file, a
payload), a port in use, an operation or an app that failed; 2 usage: the command
line is wrong — an unknown option, a malformed value, a file, directory, module or
program it names that does not exist (argparse's code; also no command given); 3 an
emulator or a tool is not installed or did not start. Each command's ``--help`` says
which it uses. Every error is one line, ``cloudtasks-deferred COMMAND: ...``, saying
what is wrong and what to do.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from cloudtasks_deferred import __version__
from cloudtasks_deferred.client import Client
from cloudtasks_deferred.devtools import cli_args as _cli_args
from cloudtasks_deferred.devtools.cli_args import add_queue_files, fail, queue_ids, reason
from cloudtasks_deferred.devtools.cli_dead_letters import add_dead_letters
from cloudtasks_deferred.devtools.cli_dev import add_dev
from cloudtasks_deferred.devtools.emulators import (
    CloudTasksEmulator,
    EmulatorUnavailableError,
    PortInUseError,
)
from cloudtasks_deferred.devtools.localdev import datastore_problem
from cloudtasks_deferred.devtools.tooling import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from cloudtasks_deferred.enqueue.sweep import sweep
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.settings import Settings, queue_path

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
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, which names the command
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
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
            "queues, once it answers ListQueues. Point your app at it with "
            "CLOUD_TASKS_EMULATOR_HOST and turn on CLOUDTASKS_DEFERRED_DEV_MODE so tasks "
            "carry tokens the handler accepts (cloudtasks-deferred dev does all of this). "
            "Exit codes: 0 stopped, 1 a bad queue file or the port is in use, 2 usage, "
            "3 the emulator is not installed or did not start."
        ),
    )
    emulator.add_argument(
        "--port", type=_cli_args.port, default=8123, help="TCP port (default 8123; 0: a free one)"
    )
    emulator.add_argument("--project", default="local-project", help="project of the queues")
    emulator.add_argument("--location", default="us-central1", help="location of the queues")
    emulator.add_argument(
        "--queue",
        action="append",
        type=_cli_args.queue_id,
        default=None,
        metavar="NAME",
        help="queue ID to create; repeat for several (default: default)",
    )
    emulator.add_argument(
        "--python",
        type=_cli_args.executable,
        default=None,
        help="interpreter that has gcloud-tasks-emulator installed (default: this one)",
    )
    add_queue_files(emulator)
    emulator.set_defaults(run=_run_emulator, parser=emulator)
    _add_queue_yaml(commands)
    _add_sweep(commands)
    add_dev(commands)
    _add_inspect(commands)
    add_dead_letters(commands)
    return parser


def _run_emulator(args: argparse.Namespace) -> int:
    ids = queue_ids(args, "emulator")
    if ids is None:
        return EXIT_FAILURE
    queues = [queue_path(args.project, args.location, q) for q in ids]
    problem = CloudTasksEmulator.problem(args.python)
    if problem is not None:
        return fail("emulator", problem, EXIT_UNAVAILABLE)
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
        except PortInUseError as exc:
            return fail("emulator", f"{exc.holder}: stop it or pass another --port", EXIT_FAILURE)
        except EmulatorUnavailableError as exc:
            return fail("emulator", str(exc), EXIT_UNAVAILABLE)
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
            "2 usage (including a file that does not exist)."
        ),
    )
    queue_yaml.add_argument(
        "path",
        type=_cli_args.input_file,
        metavar="PATH",
        help="the queue.yaml file, or - for stdin",
    )
    queue_yaml.add_argument(
        "--format",
        choices=("json", "hcl"),
        default="json",
        help="json: a .tfvars.json file (default); hcl: a .tfvars file",
    )
    queue_yaml.add_argument(
        "--output", metavar="FILE", default=None, help="write to FILE instead of stdout"
    )
    queue_yaml.set_defaults(run=_run_queue_yaml, parser=queue_yaml)


def _run_queue_yaml(args: argparse.Namespace) -> int:
    # PyYAML loads only for this command: every other command starts without it.
    from cloudtasks_deferred.devtools.queue_yaml import (
        QueueYamlError,
        convert,
        render_hcl,
        render_json,
    )

    stdin = args.path == "-"
    source = "<stdin>" if stdin else args.path
    try:
        conversion = convert(sys.stdin.read() if stdin else Path(source).read_text("utf-8"))
    except QueueYamlError as exc:
        return fail("queue-yaml", f"{source}: {exc}", EXIT_FAILURE)
    except (OSError, UnicodeDecodeError) as exc:
        return fail("queue-yaml", f"cannot read {source}: {reason(exc)}", EXIT_FAILURE)
    for warning in conversion.warnings:
        print(f"cloudtasks-deferred queue-yaml: warning: {warning}", file=sys.stderr)
    rendered = (render_hcl if args.format == "hcl" else render_json)(conversion)
    if args.output is None:
        sys.stdout.write(rendered)
        return EXIT_OK
    try:
        Path(args.output).write_text(rendered, encoding="utf-8")
    except OSError as exc:
        return fail("queue-yaml", f"cannot write {args.output}: {reason(exc)}", EXIT_FAILURE)
    return EXIT_OK


def _add_sweep(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="create transactional tasks whose creation after commit never happened",
        description=(
            "Creates the task of every outbox entry (defer(_transactional=True)) older "
            "than --older-than seconds, as the app's process would have right after its "
            "transaction committed. Configured from the environment, like the app. Exit "
            "codes: 0 every entry handled, 1 an invalid configuration, no access to "
            "Datastore or an entry that failed, 2 usage, 3 google-cloud-ndb is not "
            "installed."
        ),
    )
    sweep.add_argument(
        "--older-than",
        type=_cli_args.seconds,
        default=300.0,
        metavar="SECONDS",
        help="minimum age of an entry (default 300)",
    )
    sweep.add_argument(
        "--limit",
        type=_cli_args.positive_int,
        default=200,
        help="entries to handle, oldest first (default 200)",
    )
    sweep.set_defaults(run=_run_sweep, parser=sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("google.cloud.ndb") is None:
        return fail(
            "sweep",
            "the outbox sweeper needs Datastore, read with google-cloud-ndb, which is "
            "not installed: pip install 'cloudtasks-deferred[ndb]'",
            EXIT_UNAVAILABLE,
        )
    try:
        settings = Settings.from_env()
        if (problem := datastore_problem(settings.project)) is not None:
            return fail("sweep", f"the outbox sweeper needs Datastore, and {problem}", EXIT_FAILURE)
        client = Client(settings)
        report = sweep(client, older_than=timedelta(seconds=args.older_than), limit=args.limit)
    except ConfigurationError as exc:
        return fail("sweep", str(exc), EXIT_FAILURE)
    print(f"swept the outbox: {report.summary()}")
    return EXIT_OK if report.failed == 0 else EXIT_FAILURE


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
            "A malformed pickle is reported with what could be read of it. Exit codes: "
            "0 shown, 1 not a payload, a malformed pickle or not a deferred call, 2 usage "
            "(including a file that does not exist)."
        ),
    )
    inspect.add_argument(
        "file",
        type=_cli_args.input_file,
        metavar="FILE",
        help="the payload or task JSON; - for stdin",
    )
    inspect.add_argument(
        "--disassemble",
        action="store_true",
        help="also print the pickle's opcodes (pickletools.dis)",
    )
    inspect.set_defaults(run=_run_inspect, parser=inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    # The reader loads only for this command: every other command starts without it.
    from cloudtasks_deferred.payload.inspection import (
        MAX_INPUT_BYTES,
        InspectError,
        format_inspection,
        inspect_input,
    )

    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(args.file, "rb") as file:
                data = file.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        return fail("inspect", f"cannot read {args.file}: {reason(exc)}", EXIT_FAILURE)
    try:
        inspection = inspect_input(data)
    except InspectError as exc:
        return fail("inspect", str(exc), EXIT_FAILURE)
    if isinstance(sys.stdout, io.TextIOWrapper):  # a terminal or pipe that is not UTF-8
        sys.stdout.reconfigure(errors="backslashreplace")
    sys.stdout.write(format_inspection(inspection, disassemble=args.disassemble))
    return EXIT_OK if inspection.call is not None else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
