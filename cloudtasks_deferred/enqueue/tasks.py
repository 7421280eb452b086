"""The Cloud Tasks ``Task`` ``defer`` sends: its target, headers, token, and its creation.

Target rules, in order:

* an absolute ``_url``, or ``CLOUDTASKS_DEFERRED_BASE_URL`` being set, makes an
  **HTTP task** (the Cloud Run path): ``url`` is the absolute URL or base URL +
  ``_url``, and the task carries an ``oidc_token`` for the configured service
  account and audience (in dev mode, an ``Authorization`` header signed with the
  local key instead, because the emulator ignores ``oidc_token``);
* otherwise, on App Engine standard, an **App Engine task** whose ``relative_uri``
  is ``_url``, routed to ``_target`` or else to the service and version that
  enqueued it, so that the code which pickled the task is the code which runs it;
* otherwise there is nowhere to send the task and a ``ConfigurationError`` says
  what to set.

A task deferred inside a traced request (``wrap_wsgi_app``, the task handler, or an
OpenTelemetry span) carries that trace on: :func:`task_builder` adds a ``traceparent``
header for a child span (:func:`cloudtasks_deferred.traces.task_headers`), unless
``_headers`` names one.

Errors from the service are translated where a legacy name exists
(``ALREADY_EXISTS`` -> :class:`~cloudtasks_deferred.TaskAlreadyExistsError`) and
annotated with what to check otherwise.

This module imports ``google.cloud.tasks_v2``; the handler's request path never
imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred import limits, traces
from cloudtasks_deferred.enqueue.options import TaskOptions
from cloudtasks_deferred.errors import (
    ConfigurationError,
    TaskAlreadyExistsError,
    TombstonedTaskError,
)
from cloudtasks_deferred.payload import binding
from cloudtasks_deferred.settings import Platform, Settings, origin

if TYPE_CHECKING:
    from google.cloud.tasks_v2.types import target as target_pb

    from cloudtasks_deferred.enqueue.sender import SendingClient
    from cloudtasks_deferred.enqueue.transports import Transport

__all__ = ["CONTENT_TYPE", "build_task", "create_task", "destination_for", "task_builder"]

#: The legacy deferred library's Content-Type for payloads.
CONTENT_TYPE: Final = "application/octet-stream"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: Signs a dev-mode ID token: ``(audience, not_before) -> token``.
DevTokenMinter = Callable[[str, datetime], str]


def task_builder(
    client: SendingClient, options: TaskOptions, parent: str
) -> Callable[[bytes], tasks_v2.Task]:
    """Returns ``body -> Task``: :func:`build_task` with ``defer``'s options applied.

    Called once per ``defer``, in the caller's context: the task's trace header (a
    new child span of the current trace) is chosen here, the same for every body
    tried.
    """
    settings = client.settings
    trace_headers = traces.task_headers()
    if trace_headers:
        given = {name.lower() for name in options.headers}
        carried = {k: v for k, v in trace_headers.items() if k.lower() not in given}
        options = dataclasses.replace(options, headers={**carried, **options.headers})
    dev_token = client.mint_dev_token if settings.dev_mode else None

    def build(body: bytes) -> tasks_v2.Task:
        return build_task(body, options, settings, parent=parent, dev_token=dev_token)

    return build


def create_task(transport: Transport, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
    """Creates ``task``, translating the service's refusals.

    Raises:
        TaskAlreadyExistsError: The name is taken (``TombstonedTaskError`` when
            Cloud Tasks says it existed too recently).
        google.api_core.exceptions.DeadlineExceeded: The task was not created within
            the enqueue timeout (``CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT``): the API was
            unavailable or did not answer; a note says whether the task may exist.
        google.api_core.exceptions.GoogleAPICallError: Other refusals, with a note
            saying what to check for a missing queue or a missing permission.
    """
    try:
        return transport.create_task(parent, task)
    except exceptions.AlreadyExists as exc:
        tombstoned = "too recently" in str(exc).lower()
        error = TombstonedTaskError if tombstoned else TaskAlreadyExistsError
        raise error(
            f"task {task.name} {'existed too recently' if tombstoned else 'already exists'} "
            "in its queue: Cloud Tasks keeps a name for about an hour after its task ends; "
            "pick a new _name"
        ) from exc
    except (exceptions.NotFound, exceptions.FailedPrecondition) as exc:
        exc.add_note(
            f"cloudtasks_deferred: check that the queue {parent} exists (terraform apply; "
            "locally: cloudtasks-deferred emulator --queue NAME)"
        )
        raise
    except exceptions.DeadlineExceeded as exc:
        exc.add_note(
            "cloudtasks_deferred: "
            + (
                "the task was not created; defer again once Cloud Tasks is back"
                if isinstance(exc.__cause__, exceptions.RetryError)
                else "an attempt ran out of time, and Cloud Tasks may have created the "
                "task all the same: defer with the same _name to retry without a duplicate"
            )
            + " (CLOUDTASKS_DEFERRED_ENQUEUE_TIMEOUT sets how long defer waits)"
        )
        raise
    except exceptions.PermissionDenied as exc:
        exc.add_note(
            "cloudtasks_deferred: the service account this code runs as needs "
            "roles/cloudtasks.enqueuer on the queue and, for HTTP tasks, "
            "roles/iam.serviceAccountUser on CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT"
        )
        raise


def build_task(
    body: bytes,
    options: TaskOptions,
    settings: Settings,
    *,
    parent: str,
    dev_token: DevTokenMinter | None = None,
) -> tasks_v2.Task:
    """Builds the task ``defer`` sends, exactly as it reaches Cloud Tasks.

    Args:
        body: The framed payload.
        options: Validated ``defer`` options.
        settings: Where tasks go and how they authenticate.
        parent: The queue's full resource name, ``projects/P/locations/L/queues/Q``.
        dev_token: Mints dev-mode tokens; required when ``settings.dev_mode``.

    Returns:
        The task message.

    Raises:
        ConfigurationError: No target can be chosen, or an HTTP task has no service
            account to sign its OIDC token.
        ValueError: An option does not fit the chosen target (``_target`` on an HTTP
            task, an absolute URL or out-of-range ``_dispatch_deadline``).
    """
    task = tasks_v2.Task.pb()()
    if options.name is not None:
        task.name = f"{parent}/tasks/{options.name}"
    if options.schedule_time is not None:
        _set_timestamp(task.schedule_time, options.schedule_time)
    # Header names are case-insensitive: a Content-Type in any case replaces ours.
    custom_type = any(name.lower() == "content-type" for name in options.headers)
    headers = {} if custom_type else {"Content-Type": CONTENT_TYPE}
    headers.update(options.headers)

    if options.is_absolute_url or settings.base_url:
        _check_deadline(options.dispatch_deadline, limits.HTTP_DISPATCH_DEADLINE, "HTTP")
        if options.target is not None:
            raise ValueError(
                f"_target={options.target!r} routes App Engine tasks, but this is an HTTP "
                "task (CLOUDTASKS_DEFERRED_BASE_URL is set or _url is absolute)"
            )
        request = task.http_request
        request.url = _http_url(options, settings)
        request.http_method = tasks_v2.HttpMethod.POST
        audience = _audience(settings, request.url)
        if settings.dev_mode:
            if dev_token is None:  # pragma: no cover - Client always passes one
                raise ConfigurationError("dev mode needs a dev key to sign tasks")
            valid_from = options.schedule_time or datetime.now(UTC)
            headers["Authorization"] = f"Bearer {dev_token(audience, valid_from)}"
        elif settings.service_account:
            request.oidc_token.service_account_email = settings.service_account
            request.oidc_token.audience = audience
        else:
            raise ConfigurationError(
                "HTTP tasks need CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT: the email of the "
                "service account Cloud Tasks signs each task's OIDC token as (the "
                "handler accepts only tokens from it)"
            )
        _set_headers(request.headers, headers)
        request.body = body
    elif settings.platform is Platform.APP_ENGINE:
        _check_deadline(
            options.dispatch_deadline, limits.APP_ENGINE_DISPATCH_DEADLINE, "App Engine"
        )
        request_ae = task.app_engine_http_request
        request_ae.relative_uri = options.url
        request_ae.http_method = tasks_v2.HttpMethod.POST
        _route(request_ae.app_engine_routing, options.target, settings)
        _set_headers(request_ae.headers, headers)
        request_ae.body = body
    else:
        raise ConfigurationError(
            "cannot choose a target for the task: set CLOUDTASKS_DEFERRED_BASE_URL to the "
            "URL of the service that runs tasks (Cloud Run), pass an absolute _url, or run "
            "on App Engine standard (GAE_ENV=standard) for App Engine targets"
        )
    if options.dispatch_deadline is not None:
        task.dispatch_deadline.FromTimedelta(options.dispatch_deadline)
    built: tasks_v2.Task = tasks_v2.Task.wrap(task)
    return built


def destination_for(options: TaskOptions, settings: Settings, parent: str) -> str:
    """Where a task goes, as a signed payload is bound to it (:mod:`.payload.binding`).

    Args:
        options: Validated ``defer`` options.
        settings: Where tasks go.
        parent: The queue's full resource name (its project is the App Engine app's).

    Returns:
        The HTTP task's OIDC audience, or ``app-engine:PROJECT/SERVICE``.
    """
    if options.is_absolute_url or settings.base_url:
        return _audience(settings, _http_url(options, settings))
    service = options.target.split(".")[-1] if options.target else settings.app_engine_service
    return binding.app_engine_destination(parent.split("/")[1], service)


def _http_url(options: TaskOptions, settings: Settings) -> str:
    return options.url if options.is_absolute_url else _join(settings, options.url)


def _set_timestamp(timestamp: Any, when: datetime) -> None:
    # Timestamp.FromDatetime costs ~10 us; exact integer arithmetic costs a fraction.
    delta = when - _EPOCH
    timestamp.seconds = delta.days * 86400 + delta.seconds
    timestamp.nanos = delta.microseconds * 1000


def _set_headers(target: Any, headers: dict[str, str]) -> None:
    for name, value in headers.items():  # item by item: faster than map.update()
        target[name] = value


def _join(settings: Settings, url: str) -> str:
    assert settings.base_url is not None  # noqa: S101 - guarded by the caller
    return settings.base_url.rstrip("/") + url


def _audience(settings: Settings, url: str) -> str:
    # Tasks for this service carry the audience its handler expects; an absolute
    # _url to another origin gets that origin, which is what its handler defaults to.
    if settings.base_url is None or not url.startswith(settings.base_origin + "/"):
        return origin(url)
    return settings.effective_audiences[0]


def _route(routing: target_pb.AppEngineRouting, target: str | None, settings: Settings) -> None:
    if target is None:
        if settings.app_engine_service:
            routing.service = settings.app_engine_service
        if settings.app_engine_version:
            routing.version = settings.app_engine_version
        return
    parts = target.split(".")
    routing.service = parts[-1]
    if len(parts) >= 2:
        routing.version = parts[-2]
    if len(parts) == 3:
        routing.instance = parts[0]


def _check_deadline(
    deadline: timedelta | None, bounds: tuple[timedelta, timedelta], kind: str
) -> None:
    low, high = bounds
    if deadline is not None and not low <= deadline <= high:
        raise ValueError(
            f"_dispatch_deadline={deadline.total_seconds():g}s is out of range: Cloud Tasks "
            f"accepts {low.total_seconds():g}s to {high.total_seconds():g}s for {kind} tasks"
        )
