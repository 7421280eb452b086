"""The ``_``-prefixed options of ``defer()``: parsed, validated and kept apart from the call.

Every keyword argument that starts with ``_`` belongs to the library and never
reaches the deferred callable. Known options are validated here, with errors that
name the option; an unknown one (``_countdwn=60``) is a ``TypeError`` rather than
an argument the task would choke on at run time.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cloudtasks_deferred import limits
from cloudtasks_deferred.payload.retry import TaskRetryOptions

__all__ = ["DEFAULT_URL", "OPTION_NAMES", "TaskOptions", "split_options"]

#: Where deferred tasks are delivered unless ``_url`` says otherwise.
DEFAULT_URL: Final = "/_ah/queue/deferred"

OPTION_NAMES: Final = (
    "_countdown",
    "_eta",
    "_name",
    "_target",
    "_url",
    "_headers",
    "_queue",
    "_transactional",
    "_retry_options",
    "_dispatch_deadline",
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 header field name
_TARGET = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+){0,2}")
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Validated ``defer`` options (without the leading underscore).

    Attributes:
        schedule_time: Aware UTC time at which the task may run (from ``_countdown``
            or ``_eta``), ``None`` for as soon as possible.
        name: Task ID, unique in the queue for Cloud Tasks' dedupe window.
        target: App Engine ``[[instance.]version.]service`` to route to.
        url: Relative path (appended to the base URL, or an App Engine
            ``relative_uri``) or absolute ``http(s)`` URL of an HTTP task.
        headers: Extra request headers (no two names equal ignoring case), merged
            over the default ``Content-Type``: one given in any case replaces it.
        queue: Queue ID; ``None`` uses the settings' default queue.
        transactional: Enqueue only if the surrounding NDB transaction commits.
        retry_options: Per-task retry limits.
        dispatch_deadline: How long Cloud Tasks waits for the handler's answer.
    """

    schedule_time: datetime | None = None
    name: str | None = None
    target: str | None = None
    url: str = DEFAULT_URL
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    queue: str | None = None
    transactional: bool = False
    retry_options: TaskRetryOptions | None = None
    dispatch_deadline: timedelta | None = None

    @property
    def is_absolute_url(self) -> bool:
        """Whether :attr:`url` is a full ``http(s)`` URL rather than a path."""
        return self.url.startswith(("http://", "https://"))


_DEFAULTS: Final = TaskOptions()


def split_options(
    kwargs: Mapping[str, Any], *, now: datetime | None = None
) -> tuple[TaskOptions, dict[str, Any]]:
    """Separates and validates the ``_`` options of a ``defer`` call.

    Args:
        kwargs: Every keyword argument ``defer`` received.
        now: The current aware UTC time for ``_countdown`` and the ``_eta`` bound;
            read from the clock when needed and not given.

    Returns:
        The options, and the keyword arguments meant for the callable.

    Raises:
        TypeError: An unknown ``_`` option, or an option of the wrong type.
        ValueError: An option with an invalid value; the message names it and says
            what is accepted.
    """
    if not any(key[:1] == "_" for key in kwargs):
        return _DEFAULTS, dict(kwargs)
    call_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    # Names are checked before None values are dropped: _countdwn=None is a typo too.
    for key in sorted(k for k in kwargs if k.startswith("_") and k not in OPTION_NAMES):
        import difflib  # only for a mistyped option: it costs cold starts milliseconds

        hint = difflib.get_close_matches(key, OPTION_NAMES, n=1)
        suggestion = f"; did you mean {hint[0]}?" if hint else "."
        # Never the value: a mistyped option may be an argument holding a secret.
        raise TypeError(
            f"defer() got an unknown option {key}{suggestion} Keyword arguments "
            f"starting with '_' are reserved for options: {', '.join(OPTION_NAMES)}."
        )
    raw = {k: v for k, v in kwargs.items() if k.startswith("_") and v is not None}
    if "_countdown" in raw and "_eta" in raw:
        raise ValueError("defer() got both _countdown and _eta; pass one of them")
    schedule_time = None
    if "_countdown" in raw or "_eta" in raw:
        now = now or datetime.now(UTC)
        if "_countdown" in raw:
            schedule_time = now + timedelta(seconds=_countdown(raw["_countdown"]))
        else:
            schedule_time = _eta(raw["_eta"], now)

    options = TaskOptions(
        schedule_time=schedule_time,
        name=_matching("_name", raw.get("_name"), limits.TASK_ID, "1-500 letters, digits, - or _"),
        target=_matching("_target", raw.get("_target"), _TARGET, "[[instance.]version.]service"),
        url=_url(raw.get("_url", DEFAULT_URL)),
        headers=_headers(raw.get("_headers", {})),
        queue=_matching("_queue", raw.get("_queue"), limits.QUEUE_ID, "1-100 letters, digits or -"),
        transactional=_bool("_transactional", raw.get("_transactional", False)),
        retry_options=_retry_options(raw.get("_retry_options")),
        dispatch_deadline=_duration("_dispatch_deadline", raw.get("_dispatch_deadline")),
    )
    return options, call_kwargs


def _countdown(value: object) -> float:
    seconds = _seconds("_countdown", value)
    if seconds > limits.MAX_SCHEDULE_AHEAD.total_seconds():
        raise ValueError(
            f"_countdown={value!r} is more than 30 days: Cloud Tasks schedules tasks at "
            "most 30 days ahead"
        )
    return seconds


def _eta(value: object, now: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"_eta must be a datetime, got {type(value).__name__}")
    # The legacy API read naive datetimes as UTC; so do we.
    eta = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    eta = eta.astimezone(UTC)
    if eta - now > limits.MAX_SCHEDULE_AHEAD:
        raise ValueError(
            f"_eta={value.isoformat()} is more than 30 days ahead: Cloud Tasks schedules "
            "tasks at most 30 days ahead"
        )
    return eta


def _seconds(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{option} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _duration(option: str, value: object) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return timedelta(seconds=_seconds(option, value))


def _matching(option: str, value: object, pattern: re.Pattern[str], expected: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{option} must be a str, got {type(value).__name__}")
    if not pattern.fullmatch(value):
        raise ValueError(f"{option}={value!r} is invalid: expected {expected}")
    return value


def _bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{option} must be True or False, got {value!r}")
    return value


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"_url must be a str, got {type(value).__name__}")
    if _URL_UNSAFE.search(value):
        raise ValueError(f"_url={value!r} contains whitespace or control characters")
    if not value.startswith(("/", "http://", "https://")):
        raise ValueError(
            f"_url={value!r} must be a path starting with '/' or an absolute http(s) URL"
        )
    return value


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"_headers must be a mapping of str to str, got {type(value).__name__}")
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, header_value in value.items():
        # Errors name the header, never its value (it may be a credential).
        if not isinstance(name, str):
            raise TypeError(
                f"_headers must map str to str, got a name of type {type(name).__name__}"
            )
        if not isinstance(header_value, str):
            raise TypeError(
                f"_headers must map str to str, got {type(header_value).__name__} for {name!r}"
            )
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"_headers: {name!r} is not a valid header name")
        if name.lower() in seen:
            raise ValueError(
                f"_headers: {name!r} is given twice (header names are case-insensitive)"
            )
        seen.add(name.lower())
        if any(c in header_value for c in "\r\n\x00"):
            raise ValueError(f"_headers[{name!r}] contains a line break or NUL")
        lowered = name.lower()
        if lowered in limits.RESERVED_HEADERS or lowered.startswith(
            limits.RESERVED_HEADER_PREFIXES
        ):
            raise ValueError(
                f"_headers: {name!r} is set by Cloud Tasks (Host, Content-Length, "
                "Authorization from the OIDC token, X-Google-*, X-AppEngine-*, "
                "X-CloudTasks-*) and cannot be given"
            )
        headers[name] = header_value
    size = sum(len(k) + len(v) for k, v in headers.items())
    if size >= limits.MAX_HEADERS_BYTES:
        raise ValueError(
            f"_headers total {size} bytes: Cloud Tasks requires headers under "
            f"{limits.MAX_HEADERS_BYTES} bytes (80 KB)"
        )
    return headers


def _retry_options(value: object) -> TaskRetryOptions | None:
    if value is None or isinstance(value, TaskRetryOptions):
        return value
    raise TypeError(f"_retry_options must be a TaskRetryOptions, got {type(value).__name__}")
