"""Dead letters on the handler's side: what a delivery records, and whether a redelivery runs.

The handler records a :class:`~cloudtasks_deferred.storage.dead_letters.DeadLetter`
for every task it gives up on (a ``PermanentTaskFailure``, a body that is no payload,
exhausted ``_retry_options``) and for every payload the allowlist refuses
(:mod:`cloudtasks_deferred.receive.reporting` decides which), through the client's
sink (:mod:`cloudtasks_deferred.storage.dead_letter_sinks`, chosen by
``CLOUDTASKS_DEFERRED_DEAD_LETTERS``). The sink is bound to the request
(:class:`RequestDeadLetters`) so that the record says where the task was delivered
and with which headers, for a replay. **Credentials are never recorded**:
``Authorization``, cookies, and every header whose name says auth, token, key,
secret, session, password, credential, signature, JWT or assertion, or whose value
is a bearer or basic credential or a JWT, are dropped (:func:`recorded_headers`).
A payload refused for its *signature* is not recorded either: its bytes are not
known to be ours, and a replay would sign them.

Before a redelivered task runs, :func:`may_run` claims its record, so that a task an
operator replayed is not run again by its queue's own retry (see
:mod:`cloudtasks_deferred.storage.dead_letters`, "A task runs once").
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import traceback
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

from cloudtasks_deferred.payload.calls import RUN_FROM_DATASTORE, OpenedPayload
from cloudtasks_deferred.payload.frame import InvalidPayloadError
from cloudtasks_deferred.receive.context import TaskInfo
from cloudtasks_deferred.settings import Platform, Settings
from cloudtasks_deferred.storage.dead_letter_sinks import InMemoryDeadLetters, LoggingDeadLetters
from cloudtasks_deferred.storage.dead_letters import Cause, DeadLetter, DeadLetterSink, letter_id

__all__ = [
    "MAX_HEADER_BYTES",
    "Cause",
    "DeadLetter",
    "DeadLetterSink",
    "InMemoryDeadLetters",
    "LoggingDeadLetters",
    "RequestDeadLetters",
    "cause_of",
    "letter_for",
    "may_run",
    "record_or_log",
    "recorded_headers",
]

_logger = logging.getLogger("cloudtasks_deferred.dead_letters")

#: Header bytes (names and values) a record keeps; headers past it are left out.
MAX_HEADER_BYTES: Final = 16 * 1024
_CREDENTIAL_NAMES: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_CREDENTIAL_WORDS: Final = re.compile(
    r"auth|token|key|secret|session|passw|credential|signature|jwt|assertion|cookie"
)
_CREDENTIAL_VALUES: Final = re.compile(
    r"\s*(bearer|basic|digest|negotiate)\s|.*eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.IGNORECASE
)


def recorded_headers(environ: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The request's headers as a record keeps them: no credential, at most
    :data:`MAX_HEADER_BYTES`, names as ``Title-Case``."""
    kept: list[tuple[str, str]] = []
    size = 0
    for key, value in sorted(environ.items()):
        if key == "CONTENT_TYPE":
            name = "Content-Type"
        elif key.startswith("HTTP_") and key != "HTTP_CONTENT_LENGTH":
            name = "-".join(part.capitalize() for part in key[5:].split("_"))
        else:
            continue
        if not isinstance(value, str) or _is_credential(name, value):
            continue
        size += len(name) + len(value)
        if size > MAX_HEADER_BYTES:
            break
        kept.append((name, value))
    return tuple(kept)


def _relative_uri(environ: Mapping[str, Any]) -> str:
    path = "".join(
        value for value in (environ.get("SCRIPT_NAME"), environ.get("PATH_INFO"))
        if isinstance(value, str)
    )  # fmt: skip
    query = environ.get("QUERY_STRING")
    # PEP 3333: the path is latin-1 decoded bytes.
    quoted = quote(path, safe="/;=,:@!$&'()*+~", encoding="latin-1", errors="replace")
    return (quoted or "/") + (f"?{query}" if isinstance(query, str) and query else "")


def _origin(environ: Mapping[str, Any]) -> str:
    scheme = environ.get("wsgi.url_scheme")
    host = environ.get("HTTP_HOST")
    if not isinstance(host, str) or not host:
        host = f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    return f"{scheme if scheme in ('http', 'https') else 'https'}://{host}"


def _is_credential(name: str, value: str) -> bool:
    lowered = name.lower()
    return (
        lowered in _CREDENTIAL_NAMES
        or _CREDENTIAL_WORDS.search(lowered) is not None
        or _CREDENTIAL_VALUES.match(value) is not None
    )


@dataclasses.dataclass(frozen=True)
class RequestDeadLetters:
    """A sink bound to one request: its records say where and how the task came.

    What the request says is read only when a letter is recorded (most tasks never
    are). An App Engine task (on App Engine, with App Engine's queue headers) records
    its relative URI and service; an HTTP task its URL, on the configured base URL's
    origin when there is one (the URL tasks are sent to), else on the request's.

    Attributes:
        sink: The client's sink.
        environ: The request's WSGI environ.
        settings: The client's settings.
    """

    sink: DeadLetterSink
    environ: Mapping[str, Any]
    settings: Settings

    @property
    def keeps_payloads(self) -> bool:
        """Whether the bound sink keeps payloads."""
        return self.sink.keeps_payloads

    def record(self, letter: DeadLetter) -> None:
        """Records ``letter`` with the request's URL, service and headers."""
        environ, settings = self.environ, self.settings
        relative = _relative_uri(environ)
        if settings.platform is Platform.APP_ENGINE and environ.get("HTTP_X_APPENGINE_QUEUENAME"):
            url, service = relative, settings.app_engine_service or "default"
        else:
            origin = settings.base_origin if settings.base_url else _origin(environ)
            url, service = origin + relative, None
        headers = recorded_headers(environ)
        self.sink.record(
            dataclasses.replace(letter, url=url, app_engine_service=service, headers=headers)
        )

    def claim(self, letter_id: str) -> bool:
        """Claims the record in the bound sink."""
        return self.sink.claim(letter_id)


def letter_for(
    task: TaskInfo,
    body: bytes | None,
    payload: OpenedPayload | None,
    *,
    cause: Cause,
    reason: str,
    error: BaseException | None,
) -> DeadLetter:
    """The record of one delivery given up on (or refused).

    Args:
        task: The task's headers.
        body: The request body; ``None`` if never read.
        payload: The opened payload; ``None`` if it did not decode.
        cause: Why.
        reason: The failure's type and message, or the exhausted limit.
        error: What was raised, for its traceback.
    """
    return DeadLetter.new(
        cause=cause,
        reason=reason,
        payload=body,
        queue_name=task.queue_name,
        task_name=task.task_name,
        retry_count=task.retry_count,
        execution_count=task.execution_count,
        callable_name=payload.callable_name if payload is not None else None,
        stored_payload=_stored_key(payload),
        traceback="".join(traceback.format_exception(error)) if error is not None else None,
    )


def cause_of(
    error: BaseException | None, payload: OpenedPayload | None, body: bytes | None
) -> Cause:
    """The cause of a permanent failure: the payload's, or the callable's."""
    causes = (error, error.__cause__) if error is not None else ()
    if (payload is None and body is not None) or any(
        isinstance(each, InvalidPayloadError) for each in causes
    ):
        return Cause.INVALID_PAYLOAD
    return Cause.PERMANENT_FAILURE


def _stored_key(payload: OpenedPayload | None) -> str | None:
    """The ``_DeferredTaskEntity`` key a ``run_from_datastore`` task points at."""
    if payload is None or len(payload.args) != 1:
        return None
    func = payload.func
    module, name = RUN_FROM_DATASTORE
    ours = getattr(func, "__module__", "").startswith(module.split(".")[0] + ".")
    if not ours or getattr(func, "__name__", None) != name:
        return None
    key = payload.args[0]
    urlsafe = key.urlsafe() if hasattr(key, "urlsafe") else key
    if isinstance(urlsafe, bytes):
        urlsafe = urlsafe.decode("ascii", errors="replace")
    return urlsafe if isinstance(urlsafe, str) else None


def record_or_log(sink: DeadLetterSink, letter: DeadLetter) -> None:
    """Hands ``letter`` to ``sink``; if the sink raises, logs the letter instead.

    The task is answered either way, so its record must not depend on the sink.
    """
    try:
        sink.record(letter)
    except Exception:
        _logger.exception(
            "the dead-letter sink %s failed; logging the dead letter instead", type(sink).__name__
        )
        LoggingDeadLetters().record(letter)


def may_run(sink: DeadLetterSink, task: TaskInfo, body: bytes) -> bool:
    """Whether this delivery runs its task: claims a redelivered task's record.

    A first delivery (retry count 0 or unknown) always runs. A redelivery claims the
    record its task's earlier deliveries left, if any (:func:`.dead_letters.claimed`):
    it does not run when an operator replayed that record (the replay runs the task).

    Raises:
        Exception: What the sink raised (the delivery is then retried: running it
            might run the task twice).
    """
    if not task.retry_count or task.task_name is None:
        return True
    digest = hashlib.sha256(body).hexdigest()
    record = letter_id(task.queue_name, task.task_name, digest)
    if sink.claim(record):
        return True
    _logger.info(
        "task %s (queue %s, retry %s): not run: its dead letter %s was replayed, and the "
        "replay's task runs it",
        task.task_name,
        task.queue_name,
        task.retry_count,
        record,
    )
    return False
