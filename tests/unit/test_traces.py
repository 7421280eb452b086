"""Trace headers: parsed by hand or by OpenTelemetry, never breaking a request, carried on."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cloudtasks_deferred import traces
from cloudtasks_deferred.traces import TraceContext

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


@pytest.fixture(params=["by hand", "OpenTelemetry"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: without OpenTelemetry loaded, and with it (this module imports it)."""
    if request.param == "by hand":
        monkeypatch.delitem(sys.modules, "opentelemetry.trace")
    assert traces._opentelemetry_loaded() is (request.param == "OpenTelemetry")
    return str(request.param)


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process's OpenTelemetry SDK, recording spans (set once: OpenTelemetry allows one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


# --- W3C traceparent -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, TraceContext(TRACE, SPAN, sampled=True)),
        (f"00-{TRACE}-{SPAN}-00", TraceContext(TRACE, SPAN, sampled=False)),
        (f"00-{TRACE}-{SPAN}-03", TraceContext(TRACE, SPAN, sampled=True)),
        (f"  {TRACEPARENT}\t", TraceContext(TRACE, SPAN, sampled=True)),
        # A later version may add fields: its known prefix is read.
        (f"01-{TRACE}-{SPAN}-01-what-comes-next", TraceContext(TRACE, SPAN, sampled=True)),
    ],
)
def test_traceparent(value: str, expected: TraceContext) -> None:
    assert TraceContext.from_traceparent(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE.upper()}-{SPAN}-01",  # hex is lowercase
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00-{TRACE}-{SPAN}-0g",
        f"00_{TRACE}_{SPAN}_01",
        f"{TRACEPARENT}, {TRACEPARENT}",  # two headers joined by the server
        f"00-{TRACE}-{SPAN}-01" + "-x" * 300,
        "00-\u0664bf92f3577b34da6a3ce929d0e073-00f067aa0ba902b7-01",  # a non-ASCII digit
    ],
)
def test_malformed_traceparent_is_ignored(value: str) -> None:
    assert TraceContext.from_traceparent(value) is None


# --- X-Cloud-Trace-Context -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{TRACE}/1;o=1", TraceContext(TRACE, "0000000000000001", sampled=True)),
        (f"{TRACE}/12345678901234567890;o=0", TraceContext(TRACE, "ab54a98ceb1f0ad2", False)),
        (f"{TRACE}/{2**64 - 1}", TraceContext(TRACE, "ffffffffffffffff", sampled=False)),
        (f"{TRACE}", TraceContext(TRACE, None, sampled=False)),
        (f"{TRACE};o=1", TraceContext(TRACE, None, sampled=True)),
        (f"{TRACE}/0;o=1", TraceContext(TRACE, None, sampled=True)),  # span 0: none
        (f"{TRACE.upper()}/5;o=1", TraceContext(TRACE, "0000000000000005", sampled=True)),
    ],
)
def test_cloud_trace_context(value: str, expected: TraceContext) -> None:
    assert TraceContext.from_cloud_trace_context(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "x", f"{'0' * 32}/1;o=1", f"{TRACE}/{2**64}", f"{TRACE}/-1", f"{TRACE}/1;o=", TRACE[:31]],
)
def test_malformed_cloud_trace_context_is_ignored(value: str) -> None:
    assert TraceContext.from_cloud_trace_context(value) is None


# --- A request's headers ---------------------------------------------------------------


def test_traceparent_wins_over_the_cloud_header(parser: str) -> None:
    environ = {
        "HTTP_TRACEPARENT": TRACEPARENT,
        "HTTP_X_CLOUD_TRACE_CONTEXT": f"{'1' * 32}/7;o=0",
    }
    assert traces.from_environ(environ) == TraceContext(TRACE, SPAN, sampled=True)


def test_the_cloud_header_alone(parser: str) -> None:
    environ = {"HTTP_X_CLOUD_TRACE_CONTEXT": f"{TRACE}/1;o=1"}
    assert traces.from_environ(environ) == TraceContext(TRACE, "0000000000000001", True)


def test_a_malformed_traceparent_falls_back_to_the_cloud_header(parser: str) -> None:
    environ = {
        "HTTP_TRACEPARENT": f"00-{TRACE}-{'0' * 16}-01",
        "HTTP_X_CLOUD_TRACE_CONTEXT": f"{TRACE}/1;o=1",
    }
    assert traces.from_environ(environ) == TraceContext(TRACE, "0000000000000001", True)


def test_no_headers_no_trace(parser: str) -> None:
    assert traces.from_environ({"HTTP_HOST": "example.com"}) is None


@given(
    traceparent=st.one_of(st.none(), st.text(max_size=80), st.binary(max_size=60)),
    cloud=st.one_of(st.none(), st.text(max_size=80), st.integers()),
)
def test_any_header_values_never_raise(traceparent: object, cloud: object) -> None:
    for loaded in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not loaded:
                patch.delitem(sys.modules, "opentelemetry.trace")
            environ = {"HTTP_TRACEPARENT": traceparent, "HTTP_X_CLOUD_TRACE_CONTEXT": cloud}
            found = traces.from_environ({k: v for k, v in environ.items() if v is not None})
            assert found is None or len(found.trace_id) == 32


# --- The trace a task carries ----------------------------------------------------------


def test_a_child_span_keeps_the_trace_and_the_sampling_decision() -> None:
    parent = TraceContext(TRACE, SPAN, sampled=False)
    child = parent.child()
    assert (child.trace_id, child.sampled) == (TRACE, False)
    assert child.span_id is not None
    assert len(child.span_id) == 16
    assert child.span_id not in (SPAN, "0" * 16)
    assert child.span_id != parent.child().span_id


def test_outside_a_trace_a_task_gets_no_header(parser: str) -> None:
    assert traces.current_trace() is None
    assert traces.task_headers() == {}


@pytest.mark.parametrize("sampled", [True, False])
def test_inside_a_trace_a_task_gets_a_child_span(parser: str, sampled: bool) -> None:
    request = TraceContext(TRACE, SPAN, sampled=sampled)
    with traces.tracing(request):
        assert traces.current_trace() == request
        headers = traces.task_headers()
    carried = TraceContext.from_traceparent(headers["traceparent"])
    assert carried is not None
    assert (carried.trace_id, carried.sampled) == (TRACE, sampled)
    assert carried.span_id != SPAN
    assert traces.current_trace() is None


def test_an_opentelemetry_span_is_the_trace_and_the_task_gets_a_producer_span(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    tracer = trace.get_tracer("test")
    # The app's span wins over the request's headers read by the library.
    with (
        traces.tracing(TraceContext("1" * 32, "2" * 16, sampled=False)),
        tracer.start_as_current_span("view") as view,
    ):
        context = view.get_span_context()
        current = traces.current_trace()
        headers = traces.task_headers()
    assert current == TraceContext(f"{context.trace_id:032x}", f"{context.span_id:016x}", True)
    carried = TraceContext.from_traceparent(headers["traceparent"])
    (producer,) = [span for span in spans.get_finished_spans() if span.name != "view"]
    assert producer.kind is trace.SpanKind.PRODUCER
    assert producer.parent is not None
    assert producer.parent.span_id == context.span_id
    assert carried == TraceContext(
        f"{context.trace_id:032x}", f"{producer.context.span_id:016x}", sampled=True
    )


def test_with_opentelemetry_loaded_the_request_trace_is_written_by_its_propagator(
    spans: InMemorySpanExporter,
) -> None:
    # No span of the app's: the request's trace (from its headers) is carried on.
    request = TraceContext(TRACE, SPAN, sampled=True)
    with traces.tracing(request):
        headers = traces.task_headers()
    carried = TraceContext.from_traceparent(headers["traceparent"])
    assert carried is not None
    assert (carried.trace_id, carried.sampled) == (TRACE, True)
    assert carried.span_id != SPAN


def test_a_request_trace_read_by_opentelemetry_follows_its_propagators(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    # An app that configured no W3C trace propagator: only Google's header is read.
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", W3CBaggagePropagator())
    environ = {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_X_CLOUD_TRACE_CONTEXT": f"{'1' * 32}/7"}
    assert traces.from_environ(environ) == TraceContext("1" * 32, "0000000000000007", False)


def test_a_broken_propagator_never_fails_a_defer(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry import propagate

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("propagator bug")

    monkeypatch.setattr(propagate, "inject", broken)
    with traces.tracing(TraceContext(TRACE, SPAN, sampled=True)):
        assert traces.task_headers() == {}
    assert "cannot write the trace into the task" in caplog.text
