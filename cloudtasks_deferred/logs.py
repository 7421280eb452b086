"""Log lines for Cloud Logging: JSON with the request's trace and the task's labels.

On App Engine and Cloud Run (or with ``CLOUDTASKS_DEFERRED_STRUCTURED_LOGS=true``) the
library writes its own log records (the ``cloudtasks_deferred`` logger) to standard
error as one JSON object per line, which Cloud Logging reads as a structured entry
(https://cloud.google.com/logging/docs/structured-logging):

====================================================  ====================================
key                                                   value
====================================================  ====================================
``message``                                           the message, and the traceback if any
``severity``                                          ``DEBUG`` ... ``CRITICAL``
``time``                                              when the record was made (RFC 3339)
``logger``                                            the logger's name
``logging.googleapis.com/sourceLocation``             file, line and function
``logging.googleapis.com/trace``                      ``projects/PROJECT_ID/traces/TRACE_ID``
``logging.googleapis.com/spanId``                     the span, 16 hex digits
``logging.googleapis.com/trace_sampled``              whether the trace is recorded
``logging.googleapis.com/labels``                     ``queue_name``, ``task_name`` and
                                                      ``attempt`` (1 on the first) of the
                                                      running task
====================================================  ====================================

A record's ``extra`` fields are kept as keys of their own, and the keys of an
``extra={"json_fields": {...}}`` mapping too (google-cloud-logging's convention).

The trace keys appear inside a request or task that carries a trace
(:mod:`cloudtasks_deferred.traces`) when the project ID is known
(``GOOGLE_CLOUD_PROJECT``), so the lines group under the request in the Logs Explorer;
the labels inside a task.

The library writes a record this way only where the app has not configured logging,
that is where Python would otherwise print it bare through its last-resort handler:
when no logger between the record's and the root has a handler. An app that
configured logging (``logging.basicConfig``, google-cloud-logging's
``setup_logging``, a ``dictConfig``) gets the library's records through its own
handlers, in its own format, and none twice; the records still propagate, so the
app's handlers and a test's ``caplog`` see them. ``CLOUDTASKS_DEFERRED_STRUCTURED_LOGS
=false`` leaves the library's records to Python's defaults, as any library's.

The library never configures the root logger by itself. :func:`configure_logging`
does, when asked: every record of the app (a task's ``logging.info(...)`` included)
then gets the same JSON on Google Cloud, with the trace and labels of the task it is
written in, and readable plain lines locally (:class:`PlainFormatter`). For a
``logging.config.dictConfig`` setup, use :class:`CloudLoggingFormatter` as a formatter
factory (``"()": "cloudtasks_deferred.logs.CloudLoggingFormatter"``).

The JSON is python-json-logger's (``JsonFormatter``, extended with the keys above).
This module is imported only when logs are structured or the app asks for it: the
client loads it lazily, so a local cold start does not pay for it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any, Final, TextIO

from pythonjsonlogger.json import JsonFormatter

from cloudtasks_deferred.receive.context import current_task
from cloudtasks_deferred.settings import Settings
from cloudtasks_deferred.traces import TraceContext, current_trace

__all__ = [
    "LIBRARY_LOGGER",
    "CloudLoggingFormatter",
    "PlainFormatter",
    "configure_logging",
    "structure_library_logs",
]

#: The logger every module of the library logs under.
LIBRARY_LOGGER: Final = "cloudtasks_deferred"

_TRACE: Final = "logging.googleapis.com/trace"
_SPAN: Final = "logging.googleapis.com/spanId"
_SAMPLED: Final = "logging.googleapis.com/trace_sampled"
_LABELS: Final = "logging.googleapis.com/labels"
_SOURCE: Final = "logging.googleapis.com/sourceLocation"
# Cloud Logging's LogSeverity names, by the lowest Python level each covers.
_SEVERITIES: Final = (
    (logging.CRITICAL, "CRITICAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (logging.INFO, "INFO"),
    (logging.DEBUG, "DEBUG"),
)
# One handler per logger even when clients are built on several threads at once.
_INSTALL_LOCK: Final = threading.Lock()


def _severity(levelno: int) -> str:
    """Cloud Logging's severity for a Python level (``DEFAULT`` below ``DEBUG``)."""
    return next((name for level, name in _SEVERITIES if levelno >= level), "DEFAULT")


def _task_labels() -> dict[str, str]:
    """The running task's labels (none outside a task): queue, task name, attempt."""
    task = current_task()
    if task is None:
        return {}
    labels = {}
    if task.queue_name:
        labels["queue_name"] = task.queue_name
    if task.task_name:
        labels["task_name"] = task.task_name
    if task.retry_count is not None:
        labels["attempt"] = str(task.retry_count + 1)
    return labels


class CloudLoggingFormatter(JsonFormatter):
    """Formats records as the JSON lines Cloud Logging reads (see the module docstring).

    Args:
        project: The project ID the trace belongs to; without one, lines carry no
            trace keys (Cloud Logging needs ``projects/PROJECT_ID/traces/TRACE_ID``).
            ``None`` reads it from the environment (``GOOGLE_CLOUD_PROJECT``, or App
            Engine's ``GAE_APPLICATION``).
        labels: Labels added to every line, under the task's.

    Raises:
        ConfigurationError: ``project`` is ``None`` and the environment is invalid.
    """

    def __init__(
        self, project: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> None:
        super().__init__("%(message)s", timestamp="time")
        self.project = project if project is not None else Settings.from_env().project
        self.labels = dict(labels or {})

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Adds the Cloud Logging keys to python-json-logger's fields."""
        super().add_fields(log_data, record, message_dict)
        # Cloud Logging shows only `message`: the traceback belongs in it (Error
        # Reporting reads it there too).
        message = str(log_data.pop("message", ""))
        for key in ("exc_info", "stack_info"):
            text = log_data.pop(key, None)
            if text:
                message = f"{message}\n{text}"
        log_data["message"] = message
        log_data["severity"] = _severity(record.levelno)
        log_data["logger"] = record.name
        log_data[_SOURCE] = {
            "file": record.pathname,
            "line": record.lineno,
            "function": record.funcName,
        }
        trace = current_trace()
        if trace is not None and self.project:
            log_data[_TRACE] = f"projects/{self.project}/traces/{trace.trace_id}"
            if trace.span_id is not None:
                log_data[_SPAN] = trace.span_id
            log_data[_SAMPLED] = trace.sampled
        labels = {**self.labels, **_task_labels()}
        if labels:
            log_data[_LABELS] = labels
        # google-cloud-logging's convention: extra={"json_fields": {...}} adds keys.
        fields = log_data.pop("json_fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                log_data.setdefault(str(key), value)


class PlainFormatter(logging.Formatter):
    """Readable lines for a terminal, with the task and trace they belong to appended.

    ``2025-01-31 12:00:00,000 INFO myapp.tasks: mail sent [queue=default task=123
    attempt=1 trace=4bf92f3577b34da6a3ce929d0e0e4736]``

    Args:
        fmt: The line's format (``logging.Formatter``'s ``%`` style).
        datefmt: The ``asctime`` format.
    """

    def __init__(
        self,
        fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt: str | None = None,
    ) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Formats the line, then appends the task's labels and the trace ID."""
        line = super().formatMessage(record)
        labels = _task_labels()
        parts = [f"{key.removesuffix('_name')}={value}" for key, value in labels.items()]
        trace: TraceContext | None = current_trace()
        if trace is not None:
            parts.append(f"trace={trace.trace_id}")
        return f"{line} [{' '.join(parts)}]" if parts else line


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to the ``sys.stderr`` of the moment (a server's or a test's redirection)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always the current sys.stderr


class _LibraryHandler(_StderrHandler):
    """The library's records as JSON, where no handler of the app would write them."""

    def handle(self, record: logging.LogRecord) -> bool:
        """Writes ``record`` unless another handler on its way to the root will."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return False
            logger = logger.parent if logger.propagate else None
        return super().handle(record)


def structure_library_logs(settings: Settings) -> None:
    """Makes the library's own records JSON lines on standard error (the client calls it).

    Once per process: later calls update the project ID (without one, the first call
    warns that lines will carry no trace). Where the app configured
    logging, its handlers write them instead (see the module docstring). If its level
    is not set, the ``cloudtasks_deferred`` logger logs from ``INFO`` (the task
    handler's lines for each task, as the legacy handler logged them).

    Args:
        settings: The settings whose project ID the trace keys name.
    """
    logger = logging.getLogger(LIBRARY_LOGGER)
    formatter = CloudLoggingFormatter(settings.project or "")  # "": known to be unknown
    with _INSTALL_LOCK:
        existing = [h for h in logger.handlers if isinstance(h, _LibraryHandler)]
        handler = existing[0] if existing else _LibraryHandler()
        handler.setFormatter(formatter)
        if not existing:
            logger.addHandler(handler)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
    if not existing and not settings.project:
        logger.warning(
            "structured logs carry no trace: the project ID is unknown; set "
            "GOOGLE_CLOUD_PROJECT so that log lines group under their request"
        )


def configure_logging(
    logger: logging.Logger | str | None = None,
    *,
    settings: Settings | None = None,
    level: int | str | None = logging.INFO,
) -> logging.Handler:
    """Writes a logger's records the way the library writes its own: opt-in for the app.

    JSON lines for Cloud Logging (:class:`CloudLoggingFormatter`) where the settings
    say logs are structured (App Engine, Cloud Run, or
    ``CLOUDTASKS_DEFERRED_STRUCTURED_LOGS=true``), readable lines
    (:class:`PlainFormatter`) elsewhere; on standard error. Call it once at startup::

        from cloudtasks_deferred.logs import configure_logging

        configure_logging()              # the root logger: every record of the app

    Calling it again replaces the formatter rather than adding a second handler.

    Args:
        logger: The logger (or its name) to configure; ``None`` for the root logger.
        settings: Decide the format and name the project; ``Settings.from_env()``
            when ``None``.
        level: Set on the logger; ``None`` leaves its level alone.

    Returns:
        The handler it added (or reused).

    Raises:
        ConfigurationError: ``settings`` is ``None`` and the environment is invalid.
    """
    settings = settings if settings is not None else Settings.from_env()
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
    formatter: logging.Formatter = (
        CloudLoggingFormatter(settings.project or "")
        if settings.structured_logs
        else PlainFormatter()
    )
    with _INSTALL_LOCK:
        existing = [h for h in target.handlers if type(h) is _StderrHandler]
        handler = existing[0] if existing else _StderrHandler()
        handler.setFormatter(formatter)
        if not existing:
            target.addHandler(handler)
    if level is not None:
        target.setLevel(level)
    return handler
