"""Structured logs: Cloud Logging's keys, where the library writes them, and the app's opt-in."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred import Client, Handler, Settings, deferred
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.logs import (
    LIBRARY_LOGGER,
    CloudLoggingFormatter,
    PlainFormatter,
    configure_logging,
    structure_library_logs,
)
from cloudtasks_deferred.receive.context import TaskInfo, running
from cloudtasks_deferred.settings import Platform
from cloudtasks_deferred.testing import TEST_SETTINGS, in_memory_queue
from cloudtasks_deferred.traces import TraceContext, tracing
from tests import tasks

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TASK = TaskInfo(queue_name="mail", task_name="t-123", retry_count=2)
STRUCTURED = dataclasses.replace(TEST_SETTINGS, structured_logs=True)


def record(
    level: int = logging.INFO,
    msg: str = "hello %s",
    *args: Any,
    exc_info: Any = None,
    extra: dict[str, Any] | None = None,
) -> logging.LogRecord:
    logger = logging.getLogger("tests.logs")
    return logger.makeRecord(
        logger.name, level, __file__, 42, msg, args or ("world",), exc_info, "where", extra
    )


def formatted(formatter: logging.Formatter, rec: logging.LogRecord) -> dict[str, Any]:
    line = formatter.format(rec)
    assert "\n" not in line  # one entry per line, whatever the message holds
    parsed: dict[str, Any] = json.loads(line)
    return parsed


# --- Settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"K_SERVICE": "svc"}, True),
        ({"CLOUD_RUN_JOB": "job"}, True),
        ({"GAE_ENV": "standard"}, True),
        ({"K_SERVICE": "svc", "CLOUDTASKS_DEFERRED_STRUCTURED_LOGS": "false"}, False),
        ({"K_SERVICE": "svc", "CLOUDTASKS_DEFERRED_STRUCTURED_LOGS": "auto"}, True),
        ({"CLOUDTASKS_DEFERRED_STRUCTURED_LOGS": "auto"}, False),
        ({"CLOUDTASKS_DEFERRED_STRUCTURED_LOGS": "TRUE"}, True),
    ],
)
def test_structured_logs_on_google_cloud_or_when_enabled(
    environ: dict[str, str], expected: bool
) -> None:
    assert Settings.from_env(environ).structured_logs is expected


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CLOUDTASKS_DEFERRED_STRUCTURED_LOGS='json'"):
        Settings.from_env({"CLOUDTASKS_DEFERRED_STRUCTURED_LOGS": "json"})


def test_settings_built_by_hand_leave_logs_alone() -> None:
    assert Settings(platform=Platform.CLOUD_RUN).structured_logs is False


# --- The JSON ---------------------------------------------------------------------------


def test_the_keys_cloud_logging_reads() -> None:
    with tracing(TraceContext(TRACE, SPAN, sampled=True)), running(TASK):
        entry = formatted(CloudLoggingFormatter("my-project"), record())
    assert entry["message"] == "hello world"
    assert entry["severity"] == "INFO"
    assert entry["logger"] == "tests.logs"
    assert entry["time"].endswith("+00:00")
    assert entry["logging.googleapis.com/sourceLocation"] == {
        "file": __file__,
        "line": 42,
        "function": "where",
    }
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{TRACE}"
    assert entry["logging.googleapis.com/spanId"] == SPAN
    assert entry["logging.googleapis.com/trace_sampled"] is True
    assert entry["logging.googleapis.com/labels"] == {
        "queue_name": "mail",
        "task_name": "t-123",
        "attempt": "3",
    }


def test_outside_a_task_and_a_trace_no_trace_keys_and_no_labels() -> None:
    entry = formatted(CloudLoggingFormatter("my-project"), record())
    assert not [key for key in entry if "trace" in key or "labels" in key or "span" in key]


def test_without_a_project_no_trace_keys() -> None:
    with tracing(TraceContext(TRACE, SPAN, sampled=True)):
        entry = formatted(CloudLoggingFormatter(""), record())
    assert "logging.googleapis.com/trace" not in entry
    assert "logging.googleapis.com/spanId" not in entry


def test_the_project_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    assert CloudLoggingFormatter().project == "env-project"


def test_a_trace_without_a_span_has_no_span_key() -> None:
    with tracing(TraceContext(TRACE, None, sampled=False)):
        entry = formatted(CloudLoggingFormatter("p"), record())
    assert entry["logging.googleapis.com/trace"] == f"projects/p/traces/{TRACE}"
    assert entry["logging.googleapis.com/trace_sampled"] is False
    assert "logging.googleapis.com/spanId" not in entry


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (5, "DEFAULT"),
        (25, "INFO"),
        (45, "ERROR"),
        (60, "CRITICAL"),
    ],
)
def test_severity(level: int, severity: str) -> None:
    assert formatted(CloudLoggingFormatter("p"), record(level))["severity"] == severity


def test_the_traceback_is_part_of_the_message() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        rec = record(logging.ERROR, "failed:\n%s", "two lines", exc_info=sys.exc_info())
    entry = formatted(CloudLoggingFormatter("p"), rec)
    assert entry["message"].startswith("failed:\ntwo lines\nTraceback (most recent call last):")
    assert entry["message"].endswith("ValueError: bad value")
    assert "exc_info" not in entry


def test_extras_and_static_labels_are_kept_under_the_tasks() -> None:
    formatter = CloudLoggingFormatter("p", labels={"service": "web", "queue_name": "x"})
    with running(TASK):
        entry = formatted(formatter, record(extra={"user": "ada"}))
    assert entry["user"] == "ada"
    assert entry["logging.googleapis.com/labels"]["service"] == "web"
    assert entry["logging.googleapis.com/labels"]["queue_name"] == "mail"


def test_plain_lines_name_the_task_and_the_trace() -> None:
    formatter = PlainFormatter("%(levelname)s %(name)s: %(message)s")
    assert formatter.format(record()) == "INFO tests.logs: hello world"
    with tracing(TraceContext(TRACE, SPAN, sampled=True)), running(TASK):
        line = formatter.format(record())
    assert line == f"INFO tests.logs: hello world [queue=mail task=t-123 attempt=3 trace={TRACE}]"


def test_json_fields_are_keys_of_their_own() -> None:
    entry = formatted(CloudLoggingFormatter("p"), record(extra={"json_fields": {"a": 1}}))
    assert entry["a"] == 1
    assert "json_fields" not in entry


# --- Where the library writes ----------------------------------------------------------


@contextlib.contextmanager
def app_without_logging() -> Iterator[None]:
    """An app that configured no logging: the root logger has no handler (pytest's own,
    which capture records for its reports and caplog, step aside for the block)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


def test_a_client_on_google_cloud_writes_the_librarys_records_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    library = logging.getLogger(LIBRARY_LOGGER)
    with app_without_logging():
        Client(dataclasses.replace(STRUCTURED, project="p"))
        Client(dataclasses.replace(STRUCTURED, project="p"))  # once per process
        logging.getLogger("cloudtasks_deferred.receive.handler").info("ran it")
        assert logging.getLogger().handlers == []  # the root logger is the app's
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["ran it"]
    assert library.propagate is True


def test_where_the_app_configured_logging_its_handlers_write_the_librarys_records(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    Client(dataclasses.replace(STRUCTURED, project="p"))
    logging.getLogger("cloudtasks_deferred.receive.handler").warning("refused it")
    assert capsys.readouterr().err == ""  # not written twice
    assert [r.getMessage() for r in caplog.records] == ["refused it"]


def test_without_structured_logs_the_library_leaves_logging_alone() -> None:
    library = logging.getLogger(LIBRARY_LOGGER)
    before = (list(library.handlers), library.level, library.propagate)
    Client(TEST_SETTINGS)
    assert (list(library.handlers), library.level, library.propagate) == before


def test_a_level_the_app_set_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger(LIBRARY_LOGGER).setLevel(logging.WARNING)
    structure_library_logs(dataclasses.replace(STRUCTURED, project="p"))
    with app_without_logging():
        logging.getLogger("cloudtasks_deferred.x").info("quiet")
        logging.getLogger("cloudtasks_deferred.x").warning("loud")
    assert [json.loads(x)["message"] for x in capsys.readouterr().err.splitlines()] == ["loud"]


def test_without_a_project_it_says_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process where no client has structured the library's logs yet.
    monkeypatch.setattr(logging.getLogger(LIBRARY_LOGGER), "handlers", [])
    with app_without_logging():
        structure_library_logs(dataclasses.replace(STRUCTURED, project=None))
    [line] = capsys.readouterr().err.splitlines()
    assert "GOOGLE_CLOUD_PROJECT" in json.loads(line)["message"]


def test_the_library_does_not_load_the_json_formatter_locally() -> None:
    code = textwrap.dedent(
        """
        import sys
        from cloudtasks_deferred import Handler, wrap_wsgi_app
        wrap_wsgi_app(lambda environ, start_response: [])
        Handler().current_client()
        print(sorted(m for m in sys.modules
                     if m.startswith(("pythonjsonlogger", "cloudtasks_deferred.logs"))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"CLOUDTASKS_DEFERRED_LOCATION": "us-central1", "PATH": ""},
    )
    assert result.stdout.strip() == "[]"


# --- The app's own loggers --------------------------------------------------------------


def test_configure_logging_gives_the_apps_records_the_same_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = configure_logging(settings=dataclasses.replace(STRUCTURED, project="p"))
    assert configure_logging(settings=TEST_SETTINGS) is handler  # replaced, not added twice
    assert logging.getLogger().level == logging.INFO
    configure_logging(settings=dataclasses.replace(STRUCTURED, project="p"))
    with tracing(TraceContext(TRACE, SPAN, sampled=True)), running(TASK):
        logging.getLogger("myapp.mail").info("sent")
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert (entry["message"], entry["logger"]) == ("sent", "myapp.mail")
    assert entry["logging.googleapis.com/trace"] == f"projects/p/traces/{TRACE}"
    assert entry["logging.googleapis.com/labels"]["task_name"] == "t-123"


def test_configure_logging_locally_writes_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("myapp", settings=TEST_SETTINGS, level=None)
    logging.getLogger("myapp").warning("careful")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING myapp: careful")
    logging.getLogger("myapp").handlers.clear()


def test_the_missing_project_is_said_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger(LIBRARY_LOGGER), "handlers", [])
    with app_without_logging():
        for _ in range(3):
            Client(dataclasses.replace(STRUCTURED, project=None))
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_the_handlers_lines_for_a_task_carry_its_labels_and_its_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter("p"))
    library = logging.getLogger(LIBRARY_LOGGER)
    library.setLevel(logging.INFO)
    monkeypatch.setattr(library, "handlers", [handler])
    with in_memory_queue() as queue:
        with tracing(TraceContext(TRACE, SPAN, sampled=True)):
            deferred.defer(tasks.record, 1)
        [task] = queue.tasks
        assert queue.run_pending() == [HTTPStatus.OK]
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    # The task's headers, then its report: both after authentication, both the task's.
    headers_line, report = [e for e in entries if e["logger"].endswith("receive.handler")]
    task_name = task.name.rsplit("/", 1)[-1]
    carried = dict(task.http_request.headers)["traceparent"].split("-")[2]
    for entry in (headers_line, report):
        assert entry["logging.googleapis.com/labels"] == {
            "queue_name": "default",
            "task_name": task_name,
            "attempt": "1",
        }
        assert entry["logging.googleapis.com/trace"] == f"projects/p/traces/{TRACE}"
        assert entry["logging.googleapis.com/spanId"] == carried
    assert "ran tests.tasks.record" in report["message"]


def test_a_refused_request_is_logged_with_its_trace_but_no_task_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter("p"))
    monkeypatch.setattr(logging.getLogger(LIBRARY_LOGGER), "handlers", [handler])
    environ = {
        "REQUEST_METHOD": "POST",
        "HTTP_TRACEPARENT": f"00-{TRACE}-{SPAN}-01",
        "HTTP_X_CLOUDTASKS_TASKNAME": "forged",  # unauthenticated: not the request's task
        "wsgi.input": io.BytesIO(b"x"),
        "CONTENT_LENGTH": "1",
    }
    _, status, _ = Handler(TEST_SETTINGS).post(environ)
    assert status == HTTPStatus.FORBIDDEN
    [entry] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entry["severity"] == "WARNING"
    assert entry["logging.googleapis.com/spanId"] == SPAN
    assert "logging.googleapis.com/labels" not in entry
