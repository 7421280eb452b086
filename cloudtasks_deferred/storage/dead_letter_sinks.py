"""Where dead letters go: Datastore, the log, or memory; and which one a client uses.

Three implementations of :class:`~cloudtasks_deferred.storage.dead_letters.DeadLetterSink`:

* :class:`DatastoreDeadLetters` keeps each record as a ``_DeferredDeadLetter`` entity
  (:mod:`~cloudtasks_deferred.storage.dead_letter_entities`): the records can be
  listed, shown, replayed and purged (it is a
  :class:`~cloudtasks_deferred.storage.dead_letters.DeadLetterStore`);
* :class:`LoggingDeadLetters` logs each record at ERROR on the
  ``cloudtasks_deferred.dead_letters`` logger, without its payload (route it with a
  Cloud Logging sink): nothing can be replayed (and a refused payload keeps to the
  handler's one warning);
* :class:`InMemoryDeadLetters` keeps them in a dict, for tests (a store too).

:func:`sink_for` picks one from ``CLOUDTASKS_DEFERRED_DEAD_LETTERS``
(:class:`~cloudtasks_deferred.settings.DeadLetterStorage`): ``datastore``, ``log``, or
``auto`` — Datastore when NDB is enabled by ``CLOUDTASKS_DEFERRED_NDB`` (true, or
auto with google-cloud-ndb installed), else the log. In auto mode a Datastore that
cannot be reached (no credentials, no emulator) falls back to the log, with one
warning, as NDB contexts do.

google-cloud-ndb loads when the Datastore store is first used, never at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any

from cloudtasks_deferred.settings import DeadLetterStorage, Settings
from cloudtasks_deferred.storage.datastore import Datastore, ndb_installed
from cloudtasks_deferred.storage.dead_letters import (
    Cause,
    DeadLetter,
    DeadLetterSink,
    Status,
    claimed,
    merged,
    replay_finished,
    replay_started,
)

__all__ = ["DatastoreDeadLetters", "InMemoryDeadLetters", "LoggingDeadLetters", "sink_for"]


def sink_for(settings: Settings, datastore: Datastore) -> DeadLetterSink:
    """The sink ``settings.dead_letters`` asks for (see the module docstring).

    Args:
        settings: Its ``dead_letters`` and ``ndb`` decide.
        datastore: Opens NDB contexts for the Datastore store.
    """
    mode = settings.dead_letters
    if mode is DeadLetterStorage.DATASTORE:
        return DatastoreDeadLetters(datastore, required=True)
    if mode is DeadLetterStorage.LOG or settings.ndb is False or not ndb_installed():
        return LoggingDeadLetters()
    return DatastoreDeadLetters(datastore, required=settings.ndb is True)


class LoggingDeadLetters:
    """Logs dead letters at ERROR, as structured records (``extra={"json_fields": ...}``).

    The log line names the task, the callable and the payload's size and SHA-256,
    never its bytes or arguments. A payload the allowlist refused is not logged again:
    the handler's warning is its record (it is retried, and nothing could replay it
    from a log). Nothing is kept: :meth:`claim` always allows.
    """

    logger = logging.getLogger("cloudtasks_deferred.dead_letters")
    keeps_payloads = False

    def record(self, letter: DeadLetter) -> None:
        """Logs ``letter`` (a refusal: see the class docstring)."""
        if letter.cause is Cause.REFUSED:
            return
        self.logger.error(
            "dead letter: task %s on queue %s (%s; payload %s bytes, sha256 %s): %s",
            letter.task_name,
            letter.queue_name,
            letter.callable_name or "undecodable payload",
            letter.payload_bytes if letter.payload_bytes is not None else "unread",
            letter.payload_sha256 or "-",
            letter.reason,
            extra={"json_fields": {"dead_letter": letter.as_json(traceback=False)}},
        )

    def claim(self, letter_id: str) -> bool:
        """Allows: a logged record cannot have been replayed."""
        return True


class InMemoryDeadLetters:
    """Keeps dead letters in memory, for tests: a full store. Thread-safe."""

    keeps_payloads = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._letters: dict[str, DeadLetter] = {}

    @property
    def letters(self) -> list[DeadLetter]:
        """The records, in the order they were first recorded."""
        with self._lock:
            return list(self._letters.values())

    def record(self, letter: DeadLetter) -> None:
        """Stores ``letter``, or merges it into the record of the same ID."""
        with self._lock:
            self._letters[letter.id] = merged(self._letters.get(letter.id), letter)

    def claim(self, letter_id: str) -> bool:
        """Claims a redelivered task's record (:func:`~.dead_letters.claimed`)."""
        with self._lock:
            allowed, updated = claimed(self._letters.get(letter_id), datetime.now(UTC))
            if updated is not None:
                self._letters[letter_id] = updated
            return allowed

    def get(self, letter_id: str) -> DeadLetter | None:
        """The record with this ID, or ``None``."""
        with self._lock:
            return self._letters.get(letter_id)

    def find(
        self,
        *,
        queue: str | None = None,
        since: datetime | None = None,
        statuses: Collection[Status] | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Records, most recently failed first (see ``DeadLetterStore.find``)."""
        with self._lock:
            letters = sorted(self._letters.values(), key=lambda x: x.last_failed_at, reverse=True)
        found = [
            letter
            for letter in letters
            if (queue is None or letter.queue_name == queue)
            and (since is None or letter.last_failed_at >= since)
            and (statuses is None or letter.status in statuses)
        ]
        return found[:limit] if limit is not None else found

    def begin_replay(self, letter_id: str) -> DeadLetter:
        """Applies :func:`~.dead_letters.replay_started`."""
        with self._lock:
            started = replay_started(self._letters.get(letter_id), letter_id)
            self._letters[letter_id] = started
            return started

    def finish_replay(self, letter_id: str, number: int, task_name: str) -> DeadLetter:
        """Applies :func:`~.dead_letters.replay_finished`."""
        with self._lock:
            existing = self._letters.get(letter_id)
            done = replay_finished(existing, letter_id, number, task_name, datetime.now(UTC))
            self._letters[letter_id] = done
            return done

    def purge(self, before: datetime) -> int:
        """Deletes the records last recorded before ``before``; returns how many."""
        with self._lock:
            old = [key for key, letter in self._letters.items() if letter.last_failed_at < before]
            for key in old:
                del self._letters[key]
            return len(old)

    def replace(self, letter: DeadLetter) -> None:
        """Stores ``letter`` as it is, over any record of its ID (to set up tests)."""
        with self._lock:
            self._letters[letter.id] = dataclasses.replace(letter)


class DatastoreDeadLetters:
    """Keeps dead letters in Datastore (``_DeferredDeadLetter``): a full store.

    Each call opens an NDB context for the client's settings when none is active.

    Args:
        datastore: Opens the NDB contexts.
        required: Whether the handler's calls (:meth:`record`, :meth:`claim`) need
            Datastore. When false (auto mode), a Datastore that cannot be reached
            makes :meth:`record` log the letter and :meth:`claim` allow, after one
            warning; when true they raise
            :class:`~cloudtasks_deferred.errors.ConfigurationError` saying what to
            configure (the handler then logs the letter, or retries the delivery).
            The operator's calls always need Datastore.
    """

    keeps_payloads = True

    def __init__(self, datastore: Datastore, *, required: bool = True) -> None:
        self._datastore = datastore
        self._required = required

    def record(self, letter: DeadLetter) -> None:
        """Stores ``letter`` in a transaction, merged into its task's record."""
        with self._entities(required=self._required) as store:
            if store is None:
                LoggingDeadLetters().record(letter)
            else:
                store.record(letter)

    def claim(self, letter_id: str) -> bool:
        """Claims a redelivered task's record in a transaction."""
        with self._entities(required=self._required) as store:
            allowed: bool = True if store is None else store.claim(letter_id)
            return allowed

    def get(self, letter_id: str) -> DeadLetter | None:
        """The record with this ID, or ``None``."""
        with self._entities(required=True) as store:
            found: DeadLetter | None = store.get(letter_id)
            return found

    def find(
        self,
        *,
        queue: str | None = None,
        since: datetime | None = None,
        statuses: Collection[Status] | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Records, most recently failed first (see ``DeadLetterStore.find``)."""
        with self._entities(required=True) as store:
            found: list[DeadLetter] = store.find(
                queue=queue, since=since, statuses=statuses, limit=limit
            )
            return found

    def begin_replay(self, letter_id: str) -> DeadLetter:
        """Applies :func:`~.dead_letters.replay_started` in a transaction."""
        with self._entities(required=True) as store:
            started: DeadLetter = store.begin_replay(letter_id)
            return started

    def finish_replay(self, letter_id: str, number: int, task_name: str) -> DeadLetter:
        """Applies :func:`~.dead_letters.replay_finished` in a transaction."""
        with self._entities(required=True) as store:
            done: DeadLetter = store.finish_replay(letter_id, number, task_name)
            return done

    def purge(self, before: datetime) -> int:
        """Deletes the records last recorded before ``before`` and the payloads they kept."""
        with self._entities(required=True) as store:
            count: int = store.purge(before)
            return count

    @contextlib.contextmanager
    def _entities(self, *, required: bool) -> Iterator[Any]:
        """:mod:`~cloudtasks_deferred.storage.dead_letter_entities` inside an NDB
        context, or ``None`` when none can be opened and Datastore is not required."""
        with self._datastore.context(required_for="the dead-letter store" if required else None):
            # google-cloud-ndb (the ndb extra) loads when dead letters first use Datastore.
            from google.cloud import ndb  # type: ignore[attr-defined]

            from cloudtasks_deferred.storage import dead_letter_entities

            if ndb.get_context(raise_context_error=False) is None:
                yield None
            else:
                yield dead_letter_entities
