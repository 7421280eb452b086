"""defer() options: every option parsed, every bad value refused with its name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cloudtasks_deferred import TaskRetryOptions
from cloudtasks_deferred.enqueue.options import DEFAULT_URL, TaskOptions, split_options

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def parse(**kwargs: Any) -> TaskOptions:
    options, _ = split_options(kwargs, now=NOW)
    return options


def test_options_never_reach_the_callable() -> None:
    options, call_kwargs = split_options(
        {"a": 1, "b": None, "_countdown": 5, "_queue": "mail", "_headers": {"X-A": "1"}}, now=NOW
    )
    assert call_kwargs == {"a": 1, "b": None}
    assert options.schedule_time == NOW + timedelta(seconds=5)
    assert options.queue == "mail"
    assert options.headers == {"X-A": "1"}


def test_defaults() -> None:
    options = parse()
    assert options == TaskOptions()
    assert options.url == DEFAULT_URL == "/_ah/queue/deferred"
    assert options.schedule_time is None


def test_calls_without_options_keep_their_kwargs() -> None:
    options, call_kwargs = split_options({"a": 1})
    assert options == TaskOptions()
    assert call_kwargs == {"a": 1}


def test_none_means_default_as_in_the_legacy_api() -> None:
    assert parse(_url=None, _queue=None, _countdown=None) == TaskOptions()


def test_a_mistyped_option_set_to_none_is_refused_not_dropped() -> None:
    # Filtering None before checking names let _countdwn=None vanish silently.
    with pytest.raises(TypeError, match="unknown option _countdwn"):
        split_options({"_countdwn": None, "x": 1}, now=NOW)


def test_option_errors_never_quote_a_value_that_may_be_a_secret() -> None:
    with pytest.raises(TypeError) as unknown:
        parse(_api_token="hunter2-token")
    assert "_api_token" in str(unknown.value)
    assert "hunter2" not in str(unknown.value)
    with pytest.raises(TypeError) as header:
        parse(_headers={"X-Api-Key": b"hunter2-key"})
    assert "'X-Api-Key'" in str(header.value)
    assert "hunter2" not in str(header.value)


def test_countdown_schedules_relative_to_now() -> None:
    assert parse(_countdown=90).schedule_time == NOW + timedelta(seconds=90)
    assert parse(_countdown=0.5).schedule_time == NOW + timedelta(seconds=0.5)


def test_countdown_reads_the_clock_when_no_now_is_given() -> None:
    before = datetime.now(UTC)
    options, _ = split_options({"_countdown": 60})
    assert options.schedule_time is not None
    assert before + timedelta(seconds=60) <= options.schedule_time
    assert options.schedule_time <= datetime.now(UTC) + timedelta(seconds=60)


def test_naive_eta_is_utc_and_aware_eta_is_converted() -> None:
    naive = datetime(2026, 1, 2, 8, 30)
    assert parse(_eta=naive).schedule_time == datetime(2026, 1, 2, 8, 30, tzinfo=UTC)
    paris = timezone(timedelta(hours=1))
    aware = datetime(2026, 1, 2, 9, 30, tzinfo=paris)
    assert parse(_eta=aware).schedule_time == datetime(2026, 1, 2, 8, 30, tzinfo=UTC)


def test_past_eta_is_allowed() -> None:
    assert parse(_eta=NOW - timedelta(days=3)).schedule_time == NOW - timedelta(days=3)


def test_dispatch_deadline_accepts_seconds_or_timedelta() -> None:
    assert parse(_dispatch_deadline=60).dispatch_deadline == timedelta(seconds=60)
    assert parse(_dispatch_deadline=timedelta(minutes=2)).dispatch_deadline == timedelta(minutes=2)


def test_target_forms() -> None:
    for target in ("worker", "v2.worker", "1.v2.worker"):
        assert parse(_target=target).target == target


def test_absolute_url() -> None:
    assert parse(_url="https://other.example/tasks").is_absolute_url
    assert not parse(_url="/custom/path").is_absolute_url


def test_retry_options_and_transactional() -> None:
    retry = TaskRetryOptions(task_retry_limit=3)
    options = parse(_retry_options=retry, _transactional=True)
    assert options.retry_options is retry
    assert options.transactional is True


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"_countdwn": 5}, TypeError, "unknown option _countdwn; did you mean _countdown?"),
        ({"_countdwn": None}, TypeError, "unknown option _countdwn; did you mean _countdown?"),
        ({"_priority": 1}, TypeError, "unknown option _priority. Keyword arguments"),
        ({"_countdown": 5, "_eta": NOW}, ValueError, "both _countdown and _eta"),
        ({"_countdown": -1}, ValueError, "_countdown must be a finite number of seconds >= 0"),
        ({"_countdown": float("inf")}, ValueError, "_countdown must be a finite"),
        ({"_countdown": float("nan")}, ValueError, "_countdown must be a finite"),
        ({"_countdown": "60"}, TypeError, "_countdown must be a number of seconds"),
        ({"_countdown": True}, TypeError, "_countdown must be a number of seconds"),
        ({"_countdown": 31 * 86400}, ValueError, "_countdown=2678400 is more than 30 days"),
        ({"_eta": NOW + timedelta(days=30, seconds=1)}, ValueError, "more than 30 days ahead"),
        ({"_eta": "2026-01-01"}, TypeError, "_eta must be a datetime"),
        ({"_name": "has space"}, ValueError, "_name='has space' is invalid"),
        ({"_name": "x" * 501}, ValueError, "_name="),
        ({"_name": 5}, TypeError, "_name must be a str"),
        ({"_queue": "my_queue"}, ValueError, "_queue='my_queue' is invalid"),
        ({"_target": "Bad.Service"}, ValueError, "_target='Bad.Service' is invalid"),
        ({"_target": "a.b.c.d"}, ValueError, "_target="),
        ({"_url": "relative/path"}, ValueError, "must be a path starting with '/'"),
        ({"_url": "/with space"}, ValueError, "whitespace or control characters"),
        ({"_url": "ftp://x/y"}, ValueError, "absolute http"),
        ({"_url": b"/bytes"}, TypeError, "_url must be a str"),
        ({"_headers": [("A", "b")]}, TypeError, "_headers must be a mapping"),
        (
            {"_headers": {"A": 1}},
            TypeError,
            "_headers must map str to str, got int for 'A'",
        ),
        ({"_headers": {1: "v"}}, TypeError, "got a name of type int"),
        ({"_headers": {"X-A": "1", "x-a": "2"}}, ValueError, "'x-a' is given twice"),
        ({"_headers": {"Bad Name": "v"}}, ValueError, "not a valid header name"),
        ({"_headers": {"X-A": "a\r\nInjected: 1"}}, ValueError, "line break"),
        ({"_headers": {"Host": "evil"}}, ValueError, "'Host' is set by Cloud Tasks"),
        ({"_headers": {"Authorization": "Bearer x"}}, ValueError, "is set by Cloud Tasks"),
        ({"_headers": {"X-CloudTasks-TaskName": "x"}}, ValueError, "is set by Cloud Tasks"),
        ({"_headers": {"x-appengine-queuename": "x"}}, ValueError, "is set by Cloud Tasks"),
        ({"_headers": {"X-Big": "v" * 82000}}, ValueError, "Cloud Tasks requires headers under"),
        ({"_transactional": "yes"}, TypeError, "_transactional must be True or False"),
        ({"_retry_options": {"task_retry_limit": 1}}, TypeError, "must be a TaskRetryOptions"),
        ({"_dispatch_deadline": -5}, ValueError, "_dispatch_deadline must be a finite"),
        ({"_dispatch_deadline": "10m"}, TypeError, "_dispatch_deadline must be a number"),
    ],
)
def test_bad_options_raise_naming_the_option(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse(**kwargs)
