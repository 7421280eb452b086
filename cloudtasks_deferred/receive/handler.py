"""The task handler: authenticate, read, decode, run, and map the outcome to a status.

:class:`TaskHandler` is a WSGI application (every path, every method: it always calls
``start_response``) and keeps the legacy ``post(environ)`` and
``run_from_request(environ)`` for custom ``_url`` routes. For each request it:

1. refuses methods other than POST (405, ``Allow: POST``);
2. **authenticates the caller from the headers alone** (see
   :mod:`cloudtasks_deferred.receive.auth`) — an unauthenticated request gets 403 and not
   one byte of its body is read;
3. refuses bodies larger than a task can be (413) before reading them;
4. decodes the payload and runs the callable with :func:`~cloudtasks_deferred.current_task`
   set, the handler's client bound and, when enabled, inside an NDB context;
   the request's trace (:mod:`cloudtasks_deferred.traces`) is current for the whole
   request, and, once it is authenticated, the task for every line logged until the
   request ends (its report included), so that structured log lines carry its labels;
5. maps the outcome to a status (:mod:`cloudtasks_deferred.receive.outcomes` holds the
   table; Cloud Tasks retries every non-2xx), and reports it
   (:mod:`cloudtasks_deferred.receive.reporting`).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from cloudtasks_deferred import limits, traces
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.payload.calls import OpenedPayload
from cloudtasks_deferred.receive import context
from cloudtasks_deferred.receive.auth import AuthenticationError, CertsUnavailableError
from cloudtasks_deferred.receive.context import TaskInfo, running
from cloudtasks_deferred.receive.deadletters import DeadLetterSink, RequestDeadLetters, may_run
from cloudtasks_deferred.receive.outcomes import Attempt, Outcome, response_for
from cloudtasks_deferred.receive.receiver import ReceivingClient
from cloudtasks_deferred.receive.reporting import conclude
from cloudtasks_deferred.receive.wsgi import Response, StartResponse, respond

__all__ = ["HEADER_LOG_LEVEL", "HeaderLogLevel", "TaskHandler", "authenticate"]

_logger = logging.getLogger(__name__)

C = TypeVar("C", bound=ReceivingClient)


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


# The attempts run_from_request made inside the current post(): post() maps what an
# override re-raised by the attempt that raised it (its outcome is already logged).
_ATTEMPTS: contextvars.ContextVar[list[Attempt] | None] = contextvars.ContextVar(
    "cloudtasks_deferred_attempts", default=None
)


class TaskHandler:
    """Runs deferred tasks: a WSGI app, plus the legacy ``post`` and ``run_from_request``.

    The receiving layer's handler: it runs tasks for the client it is given, or for
    the one :meth:`current_client` returns at request time.
    :class:`cloudtasks_deferred.Handler` is this class bound to the library's current
    client; build that one.

    Args:
        client: The client whose rules apply (and which ``defer`` in the task uses);
            :meth:`current_client` at request time when ``None``.
        header_log_level: Level for logging task headers; ``None`` follows
            :func:`cloudtasks_deferred.set_log_level`.
        max_body_bytes: Larger bodies get 413 without being read.
    """

    def __init__(
        self,
        client: ReceivingClient | None = None,
        *,
        header_log_level: int | None = None,
        max_body_bytes: int = limits.MAX_TASK_BYTES,
    ) -> None:
        self._client = client
        self._header_log_level = header_log_level
        self._max_body_bytes = max_body_bytes

    def current_client(self) -> ReceivingClient:
        """The client for a request when the handler was built without one.

        Raises:
            ConfigurationError: Always, here: :class:`cloudtasks_deferred.Handler`
                answers with the library's current client.
        """
        raise ConfigurationError("this handler has no client: pass client=")

    def _resolve(self) -> ReceivingClient:
        return self._client or self.current_client()

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
        with traces.tracing(traces.from_environ(environ)), context.request_scope():
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
            client = self._resolve()
            task = TaskInfo.from_environ(environ)
            sink = RequestDeadLetters(client.dead_letters, environ, client.settings)
            return conclude(sink, task, None, payload=None, error=error, elapsed=0.0)
        except Exception:
            _logger.exception(
                "cannot record what %s.run_from_request raised: %r; Cloud Tasks will retry",
                type(self).__name__,
                error,
            )
            return Attempt(Outcome.ERROR, error=error)

    def _attempt(self, environ: Mapping[str, Any]) -> Attempt:
        client = authenticate(self._resolve, environ, what="task")
        if isinstance(client, Attempt):
            return client
        body_or_refusal = self._read_body(environ)
        if isinstance(body_or_refusal, Attempt):
            return body_or_refusal
        body = body_or_refusal
        task = TaskInfo.from_environ(environ)
        context.describe_request(task)  # authenticated: what is logged now is the task's
        level = self._header_log_level or HEADER_LOG_LEVEL.get()
        _logger.log(level, "%s", TaskInfo.headers_for_log(environ))
        sink = RequestDeadLetters(client.dead_letters, environ, client.settings)
        return self._run(client, task, body, sink)

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

    def _run(
        self, client: ReceivingClient, task: TaskInfo, body: bytes, sink: DeadLetterSink
    ) -> Attempt:
        started = time.monotonic()
        payload: OpenedPayload | None = None
        error: Exception | None = None
        try:
            with client.bind(), running(task), client.ndb_context():
                payload = client.open_payload(body)
                if not may_run(sink, task, body):  # replayed: the replay's task runs it
                    return Attempt(Outcome.SUCCESS, "its dead letter was replayed")
                entry = payload.run_entry
                if entry is None:
                    payload.call()
                else:  # a transactional task: at most one delivery runs it
                    # google-cloud-ndb (the ndb extra) loads only for transactional tasks.
                    from cloudtasks_deferred.receive.guard import run_once

                    run_once(client, entry, payload)
        except Exception as exc:
            error = exc
        elapsed = time.monotonic() - started
        return conclude(sink, task, body, payload=payload, error=error, elapsed=elapsed)


def authenticate(resolve: Callable[[], C], environ: Mapping[str, Any], *, what: str) -> C | Attempt:
    """Authenticates a request from its headers alone, before anything reads its body.

    Args:
        resolve: Returns the client whose rules apply (building it may fail: a broken
            configuration is then a logged 500).
        environ: The request's WSGI environ.
        what: What the request asks for (``"task"``, ``"sweep"``), for the logs.

    Returns:
        The client, or the refusal (403, 503, or 500 when the configuration is broken),
        already logged.
    """
    try:
        resolved = resolve()
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
