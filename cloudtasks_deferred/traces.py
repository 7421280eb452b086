"""The trace a request carries, and the one a task it defers carries on.

Cloud Run and App Engine pass every request's trace in two headers: W3C
``traceparent: 00-TRACE_ID-SPAN_ID-FLAGS`` (Trace Context, https://www.w3.org/TR/trace-context/)
and Google's ``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`` (the span ID in decimal).
:func:`from_environ` reads them, ``traceparent`` first; the task handler and
``wrap_wsgi_app`` make the result the request's :func:`current_trace` with
:func:`tracing`. ``defer`` inside such a request adds :func:`task_headers` to the task:
a ``traceparent`` for a child span of the request's, so the task's log lines land in
the same trace (Cloud Logging groups lines by ``logging.googleapis.com/trace``).
A header that does not parse is ignored: it never fails a request.

OpenTelemetry is used instead of this module's own parsing once the app has loaded
it (``opentelemetry.trace`` is imported: an app that traces with OpenTelemetry has
done so at startup). Then the current span, the one the app's instrumentation opened
for the request or any span inside it, is the trace; the incoming headers are read,
and the task's written, by the app's configured propagators (``OTEL_PROPAGATORS``);
and ``defer`` opens a ``PRODUCER`` span of its own, whose context the task carries.
The library itself never imports OpenTelemetry: google-api-core installs its API with
every deployment, and importing it would add 25-55 ms (measured here) to a cold start
only to parse a header this module parses in microseconds.

This module is part of the base layer: it imports nothing of the library, so that the
receiving side (which reads the trace) and the sending side (which writes it) share
it without importing each other.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = [
    "TraceContext",
    "current_trace",
    "from_environ",
    "task_headers",
    "tracing",
]

# W3C Trace Context, version 00: lowercase hex, all-zero IDs invalid, version ff invalid;
# a later version may append fields after a dash.
_TRACEPARENT: Final = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-"
    r"(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?"
)
# TRACE_ID[/SPAN_ID][;o=OPTIONS]: the span ID is a decimal unsigned 64-bit integer.
_CLOUD_TRACE: Final = re.compile(
    r"(?P<trace>[0-9a-fA-F]{32})(?:/(?P<span>[0-9]{1,20}))?(?:;o=(?P<options>[0-9]+))?"
)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_MAX_HEADER: Final = 512  # longer values are not trace headers; never parsed

_logger = logging.getLogger(__name__)

_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "cloudtasks_deferred_trace", default=None
)


@dataclasses.dataclass(frozen=True)
class TraceContext:
    """A position in a distributed trace: a trace, a span in it, and its sampling flag.

    Attributes:
        trace_id: 32 lowercase hex digits, never all zeros.
        span_id: 16 lowercase hex digits (never all zeros), or ``None`` when the
            header named no span (``X-Cloud-Trace-Context: TRACE_ID``).
        sampled: Whether the caller records this trace (``traceparent`` flag
            ``01``, ``X-Cloud-Trace-Context`` ``o=1``).
    """

    trace_id: str
    span_id: str | None
    sampled: bool

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` header for this span, or ``None`` without a span."""
        if self.span_id is None:
            return None
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """A new span in the same trace, with the same sampling decision."""
        return dataclasses.replace(self, span_id=_new_span_id())

    @classmethod
    def from_traceparent(cls, value: str) -> TraceContext | None:
        """Parses a W3C ``traceparent`` value; ``None`` if it is not a valid one.

        Args:
            value: The header's value.
        """
        if not isinstance(value, str) or len(value) > _MAX_HEADER:
            return None
        match = _TRACEPARENT.fullmatch(value.strip(" \t"))
        if match is None:
            return None
        version, trace, span = match["version"], match["trace"], match["span"]
        if version == "ff" or (version == "00" and match["rest"] is not None):
            return None
        if trace == _ZERO_TRACE or span == _ZERO_SPAN:
            return None
        return cls(trace, span, bool(int(match["flags"], 16) & 1))

    @classmethod
    def from_cloud_trace_context(cls, value: str) -> TraceContext | None:
        """Parses an ``X-Cloud-Trace-Context`` value; ``None`` if it is not a valid one.

        Args:
            value: The header's value, ``TRACE_ID/SPAN_ID;o=OPTIONS`` (span and options
                optional; the span ID decimal).
        """
        if not isinstance(value, str) or len(value) > _MAX_HEADER:
            return None
        match = _CLOUD_TRACE.fullmatch(value.strip(" \t"))
        if match is None:
            return None
        trace = match["trace"].lower()
        if trace == _ZERO_TRACE:
            return None
        span = None
        if match["span"] is not None:
            number = int(match["span"])
            if number >= 1 << 64:
                return None
            span = f"{number:016x}" if number else None
        sampled = match["options"] is not None and bool(int(match["options"]) & 1)
        return cls(trace, span, sampled)


def from_environ(environ: Mapping[str, Any]) -> TraceContext | None:
    """Reads the trace of a WSGI request: ``traceparent``, else ``X-Cloud-Trace-Context``.

    With OpenTelemetry loaded (see the module docstring), its propagators read the
    request's headers first. Malformed headers are ignored; this never raises.

    Args:
        environ: The request's WSGI environ.

    Returns:
        The request's trace, or ``None`` when it carries none that parses.
    """
    try:
        found = None
        if _opentelemetry_loaded():
            found = _extract_with_opentelemetry(environ)
        else:
            traceparent = environ.get("HTTP_TRACEPARENT")
            if isinstance(traceparent, str):
                found = TraceContext.from_traceparent(traceparent)
        if found is None:
            cloud = environ.get("HTTP_X_CLOUD_TRACE_CONTEXT")
            if isinstance(cloud, str):
                found = TraceContext.from_cloud_trace_context(cloud)
    except Exception:  # a broken header or propagator must never fail a request
        return None
    return found


def current_trace() -> TraceContext | None:
    """The trace of the code running now: the current OpenTelemetry span's when the app
    uses OpenTelemetry and one is open, else the request's or task's (:func:`tracing`)."""
    if _opentelemetry_loaded():
        span = _opentelemetry_span()
        if span is not None:
            return span
    return _current.get()


@contextlib.contextmanager
def tracing(trace: TraceContext | None) -> Iterator[TraceContext | None]:
    """Makes ``trace`` the :func:`current_trace` for the block's context.

    Args:
        trace: The request's trace (``None``: the block has none).
    """
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def task_headers() -> dict[str, str]:
    """The headers that carry the current trace into a task deferred now.

    Returns:
        ``{"traceparent": ...}`` for a new child span of :func:`current_trace` (with
        OpenTelemetry, whatever its propagators write for a ``PRODUCER`` span opened
        for the task), or an empty dict outside a trace.
    """
    if _opentelemetry_loaded():
        try:
            return _inject_with_opentelemetry(_current.get())
        except Exception:  # the app's propagator broke: the task goes without its trace
            _logger.warning("cannot write the trace into the task", exc_info=True)
            return {}
    trace = _current.get()
    if trace is None:
        return {}
    traceparent = trace.child().traceparent
    return {"traceparent": traceparent} if traceparent else {}


def _new_span_id() -> str:
    while (span := os.urandom(8).hex()) == _ZERO_SPAN:  # pragma: no cover - 2**-64
        pass
    return span


# OpenTelemetry, once the app has loaded it. Its modules are imported in these
# functions only after _opentelemetry_loaded() says opentelemetry.trace is in
# sys.modules, so the imports below find them loaded and cost nothing.


def _opentelemetry_loaded() -> bool:
    return "opentelemetry.trace" in sys.modules


def _opentelemetry_span() -> TraceContext | None:
    from opentelemetry import trace  # optional (the otel extra): loaded by the app already

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return TraceContext(
        f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled
    )


def _extract_with_opentelemetry(environ: Mapping[str, Any]) -> TraceContext | None:
    from opentelemetry import propagate, trace  # optional (the otel extra): loaded by the app

    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_") and isinstance(value, str)
    }
    context = trace.get_current_span(propagate.extract(headers)).get_span_context()
    if not context.is_valid:
        return None
    return TraceContext(
        f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled
    )


def _inject_with_opentelemetry(request: TraceContext | None) -> dict[str, str]:
    from opentelemetry import propagate, trace  # optional (the otel extra): loaded by the app

    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        # A span of the app's: the task gets a PRODUCER span of its own under it.
        tracer = trace.get_tracer("cloudtasks_deferred")
        span = tracer.start_span("cloudtasks_deferred defer", kind=trace.SpanKind.PRODUCER)
        try:
            propagate.inject(carrier, context=trace.set_span_in_context(span))
        finally:
            span.end()
        return carrier
    if request is None:
        return carrier
    child = request.child()
    assert child.span_id is not None  # noqa: S101 - child() always names a span
    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=int(child.trace_id, 16),
            span_id=int(child.span_id, 16),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if child.sampled else 0),
        )
    )
    propagate.inject(carrier, context=trace.set_span_in_context(parent))
    return carrier
