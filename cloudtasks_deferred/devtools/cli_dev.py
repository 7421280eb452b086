"""The ``cloudtasks-deferred dev`` command's arguments; its logic is in :mod:`.devcommand`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cloudtasks_deferred.devtools.cli_args import (
    add_queue_files,
    directory,
    host_port,
    module_attribute,
    port,
    queue_id,
    queue_ids,
)
from cloudtasks_deferred.devtools.tooling import EXIT_FAILURE

__all__ = ["add_dev"]


def add_dev(commands: Any) -> None:
    dev = commands.add_parser(
        "dev",
        help="run an app locally on the Datastore and Cloud Tasks emulators",
        description=(
            "Starts the Datastore emulator and the Cloud Tasks emulator on 127.0.0.1 (or "
            "attaches to running ones), then serves the app with the environment the "
            "library reads set for it: the emulators' hosts, GOOGLE_CLOUD_PROJECT, "
            "CLOUDTASKS_DEFERRED_LOCATION, CLOUDTASKS_DEFERRED_BASE_URL (the app's URL), "
            "CLOUDTASKS_DEFERRED_DEV_MODE=true and a dev key file. Serves APP, a WSGI app "
            "(MODULE:ATTRIBUTE), with python -m cloudtasks_deferred.devtools.devserver, or a "
            "functions-framework target (--functions-target). Prints the URLs and the "
            "variables, streams the app's output, and stops everything on Ctrl-C or "
            "SIGTERM. Exit codes: 0 stopped, 1 a bad queue file, the app's port in use, "
            "or the app did not start or exited with an error, 2 usage (including an "
            "--app-dir, --source or APP module that does not exist), 3 an emulator or "
            "server is not installed or did not start."
        ),
    )
    dev.add_argument(
        "app",
        nargs="?",
        type=module_attribute,
        metavar="APP",
        help="the WSGI app, e.g. main:app",
    )
    dev.add_argument("--port", type=port, default=8080, help="the app's port (default 8080)")
    dev.add_argument(
        "--app-dir",
        type=directory,
        default=Path(),
        metavar="DIR",
        help="the app's directory",
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
        "--queue",
        action="append",
        type=queue_id,
        metavar="NAME",
        help="queue to create (default: default)",
    )
    add_queue_files(dev)
    dev.add_argument(
        "--tasks-emulator",
        type=host_port,
        metavar="HOST:PORT",
        help="use this running Cloud Tasks emulator",
    )
    dev.add_argument(
        "--datastore-emulator",
        type=host_port,
        metavar="HOST:PORT",
        help="use this running Datastore emulator",
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
    # The dev runner loads only for this command: every other command starts without it.
    from cloudtasks_deferred.devtools.devcommand import DevOptions, run_dev

    if (args.app is None) == (args.functions_target is None):
        args.parser.error("give either APP (a WSGI app, e.g. main:app) or --functions-target")
    if args.tasks_target and not args.functions_target:
        args.parser.error("--tasks-target needs --functions-target")
    ids = queue_ids(args, "dev")
    if ids is None:
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
            queue_ids=ids,
            tasks_emulator=args.tasks_emulator,
            datastore_emulator=args.datastore_emulator,
            datastore=args.datastore,
            dev_key_file=args.dev_key_file,
        )
    )
