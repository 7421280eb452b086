"""The task handler: authenticate, read, decode, run, and map the outcome to a status.

:class:`Handler` is a WSGI application (every path, every method: it always calls
``start_response``) and keeps the legacy ``post(environ)`` and
``run_from_request(environ)`` for custom ``_url`` routes. For each request it:

1. refuses methods other than POST (405, ``Allow: POST``);
2. **authenticates the caller from the headers alone** (see
   :mod:`cloudtasks_deferred.auth`) — an unauthenticated request gets 403 and not
   one byte of its body is read;
3. refuses bodies larger than a task can be (413) before reading them;
4. decodes the payload and runs the callable with :func:`~cloudtasks_deferred.current_task`
   set, the handler's client bound and, when enabled, inside an NDB context;
5. maps the outcome with :func:`response_for` (Cloud Tasks retries every non-2xx):

=====================================================  ======  ========
outcome                                                status  retried?
=====================================================  ======  ========
the callable returned                                  200     no
``PermanentTaskFailure``, or a body that is no payload  200     no (logged, dead letter)
the task's own ``_retry_options`` are exhausted        200     no (logged, dead letter)
``SingularTaskFailure``                                408     yes
any other exception, incl. missing code                500     yes
a frame written by a newer release (rolling deploy)    500     yes (a warning, no traceback)
caller not authenticated                               403     yes
payload unsigned, badly signed, or outside allowlist   403     yes (nothing unpickled)
no certificates to verify tokens with                  503     yes
method other than POST                                 405     n/a
body larger than a task (1 MB)                         413     n/a
malformed ``Content-Length`` or truncated body         400     yes
=====================================================  ======  ========
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from . import limits
from ._wsgi import Response, StartResponse, respond
from .auth import AuthenticationError, CertsUnavailableError
from .client import Client, current_client
from .context import TaskInfo, running
from .deadletters import DeadLetter, record_or_log
from .errors import PayloadRefusedError, PermanentTaskFailure, SingularTaskFailure
from .frame import UnsupportedPayloadError
from .retry import exhausted
from .settings import Settings

if TYPE_CHECKING:
    from .payload import OpenedPayload

__all__ = [
    "HEADER_LOG_LEVEL",
    "Attempt",
    "Handler",
    "Outcome",
    "Response",
    "authenticate",
    "outcome_of",
    "response_for",
]

_logger = logging.getLogger(__name__)


_TEXT: Final = ("Content-Type", "text/plain; charset=utf-8")


class Outcome(enum.Enum):
    """What became of one request to the handler."""

    SUCCESS = "Success"
    PERMANENT_FAILURE = "PermanentTaskFailure"
    RETRIES_EXHAUSTED = "RetryLimitReached"
    SINGULAR_FAILURE = "SingularTaskFailure"
    ERROR = "Error"
    UNAUTHENTICATED = "Forbidden"
    AUTH_UNAVAILABLE = "ServiceUnavailable"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    TOO_LARGE = "PayloadTooLarge"
    BAD_REQUEST = "BadRequest"


_STATUS: Final = {
    Outcome.SUCCESS: HTTPStatus.OK,
    Outcome.PERMANENT_FAILURE: HTTPStatus.OK,
    Outcome.RETRIES_EXHAUSTED: HTTPStatus.OK,
    Outcome.SINGULAR_FAILURE: HTTPStatus.REQUEST_TIMEOUT,
    Outcome.ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    Outcome.UNAUTHENTICATED: HTTPStatus.FORBIDDEN,
    Outcome.AUTH_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    Outcome.METHOD_NOT_ALLOWED: HTTPStatus.METHOD_NOT_ALLOWED,
    Outcome.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Outcome.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
}


def response_for(outcome: Outcome, detail: str = "") -> Response:
    """Maps an outcome to the response Cloud Tasks reads. Pure.

    Args:
        outcome: What happened.
        detail: A reason safe to show the caller (e.g. which auth check failed).

    Returns:
        ``(body, status, headers)``.
    """
    headers = [_TEXT]
    if outcome is Outcome.METHOD_NOT_ALLOWED:
        headers.append(("Allow", "POST"))
    body = f"{outcome.value}: {detail}" if detail else outcome.value
    return body, _STATUS[outcome], headers


def outcome_of(error: BaseException | None, *, retries_exhausted: bool = False) -> Outcome:
    """Classifies how running a task ended. Pure.

    Args:
        error: What the task raised, or ``None`` if it returned.
        retries_exhausted: The task's own ``_retry_options`` allow no more attempts
            (see :func:`cloudtasks_deferred.retry.exhausted`); turns a retryable
            failure into :attr:`Outcome.RETRIES_EXHAUSTED`.
    """
    if error is None:
        return Outcome.SUCCESS
    if isinstance(error, PayloadRefusedError):
        # The payload failed authentication: retried, so a fixed configuration drains it.
        return Outcome.UNAUTHENTICATED
    if isinstance(error, PermanentTaskFailure):
        return Outcome.PERMANENT_FAILURE
    if retries_exhausted:
        return Outcome.RETRIES_EXHAUSTED
    if isinstance(error, SingularTaskFailure):
        return Outcome.SINGULAR_FAILURE
    return Outcome.ERROR


class HeaderLogLevel:
    """The level at which handlers log task headers.

    Process-wide because the legacy ``deferred.set_log_level`` was; a
    :class:`Handler` built with ``header_log_level`` ignores it.
    """

    def __init__(self, level: int = logging.INFO) -> None:
        self._level = level
        self._lock = threading.Lock()

    def get(self) -> int:
        """Returns the level."""
        return self._level

    def set(self, level: int) -> None:
        """Sets the level, e.g. ``logging.DEBUG``.

        Raises:
            TypeError: ``level`` is not an ``int``.
        """
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"log level must be an int such as logging.DEBUG, got {level!r}")
        with self._lock:
            self._level = level


#: The level set by :func:`cloudtasks_deferred.set_log_level` (legacy default INFO).
HEADER_LOG_LEVEL: Final = HeaderLogLevel()


@dataclasses.dataclass(frozen=True)
class Attempt:
    """What became of one request: its outcome, a detail safe to show the caller, and
    what the task raised (re-raised by :meth:`Handler.run_from_request`)."""

    outcome: Outcome
    detail: str = ""
    error: Exception | None = None


# The attempts run_from_request made inside the current post(): post() maps what an
# override re-raised by the attempt that raised it (its outcome is already logged).
_ATTEMPTS: contextvars.ContextVar[list[Attempt] | None] = contextvars.ContextVar(
    "cloudtasks_deferred_attempts", default=None
)


class Handler:
    """Runs deferred tasks: a WSGI app, plus the legacy ``post`` and ``run_from_request``.

    Building one is cheap and does no I/O, so ``Handler().post(environ)`` inside a
    view is fine.

    Args:
        settings: Configuration for this handler (and for ``defer`` calls its tasks
            make). ``None`` uses the current client (see :mod:`cloudtasks_deferred.client`)
            at request time.
        client: A client to use instead of building one from ``settings``.
        header_log_level: Level for logging task headers; ``None`` follows
            :func:`cloudtasks_deferred.set_log_level`.
        max_body_bytes: Larger bodies get 413 without being read.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: Client | None = None,
        header_log_level: int | None = None,
        max_body_bytes: int = limits.MAX_TASK_BYTES,
    ) -> None:
        if settings is not None and client is None:
            client = Client(settings)
        self._client = client
        self._header_log_level = header_log_level
        self._max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point: answers every path and method (PEP 3333).

        Args:
            environ: The WSGI environ.
            start_response: The WSGI ``start_response`` callable.

        Returns:
            The response body.
        """
        if environ.get("REQUEST_METHOD") != "POST":
            return respond(response_for(Outcome.METHOD_NOT_ALLOWED), start_response)
        return respond(self.post(environ), start_response)

    def post(self, environ: Mapping[str, Any]) -> Response:
        """Authenticates and runs the task in a POST request; never raises.

        Call it from the route of a custom ``_url``, e.g. in Flask
        ``return deferred.Handler().post(request.environ)``. It calls
        ``self.run_from_request(environ)``, as the legacy handler did, so overrides
        keep working, and maps what that raises to the module's status table. What
        an override raises by itself is logged and, if given up, recorded as a dead
        letter here: no task is answered 2xx without a trace.

        Args:
            environ: The request's WSGI environ (its body not yet read).

        Returns:
            ``(body, status, headers)`` per the module's status table.
        """
        attempts: list[Attempt] = []
        token = _ATTEMPTS.set(attempts)
        try:
            return self.run_from_request(environ)
        except Exception as exc:
            attempt = next((a for a in attempts if a.error is exc), None)
            if attempt is None:
                attempt = self._conclude_override(environ, exc)
            return response_for(attempt.outcome, attempt.detail)
        finally:
            _ATTEMPTS.reset(token)

    def run_from_request(self, environ: Mapping[str, Any]) -> Response:
        """Like :meth:`post`, but raises what the task raised.

        The legacy extension point: :meth:`post` (and so the WSGI app) calls it for
        every POST. An override may run code around ``super().run_from_request(environ)``
        or replace it; whatever it raises is mapped by :meth:`post`.

        Args:
            environ: The request's WSGI environ.

        Returns:
            ``(body, status, headers)`` when the task succeeded or the request was
            refused before running anything.

        Raises:
            PermanentTaskFailure: The task raised it, or the body is not a payload.
            SingularTaskFailure: The task raised it.
            Exception: Whatever else the task raised.
        """
        attempt = self._attempt(environ)
        attempts = _ATTEMPTS.get()
        if attempts is not None:
            attempts.append(attempt)
        if attempt.error is not None:
            raise attempt.error
        return response_for(attempt.outcome, attempt.detail)

    def _conclude_override(self, environ: Mapping[str, Any], error: Exception) -> Attempt:
        """Maps, logs and records what an overriding ``run_from_request`` raised itself."""
        try:
            client = self._client or current_client()
            task = TaskInfo.from_environ(environ)
            return _conclude(client, task, None, payload=None, error=error, elapsed=0.0)
        except Exception:
            _logger.exception(
                "cannot record what %s.run_from_request raised: %r; Cloud Tasks will retry",
                type(self).__name__,
                error,
            )
            return Attempt(Outcome.ERROR, error=error)

    def _attempt(self, environ: Mapping[str, Any]) -> Attempt:
        client = authenticate(self._client, environ, what="task")
        if isinstance(client, Attempt):
            return client
        body_or_refusal = self._read_body(environ)
        if isinstance(body_or_refusal, Attempt):
            return body_or_refusal
        body = body_or_refusal
        task = TaskInfo.from_environ(environ)
        level = self._header_log_level or HEADER_LOG_LEVEL.get()
        _logger.log(level, "%s", TaskInfo.headers_for_log(environ))
        return self._run(client, task, body)

    def _read_body(self, environ: Mapping[str, Any]) -> bytes | Attempt:
        raw_length = environ.get("CONTENT_LENGTH") or ""
        stream = environ.get("wsgi.input")
        if raw_length:
            # isdigit() alone accepts "²", which int() refuses.
            if not (raw_length.isascii() and raw_length.isdigit()):
                return Attempt(Outcome.BAD_REQUEST, "invalid Content-Length")
            length = int(raw_length)
            if length > self._max_body_bytes:
                return Attempt(
                    Outcome.TOO_LARGE, f"a task body is at most {self._max_body_bytes} bytes"
                )
        elif environ.get("wsgi.input_terminated"):
            length = self._max_body_bytes + 1  # chunked: read up to one byte past the limit
        else:
            length = 0
        body = stream.read(length) if stream is not None and length else b""
        if len(body) > self._max_body_bytes:
            return Attempt(
                Outcome.TOO_LARGE, f"a task body is at most {self._max_body_bytes} bytes"
            )
        if raw_length and len(body) < length:
            return Attempt(Outcome.BAD_REQUEST, "the body is shorter than its Content-Length")
        return bytes(body)

    def _run(self, client: Client, task: TaskInfo, body: bytes) -> Attempt:
        started = time.monotonic()
        payload: OpenedPayload | None = None
        error: Exception | None = None
        try:
            with client.bind(), running(task), client.ndb_context():
                payload = client.open_payload(body)
                payload.call()
        except Exception as exc:
            error = exc
        elapsed = time.monotonic() - started
        return _conclude(client, task, body, payload=payload, error=error, elapsed=elapsed)


def authenticate(
    client: Client | None, environ: Mapping[str, Any], *, what: str
) -> Client | Attempt:
    """Authenticates a request from its headers alone, before anything reads its body.

    Args:
        client: The client whose rules apply; the current client when ``None``.
        environ: The request's WSGI environ.
        what: What the request asks for (``"task"``, ``"sweep"``), for the logs.

    Returns:
        The client, or the refusal (403, 503, or 500 when the configuration is broken),
        already logged.
    """
    try:
        resolved = client or current_client()
        resolved.authenticator.authenticate(environ)
    except AuthenticationError as exc:
        _logger.warning("refused a %s request: %s", what, exc)
        return Attempt(Outcome.UNAUTHENTICATED, str(exc))
    except CertsUnavailableError as exc:
        _logger.error("cannot verify %s requests: %s", what, exc)
        return Attempt(Outcome.AUTH_UNAVAILABLE, "token verification is unavailable")
    except Exception:
        _logger.exception("the %s handler is misconfigured", what)
        return Attempt(Outcome.ERROR, f"the {what} handler is misconfigured")
    return resolved


def _conclude(
    client: Client,
    task: TaskInfo,
    body: bytes | None,
    *,
    payload: OpenedPayload | None,
    error: Exception | None,
    elapsed: float,
) -> Attempt:
    """Classifies a run, logs it, and records a dead letter for what is given up.

    ``body`` is ``None`` when the handler never read it (a ``run_from_request``
    override raised before calling the base class). A body that did not decode is
    logged with its size and SHA-256, never its bytes, so that the dead letter and
    the log line can be matched to the task later.
    """
    reason = None
    if outcome_of(error) in (Outcome.SINGULAR_FAILURE, Outcome.ERROR):
        reason = exhausted(payload.metadata if payload is not None else {}, task, time.time())
    outcome = outcome_of(error, retries_exhausted=reason is not None)
    where = f"task {task.task_name} (queue {task.queue_name}, retry {task.retry_count})"
    if payload is not None:
        what = payload.callable_name
    elif body is None:
        what = f"a request its run_from_request override failed ({type(error).__name__})"
    else:
        what = (
            f"a payload that could not be loaded ({type(error).__name__}; "
            f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()})"
        )
    if outcome is Outcome.SUCCESS:
        _logger.info("%s: ran %s in %.0f ms", where, what, elapsed * 1000)
    elif outcome is Outcome.UNAUTHENTICATED:
        _logger.warning("%s: refused the payload: %s", where, error)
        return Attempt(outcome, detail=str(error))
    elif outcome is Outcome.PERMANENT_FAILURE:
        _logger.exception("%s: permanent failure running %s", where, what, exc_info=error)
        _dead_letter(client, task, body, payload, f"{type(error).__name__}: {error}")
    elif outcome is Outcome.RETRIES_EXHAUSTED:
        _logger.error("%s: %s failed and will not be retried: %s", where, what, reason,
                      exc_info=error)  # fmt: skip
        _dead_letter(client, task, body, payload, str(reason))
    elif outcome is Outcome.SINGULAR_FAILURE:
        _logger.debug("%s: %s raised SingularTaskFailure; retry forced", where, what)
    elif isinstance(error, UnsupportedPayloadError):
        # A rolling deploy: the newer release's instances will run it.
        _logger.warning(
            "%s: the payload was written by a newer release of cloudtasks_deferred (%s); "
            "Cloud Tasks retries it until this service runs that release",
            where,
            error,
        )
    else:
        _logger.error("%s: %s failed; Cloud Tasks will retry it", where, what, exc_info=error)
    return Attempt(outcome, error=error)


def _dead_letter(
    client: Client,
    task: TaskInfo,
    body: bytes | None,
    payload: OpenedPayload | None,
    reason: str,
) -> None:
    callable_name = payload.callable_name if payload is not None else None
    letter = DeadLetter.for_payload(
        reason=reason, task=task, callable_name=callable_name, payload=body
    )
    record_or_log(client.dead_letters, letter)
