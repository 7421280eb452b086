"""Configuration: one frozen :class:`Settings` object, read from the environment in one place.

Why this module is long: every variable's name, parsing, validation and meaning stay
in one file, so that the environment is read in one place and each rule has one home.

:meth:`Settings.from_env` is the only code in the library that reads environment
variables, apart from :func:`environment_key` (which tells the default client whether
they changed) and one guard: dev mode refuses to switch on when the process
environment says App Engine or Cloud Run, however the settings were built (and
hand-built ``LOCAL`` settings on App Engine log a warning). Apps
and tests may build a :class:`Settings` directly instead, but direct construction
reads nothing from the environment (``platform`` defaults to ``LOCAL``): on App
Engine or Cloud Run, start from ``from_env()`` and change what you need with
:func:`dataclasses.replace`. Both paths validate every value and name the variable
and the field in their errors.

========================================  ==================================================
variable                                  meaning (default)
========================================  ==================================================
``GOOGLE_CLOUD_PROJECT``                  project ID (App Engine sets it; elsewhere the
                                          metadata server / application default credentials)
``CLOUDTASKS_DEFERRED_LOCATION``          Cloud Tasks location, e.g. ``us-central1``
                                          (required outside App Engine)
``CLOUDTASKS_DEFERRED_QUEUE``             default queue (``default``)
``CLOUDTASKS_DEFERRED_BASE_URL``          base URL of the service that runs HTTP tasks
                                          (your Cloud Run URL); unset on App Engine means
                                          App Engine targets
``CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT``   email Cloud Tasks signs OIDC tokens as
``CLOUDTASKS_DEFERRED_AUDIENCE``          comma-separated audiences the handler accepts
                                          (the base URL's origin)
``CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS``  comma-separated emails the handler accepts
                                          (the service account)
``CLOUDTASKS_DEFERRED_OIDC_CERTS_URL``    where token-signing certs are fetched (Google's)
``CLOUD_TASKS_EMULATOR_HOST``             ``host:port`` of a Cloud Tasks emulator
``CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT``   seconds ``defer`` may spend creating a task,
                                          retries included, before it raises
                                          ``DeadlineExceeded`` (30)
``CLOUDTASKS_DEFERRED_DEV_MODE``          ``true`` to sign tasks with a local key (off;
                                          refused on App Engine and Cloud Run)
``CLOUDTASKS_DEFERRED_DEV_KEY_FILE``      the local key's PEM file
                                          (``~/.cache/cloudtasks-deferred/dev-key.pem``)
``CLOUDTASKS_DEFERRED_NDB``               ``true``/``false``/``auto``: run tasks and wrapped
                                          requests in an NDB context (``auto``: when
                                          google-cloud-ndb is installed)
``CLOUDTASKS_DEFERRED_STRUCTURED_LOGS``   ``true``/``false``/``auto``: the library's log
                                          records as JSON lines for Cloud Logging, with
                                          the request's trace and the task's labels
                                          (``auto``: on App Engine and Cloud Run; see
                                          :mod:`cloudtasks_deferred.logs`)
``CLOUDTASKS_DEFERRED_SIGNING_KEYS``      comma-separated ``key_id:base64url-secret``: sign
                                          payloads with the first, require one of them
                                          (none; see :mod:`cloudtasks_deferred.payload.signing`)
``CLOUDTASKS_DEFERRED_ALLOWED_MODULES``   comma-separated module prefixes or exact names
                                          payloads may reference (anything; see
                                          :mod:`cloudtasks_deferred.payload.allowlist`)
``CLOUDTASKS_DEFERRED_PAYLOAD_MAX_AGE``   seconds after which a signed payload is refused
                                          (32 days; see :mod:`cloudtasks_deferred.payload.binding`)
``CLOUDTASKS_DEFERRED_REQUIRE_BOUND_``    ``true`` to refuse signed payloads without a
``PAYLOADS``                              destination, as release 0.1 wrote them (false)
``CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_`` ``true``: ``defer`` writes payloads a Python 2
``PAYLOADS``                              version of the app can run, during a split-
                                          traffic migration (false; App Engine targets
                                          only, unsigned)
``CLOUDTASKS_DEFERRED_DEAD_LETTERS``      where the handler records the tasks it gives up
                                          on: ``datastore`` (replayable), ``log``, or
                                          ``auto``: Datastore when NDB is enabled and
                                          installed, else the log (``auto``)
========================================  ==================================================

The platform is detected from the variables the platforms set: ``GAE_ENV=standard``
(App Engine standard; also ``GAE_SERVICE``, ``GAE_VERSION``, ``GAE_APPLICATION``),
``K_SERVICE`` or ``CLOUD_RUN_JOB`` (Cloud Run); anything else is local.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar
from urllib.parse import urlsplit

from cloudtasks_deferred import limits
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.payload import binding
from cloudtasks_deferred.payload.allowlist import ALLOWED_MODULES_VARIABLE, check_entries
from cloudtasks_deferred.payload.frame import SigningKey
from cloudtasks_deferred.payload.signing import parse_signing_keys

__all__ = [
    "DEFAULT_ENQUEUE_TIMEOUT",
    "ENVIRONMENT_VARIABLES",
    "GOOGLE_OIDC_CERTS_URL",
    "DeadLetterStorage",
    "Platform",
    "Settings",
    "environment_key",
    "origin",
    "queue_path",
]

#: Google's certificates for the ID tokens Cloud Tasks attaches to HTTP tasks.
GOOGLE_OIDC_CERTS_URL: Final = "https://www.googleapis.com/oauth2/v1/certs"
#: Seconds ``defer`` may spend creating a task (every attempt and the waits between
#: them) before it gives up: the bound of :mod:`cloudtasks_deferred.transports.cloud_tasks`.
DEFAULT_ENQUEUE_TIMEOUT: Final = 30.0
#: The longest enqueue timeout accepted, in seconds (an hour: Cloud Run's longest request).
_MAX_ENQUEUE_TIMEOUT: Final = 3600.0

_logger = logging.getLogger(__name__)

_PREFIX = "CLOUDTASKS_DEFERRED_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOCATION = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
_PROJECT = re.compile(r"[a-z0-9.:-]+")
_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")
_LOOPBACK_NAMES = frozenset({"localhost"})

# Settings field -> the variable it is read from, so every error can name both.
_ENV_NAMES: Final = {
    "project": "GOOGLE_CLOUD_PROJECT",
    "location": f"{_PREFIX}LOCATION",
    "queue": f"{_PREFIX}QUEUE",
    "base_url": f"{_PREFIX}BASE_URL",
    "service_account": f"{_PREFIX}SERVICE_ACCOUNT",
    "audiences": f"{_PREFIX}AUDIENCE",
    "allowed_invokers": f"{_PREFIX}ALLOWED_INVOKERS",
    "oidc_certs_url": f"{_PREFIX}OIDC_CERTS_URL",
    "emulator_host": "CLOUD_TASKS_EMULATOR_HOST",
    "enqueue_timeout": f"{_PREFIX}ENQUEUE_TIMEOUT",
    "dev_mode": f"{_PREFIX}DEV_MODE",
    "dev_key_file": f"{_PREFIX}DEV_KEY_FILE",
    "ndb": f"{_PREFIX}NDB",
    "structured_logs": f"{_PREFIX}STRUCTURED_LOGS",
    "signing_keys": f"{_PREFIX}SIGNING_KEYS",
    "allowed_modules": ALLOWED_MODULES_VARIABLE,
    "payload_max_age": f"{_PREFIX}PAYLOAD_MAX_AGE",
    "require_bound_payloads": f"{_PREFIX}REQUIRE_BOUND_PAYLOADS",
    "cross_compatible_payloads": f"{_PREFIX}CROSS_COMPATIBLE_PAYLOADS",
    "dead_letters": f"{_PREFIX}DEAD_LETTERS",
}

#: Every variable :meth:`Settings.from_env` reads (the table above, the platforms'
#: own variables, and where the dev key file defaults to): while none of them
#: changes, ``from_env()`` builds equal settings.
ENVIRONMENT_VARIABLES: Final = (
    *_ENV_NAMES.values(),
    "GAE_ENV",
    "GAE_SERVICE",
    "GAE_VERSION",
    "GAE_APPLICATION",
    "K_SERVICE",
    "CLOUD_RUN_JOB",
    "XDG_CACHE_HOME",
    "HOME",
)
# The same names as os.environ stores them: os.environ.get() costs ~1 µs for each
# unset name (it raises and catches KeyError twice), its own dict ~50 ns.
_ENCODED_NAMES: Final = tuple(
    map(getattr(os.environ, "encodekey", lambda name: name), ENVIRONMENT_VARIABLES)
)


def environment_key(environ: Mapping[str, str] | None = None) -> tuple[object, ...]:
    """The values of :data:`ENVIRONMENT_VARIABLES` now, as an opaque key.

    Equal keys mean :meth:`Settings.from_env` would build equal settings, so a
    cache of settings (the default client's) can tell in about a microsecond
    whether the environment it was built from changed, without parsing it.

    Args:
        environ: The variables to read; ``os.environ`` when ``None``.

    Returns:
        One value per variable (``None`` when unset), as the mapping stores it
        (``os.environ`` keeps bytes on POSIX): compare keys from the same source.
    """
    if environ is None:
        data = getattr(os.environ, "_data", None)
        if isinstance(data, dict):  # CPython's and PyPy's os.environ keep one
            return tuple(map(data.get, _ENCODED_NAMES))
        environ = os.environ
    return tuple(map(environ.get, ENVIRONMENT_VARIABLES))


class Platform(enum.Enum):
    """Where the process runs, as told by the variables each platform sets."""

    APP_ENGINE = "app-engine"
    CLOUD_RUN = "cloud-run"
    LOCAL = "local"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> Platform:
        """Returns the platform ``environ`` describes.

        Args:
            environ: Environment variables, e.g. ``os.environ``.
        """
        if environ.get("GAE_ENV") == "standard":
            return cls.APP_ENGINE
        if environ.get("K_SERVICE") or environ.get("CLOUD_RUN_JOB"):
            return cls.CLOUD_RUN
        return cls.LOCAL


class DeadLetterStorage(enum.Enum):
    """Where the handler records the tasks it gives up on (``CLOUDTASKS_DEFERRED_DEAD_LETTERS``).

    See :mod:`cloudtasks_deferred.storage.dead_letters`.
    """

    #: Datastore when NDB is enabled (``CLOUDTASKS_DEFERRED_NDB`` true, or auto and
    #: google-cloud-ndb installed), else the log.
    AUTO = "auto"
    #: ``_DeferredDeadLetter`` entities in Datastore: listed, shown and replayed with
    #: ``cloudtasks-deferred dead-letters``. Needs the ``ndb`` extra and Datastore access.
    DATASTORE = "datastore"
    #: An ERROR log record each (the payload is not kept: nothing to replay).
    LOG = "log"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the library needs to enqueue and to authenticate tasks.

    Build one with :meth:`from_env`; to set a field the environment cannot (signing
    keys read from a secret store, say), derive it with :func:`dataclasses.replace`::

        settings = dataclasses.replace(Settings.from_env(), signing_keys=keys)

    Building one directly reads nothing from the environment: ``platform`` is then
    ``LOCAL`` unless passed, so on App Engine queue headers are not trusted (every
    task gets 403) and ``defer`` has no App Engine target; the project, service and
    version are not filled in either. Direct construction is for tests and local
    tools, or pass ``platform=`` (and the rest) explicitly. Values are validated on
    construction; dev mode is refused whenever the process environment says App
    Engine or Cloud Run, whatever ``platform`` says.

    Attributes:
        project: Google Cloud project ID. ``None`` resolves it from application
            default credentials (the metadata server on Google Cloud) on first enqueue.
        location: Cloud Tasks location such as ``"us-central1"``. ``None`` on App
            Engine resolves it from the metadata server; elsewhere enqueueing fails
            with a :class:`ConfigurationError`.
        queue: Queue ID used when ``defer`` gets no ``_queue``.
        base_url: ``http(s)://host[:port][/path]`` of the service that runs HTTP
            tasks (the Cloud Run URL). With it, tasks are HTTP tasks with an OIDC
            token; without it on App Engine, they are App Engine tasks.
        service_account: Email of the service account whose OIDC token Cloud Tasks
            attaches to HTTP tasks (needs ``roles/iam.serviceAccountUser`` for the
            enqueuer).
        audiences: Audiences the handler accepts in tokens; the first is the one
            tasks request. Empty means the origin of ``base_url``.
        allowed_invokers: Service-account emails the handler accepts as callers.
            Empty means ``service_account``.
        oidc_certs_url: URL of the JSON ``{key id: certificate}`` map used to verify
            tokens. Must be ``https`` except on loopback (tests).
        emulator_host: ``host:port`` of a Cloud Tasks emulator; enqueueing then uses
            an insecure gRPC channel.
        enqueue_timeout: Seconds ``defer`` may spend creating one task: every attempt
            (an unavailable API is retried with google-api-core's backoff) and the
            waits between them. A task not created within it makes ``defer`` raise
            ``google.api_core.exceptions.DeadlineExceeded``.
        platform: Where the process runs; decides whether App Engine queue headers
            can be trusted and whether tasks can be App Engine tasks. Default
            ``LOCAL``, also on App Engine: :meth:`from_env` detects it.
        app_engine_service: ``GAE_SERVICE``: App Engine tasks are routed back to it.
        app_engine_version: ``GAE_VERSION``: App Engine tasks are routed back to it.
        dev_mode: Sign tasks with a local key and accept only that key, for local
            development against the emulator. Refused on App Engine and Cloud Run
            (``platform``, or the process environment, says so).
        dev_key_file: PEM file holding the local key, created on first use. ``None``
            uses a key generated for this process only.
        ndb: Whether tasks (and requests through ``wrap_wsgi_app``) run in an NDB
            context: ``True``, ``False``, or ``None`` for "when google-cloud-ndb is
            installed".
        structured_logs: The library writes its log records as JSON lines for Cloud
            Logging (:mod:`cloudtasks_deferred.logs`) instead of leaving them to the
            app's logging configuration. :meth:`from_env` turns it on on App Engine
            and Cloud Run unless the variable says otherwise; direct construction
            leaves it off.
        signing_keys: Keys for payload signatures: ``defer`` signs with the first,
            the handler refuses payloads not signed by one of them. Empty: payloads
            are neither signed nor checked.
        allowed_modules: Module prefixes or exact names a payload may reference
            (:mod:`cloudtasks_deferred.payload.allowlist`). Empty: no allowlist.
        payload_max_age: Seconds after its signing at which a signed payload is
            refused (:mod:`cloudtasks_deferred.payload.binding`).
        require_bound_payloads: Refuse signed payloads that carry no destination
            (written by release 0.1) instead of accepting them with a warning.
        cross_compatible_payloads: ``defer`` writes bare protocol 2 pickles with the
            legacy names, which a Python 2 app's ``deferred`` handler runs (and so does
            this library's), for the time a Python 2 and a Python 3 version share
            traffic. Only for App Engine targets, and never signed: it cannot be
            combined with ``base_url`` or ``signing_keys``.
        dead_letters: Where the handler records the tasks it gives up on
            (:class:`DeadLetterStorage`).

    Raises:
        ConfigurationError: A value is invalid; the message names the field and its
            environment variable.
    """

    project: str | None = None
    location: str | None = None
    queue: str = "default"
    base_url: str | None = None
    service_account: str | None = None
    audiences: tuple[str, ...] = ()
    allowed_invokers: tuple[str, ...] = ()
    oidc_certs_url: str = GOOGLE_OIDC_CERTS_URL
    emulator_host: str | None = None
    enqueue_timeout: float = DEFAULT_ENQUEUE_TIMEOUT
    platform: Platform = Platform.LOCAL
    app_engine_service: str | None = None
    app_engine_version: str | None = None
    dev_mode: bool = False
    dev_key_file: Path | None = None
    ndb: bool | None = None
    structured_logs: bool = False
    signing_keys: tuple[SigningKey, ...] = ()
    allowed_modules: tuple[str, ...] = ()
    payload_max_age: float = binding.DEFAULT_MAX_AGE
    require_bound_payloads: bool = False
    cross_compatible_payloads: bool = False
    dead_letters: DeadLetterStorage = DeadLetterStorage.AUTO

    def __post_init__(self) -> None:
        if self.project is not None:
            _check(_PROJECT.fullmatch(self.project), "project", "a project ID like my-project")
        if self.location is not None:
            _check(_LOCATION.fullmatch(self.location), "location", "a location like us-central1")
        _check(
            limits.QUEUE_ID.fullmatch(self.queue),
            "queue",
            "a queue ID of letters, digits and hyphens (at most 100)",
        )
        if self.base_url is not None:
            _check_base_url(self.base_url)
        if self.service_account is not None:
            _check(_EMAIL.fullmatch(self.service_account), "service_account", "an email")
        for audience in self.audiences:
            _check(audience.strip() == audience != "", "audiences", "non-empty strings")
        for invoker in self.allowed_invokers:
            _check(_EMAIL.fullmatch(invoker), "allowed_invokers", "emails")
        _check_certs_url(self.oidc_certs_url)
        if self.emulator_host is not None:
            host, _, port = self.emulator_host.rpartition(":")
            _check(host and port.isdigit(), "emulator_host", "host:port, e.g. 127.0.0.1:8123")
        _check(
            not isinstance(self.enqueue_timeout, bool)
            and isinstance(self.enqueue_timeout, (int, float))
            and 0 < self.enqueue_timeout <= _MAX_ENQUEUE_TIMEOUT,
            "enqueue_timeout",
            f"seconds, more than 0 and at most {_MAX_ENQUEUE_TIMEOUT:g}",
        )
        _check_signing_keys(self.signing_keys)
        _check(
            not isinstance(self.payload_max_age, bool)
            and isinstance(self.payload_max_age, (int, float))
            and 60 <= self.payload_max_age <= binding.DEFAULT_MAX_AGE,
            "payload_max_age",
            f"seconds from 60 to {binding.DEFAULT_MAX_AGE} (32 days)",
        )
        try:
            check_entries(self.allowed_modules)
        except ValueError as exc:
            raise ConfigurationError(
                f"Settings.allowed_modules ({_ENV_NAMES['allowed_modules']}): {exc}."
            ) from None
        if self.cross_compatible_payloads and (self.signing_keys or self.base_url):
            raise ConfigurationError(
                f"cross-compatible payloads ({_ENV_NAMES['cross_compatible_payloads']}) are "
                "for App Engine targets a Python 2 version of the app may receive, and Python "
                f"2 cannot check signatures: unset {_ENV_NAMES['base_url']} and "
                f"{_ENV_NAMES['signing_keys']}, or switch them off."
            )
        _check(
            isinstance(self.dead_letters, DeadLetterStorage),
            "dead_letters",
            "a DeadLetterStorage (auto, datastore or log)",
        )
        # The process environment too: a Settings built by hand says LOCAL anywhere.
        deployed = self.platform if self.platform is not Platform.LOCAL else _process_platform()
        if self.dev_mode and deployed is not Platform.LOCAL:
            raise ConfigurationError(
                f"dev mode ({_ENV_NAMES['dev_mode']}) signs tasks with a local key and "
                f"refuses to switch on on {deployed.value} (GAE_ENV, K_SERVICE or "
                "CLOUD_RUN_JOB is set): unset it in the deployed service."
            )
        if self.platform is Platform.LOCAL and deployed is Platform.APP_ENGINE:
            _logger.warning(
                "Settings built with platform=LOCAL on App Engine: queue headers are not "
                "trusted and defer() has no App Engine target; build them with "
                "dataclasses.replace(Settings.from_env(), ...) instead"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads the settings from environment variables (see the module docstring).

        Args:
            environ: The variables to read; ``os.environ`` when ``None``. Empty
                values count as unset.

        Returns:
            The validated settings.

        Raises:
            ConfigurationError: A variable holds an invalid value; the message names it.
        """
        env = {k: v.strip() for k, v in (os.environ if environ is None else environ).items()}

        def get(field: str) -> str | None:
            return env.get(_ENV_NAMES[field]) or None

        platform = Platform.detect(env)
        dev_key = get("dev_key_file")
        structured = _flag("structured_logs", get("structured_logs"), default=None, allow_auto=True)
        return cls(
            project=get("project") or _project_from_gae_application(env.get("GAE_APPLICATION")),
            location=get("location"),
            queue=get("queue") or "default",
            base_url=get("base_url"),
            service_account=get("service_account"),
            audiences=_csv(get("audiences")),
            allowed_invokers=_csv(get("allowed_invokers")),
            oidc_certs_url=get("oidc_certs_url") or GOOGLE_OIDC_CERTS_URL,
            emulator_host=get("emulator_host"),
            enqueue_timeout=_or_default(
                _seconds("enqueue_timeout", get("enqueue_timeout")), DEFAULT_ENQUEUE_TIMEOUT
            ),
            platform=platform,
            app_engine_service=env.get("GAE_SERVICE") or None,
            app_engine_version=env.get("GAE_VERSION") or None,
            dev_mode=_flag("dev_mode", get("dev_mode"), default=False) or False,
            dev_key_file=Path(dev_key) if dev_key else _default_dev_key_file(env),
            ndb=_flag("ndb", get("ndb"), default=None, allow_auto=True),
            # auto (or unset): JSON on Google Cloud, left to the app elsewhere.
            structured_logs=platform is not Platform.LOCAL if structured is None else structured,
            signing_keys=parse_signing_keys(
                get("signing_keys"), variable=_ENV_NAMES["signing_keys"]
            ),
            allowed_modules=_csv(get("allowed_modules")),
            payload_max_age=_seconds("payload_max_age", get("payload_max_age"))
            or binding.DEFAULT_MAX_AGE,
            require_bound_payloads=_flag(
                "require_bound_payloads", get("require_bound_payloads"), default=False
            )
            or False,
            cross_compatible_payloads=_flag(
                "cross_compatible_payloads", get("cross_compatible_payloads"), default=False
            )
            or False,
            dead_letters=_choice("dead_letters", get("dead_letters"), DeadLetterStorage)
            or DeadLetterStorage.AUTO,
        )

    @functools.cached_property
    def base_origin(self) -> str:
        """``scheme://host[:port]`` of :attr:`base_url` (empty without one)."""
        return origin(self.base_url) if self.base_url else ""

    @functools.cached_property
    def effective_audiences(self) -> tuple[str, ...]:
        """The audiences tokens may carry: :attr:`audiences`, else the base URL's origin."""
        if self.audiences:
            return self.audiences
        return (self.base_origin,) if self.base_url else ()

    @functools.cached_property
    def effective_invokers(self) -> tuple[str, ...]:
        """The caller emails the handler accepts: :attr:`allowed_invokers`, else the
        service account."""
        if self.allowed_invokers:
            return self.allowed_invokers
        return (self.service_account,) if self.service_account else ()

    @functools.cached_property
    def payload_destinations(self) -> frozenset[str]:
        """Destinations a signed payload may be bound to here (:mod:`.payload.binding`).

        The audiences tokens may carry, and on App Engine
        ``app-engine:PROJECT/SERVICE`` of this service.
        """
        destinations = set(self.effective_audiences)
        if self.platform is Platform.APP_ENGINE and self.project:
            destinations.add(binding.app_engine_destination(self.project, self.app_engine_service))
        return frozenset(destinations)

    @functools.cached_property
    def signing_key(self) -> SigningKey | None:
        """The key ``defer`` signs payloads with: the first of :attr:`signing_keys`."""
        return self.signing_keys[0] if self.signing_keys else None

    @functools.cached_property
    def verification_keys(self) -> Mapping[str, bytes] | None:
        """``{key id: secret}`` the handler accepts signatures from; ``None`` without keys."""
        if not self.signing_keys:
            return None
        return MappingProxyType({key.key_id: key.secret for key in self.signing_keys})


def _process_platform() -> Platform:
    """Where this process runs, from its own environment: outside :meth:`Settings.from_env`,
    the only read, to refuse dev mode and warn of a hand-built ``LOCAL`` on App Engine."""
    return Platform.detect(os.environ)


def queue_path(project: str, location: str, queue: str) -> str:
    """Returns the queue's full resource name, ``projects/P/locations/L/queues/Q``."""
    return f"projects/{project}/locations/{location}/queues/{queue}"


def origin(url: str) -> str:
    """Returns ``scheme://host[:port]`` of ``url``: the default OIDC audience.

    Args:
        url: An absolute ``http(s)`` URL.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check(ok: object, field: str, expected: str) -> None:
    if not ok:
        raise ConfigurationError(f"Settings.{field} ({_ENV_NAMES[field]}) must be {expected}.")


def _check_signing_keys(keys: tuple[SigningKey, ...]) -> None:
    # Only types and key IDs are checked here: SigningKey validated each secret.
    _check(
        all(isinstance(key, SigningKey) for key in keys),
        "signing_keys",
        "SigningKey objects (parse the variable with cloudtasks_deferred.payload.signing)",
    )
    ids = [key.key_id for key in keys]
    _check(len(set(ids)) == len(ids), "signing_keys", "keys with distinct key IDs")


def _check_base_url(url: str) -> None:
    parts = urlsplit(url)
    _check(
        parts.scheme in ("http", "https") and parts.hostname,
        "base_url",
        "an absolute http(s) URL such as https://my-service-abc123-uc.a.run.app",
    )
    # The audience Cloud Tasks signs must equal what the handler expects; a query or
    # fragment would be part of neither, so it is refused rather than dropped.
    _check(not parts.query and not parts.fragment, "base_url", "a URL without ?query or #fragment")


def _check_certs_url(url: str) -> None:
    parts = urlsplit(url)
    loopback = parts.hostname in _LOOPBACK_NAMES or _is_loopback_ip(parts.hostname)
    _check(
        parts.scheme == "https" or (parts.scheme == "http" and loopback),
        "oidc_certs_url",
        "an https URL (plain http is accepted only on loopback, for tests)",
    )


def _is_loopback_ip(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def _flag(
    field: str, value: str | None, *, default: bool | None, allow_auto: bool = False
) -> bool | None:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if allow_auto and lowered == "auto":
        return None
    choices = "true/false" + ("/auto" if allow_auto else "")
    raise ConfigurationError(f"{_ENV_NAMES[field]}={value!r}: expected {choices}.")


_E = TypeVar("_E", bound=enum.Enum)


def _choice(field: str, value: str | None, choices: type[_E]) -> _E | None:
    if value is None:
        return None
    for choice in choices:
        if value.lower() == choice.value:
            return choice
    expected = "/".join(choice.value for choice in choices)
    raise ConfigurationError(f"{_ENV_NAMES[field]}={value!r}: expected {expected}.")


def _seconds(field: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{_ENV_NAMES[field]}={value!r}: expected seconds.") from None


def _or_default(value: float | None, default: float) -> float:
    # Not ``value or default``: an explicit 0 must reach validation and be refused.
    return default if value is None else value


def _project_from_gae_application(value: str | None) -> str | None:
    # GAE_APPLICATION is "<region prefix>~<project>", e.g. "s~my-project".
    return value.partition("~")[2] or value if value else None


def _default_dev_key_file(env: Mapping[str, str]) -> Path | None:
    cache = env.get("XDG_CACHE_HOME") or (
        str(Path(env["HOME"]) / ".cache") if env.get("HOME") else None
    )
    return Path(cache) / "cloudtasks-deferred" / "dev-key.pem" if cache else None
