"""``cloudtasks-deferred dead-letters``: list, show, replay and purge the tasks given up on.

Configured from the environment, like the service whose dead letters they are (its
project, and for ``replay`` its location, base URL, service account and signing
keys). The records are read from Datastore (:mod:`cloudtasks_deferred.dead_letters`);
nothing runs here except that ``replay`` enqueues tasks, for the service to run.

Exit codes: 0 done; 1 a record that does not exist or cannot be replayed, a replay
Cloud Tasks refused, an invalid configuration, dead letters that are only logged, or
no access to Datastore; 2 usage; 3 google-cloud-ndb is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import sys
from collections.abc import Callable
from typing import Any, Final

from cloudtasks_deferred.client import Client
from cloudtasks_deferred.dead_letters import DeadLetters
from cloudtasks_deferred.devtools import cli_args
from cloudtasks_deferred.devtools.cli_args import fail
from cloudtasks_deferred.devtools.localdev import datastore_problem
from cloudtasks_deferred.devtools.tooling import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from cloudtasks_deferred.errors import ConfigurationError, DeadLetterError
from cloudtasks_deferred.settings import DeadLetterStorage, Settings
from cloudtasks_deferred.storage.dead_letters import DeadLetter, Status

__all__ = ["CommandError", "add_dead_letters", "open_dead_letters"]

_COMMAND: Final = "dead-letters"
_EXIT_CODES: Final = (
    "Exit codes: 0 done, 1 {failure}an invalid configuration, dead letters that are "
    "only logged (CLOUDTASKS_DEFERRED_DEAD_LETTERS=log) or no access to Datastore, "
    "2 usage, 3 google-cloud-ndb is not installed."
)


class CommandError(Exception):
    """A one-line error of the command, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def open_dead_letters() -> DeadLetters:
    """The dead letters of the configuration the environment describes, in Datastore.

    Raises:
        CommandError: google-cloud-ndb is missing (3), the configuration is invalid,
            says the dead letters are only logged, or Datastore cannot be reached (1).
    """
    if importlib.util.find_spec("google.cloud.ndb") is None:
        raise CommandError(
            "dead letters are read from Datastore with google-cloud-ndb, which is not "
            "installed: pip install 'cloudtasks-deferred[ndb]'",
            EXIT_UNAVAILABLE,
        )
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    if settings.dead_letters is DeadLetterStorage.LOG:
        raise CommandError(
            "CLOUDTASKS_DEFERRED_DEAD_LETTERS=log: dead letters are only logged, so there "
            "are no records to read; set it to datastore (or auto) for the service and here"
        )
    if (problem := datastore_problem(settings.project)) is not None:
        raise CommandError(f"dead letters are kept in Datastore, and {problem}")
    settings = dataclasses.replace(settings, dead_letters=DeadLetterStorage.DATASTORE)
    return DeadLetters(Client(settings))


def add_dead_letters(commands: Any, *, opener: Callable[[], DeadLetters] | None = None) -> None:
    """Adds ``dead-letters`` and its commands to the ``cloudtasks-deferred`` parser.

    Args:
        commands: The top parser's subparsers.
        opener: Opens the dead letters; :func:`open_dead_letters` when ``None``.
    """
    top = commands.add_parser(
        _COMMAND,
        help="list, show, replay and purge the tasks the handler gave up on",
        description=(
            "The tasks the handler gave up on (a PermanentTaskFailure, exhausted "
            "_retry_options, a body that is not a payload) or whose payload the allowlist "
            "refused, as recorded in Datastore (CLOUDTASKS_DEFERRED_DEAD_LETTERS). "
            "Configured from the environment, like the service. Nothing is run here: "
            "replay enqueues the tasks again, for the service to run. Exit codes: see each "
            "command's --help; 2 usage (also no command given)."
        ),
    )
    verbs = top.add_subparsers(title="commands", metavar="COMMAND")
    top.set_defaults(run=lambda args: _usage(top), parser=top)

    listing = verbs.add_parser(
        "list",
        help="list dead letters, most recent first",
        description="Lists dead letters, most recently failed first. "
        + _EXIT_CODES.format(failure=""),
    )
    listing.add_argument("--queue", type=cli_args.queue_id, help="only this queue's")
    listing.add_argument(
        "--since",
        type=cli_args.since,
        metavar="T",
        help="only those recorded since T: ISO 8601 (no offset: UTC) or a duration ago (2h, 7d)",
    )
    listing.add_argument(
        "--limit", type=cli_args.positive_int, default=50, help="at most N (default 50)"
    )
    listing.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in Status],
        help="only this status; repeat for several (default: all)",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array of the records")

    show = verbs.add_parser(
        "show",
        help="show a dead letter and what its payload would run",
        description=(
            "Shows a dead letter's record and its payload as `inspect` reads it: the "
            "pickle is disassembled, never unpickled. The output shows argument values: "
            "treat it like the payload. " + _EXIT_CODES.format(failure="no such record, ")
        ),
    )
    show.add_argument("id", metavar="ID", help="the record's ID, as list prints it")

    replay = verbs.add_parser(
        "replay",
        help="enqueue dead letters' tasks again, once the cause is fixed",
        description=(
            "Enqueues each record's payload again, to its queue and URL, as task "
            "ID-replay-N, and marks the record replayed. Signed payloads are verified and "
            "signed afresh with the signing keys of the environment. Crash-safe: run an "
            "interrupted replay again (promptly) and it resumes. A record whose task its "
            "queue ran later (resolved), or replayed already, is not replayed. "
            + _EXIT_CODES.format(
                failure="a record that does not exist or cannot be replayed, a task Cloud "
                "Tasks refused, "
            )
        ),
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="the records to replay")
    replay.add_argument(
        "--all", action="store_true", help="every new record (and interrupted replays)"
    )
    replay.add_argument("--queue", type=cli_args.queue_id, help="with --all: only this queue's")

    purge = verbs.add_parser(
        "purge",
        help="delete old dead letters",
        description=(
            "Deletes the records last recorded more than DURATION ago, whatever their "
            "status, and the oversized payloads they kept. " + _EXIT_CODES.format(failure="")
        ),
    )
    purge.add_argument(
        "--older-than",
        type=cli_args.duration,
        required=True,
        metavar="DURATION",
        help="e.g. 30d, 12h, 90m (a bare number is seconds)",
    )
    for verb, run in ((listing, _list), (show, _show), (replay, _replay), (purge, _purge)):
        verb.set_defaults(run=_runner(verb.prog.split()[-1], run, opener), parser=verb)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _runner(
    verb: str,
    run: Callable[[DeadLetters, argparse.Namespace], int],
    opener: Callable[[], DeadLetters] | None,
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        if verb == "replay" and (args.all == bool(args.ids) or (args.queue and not args.all)):
            args.parser.error("give the IDs to replay, or --all (with --queue to narrow it)")
        try:
            letters = (opener or open_dead_letters)()
            return run(letters, args)
        except CommandError as exc:
            return fail(f"{_COMMAND} {verb}", str(exc), exc.code)
        except (ConfigurationError, DeadLetterError) as exc:
            return fail(f"{_COMMAND} {verb}", str(exc), EXIT_FAILURE)

    return command


def _list(letters: DeadLetters, args: argparse.Namespace) -> int:
    statuses = {Status(value) for value in args.status} if args.status else None
    found = letters.list(queue=args.queue, since=args.since, statuses=statuses, limit=args.limit)
    if args.json:
        print(json.dumps([letter.as_json() for letter in found], indent=2))
        return EXIT_OK
    if not found:
        print("no dead letters")
        return EXIT_OK
    rows = [("ID", "STATUS", "CAUSE", "QUEUE", "ATTEMPTS", "LAST FAILED (UTC)", "CALLABLE")]
    rows += [
        (
            letter.id,
            letter.status.value,
            letter.cause.value,
            letter.queue_name or "-",
            str(letter.attempts or "-"),
            _time(letter.last_failed_at),
            letter.callable_name or "-",
        )
        for letter in found
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]
        )
    return EXIT_OK


def _show(letters: DeadLetters, args: argparse.Namespace) -> int:
    letter = letters.get(args.id)
    _text_output()
    sys.stdout.write(_record(letter))
    if letter.payload is not None:
        sys.stdout.write("\npayload\n" + _inspected(letter.payload))
    if letter.stored_payload is not None:
        stored = letters.stored_payload(letter)
        title = f"\nstored payload (_DeferredTaskEntity {letter.stored_payload})\n"
        sys.stdout.write(title + (_inspected(stored) if stored is not None else "  deleted\n"))
    return EXIT_OK


def _replay(letters: DeadLetters, args: argparse.Namespace) -> int:
    failed = 0
    if args.all:
        results = letters.replay_all(queue=args.queue)
        if not results:
            print("nothing to replay")
        for result in results:
            if result.letter is not None:
                print(f"replayed {result.letter_id} as task {result.letter.replay_task}")
            else:
                failed += 1
                fail(
                    f"{_COMMAND} replay", f"{result.letter_id}: {_why(result.error)}", EXIT_FAILURE
                )
        return EXIT_FAILURE if failed else EXIT_OK
    for letter_id in args.ids:
        try:
            done = letters.replay(letter_id)
        except Exception as exc:
            failed += 1
            fail(f"{_COMMAND} replay", f"{letter_id}: {_why(exc)}", EXIT_FAILURE)
        else:
            print(f"replayed {letter_id} as task {done.replay_task}")
    return EXIT_FAILURE if failed else EXIT_OK


def _purge(letters: DeadLetters, args: argparse.Namespace) -> int:
    count = letters.purge(older_than=args.older_than)
    print(f"purged {count} dead letter{'s' if count != 1 else ''} older than {args.older_than}")
    return EXIT_OK


def _why(error: BaseException | None) -> str:
    """An error in one line: the library's own say what to do; others name their type."""
    if isinstance(error, (DeadLetterError, ConfigurationError)):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}; the record stays replaying: replay it again"


def _record(letter: DeadLetter) -> str:
    fields = letter.as_json(traceback=False)
    fields = {"id": fields.pop("id"), "status": fields.pop("status"), **fields}
    headers = fields.pop("headers")
    lines = [f"{name:<18}{_shown(value)}" for name, value in fields.items() if value is not None]
    lines += [f"header            {name}: {value}" for name, value in headers.items()]
    if letter.traceback:
        lines += ["traceback", *("  " + line for line in letter.traceback.rstrip().splitlines())]
    return "\n".join(lines) + "\n"


def _shown(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _inspected(payload: bytes) -> str:
    # The reader loads only to show a payload: every other command starts without it.
    from cloudtasks_deferred.payload.inspection import (
        InspectError,
        format_inspection,
        inspect_input,
    )

    try:
        text = format_inspection(inspect_input(payload))
    except InspectError as exc:
        text = f"{exc}\n"
    return "".join(f"  {line}\n" for line in text.splitlines())


def _time(when: Any) -> str:
    return str(when.strftime("%Y-%m-%d %H:%M:%S"))


def _text_output() -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):  # a terminal or pipe that is not UTF-8
        sys.stdout.reconfigure(errors="backslashreplace")
