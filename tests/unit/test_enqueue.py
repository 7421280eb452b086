"""The task proto defer() builds, field by field, for each option and target."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import tasks_v2

from cloudtasks_deferred import ConfigurationError, Settings
from cloudtasks_deferred.dev_key import DevKey
from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.tasks import CONTENT_TYPE, build_task
from cloudtasks_deferred.settings import Platform

NOW = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
PARENT = "projects/p/locations/us-central1/queues/default"
BODY = b"\x89CTD payload"
RUN = Settings(
    project="p",
    location="us-central1",
    base_url="https://svc-abc.a.run.app",
    service_account="invoker@p.iam.gserviceaccount.com",
)
GAE = Settings(
    project="p",
    location="us-central1",
    platform=Platform.APP_ENGINE,
    app_engine_service="default",
    app_engine_version="v7",
)


def build(settings: Settings = RUN, **options: Any) -> tasks_v2.Task:
    parsed, _ = split_options(options, now=NOW)
    return build_task(BODY, parsed, settings, parent=PARENT)


def test_http_task_for_cloud_run() -> None:
    task = build()
    assert task.name == ""
    assert "schedule_time" not in task
    assert "dispatch_deadline" not in task
    assert "app_engine_http_request" not in task
    request = task.http_request
    assert request.url == "https://svc-abc.a.run.app/_ah/queue/deferred"
    assert request.http_method == tasks_v2.HttpMethod.POST
    assert dict(request.headers) == {"Content-Type": CONTENT_TYPE}
    assert request.body == BODY
    assert request.oidc_token.service_account_email == "invoker@p.iam.gserviceaccount.com"
    assert request.oidc_token.audience == "https://svc-abc.a.run.app"
    assert "oauth_token" not in request


def test_http_task_url_joins_base_url_path() -> None:
    settings = dataclasses.replace(RUN, base_url="https://svc.example/app/")
    assert build(settings, _url="/custom/path").http_request.url == (
        "https://svc.example/app/custom/path"
    )


def test_http_task_audience_is_the_configured_one() -> None:
    settings = dataclasses.replace(RUN, audiences=("https://tasks.example.com",))
    assert build(settings).http_request.oidc_token.audience == "https://tasks.example.com"


def test_absolute_url_to_another_service_gets_that_origin_as_audience() -> None:
    task = build(_url="https://other-xyz.a.run.app/_ah/queue/deferred?x=1")
    assert task.http_request.url == "https://other-xyz.a.run.app/_ah/queue/deferred?x=1"
    assert task.http_request.oidc_token.audience == "https://other-xyz.a.run.app"


def test_absolute_url_makes_an_http_task_even_on_app_engine() -> None:
    settings = dataclasses.replace(GAE, service_account="invoker@p.iam.gserviceaccount.com")
    task = build(settings, _url="https://svc.example/run")
    assert task.http_request.url == "https://svc.example/run"
    assert "app_engine_http_request" not in task


def test_countdown_sets_schedule_time() -> None:
    task = build(_countdown=120)
    assert task.schedule_time == NOW + timedelta(seconds=120)


def test_eta_sets_schedule_time_naive_as_utc() -> None:
    task = build(_eta=datetime(2026, 3, 2, 8, 0))
    assert task.schedule_time == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_name_becomes_the_full_task_name() -> None:
    assert build(_name="welcome-mail-42").name == f"{PARENT}/tasks/welcome-mail-42"


def test_headers_merge_over_content_type() -> None:
    task = build(_headers={"X-Tenant": "acme", "Content-Type": "application/x-pickle"})
    assert dict(task.http_request.headers) == {
        "Content-Type": "application/x-pickle",
        "X-Tenant": "acme",
    }


@pytest.mark.parametrize("name", ["content-type", "CONTENT-TYPE", "Content-type"])
def test_a_content_type_in_any_case_replaces_the_default(name: str) -> None:
    for task in (build(_headers={name: "application/json"}), build(GAE, _headers={name: "a/b"})):
        request = task.http_request if "http_request" in task else task.app_engine_http_request
        assert [key.lower() for key in request.headers] == ["content-type"]
        assert dict(request.headers)[name] in ("application/json", "a/b")


def test_dispatch_deadline() -> None:
    assert build(_dispatch_deadline=600).dispatch_deadline == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("settings", "seconds", "message"),
    [
        (RUN, 14, "15s to 1800s for HTTP tasks"),
        (RUN, 1801, "15s to 1800s for HTTP tasks"),
        (GAE, 86401, "15s to 86400s for App Engine tasks"),
    ],
)
def test_dispatch_deadline_range_depends_on_the_target(
    settings: Settings, seconds: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(settings, _dispatch_deadline=seconds)


def test_app_engine_deadline_may_reach_24_hours() -> None:
    assert build(GAE, _dispatch_deadline=86400).dispatch_deadline == timedelta(hours=24)


def test_target_on_http_task_is_refused() -> None:
    with pytest.raises(ValueError, match="_target='worker' routes App Engine tasks"):
        build(_target="worker")


def test_app_engine_task_routes_back_to_the_enqueuing_version() -> None:
    task = build(GAE)
    assert "http_request" not in task
    request = task.app_engine_http_request
    assert request.relative_uri == "/_ah/queue/deferred"
    assert request.http_method == tasks_v2.HttpMethod.POST
    assert dict(request.headers) == {"Content-Type": CONTENT_TYPE}
    assert request.body == BODY
    assert request.app_engine_routing.service == "default"
    assert request.app_engine_routing.version == "v7"
    assert request.app_engine_routing.instance == ""


@pytest.mark.parametrize(
    ("target", "routing"),
    [
        ("worker", ("worker", "", "")),
        ("v2.worker", ("worker", "v2", "")),
        ("3.v2.worker", ("worker", "v2", "3")),
    ],
)
def test_app_engine_target_overrides_routing(target: str, routing: tuple[str, str, str]) -> None:
    got = build(GAE, _target=target).app_engine_http_request.app_engine_routing
    assert (got.service, got.version, got.instance) == routing


def test_app_engine_custom_url() -> None:
    task = build(GAE, _url="/custom/path", _headers={"X-A": "b"})
    assert task.app_engine_http_request.relative_uri == "/custom/path"
    assert dict(task.app_engine_http_request.headers) == {"Content-Type": CONTENT_TYPE, "X-A": "b"}


def test_no_target_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="set CLOUDTASKS_DEFERRED_BASE_URL"):
        build(Settings(project="p", location="us-central1"))


def test_http_task_without_service_account_is_a_configuration_error() -> None:
    settings = dataclasses.replace(RUN, service_account=None)
    with pytest.raises(ConfigurationError, match="CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT"):
        build(settings)


def test_dev_mode_puts_a_signed_token_in_the_headers_instead_of_oidc_token() -> None:
    key = DevKey.generate()
    settings = dataclasses.replace(RUN, dev_mode=True)
    parsed, _ = split_options({"_countdown": 60}, now=NOW)
    minted: list[tuple[str, datetime]] = []

    def mint(audience: str, valid_from: datetime) -> str:
        minted.append((audience, valid_from))
        return key.mint(email="dev@x", audience=audience, valid_from=valid_from)

    task = build_task(BODY, parsed, settings, parent=PARENT, dev_token=mint)
    assert "oidc_token" not in task.http_request
    assert task.http_request.headers["Authorization"].startswith("Bearer ey")
    assert minted == [("https://svc-abc.a.run.app", NOW + timedelta(seconds=60))]


def test_schedule_time_keeps_microseconds() -> None:
    eta = datetime(2026, 3, 2, 8, 0, 0, 123456, tzinfo=UTC)
    task = build(_eta=eta)
    assert task.schedule_time == eta
    assert tasks_v2.Task.pb(task).schedule_time.nanos == 123456000
