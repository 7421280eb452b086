"""What the commands of the command-line tools share: argument types, queue files, errors.

A bad value is a usage error (exit 2). Each type function is an argparse ``type=``:
it returns the parsed value or raises ``argparse.ArgumentTypeError`` with one sentence
saying what is wrong and what is expected, which argparse prints as ``PROG: error:
argument --port: ...`` before exiting with status 2. Values that name something — a
directory, a file, an interpreter — are checked to exist here, as argparse's own
``FileType`` does. :func:`fail` prints the one-line errors of the commands themselves.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cloudtasks_deferred import limits
from cloudtasks_deferred.devtools.tooling import EXIT_FAILURE

__all__ = [
    "add_queue_files",
    "directory",
    "duration",
    "executable",
    "fail",
    "host_port",
    "input_file",
    "module_attribute",
    "port",
    "positive_int",
    "queue_id",
    "queue_ids",
    "reason",
    "seconds",
    "since",
]

_MAX_PORT: Final = 65535
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DOTTED: Final = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def port(text: str) -> int:
    """A TCP port, 1-65535, or 0 for a free one."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a TCP port: give a number from 1 to {_MAX_PORT} (0 picks a free one)"
        )
    return value


def seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def duration(text: str) -> timedelta:
    """A duration: a number and a unit, ``s``, ``m``, ``h``, ``d`` or ``w`` (``30d``);
    a bare number is seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    try:
        value = timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]]) if match else None
    except OverflowError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a number and a unit, e.g. 90s, 30m, 12h, 30d, 2w"
        )
    return value


def since(text: str) -> datetime:
    """A point in time: ISO 8601 (``2024-05-01``, ``2024-05-01T12:00:00+02:00``; no
    offset means UTC), or a duration ago (``2h``: two hours ago)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.now(UTC) - duration(text)
        except (argparse.ArgumentTypeError, OverflowError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither an ISO 8601 time (2024-05-01T12:00:00) nor a duration "
                "ago (2h, 7d)"
            ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def positive_int(text: str) -> int:
    """A whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def executable(text: str) -> str:
    """A program: a path, or a name on the ``PATH``; returns its path."""
    found = shutil.which(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text} is not an executable program: give the path of a Python interpreter, "
            "e.g. /path/to/venv/bin/python"
        )
    return found


def directory(text: str) -> Path:
    """An existing directory."""
    path = Path(text)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise argparse.ArgumentTypeError(f"{text} {what}")
    return path


def input_file(text: str) -> str:
    """An existing file, or ``-`` for standard input."""
    path = Path(text)
    if text != "-" and not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}: give a file, or - for standard input")
    return text


def queue_id(text: str) -> str:
    """A Cloud Tasks queue ID: 1-100 letters, digits or hyphens."""
    if not limits.QUEUE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Cloud Tasks queue ID: 1-100 letters, digits or hyphens"
        )
    return text


def host_port(text: str) -> str:
    """``HOST:PORT`` of a running server, e.g. ``127.0.0.1:8123``."""
    host, _, number = text.rpartition(":")
    if not host or not number.isdigit() or not 1 <= int(number) <= _MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8123")
    return text


def module_attribute(text: str) -> str:
    """``MODULE:ATTRIBUTE`` of a WSGI app, e.g. ``main:app``."""
    module, _, attribute = text.partition(":")
    hint = " (a module name, not a file)" if module.endswith(".py") else ""
    if hint or not _DOTTED.fullmatch(module) or not attribute.isidentifier():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODULE:ATTRIBUTE{hint}: give e.g. main:app for app in main.py"
        )
    return text


def fail(command: str, message: str, code: int) -> int:
    """Prints ``cloudtasks-deferred COMMAND: MESSAGE`` on stderr; returns ``code``."""
    print(f"cloudtasks-deferred {command}: {message}", file=sys.stderr, flush=True)
    return code


def reason(exc: Exception) -> str:
    """An OS or decoding error without the repeated file name: ``Is a directory``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def add_queue_files(command: argparse.ArgumentParser) -> None:
    """Adds ``--queue-yaml`` and ``--queues-json``."""
    command.add_argument(
        "--queue-yaml",
        type=_file_path,
        metavar="FILE",
        help="also create the queues this App Engine queue.yaml converts to (see queue-yaml)",
    )
    command.add_argument(
        "--queues-json",
        type=_file_path,
        metavar="FILE",
        help="also create the queues of this Terraform tfvars JSON file (its queues map's keys)",
    )


def _file_path(text: str) -> Path:
    if text == "-":
        raise argparse.ArgumentTypeError("give a file here: standard input is not read")
    return Path(input_file(text))


def queue_ids(args: argparse.Namespace, command: str) -> list[str] | None:
    """The queues to create, after printing what the queue files left out; ``None``
    (reported) if a file cannot be read or converted."""
    # Loaded when a command runs, as each command's own modules are (see cli).
    from cloudtasks_deferred.devtools.localdev import QueueFileError
    from cloudtasks_deferred.devtools.localdev import queue_ids as read_queue_ids

    try:
        selection = read_queue_ids(args.queue, args.queue_yaml, args.queues_json)
    except QueueFileError as exc:
        fail(command, str(exc), EXIT_FAILURE)
        return None
    for note in selection.skipped:
        print(f"cloudtasks-deferred {command}: warning: {note}", file=sys.stderr, flush=True)
    return selection.ids
