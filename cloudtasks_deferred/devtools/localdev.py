"""Local development on the emulators: which queues, which emulators, which variables.

Shared by ``cloudtasks-deferred emulator``, ``cloudtasks-deferred dev`` and the
repository's ``scripts/demo.py``:

* :func:`queue_ids_from_yaml` and :func:`queue_ids_from_tfvars` read the queue IDs
  of an App Engine ``queue.yaml`` (by the rules of :mod:`cloudtasks_deferred.devtools.queue_yaml`,
  so locally the queues Terraform would create, and a note for each pull queue left
  out) or of the Terraform module's ``queues`` map;
* :func:`start_emulators` starts the Cloud Tasks emulator and the Datastore
  emulator on 127.0.0.1 — or attaches to running ones, creating missing queues;
* :func:`app_environment` is the environment an app needs to use them in dev mode;
* :func:`datastore_problem` says why NDB could not reach Datastore from here.

Nothing here writes ``os.environ``: the variables are for a child process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from cloudtasks_deferred import limits
from cloudtasks_deferred.devtools.emulators import (
    CloudTasksEmulator,
    DatastoreEmulator,
    EmulatorUnavailableError,
)
from cloudtasks_deferred.settings import queue_path

__all__ = [
    "LocalEmulators",
    "QueueFileError",
    "QueueIds",
    "app_environment",
    "datastore_problem",
    "ensure_queues",
    "full_queue_names",
    "queue_ids",
    "queue_ids_from_tfvars",
    "queue_ids_from_yaml",
    "start_emulators",
]


_QUEUE_TIMEOUT = 10.0  # seconds for a running emulator to create a queue


class QueueFileError(ValueError):
    """A queue file cannot be read or holds no valid queue IDs; the message says why.

    For a queue.yaml that :func:`cloudtasks_deferred.devtools.queue_yaml.convert` refuses, the
    message is that :class:`~cloudtasks_deferred.devtools.queue_yaml.QueueYamlError`'s (its
    ``__cause__``) after the file's path.
    """


@dataclasses.dataclass(frozen=True)
class QueueIds:
    """The queues to create, and what was left out of them.

    Attributes:
        ids: Queue IDs, in order, without repeats.
        skipped: One sentence per queue of a file that is not created, and why
            (a queue.yaml's pull queues): tell the user.
    """

    ids: list[str]
    skipped: tuple[str, ...] = ()


def queue_ids_from_yaml(path: Path) -> QueueIds:
    """Reads the IDs of the queues an App Engine ``queue.yaml`` converts to, and ``default``.

    The file is read by :func:`cloudtasks_deferred.devtools.queue_yaml.convert`, as
    ``cloudtasks-deferred queue-yaml`` reads it for Terraform: the same file is
    refused, and the same queues are created, locally and when deployed. Pull
    queues (``mode: pull``) are left out, as they are from Terraform's queues, each
    with a note in ``skipped``; ``default``, which App Engine always provides, is
    included.

    Args:
        path: The ``queue.yaml`` file.

    Returns:
        Queue IDs, ``default`` first, in file order, and the pull queues' notes.

    Raises:
        QueueFileError: The file cannot be read, or ``convert`` refuses it.
    """
    # PyYAML loads only when a queue.yaml is given.
    from cloudtasks_deferred.devtools.queue_yaml import QueueYamlError, convert

    try:
        conversion = convert(_read(path))
    except QueueYamlError as exc:
        raise QueueFileError(f"{path}: {exc}") from exc
    skipped = tuple(
        f"{path}: {name} is a pull queue: not created (Cloud Tasks and deferred tasks "
        "use push queues; App Engine's pull queue API has no Cloud Tasks equivalent)"
        for name in conversion.pull_queues
    )
    return QueueIds(_valid(["default", *conversion.queues], path), skipped)


def queue_ids_from_tfvars(path: Path) -> list[str]:
    """Reads the queue IDs of a Terraform tfvars JSON file: the keys of its ``queues`` map.

    Args:
        path: A ``*.tfvars.json`` file such as ``{"queues": {"default": {...}}}``.

    Returns:
        Queue IDs in file order.

    Raises:
        QueueFileError: The file is missing, not JSON, has no ``queues`` object, or
            names an invalid queue ID.
    """
    try:
        document = json.loads(_read(path))
    except ValueError as exc:
        raise QueueFileError(f"{path} is not valid JSON: {exc}") from exc
    queues = document.get("queues") if isinstance(document, dict) else None
    if not isinstance(queues, dict) or not queues:
        raise QueueFileError(f'{path} has no "queues" object mapping queue IDs to settings')
    return _valid(list(queues), path)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueueFileError(f"cannot read {path}: {exc}") from exc


def _valid(names: Iterable[str], source: Path | str) -> list[str]:
    unique = list(dict.fromkeys(names))
    for name in unique:
        if not limits.QUEUE_ID.fullmatch(name):
            raise QueueFileError(
                f"{source}: {name!r} is not a Cloud Tasks queue ID (1-100 letters, digits "
                "or hyphens)"
            )
    return unique


def queue_ids(
    names: Sequence[str] | None = None,
    yaml_file: Path | None = None,
    tfvars_file: Path | None = None,
) -> QueueIds:
    """Combines queue IDs given by name and by file; ``default`` alone when none is given.

    Returns:
        The IDs, and the notes of :func:`queue_ids_from_yaml` on what it left out.

    Raises:
        QueueFileError: A file cannot be read, or an ID is invalid.
    """
    found = list(names or ())
    skipped: tuple[str, ...] = ()
    if yaml_file is not None:
        from_yaml = queue_ids_from_yaml(yaml_file)
        found += from_yaml.ids
        skipped = from_yaml.skipped
    if tfvars_file is not None:
        found += queue_ids_from_tfvars(tfvars_file)
    return QueueIds(_valid(found or ["default"], "--queue"), skipped)


def ensure_queues(host: str, queues: Iterable[str]) -> None:
    """Creates the queues that do not exist yet on a running Cloud Tasks emulator.

    Args:
        host: The emulator's ``host:port``.
        queues: Full queue names, ``projects/P/locations/L/queues/Q``.

    Raises:
        EmulatorUnavailableError: The emulator does not answer or refuses a queue.
    """
    # google-cloud-tasks loads only when queues are created on an emulator.
    from google.api_core import exceptions
    from google.cloud import tasks_v2

    from cloudtasks_deferred.enqueue.transports.cloud_tasks import shared_client

    for name in queues:
        parent = name.rsplit("/queues/", 1)[0]
        try:
            with contextlib.suppress(exceptions.AlreadyExists):
                shared_client(host).create_queue(
                    parent=parent, queue=tasks_v2.Queue(name=name), timeout=_QUEUE_TIMEOUT
                )
        except (exceptions.GoogleAPIError, exceptions.RetryError) as exc:
            raise EmulatorUnavailableError(
                f"cannot create the queue {name} in the Cloud Tasks emulator at {host}: {exc}"
            ) from exc


@dataclasses.dataclass(frozen=True)
class LocalEmulators:
    """The emulators an app runs against.

    Attributes:
        project: The project ID both use.
        tasks_host: ``host:port`` of the Cloud Tasks emulator.
        datastore_host: ``host:port`` of the Datastore emulator, ``None`` without one.
    """

    project: str
    tasks_host: str
    datastore_host: str | None


def start_emulators(
    stack: contextlib.ExitStack,
    *,
    project: str,
    queues: Iterable[str],
    tasks_host: str | None = None,
    datastore_host: str | None = None,
    datastore: bool = True,
    announce: Callable[[str], None] = lambda _: None,
    log: IO[bytes] | None = None,
) -> LocalEmulators:
    """Starts (or attaches to) the emulators; ``stack`` stops the ones it started.

    Args:
        stack: Receives every emulator started here, to stop it on exit.
        project: Project ID for the Datastore emulator.
        queues: Full queue names to create in the Cloud Tasks emulator.
        tasks_host: ``host:port`` of a running Cloud Tasks emulator to use instead
            of starting one; missing queues are created in it.
        datastore_host: ``host:port`` of a running Datastore emulator to use.
        datastore: Whether to start a Datastore emulator when none is given.
        announce: Told, in words, what is being started.
        log: Where the started emulators' output goes (discarded when ``None``).

    Returns:
        Where the emulators are.

    Raises:
        EmulatorUnavailableError: An emulator is not installed or did not start.
    """
    queues = list(queues)
    if datastore_host is None and datastore:
        announce("starting the Datastore emulator on 127.0.0.1")
        datastore_host = stack.enter_context(DatastoreEmulator(project=project, log=log)).host
    if tasks_host is not None:
        ensure_queues(tasks_host, queues)
    else:
        announce("starting the Cloud Tasks emulator on 127.0.0.1")
        tasks_host = stack.enter_context(CloudTasksEmulator(queues=queues, log=log)).host
    return LocalEmulators(project=project, tasks_host=tasks_host, datastore_host=datastore_host)


def app_environment(
    emulators: LocalEmulators, *, location: str, base_url: str, dev_key_file: Path
) -> dict[str, str]:
    """The variables an app reads to use the emulators in dev mode.

    Args:
        emulators: Where the emulators are.
        location: The queues' location.
        base_url: Where the app listens; tasks are sent there.
        dev_key_file: The local key dev-mode tasks are signed with.

    Returns:
        Variable names and values (see the README's configuration table).
    """
    env: dict[str, str] = {}
    if emulators.datastore_host is not None:
        env["DATASTORE_EMULATOR_HOST"] = emulators.datastore_host
        env["DATASTORE_PROJECT_ID"] = emulators.project
    env.update({
        "GOOGLE_CLOUD_PROJECT": emulators.project,
        "CLOUD_TASKS_EMULATOR_HOST": emulators.tasks_host,
        "CLOUDTASKS_DEFERRED_LOCATION": location,
        "CLOUDTASKS_DEFERRED_BASE_URL": base_url,
        "CLOUDTASKS_DEFERRED_DEV_MODE": "true",
        "CLOUDTASKS_DEFERRED_DEV_KEY_FILE": str(dev_key_file),
    })  # fmt: skip
    if emulators.datastore_host is None:
        env["CLOUDTASKS_DEFERRED_NDB"] = "false"  # no Datastore: run tasks without NDB
    env["PYTHONUNBUFFERED"] = "1"
    return env


def full_queue_names(project: str, location: str, ids: Iterable[str]) -> list[str]:
    """``projects/P/locations/L/queues/Q`` for each queue ID."""
    return [queue_path(project, location, queue) for queue in ids]


def datastore_problem(project: str | None) -> str | None:
    """Why google-cloud-ndb cannot make a Datastore client here, and what to do.

    Makes an ``ndb.Client`` as the library would (google-cloud-ndb reads
    ``DATASTORE_EMULATOR_HOST`` and the application default credentials itself),
    so that a tool can refuse to start instead of failing every request later.

    Args:
        project: The project, ``None`` for the credentials' own.

    Returns:
        ``None`` if a client can be made; otherwise one sentence naming the cause.
    """
    # Lazy: google-cloud-ndb is heavy and optional (the ndb extra).
    try:
        ndb = importlib.import_module("google.cloud.ndb")
    except ImportError:
        return "google-cloud-ndb is not installed: pip install 'cloudtasks-deferred[ndb]'"
    try:
        ndb.Client(project=project)
    except Exception as exc:  # google-auth and ndb raise several kinds
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"NDB cannot reach Datastore ({cause}): use the Datastore emulator "
            "(DATASTORE_EMULATOR_HOST, which cloudtasks-deferred dev sets) or credentials "
            "for a project (gcloud auth application-default login, GOOGLE_CLOUD_PROJECT)"
        )
    return None
