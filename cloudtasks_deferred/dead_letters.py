"""Dead letters, for operators: list them, show them, replay them once fixed, purge them.

The handler records every task it gives up on — a ``PermanentTaskFailure``, exhausted
``_retry_options``, a body that is not a payload — and every payload the allowlist
refuses (:mod:`cloudtasks_deferred.storage.dead_letters` says what a record holds and
the rules it follows). With the Datastore store (``CLOUDTASKS_DEFERRED_DEAD_LETTERS``
``datastore``, or ``auto`` with NDB) they can be read and replayed::

    from cloudtasks_deferred import DeadLetters

    letters = DeadLetters()                       # the current client's store
    for letter in letters.list(queue="mail"):
        print(letter.id, letter.status.value, letter.reason)
    letters.replay(letter.id)                     # after the fix is deployed
    letters.purge(older_than=timedelta(days=30))

Nothing here runs a task's code: listing and showing read records (``show``'s payload
view disassembles the pickle, :mod:`cloudtasks_deferred.payload.inspection`), and a
replay *enqueues* the original payload again, to its queue and URL, for the service
to run.

**Replay** (:meth:`DeadLetters.replay`), crash-safe:

1. the record becomes ``replaying`` with the next replay number *n* (a transaction;
   from then on, deliveries of the original task by its own queue do nothing);
2. the task is created, named ``ID-replay-n``: deterministic, so a replay interrupted
   and run again creates it at most once (Cloud Tasks' ``ALREADY_EXISTS`` counts as
   created — within its dedupe window, about an hour after the task ends, so resume an
   interrupted replay promptly; ``list`` shows ``replaying`` records);
3. the record becomes ``replayed``, naming the task.

A replay interrupted anywhere leaves the record, ``replaying``; replaying it again
resumes with the same number. The payload is framed again: its retry limits count
from the replay, and with signing keys it is signed afresh — with the destination it
was bound to and a new issue time, so that the handler's maximum age
(``CLOUDTASKS_DEFERRED_PAYLOAD_MAX_AGE``) counts from the replay. A transactional
task's replay runs outside its outbox guard, whose entry went when the task was given
up: the dead letter's claim, and the replay's task name, stand in for it. So the operator runs
with the service's configuration: its signing keys, project, location, base URL and
service account. A signed payload is verified first and never signed if it does not
verify, and an unsigned one is not signed. A payload too large for a task is copied
into a new ``_DeferredTaskEntity`` for the replay's task; the record's entity is
deleted once that task exists.

A record whose task a later delivery from its queue ran (``resolved``), or that was
replayed already (its replay failing records a dead letter of its own), is not
replayed: a task runs once, whoever runs it again.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from cloudtasks_deferred.client import Client, current_client
from cloudtasks_deferred.errors import ConfigurationError, DeadLetterError, TaskAlreadyExistsError
from cloudtasks_deferred.payload import binding
from cloudtasks_deferred.payload.calls import RUN_ENTRY, RUN_FROM_DATASTORE, library_call
from cloudtasks_deferred.payload.frame import (
    InvalidPayloadError,
    PayloadSignatureError,
    UnsupportedPayloadError,
    decode,
    encode,
    read_header,
)
from cloudtasks_deferred.payload.retry import STARTED_KEY
from cloudtasks_deferred.settings import Platform, Settings
from cloudtasks_deferred.storage.dead_letters import (
    Cause,
    DeadLetter,
    DeadLetterStore,
    Status,
    replay_started,
)

if TYPE_CHECKING:
    from google.cloud import tasks_v2

    from cloudtasks_deferred.enqueue.options import TaskOptions

__all__ = ["REPLAYABLE", "Cause", "DeadLetter", "DeadLetters", "ReplayResult", "Status"]

_logger = logging.getLogger(__name__)

#: The statuses ``replay --all`` picks: new records, and replays to resume.
REPLAYABLE: Final = frozenset({Status.NEW, Status.REPLAYING})
#: Request headers a replay does not send again: Cloud Tasks or the network set them.
_NOT_RESENT: Final = frozenset({
    "accept-encoding", "connection", "content-length", "expect", "forwarded", "host",
    "keep-alive", "te", "traceparent", "tracestate", "transfer-encoding", "upgrade",
    "user-agent", "via", "x-cloud-trace-context",
})  # fmt: skip
_NOT_RESENT_PREFIXES: Final = ("x-forwarded-", "x-google", "x-appengine-", "x-cloudtasks-")


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """What became of one record in :meth:`DeadLetters.replay_all`.

    Attributes:
        letter_id: The record.
        letter: The record after its replay; ``None`` if it failed.
        error: Why the replay failed; ``None`` if it succeeded.
    """

    letter_id: str
    letter: DeadLetter | None = None
    error: Exception | None = None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A replay, prepared: its task's options (but its name) and body, or stored frame."""

    letter: DeadLetter
    options: TaskOptions
    settings: Settings
    parent: str
    destination: str
    body: bytes
    stored: bool = False


class DeadLetters:
    """The dead letters of a client: list, get, replay, purge.

    Args:
        client: Whose store, and whose configuration replays use (queue path,
            transport, signing keys, service account); the current client when
            ``None`` (:func:`~cloudtasks_deferred.client.current_client`).

    Raises:
        ConfigurationError: The client's dead letters are only logged (nothing to
            read): the message says to set ``CLOUDTASKS_DEFERRED_DEAD_LETTERS=datastore``.
    """

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or current_client()
        store = self.client.dead_letters
        if not isinstance(store, DeadLetterStore):
            raise ConfigurationError(
                f"this client's dead letters go to {type(store).__name__}, which keeps no "
                "records to list or replay: set CLOUDTASKS_DEFERRED_DEAD_LETTERS=datastore "
                "(with the ndb extra installed) where the service runs, and here"
            )
        #: The store the records are read from.
        self.store: DeadLetterStore = store

    def list(
        self,
        *,
        queue: str | None = None,
        since: datetime | None = None,
        statuses: Collection[Status] | None = None,
        limit: int | None = 100,
    ) -> builtins.list[DeadLetter]:
        """Records, most recently failed first.

        Args:
            queue: Only this queue's (its short ID).
            since: Only those recorded at or after this time (naive means UTC).
            statuses: Only these; all when ``None``.
            limit: At most this many; all when ``None``.
        """
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return [*self.store.find(queue=queue, since=since, statuses=statuses, limit=limit)]

    def get(self, letter_id: str) -> DeadLetter:
        """The record with this ID.

        Raises:
            DeadLetterError: There is none.
        """
        letter = self.store.get(letter_id)
        if letter is None:
            raise DeadLetterError(f"no dead letter {letter_id}")
        return letter

    def stored_payload(self, letter: DeadLetter) -> bytes | None:
        """The payload a record of a stored payload kept in its ``_DeferredTaskEntity``.

        Returns:
            The bytes, or ``None`` when the record has none or it was deleted.
        """
        if letter.stored_payload is None:
            return None
        # google-cloud-ndb (the ndb extra) loads only for a stored payload.
        from cloudtasks_deferred.storage import entities

        with self.client.ndb_context(required_for="reading a stored payload"):
            key = entities.parse_key(letter.stored_payload, entities.DeferredTaskEntity)
            loaded = entities.load_payload(key)
        return loaded[0] if loaded is not None else None

    def replay(self, letter_id: str) -> DeadLetter:
        """Enqueues a record's task again (see the module docstring); runs nothing here.

        What can be checked beforehand — the record's status, the configuration, the
        payload's signature — is checked before the record changes.

        Args:
            letter_id: The record.

        Returns:
            The record, ``replayed``, naming the new task.

        Raises:
            DeadLetterError: No such record, it cannot be replayed (resolved, replayed
                already, no payload, its stored payload gone), or its payload cannot be
                framed again with this configuration (a signature that does not verify).
            ConfigurationError: The configuration cannot build the task (project,
                location, base URL or service account missing).
            google.api_core.exceptions.GoogleAPICallError: Cloud Tasks refused the
                task; the record stays ``replaying``, to be replayed again.
        """
        plan = self._plan(replay_started(self.store.get(letter_id), letter_id))
        letter = self.store.begin_replay(letter_id)
        number = letter.replays
        task = self._create(plan, f"{letter.id}-replay-{number}")
        done = self.store.finish_replay(letter.id, number, task.name)
        if letter.stored_payload is not None:
            self._discard_stored(letter.stored_payload)
        _logger.info("replayed dead letter %s as task %s", letter.id, task.name)
        return done

    def replay_all(self, *, queue: str | None = None) -> builtins.list[ReplayResult]:
        """Replays every ``new`` record (and resumes every ``replaying`` one).

        Args:
            queue: Only this queue's.

        Returns:
            One result per record, most recent failure first; a failure does not stop
            the others.
        """
        results = []
        for letter in self.store.find(queue=queue, statuses=REPLAYABLE):
            try:
                results.append(ReplayResult(letter.id, letter=self.replay(letter.id)))
            except Exception as exc:
                results.append(ReplayResult(letter.id, error=exc))
        return results

    def purge(self, *, older_than: timedelta) -> int:
        """Deletes the records last recorded more than ``older_than`` ago, whatever
        their status, and the stored payloads they kept.

        Returns:
            How many records were deleted.
        """
        return self.store.purge(datetime.now(UTC) - older_than)

    def _plan(self, letter: DeadLetter) -> _Plan:
        """Where the replay goes and what it carries, checked before anything changes."""
        # google.cloud.tasks_v2 loads only to replay: listing and showing never need it.
        from cloudtasks_deferred.enqueue.options import DEFAULT_URL, TaskOptions
        from cloudtasks_deferred.enqueue.tasks import destination_for

        assert letter.payload is not None  # noqa: S101 - replay_started refuses None
        settings = self.client.settings
        headers = {
            name: value
            for name, value in letter.headers
            if name.lower() not in _NOT_RESENT and not name.lower().startswith(_NOT_RESENT_PREFIXES)
        }
        url = letter.url or DEFAULT_URL
        options = TaskOptions(url=url, headers=headers, queue=letter.queue_name)
        if letter.app_engine_service is not None and not options.is_absolute_url:
            # An App Engine task, replayed from anywhere: to its service, whichever
            # version serves it now (the fixed one), not the version that failed.
            options = dataclasses.replace(options, target=letter.app_engine_service)
            settings = dataclasses.replace(
                settings, platform=Platform.APP_ENGINE, base_url=None, dev_mode=False
            )
        parent = self.client.queue_path(letter.queue_name)
        destination = destination_for(options, settings, parent)
        body = self._reframe(letter.payload, destination)
        if letter.stored_payload is None:
            return _Plan(letter, options, settings, parent, destination, body)
        stored = self.stored_payload(letter)
        if stored is None:
            raise DeadLetterError(
                f"dead letter {letter.id}: its stored payload {letter.stored_payload} is gone "
                "(deleted, or purged): there is nothing to replay"
            )
        stored = self._reframe(stored, destination)
        return _Plan(letter, options, settings, parent, destination, stored, stored=True)

    def _create(self, plan: _Plan, short_name: str) -> tasks_v2.Task:
        """Builds and creates the replay's task; an existing one counts as created."""
        # google.cloud.tasks_v2 is loaded already (by _plan): only replays load it.
        from cloudtasks_deferred.enqueue.tasks import build_task, create_task

        body = self._store_again(plan, short_name) if plan.stored else plan.body
        options = dataclasses.replace(plan.options, name=short_name)
        dev_token = self.client.mint_dev_token if plan.settings.dev_mode else None
        task = build_task(body, options, plan.settings, parent=plan.parent, dev_token=dev_token)
        try:
            return create_task(self.client.transport, plan.parent, task)
        except TaskAlreadyExistsError:  # an interrupted replay created it: done
            _logger.info("task %s exists already: an earlier replay created it", task.name)
            return task

    def _store_again(self, plan: _Plan, short_name: str) -> bytes:
        """Stores the stored payload's new frame; returns its pointer task's body."""
        # google-cloud-ndb (the ndb extra) is loaded already: _plan read the payload.
        from cloudtasks_deferred.storage import entities

        with self.client.ndb_context(required_for="replaying a stored payload"):
            # Named after the replay, so that an interrupted replay rewrites one copy.
            [head, *_] = entities.store_payload(plan.body, name=short_name)
        pointer = library_call(RUN_FROM_DATASTORE, head.urlsafe().decode("ascii"))
        assert plan.letter.payload is not None  # noqa: S101 - checked by _plan
        return self._reframe(plan.letter.payload, plan.destination, pickled=pointer)

    def _reframe(self, body: bytes, destination: str, *, pickled: bytes | None = None) -> bytes:
        """``body`` framed again now: a fresh retry clock, signed afresh (module docstring).

        A bare pickle (the legacy library's) travels as it is, and so does a frame this
        code cannot read (for a handler fixed to read it).

        Args:
            body: The recorded frame.
            destination: Where the replay goes, for a signed frame bound nowhere yet.
            pickled: A pickle to frame instead of the recorded one (a new pointer).

        Raises:
            DeadLetterError: The frame cannot be verified with this configuration's
                keys, or would have to be signed without having been.
        """
        settings = self.client.settings
        keys = settings.verification_keys
        try:
            header = read_header(body)
            if header is None:
                return body
            if header.key_id is None and keys is not None:
                raise DeadLetterError(
                    "the payload is not signed, and this configuration requires signatures "
                    "(CLOUDTASKS_DEFERRED_SIGNING_KEYS): the handler would refuse it, and a "
                    "replay never signs a payload that was not"
                )
            if header.key_id is not None and keys is None:
                raise DeadLetterError(
                    "the payload is signed: replay it with the service's signing keys "
                    "(CLOUDTASKS_DEFERRED_SIGNING_KEYS)"
                )
            decoded = decode(body, keys=keys, require_signature=keys is not None)
        except PayloadSignatureError as exc:
            raise DeadLetterError(
                f"{exc} with this configuration's signing keys "
                "(CLOUDTASKS_DEFERRED_SIGNING_KEYS): a payload that does not verify is "
                "never signed again"
            ) from None
        except InvalidPayloadError:
            return body
        except UnsupportedPayloadError as exc:
            raise DeadLetterError(f"{exc}: replay it with that release") from None
        now = time.time()
        metadata: dict[str, Any] = dict(decoded.metadata)
        if STARTED_KEY in metadata:
            metadata[STARTED_KEY] = now  # its own retry limits count from the replay
        # A transactional task's run entry is gone once it was given up: its guard would
        # take the replay for a duplicate. The dead letter's claim guards the replay.
        metadata.pop(RUN_ENTRY, None)
        if settings.signing_key is not None:
            bound = metadata.get(binding.DESTINATION)
            metadata = binding.bind(metadata, bound if isinstance(bound, str) else destination, now)
        return encode(
            decoded.pickled if pickled is None else pickled,
            metadata,
            compress=decoded.compressed,
            signing_key=settings.signing_key,
        )

    def _discard_stored(self, urlsafe: str) -> None:
        """Deletes the record's stored payload once the replay's copy is queued."""
        # google-cloud-ndb (the ndb extra) is loaded already: the replay read the payload.
        from cloudtasks_deferred.storage import entities

        try:
            with self.client.ndb_context(required_for="deleting a replayed stored payload"):
                entities.delete_payload(entities.parse_key(urlsafe, entities.DeferredTaskEntity))
        except Exception:
            _logger.warning(
                "could not delete the stored payload %s of a replayed dead letter; "
                "purging the record deletes it",
                urlsafe,
                exc_info=True,
            )
