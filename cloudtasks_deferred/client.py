"""The :class:`Client`: one configuration's sending and receiving halves, and the current client.

A client pairs an :class:`~cloudtasks_deferred.enqueue.sender.Sender` (what ``defer``
needs) with a :class:`~cloudtasks_deferred.receive.receiver.Receiver` (what the handler
needs), over one :class:`~cloudtasks_deferred.settings.Settings` and one Datastore
access. Neither half imports the other; this facade pairs them, and hands the
receiving half the library's own callables by name.

The legacy API is module functions (``deferred.defer(...)``); they act on the
*current* client:

* inside ``with client.bind():`` — and so inside every request that
  :func:`~cloudtasks_deferred.wrap_wsgi_app` or a :class:`~cloudtasks_deferred.Handler`
  built with explicit settings serves, and inside
  :func:`~cloudtasks_deferred.testing.in_memory_queue` — that client;
* otherwise, inside ``with as_process_default(client):`` (which
  :func:`~cloudtasks_deferred.testing.in_memory_queue` opens too), in any thread,
  that client;
* otherwise the process's default client, created on first use from
  :meth:`Settings.from_env <cloudtasks_deferred.settings.Settings.from_env>` and
  rebuilt when the variables it read change (see :func:`default_client`).

Binding uses a :class:`contextvars.ContextVar`, so concurrent requests on other
threads are unaffected. Nothing here touches the network or imports
``google.cloud.tasks_v2`` until the first task is deferred.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from cloudtasks_deferred.dev_key import DevKey
from cloudtasks_deferred.enqueue.bulk import DEFAULT_MAX_WORKERS, Call, enqueue_many
from cloudtasks_deferred.enqueue.sender import Sender
from cloudtasks_deferred.payload.allowlist import RUN_FROM_DATASTORE
from cloudtasks_deferred.payload.calls import OpenedPayload
from cloudtasks_deferred.receive.auth import Authenticator
from cloudtasks_deferred.receive.deadletters import DeadLetterSink
from cloudtasks_deferred.receive.receiver import Receiver
from cloudtasks_deferred.receive.stored import run_stored
from cloudtasks_deferred.settings import Settings, environment_key
from cloudtasks_deferred.storage.datastore import Datastore

if TYPE_CHECKING:
    from google.cloud import tasks_v2

    from cloudtasks_deferred.enqueue.transports import Transport

__all__ = [
    "Client",
    "as_process_default",
    "clear_default_client",
    "current_client",
    "default_client",
    "run_from_datastore",
]

_bound: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "cloudtasks_deferred_client", default=None
)


class Client:
    """Enqueues deferred calls and holds what the handler needs to run them.

    Args:
        settings: The configuration; :meth:`Settings.from_env` when ``None``.
        transport: Where tasks go; the Cloud Tasks API (or the emulator named in the
            settings) when ``None``.
        authenticator: Who may run tasks; built from the settings when ``None``.
        dead_letters: Receives tasks given up on; when ``None``, the store
            ``CLOUDTASKS_DEFERRED_DEAD_LETTERS`` names (Datastore when NDB is
            available, else the log).

    With ``settings.structured_logs`` (on App Engine and Cloud Run by default), building
    a client makes the library's log records JSON lines for Cloud Logging, once per
    process (:mod:`cloudtasks_deferred.logs`).

    Raises:
        ConfigurationError: ``settings`` is ``None`` and the environment is invalid.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        authenticator: Authenticator | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        datastore = Datastore(self.settings)
        #: The sending half: what ``defer`` uses.
        self.sender = Sender(self.settings, transport=transport, datastore=datastore)
        #: The receiving half: what the handler uses.
        self.receiver = Receiver(
            self.settings,
            authenticator=authenticator,
            dead_letters=dead_letters,
            datastore=datastore,
            library={RUN_FROM_DATASTORE: run_from_datastore},
        )
        if self.settings.structured_logs:
            # python-json-logger loads only when logs are JSON (local cold starts).
            from cloudtasks_deferred.logs import structure_library_logs

            structure_library_logs(self.settings)

    @property
    def transport(self) -> Transport:
        """The transport tasks are created with."""
        return self.sender.transport

    @property
    def authenticator(self) -> Authenticator:
        """The rules the handler applies to task requests."""
        return self.receiver.authenticator

    @property
    def dead_letters(self) -> DeadLetterSink:
        """Where the handler records tasks it gives up on."""
        return self.receiver.dead_letters

    @property
    def dev_key(self) -> DevKey:
        """The local key dev-mode tasks are signed with (shared per key file)."""
        return self.sender.dev_key

    def defer(self, obj: Callable[..., Any], *args: Any, **kwargs: Any) -> tasks_v2.Task:
        """Enqueues ``obj(*args, **kwargs)``; see :func:`cloudtasks_deferred.defer`."""
        # google.cloud.tasks_v2 loads on the first defer, not at import (cold starts).
        from cloudtasks_deferred.enqueue.defer import enqueue

        return enqueue(self, obj, args, kwargs)

    def defer_many(
        self, calls: Iterable[Call], *, max_workers: int = DEFAULT_MAX_WORKERS, **options: Any
    ) -> list[tasks_v2.Task | Exception]:
        """Enqueues many calls at once; see :func:`cloudtasks_deferred.defer_many`."""
        return enqueue_many(self, calls, max_workers=max_workers, options=options)

    def open_payload(self, body: bytes) -> OpenedPayload:
        """Decodes a task body (:meth:`.Receiver.open_payload`)."""
        return self.receiver.open_payload(body)

    def frame_payload(
        self, pickled: bytes, metadata: dict[str, Any], *, compress: bool = False
    ) -> bytes:
        """Frames a pickled call (:meth:`.Sender.frame_payload`)."""
        return self.sender.frame_payload(pickled, metadata, compress=compress)

    def queue_path(self, queue: str | None = None) -> str:
        """``projects/P/locations/L/queues/Q`` for ``queue`` (:meth:`.Sender.queue_path`)."""
        return self.sender.queue_path(queue)

    def mint_dev_token(self, audience: str, valid_from: datetime) -> str:
        """Signs a dev-mode ID token for a task (see :mod:`cloudtasks_deferred.dev_key`)."""
        return self.sender.mint_dev_token(audience, valid_from)

    def ndb_context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context (:meth:`.Datastore.context`)."""
        return self.receiver.ndb_context(required_for=required_for)

    @contextlib.contextmanager
    def bind(self) -> Iterator[Client]:
        """Makes this the client module-level functions use, for the block's context."""
        token = _bound.set(self)
        try:
            yield self
        finally:
            _bound.reset(token)


def current_client() -> Client:
    """Returns the client module-level functions use now (see the module docstring).

    Raises:
        ConfigurationError: The default client's environment is invalid.
    """
    return _bound.get() or _PROCESS_DEFAULTS.top() or default_client()


@contextlib.contextmanager
def as_process_default(client: Client) -> Iterator[Client]:
    """Makes ``client`` stand in for the default client in every thread, for the block.

    Unlike :meth:`Client.bind`, which holds for the block's context only, this
    reaches threads the code under test starts (a ``ThreadPoolExecutor`` does not
    copy context variables): :func:`~cloudtasks_deferred.testing.in_memory_queue`
    uses it. A client bound with :meth:`Client.bind` still wins where it is bound.
    Blocks may nest and overlap across threads: the one entered last (and not yet
    left) stands in; leaving a block removes only its own client.

    Args:
        client: The client to use instead of the default client.

    Yields:
        ``client``.
    """
    _PROCESS_DEFAULTS.push(client)
    try:
        yield client
    finally:
        _PROCESS_DEFAULTS.remove(client)


class _ProcessDefaults:
    """The clients of the :func:`as_process_default` blocks now open, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: tuple[Client, ...] = ()

    def top(self) -> Client | None:
        clients = self._clients  # one read: a tuple replaced whole, never changed
        return clients[-1] if clients else None

    def push(self, client: Client) -> None:
        with self._lock:
            self._clients = (*self._clients, client)

    def remove(self, client: Client) -> None:
        with self._lock:
            clients = list(self._clients)
            # The last occurrence: the same client may be pushed by nested blocks.
            index = max(i for i, each in enumerate(clients) if each is client)
            del clients[index]
            self._clients = tuple(clients)


_PROCESS_DEFAULTS: Final = _ProcessDefaults()


def default_client() -> Client:
    """Returns the process's default client, built from the environment.

    Rebuilt when a variable :meth:`Settings.from_env` reads has changed since it was
    built (a test's ``monkeypatch.setenv``, a second app configuring the process),
    which is checked on each call by comparing the variables' values
    (:func:`~cloudtasks_deferred.settings.environment_key`, about a microsecond):
    nothing is parsed again while they stay the same. Built once even when threads
    ask at once (a threaded server's first requests), so the process has one
    authenticator and one cache of verified tokens.
    :func:`cloudtasks_deferred.testing.reset_default_client` (or
    ``default_client.cache_clear()``) forgets it.

    Raises:
        ConfigurationError: The environment is invalid (nothing is remembered then).
    """
    return _DEFAULT_CLIENT.get()


class _DefaultClient:
    """The default client and the environment key it was built from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: tuple[tuple[object, ...], Client] | None = None

    def get(self) -> Client:
        key = environment_key()
        built = self._built
        if built is not None and built[0] == key:
            return built[1]
        with self._lock:
            built = self._built
            if built is None or built[0] != key:
                # Keyed before reading: a change in between only costs one more build.
                built = (key, Client(Settings.from_env()))
                self._built = built
            return built[1]

    def clear(self) -> None:
        with self._lock:
            self._built = None


_DEFAULT_CLIENT: Final = _DefaultClient()


def clear_default_client() -> None:
    """Forgets the default client (:func:`cloudtasks_deferred.testing.reset_default_client`)."""
    _DEFAULT_CLIENT.clear()


default_client.cache_clear = clear_default_client  # type: ignore[attr-defined]


def run_from_datastore(key: Any) -> Any:
    """Runs a task stored in a ``_DeferredTaskEntity`` (a payload too large for a task).

    ``defer`` stores such payloads in Datastore and enqueues a call to this function
    with the entity's key, as the legacy library did. The entity is deleted after
    the call succeeds or fails permanently, and kept when the failure will be retried.

    Args:
        key: The entity's ``ndb.Key``, or the URL-safe key string the legacy library
            (``str(db.Key)``) or this one wrote.

    Returns:
        What the stored call returned.

    Raises:
        PermanentTaskFailure: The entity does not exist (logged with its key) or holds
            no payload, or the call raised it.
        ConfigurationError: No NDB context can be opened; the message says what to
            configure (the ``ndb`` extra, Datastore access).
        Exception: Whatever else the call raised (the entity is kept for the retry).
    """
    return run_stored(current_client(), key)
