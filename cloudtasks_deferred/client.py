"""The :class:`Client`: settings plus what is built from them, and ``defer`` itself.

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
import functools
import importlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from . import binding
from ._checked_unpickler import DecodeBudget
from ._memo import once_per_process
from .auth import Authenticator, authenticator_for
from .auth.dev import DEV_INVOKER, DevKey, dev_key
from .deadletters import DeadLetterSink, LoggingDeadLetters
from .errors import ConfigurationError
from .frame import decode, encode
from .payload import OpenedPayload, load_call, unpickle
from .settings import Platform, Settings, environment_key, queue_path
from .unpickling import Allowlist

if TYPE_CHECKING:
    from google.cloud import tasks_v2

    from .transports import Transport

__all__ = [
    "Client",
    "as_process_default",
    "clear_default_client",
    "current_client",
    "default_client",
]

_logger = logging.getLogger(__name__)
_bound: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "cloudtasks_deferred_client", default=None
)
_METADATA_REGION_URL = "http://metadata.google.internal/computeMetadata/v1/instance/region"


class Client:
    """Enqueues deferred calls and holds what the handler needs to run them.

    Collaborators are built on first use, once, thread-safely.

    Args:
        settings: The configuration; :meth:`Settings.from_env` when ``None``.
        transport: Where tasks go; the Cloud Tasks API (or the emulator named in the
            settings) when ``None``.
        authenticator: Who may run tasks; built from the settings when ``None``.
        dead_letters: Receives tasks given up on; logged when ``None``.

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
        self.dead_letters: DeadLetterSink = dead_letters or LoggingDeadLetters()
        self._transport = transport
        self._authenticator = authenticator
        self._lock = threading.Lock()
        self._project_location: tuple[str, str] | None = None
        self._ndb_unavailable = False

    @property
    def transport(self) -> Transport:
        """The transport tasks are created with."""
        if self._transport is None:
            from .transports.cloud_tasks import CloudTasksTransport

            with self._lock:
                if self._transport is None:
                    self._transport = CloudTasksTransport(
                        self.settings.emulator_host, timeout=self.settings.enqueue_timeout
                    )
        return self._transport

    @property
    def authenticator(self) -> Authenticator:
        """The rules the handler applies to task requests."""
        if self._authenticator is None:
            authenticator = authenticator_for(self.settings)
            with self._lock:
                if self._authenticator is None:
                    self._authenticator = authenticator
        return self._authenticator

    @property
    def dev_key(self) -> DevKey:
        """The local key dev-mode tasks are signed with (shared per key file)."""
        return dev_key(self.settings.dev_key_file)

    def defer(self, obj: Callable[..., Any], *args: Any, **kwargs: Any) -> tasks_v2.Task:
        """Enqueues ``obj(*args, **kwargs)``; see :func:`cloudtasks_deferred.defer`."""
        task: tasks_v2.Task = _enqueue_module().enqueue(self, obj, args, kwargs)
        return task

    def open_payload(self, body: bytes) -> OpenedPayload:
        """Decodes and unpickles a task body under this client's rules.

        Every task body the library runs goes through here, so that what a body must
        satisfy before it is unpickled is decided in one place:

        * with ``settings.signing_keys``, the frame must be signed by one of them
          (checked in constant time before anything else is parsed), for this
          service and recently enough (:mod:`cloudtasks_deferred.binding`);
        * with ``settings.allowed_modules``, the pickle may reference and run only
          allowed code, refused before its module is imported, and unpickling it
          may cost only a budget proportional to the body's size
          (:mod:`cloudtasks_deferred.unpickling`).

        Args:
            body: The request body (a frame, or a bare legacy pickle).

        Raises:
            PayloadRefusedError: The body is unsigned or badly signed, or references
                code outside the allowlist (the handler answers 403, retried).
            InvalidPayloadError: The body is not a valid payload (a permanent failure).
            UnsupportedPayloadError: The frame needs a newer version of the library.
            ImportError, AttributeError: The pickle names code this deployment lacks.
        """
        settings = self.settings
        keys = settings.verification_keys
        decoded = decode(body, keys=keys, require_signature=keys is not None)
        if decoded.key_id is not None:
            binding.check(
                decoded.metadata,
                destinations=settings.payload_destinations,
                max_age=settings.payload_max_age,
                now=time.time(),
                require=settings.require_bound_payloads,
            )
        if self._allowlist is None:
            loads = unpickle
        else:
            loads = functools.partial(
                self._allowlist.loads, budget=DecodeBudget.for_body(len(body))
            )
        func, args, kwargs = load_call(decoded.pickled, loads=loads)
        return OpenedPayload(decoded.metadata, func, args, kwargs)

    def frame_payload(
        self, pickled: bytes, metadata: dict[str, Any], *, compress: bool = False
    ) -> bytes:
        """Frames a pickled call under this client's rules: the mirror of :meth:`open_payload`.

        Every task body and stored payload the library writes is framed here, signed
        with the first configured signing key if there is one. With
        ``settings.cross_compatible_payloads`` the body is the bare pickle, which a
        Python 2 handler reads (the caller passes no metadata then).

        Args:
            pickled: The pickled ``(callable, args, kwargs)``.
            metadata: What the handler enforces (JSON-serializable).
            compress: zlib-compress the pickle.

        Returns:
            The frame.
        """
        if self.settings.cross_compatible_payloads:
            return pickled
        return encode(pickled, metadata, compress=compress, signing_key=self.settings.signing_key)

    @functools.cached_property
    def _allowlist(self) -> Allowlist | None:
        if not self.settings.allowed_modules:
            return None
        return Allowlist(self.settings.allowed_modules)

    def queue_path(self, queue: str | None = None) -> str:
        """Returns ``projects/P/locations/L/queues/Q`` for ``queue`` (default: the settings').

        Raises:
            ConfigurationError: The project or location cannot be determined.
        """
        if self._project_location is None:
            resolved = (self._project(), self._location())
            with self._lock:
                self._project_location = resolved
        project, location = self._project_location
        return queue_path(project, location, queue or self.settings.queue)

    @contextlib.contextmanager
    def bind(self) -> Iterator[Client]:
        """Makes this the client module-level functions use, for the block's context."""
        token = _bound.set(self)
        try:
            yield self
        finally:
            _bound.reset(token)

    def ndb_context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context for running legacy code, when NDB is enabled and none is active.

        With ``settings.ndb`` unset (auto), a missing or unconfigured google-cloud-ndb
        gives no context (and a warning once); with ``settings.ndb=True`` it is an error.

        Args:
            required_for: What needs Datastore (e.g. ``"an oversized payload"``): a
                context is then opened whatever ``settings.ndb`` says, and failing to
                is an error that starts with this.

        Raises:
            ConfigurationError: ``settings.ndb`` is true, or ``required_for`` is given,
                and no NDB client can be made; the message says what to configure.
        """
        mode = True if required_for else self.settings.ndb
        if mode is False or (mode is None and (self._ndb_unavailable or not _ndb_installed())):
            return contextlib.nullcontext()
        try:
            ndb = importlib.import_module("google.cloud.ndb")
            if ndb.get_context(raise_context_error=False) is not None:
                return contextlib.nullcontext()
            context: contextlib.AbstractContextManager[object]
            context = shared_ndb_client(self.settings.project).context()
            return context
        except Exception as exc:
            fix = (
                "install the ndb extra (pip install 'cloudtasks-deferred[ndb]')"
                if isinstance(exc, ModuleNotFoundError)
                else "configure Datastore access (GOOGLE_CLOUD_PROJECT and credentials, or "
                "DATASTORE_EMULATOR_HOST locally)"
            )
            message = (
                f"{required_for} needs Datastore, but " if required_for else ""
            ) + f"cannot open an NDB context ({exc}): {fix}"
            if mode:
                raise ConfigurationError(message) from exc
            # Auto mode: say it once, then stop trying (each attempt probes credentials).
            self._ndb_unavailable = True
            _logger.warning(
                "%s; running without one (CLOUDTASKS_DEFERRED_NDB=false silences this)", message
            )
            return contextlib.nullcontext()

    def mint_dev_token(self, audience: str, valid_from: datetime) -> str:
        """Signs a dev-mode ID token for a task (see :mod:`cloudtasks_deferred.auth.dev`)."""
        email = self.settings.service_account or DEV_INVOKER
        return self.dev_key.mint(email=email, audience=audience, valid_from=valid_from)

    def _project(self) -> str:
        if self.settings.project:
            return self.settings.project
        import google.auth
        from google.auth import exceptions

        try:
            _, project = google.auth.default()
        except exceptions.DefaultCredentialsError as exc:
            raise ConfigurationError(
                f"GOOGLE_CLOUD_PROJECT is not set and application default credentials are "
                f"unavailable ({exc}): set GOOGLE_CLOUD_PROJECT"
            ) from exc
        if not project:
            raise ConfigurationError("cannot determine the project: set GOOGLE_CLOUD_PROJECT")
        return str(project)

    def _location(self) -> str:
        if self.settings.location:
            return self.settings.location
        if self.settings.platform is Platform.APP_ENGINE:
            region = _metadata_region()
            if region:
                return region
        raise ConfigurationError(
            "CLOUDTASKS_DEFERRED_LOCATION is not set: set it to your queues' location, "
            "e.g. us-central1 (gcloud tasks queues list shows it)"
        )


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


@functools.cache
def _enqueue_module() -> ModuleType:
    # enqueue imports google.cloud.tasks_v2: loaded on the first defer, not at import.
    return importlib.import_module("cloudtasks_deferred.enqueue")


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


@once_per_process
def shared_ndb_client(project: str | None) -> Any:
    """Returns the process's ``google.cloud.ndb.Client`` for ``project``."""
    return importlib.import_module("google.cloud.ndb").Client(project=project)


@functools.cache
def _ndb_installed() -> bool:
    return importlib.util.find_spec("google.cloud.ndb") is not None


def _metadata_region() -> str | None:
    import requests

    try:
        response = requests.get(
            _METADATA_REGION_URL, headers={"Metadata-Flavor": "Google"}, timeout=2
        )
        response.raise_for_status()
    except requests.RequestException:
        _logger.warning("cannot read the region from the metadata server", exc_info=True)
        return None
    # "projects/123456789/regions/us-central1"
    return response.text.rsplit("/", 1)[-1] or None
