"""What the handler records as a dead letter, without credentials; a redelivery's claim."""

from __future__ import annotations

import dataclasses
from http import HTTPStatus
from pathlib import Path

import pytest

from cloudtasks_deferred import (
    Client,
    DeadLetterError,
    DeadLetters,
    Handler,
    Settings,
    TaskRetryOptions,
)
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.receive.deadletters import recorded_headers
from cloudtasks_deferred.settings import Platform
from cloudtasks_deferred.storage.dead_letters import Cause, DeadLetter, Status
from cloudtasks_deferred.testing import TEST_SETTINGS, InMemoryQueue, in_memory_queue
from tests import dead_letter_tasks, tasks
from tests.wsgi import call, environ

NARROW = dataclasses.replace(TEST_SETTINGS, ndb=False, allowed_modules=("tests.tasks",))
WIDE = dataclasses.replace(NARROW, allowed_modules=("tests.tasks", "tests.dead_letter_tasks"))


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    """The flag file that "fixes the bug" once it exists, and the report of runs."""
    return str(tmp_path / "fixed"), str(tmp_path / "runs.txt")


def widen(queue: InMemoryQueue) -> None:
    """Deploys the wider allowlist: same queue, same dead letters, another handler."""
    queue.app = Handler(
        client=Client(
            WIDE,
            transport=queue.transport,
            authenticator=queue.client.authenticator,
            dead_letters=queue.client.dead_letters,
        )
    )


def test_a_permanent_failure_records_what_a_replay_needs(files: tuple[str, str]) -> None:
    flag, report = files
    with in_memory_queue() as queue:
        queue.client.defer(
            dead_letter_tasks.append_once_fixed, flag, report, "one", _headers={"X-Custom": "v"}
        )
        [task] = queue.tasks
        assert queue.run_pending() == [HTTPStatus.OK]
    [letter] = queue.dead_letters
    assert letter.cause is Cause.PERMANENT_FAILURE
    assert letter.reason == f"PermanentTaskFailure: not fixed yet: {flag} does not exist"
    assert letter.traceback is not None
    assert "in append_once_fixed" in letter.traceback
    assert letter.traceback.rstrip().endswith(
        f"PermanentTaskFailure: not fixed yet: {flag} does not exist"
    )
    assert letter.payload == task.http_request.body
    assert letter.url == "https://tasks.test/_ah/queue/deferred"
    assert letter.app_engine_service is None
    assert ("X-Custom", "v") in letter.headers
    assert ("Content-Type", "application/octet-stream") in letter.headers
    assert (letter.queue_name, letter.task_name) == ("default", task.name.rsplit("/", 1)[1])
    assert (letter.retry_count, letter.attempts, letter.deliveries) == (0, 1, 1)
    assert letter.callable_name == "tests.dead_letter_tasks.append_once_fixed"
    assert letter.status is Status.NEW


def test_no_credential_is_ever_recorded(files: tuple[str, str]) -> None:
    secrets = {
        "X-Api-Key": "key-value-1",
        "X-Session-Id": "session-value-2",
        "X-Upstream-Token": "token-value-3",
        "X-Client-Secret": "secret-value-4",
        "X-Note": "Bearer bearer-value-5",
        "X-Forwarded-Credentials": "Basic basic-value-6",
        "X-Passthrough": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.jwt-value-7",
        "Cookie": "sid=cookie-value-8",
    }
    with in_memory_queue() as queue:
        queue.client.defer(tasks.fail_permanently, _headers={**secrets, "X-Plain": "kept"})
        queue.run_pending()
    [letter] = queue.dead_letters
    names = {name.lower() for name, _ in letter.headers}
    assert "authorization" not in names  # the queue's OIDC token
    assert not names & {name.lower() for name in secrets}
    assert ("X-Plain", "kept") in letter.headers
    recorded = repr(letter)
    for value in (*secrets.values(), "value-"):
        assert value not in recorded


def test_the_request_headers_a_record_never_keeps() -> None:
    env = environ(
        headers={
            "Authorization": "Bearer a",
            "Proxy-Authorization": "Basic b",
            "X-Serverless-Authorization": "Bearer c",
            "X-Goog-IAP-JWT-Assertion": "d",
            "X-Goog-Authenticated-User-Email": "e@example.com",
            "X-CloudTasks-TaskName": "t",
            "Traceparent": "00-abc-def-01",
        }
    )
    kept = dict(recorded_headers(env))
    assert kept == {
        "Content-Type": "application/octet-stream",
        "X-Cloudtasks-Taskname": "t",
        "Traceparent": "00-abc-def-01",
    }


def test_exhausted_retry_options_and_undecodable_bodies_are_recorded_with_their_cause(
    signed_client: Client, auth: dict[str, str]
) -> None:
    with in_memory_queue(max_attempts=3) as queue:
        queue.client.defer(tasks.crash, _retry_options=TaskRetryOptions(task_retry_limit=1))
        assert queue.run_pending() == [500, 200]
    [letter] = queue.dead_letters
    assert (letter.cause, letter.reason) == (
        Cause.RETRIES_EXHAUSTED,
        "task_retry_limit=1 reached after 1 retries",
    )
    assert letter.traceback is not None
    assert "RuntimeError: boom" in letter.traceback
    call(Handler(client=signed_client), environ(b"garbage", headers=auth))
    [undecodable] = signed_client.dead_letters.letters  # type: ignore[attr-defined]
    assert (undecodable.cause, undecodable.callable_name, undecodable.payload) == (
        Cause.INVALID_PAYLOAD,
        None,
        b"garbage",
    )


@pytest.fixture
def auth(signed_client: Client, issuer: object) -> dict[str, str]:
    token = issuer.token()  # type: ignore[attr-defined]
    return {
        "Authorization": f"Bearer {token}",
        "X-CloudTasks-QueueName": "default",
        "X-CloudTasks-TaskName": "task-1",
    }


def test_refusals_of_one_task_update_one_record(files: tuple[str, str]) -> None:
    _, report = files
    with in_memory_queue(NARROW, max_attempts=3) as queue:
        queue.client.defer(dead_letter_tasks.append, report, "refused")
        assert queue.run_pending() == [403, 403, 403]
    [letter] = queue.dead_letters
    assert letter.cause is Cause.REFUSED
    assert letter.reason.startswith("DisallowedReferenceError: ")
    assert "tests.dead_letter_tasks" in letter.reason
    assert (letter.deliveries, letter.retry_count, letter.callable_name) == (3, 2, None)
    assert letter.first_failed_at <= letter.last_failed_at
    assert dead_letter_tasks.runs(report) == []


def test_a_later_delivery_that_runs_the_task_resolves_its_record(files: tuple[str, str]) -> None:
    _, report = files
    with in_memory_queue(NARROW, max_attempts=2) as queue:
        queue.client.defer(dead_letter_tasks.append, report, "ran")
        assert queue.run_pending() == [403, 403]
        widen(queue)
        [task] = queue.given_up
        assert queue.deliver(task) == HTTPStatus.OK  # Cloud Tasks' next retry
    [letter] = queue.dead_letters
    assert letter.status is Status.RESOLVED
    assert letter.resolved_at is not None
    assert dead_letter_tasks.runs(report) == ["ran"]
    # The queue ran it: a replay would run it twice.
    with pytest.raises(DeadLetterError, match="resolved: a later delivery from queue default"):
        DeadLetters(queue.client).replay(letter.id)
    assert dead_letter_tasks.runs(report) == ["ran"]


def test_after_a_replay_the_queues_own_retry_runs_nothing(files: tuple[str, str]) -> None:
    _, report = files
    with in_memory_queue(NARROW, max_attempts=2) as queue:
        queue.client.defer(dead_letter_tasks.append, report, "once")
        assert queue.run_pending() == [403, 403]
        [letter] = queue.dead_letters
        DeadLetters(queue.client).replay(letter.id)  # the replay's task waits in the queue
        widen(queue)
        [original] = queue.given_up
        assert queue.deliver(original) == HTTPStatus.OK  # answered, and dropped: not run
        assert dead_letter_tasks.runs(report) == []
        assert queue.run_pending() == [HTTPStatus.OK]  # the replay's task
    assert dead_letter_tasks.runs(report) == ["once"]
    [after] = queue.dead_letters
    assert after.status is Status.REPLAYED


def test_a_redelivery_whose_claim_fails_is_retried_and_runs_nothing(
    signed_client: Client, auth: dict[str, str]
) -> None:
    class Unreachable:
        keeps_payloads = True

        def record(self, letter: DeadLetter) -> None:
            raise AssertionError("not reached")

        def claim(self, letter_id: str) -> bool:
            raise OSError("Datastore unreachable")

    client = Client(
        signed_client.settings,
        transport=signed_client.transport,
        authenticator=signed_client.authenticator,
        dead_letters=Unreachable(),
    )
    body = encode(serialize(tasks.record, "x"))
    first = call(Handler(client=client), environ(body, headers=auth))
    assert first.code == 200  # a first delivery is not checked
    retried = {**auth, "X-CloudTasks-TaskRetryCount": "1"}
    assert call(Handler(client=client), environ(body, headers=retried)).code == 500
    assert tasks.RECORDER.named("record") == ["x"]


def test_an_app_engine_task_records_its_uri_and_service(files: tuple[str, str]) -> None:
    flag, report = files
    settings = Settings(
        project="test-project",
        location="us-central1",
        platform=Platform.APP_ENGINE,
        app_engine_service="worker",
        app_engine_version="v7",
        ndb=False,
    )
    with in_memory_queue(settings) as queue:
        queue.client.defer(dead_letter_tasks.append_once_fixed, flag, report, "ae", _url="/tasks/x")
        assert queue.run_pending() == [HTTPStatus.OK]
        [letter] = queue.dead_letters
        assert (letter.url, letter.app_engine_service) == ("/tasks/x", "worker")
        Path(flag).touch()
        DeadLetters(queue.client).replay(letter.id)
        [task] = queue.tasks
        routing = task.app_engine_http_request.app_engine_routing
        # To the service, whichever version serves it now: not the version that failed.
        assert (routing.service, routing.version) == ("worker", "")
        assert task.app_engine_http_request.relative_uri == "/tasks/x"
