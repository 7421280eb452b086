"""The outbox sweeper's hermetic parts: ALREADY_EXISTS, the HTTP endpoint, the command."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred import Client, wrap_wsgi_app
from cloudtasks_deferred.devtools import cli
from cloudtasks_deferred.enqueue import outbox
from cloudtasks_deferred.enqueue import sweep as sweeper
from cloudtasks_deferred.enqueue.sweep import SWEEP_PATH, SweepReport
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.middleware import SweepApp
from cloudtasks_deferred.receive.auth import CertsUnavailableError
from tests.conftest import SIGNED_SETTINGS
from tests.oidc import Issuer
from tests.wsgi import call, environ

NAMED = tasks_v2.Task(
    name="projects/p/locations/us-central1/queues/default/tasks/0123456789abcdef-x",
    http_request=tasks_v2.HttpRequest(url="https://svc.example/_ah/queue/deferred"),
)


class Refusing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        raise self.error


def test_create_once_creates_a_named_task() -> None:
    transport = InMemoryTransport()
    assert outbox.create_once(Client(SIGNED_SETTINGS, transport=transport), NAMED) is True
    [created] = transport.tasks
    assert created.name == NAMED.name


@pytest.mark.parametrize(
    "message",
    [
        # What Cloud Tasks answers for a name in use, and for one used too recently.
        "Requested entity already exists",
        "The task cannot be created because a task with this name existed too recently.",
    ],
)
def test_create_once_counts_already_exists_as_created(message: str) -> None:
    client = Client(SIGNED_SETTINGS, transport=Refusing(exceptions.AlreadyExists(message)))
    assert outbox.create_once(client, NAMED) is False


def test_create_once_lets_other_refusals_through() -> None:
    client = Client(SIGNED_SETTINGS, transport=Refusing(exceptions.ServiceUnavailable("down")))
    with pytest.raises(exceptions.ServiceUnavailable):
        outbox.create_once(client, NAMED)


def test_a_post_commit_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    client = Client(SIGNED_SETTINGS, transport=Refusing(exceptions.ServiceUnavailable("down")))
    with caplog.at_level(logging.ERROR):
        outbox.create_after_commit(client, object(), NAMED)
    assert f"{NAMED.name} committed but could not be created" in caplog.text


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake(client: Client, **options: Any) -> SweepReport:
        calls.append(options)
        return SweepReport(created=2, existing=1)

    monkeypatch.setattr(sweeper, "sweep", fake)
    return calls


def test_the_endpoint_refuses_other_methods(signed_client: Client) -> None:
    response = call(SweepApp(signed_client), environ(method="GET", path=SWEEP_PATH))
    assert response.status.startswith("405")
    assert ("Allow", "POST") in response.headers


def test_the_endpoint_refuses_unauthenticated_requests_before_sweeping(
    signed_client: Client, sweeps: list[dict[str, Any]], issuer: Issuer
) -> None:
    for headers in ({}, {"Authorization": f"Bearer {issuer.token(aud='https://elsewhere')}"}):
        response = call(SweepApp(signed_client), environ(path=SWEEP_PATH, headers=headers))
        assert response.status.startswith("403")
    assert sweeps == []


def test_the_endpoint_sweeps_for_an_authenticated_caller(
    signed_client: Client, sweeps: list[dict[str, Any]], issuer: Issuer
) -> None:
    app = SweepApp(signed_client, older_than=timedelta(minutes=9), limit=7)
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(app, environ(path=SWEEP_PATH, headers=headers))
    assert response.status.startswith("200")
    assert (
        response.body == b"Success: swept: created 2, already existing 1, already run 0, failed 0"
    )
    assert sweeps == [{"older_than": timedelta(minutes=9), "limit": 7}]


def test_the_endpoint_answers_500_when_a_task_could_not_be_created(
    signed_client: Client, monkeypatch: pytest.MonkeyPatch, issuer: Issuer
) -> None:
    monkeypatch.setattr(sweeper, "sweep", lambda client, **_: SweepReport(failed=1))
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(SweepApp(signed_client), environ(path=SWEEP_PATH, headers=headers))
    assert response.status.startswith("500")


def test_the_endpoint_without_datastore_answers_500_and_logs_why(
    signed_client: Client, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    with caplog.at_level(logging.ERROR):
        response = call(SweepApp(signed_client), environ(path=SWEEP_PATH, headers=headers))
    assert response.status.startswith("500")
    assert b"the sweep failed" in response.body
    assert "the outbox sweeper needs Datastore" in caplog.text


def test_the_endpoint_answers_503_when_tokens_cannot_be_verified() -> None:
    class NoCerts:
        def authenticate(self, environ: Any) -> Any:
            raise CertsUnavailableError("cannot fetch the certificates")

    client = Client(SIGNED_SETTINGS, authenticator=NoCerts())
    response = call(SweepApp(client), environ(path=SWEEP_PATH))
    assert response.status.startswith("503")


def test_wrap_wsgi_app_serves_the_sweeper(
    signed_client: Client, sweeps: list[dict[str, Any]], issuer: Issuer
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"the app"]

    wrapped = wrap_wsgi_app(app, client=signed_client)
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    assert call(wrapped, environ(path=SWEEP_PATH, headers=headers)).status.startswith("200")
    assert len(sweeps) == 1
    assert call(wrapped, environ(path=SWEEP_PATH)).status.startswith("403")
    unswept = wrap_wsgi_app(app, client=signed_client, sweep_path=None)
    assert call(unswept, environ(path=SWEEP_PATH)).body == b"the app"


def test_sweep_refuses_nonsense_arguments(signed_client: Client) -> None:
    with pytest.raises(ValueError, match="older_than >= 0"):
        sweeper.sweep(signed_client, older_than=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="limit >= 1"):
        sweeper.sweep(signed_client, limit=0)


def test_the_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["sweep", "--help"])
    assert caught.value.code == 0
    assert "--older-than" in capsys.readouterr().out


def test_the_command_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:  # argparse's usage error
        cli.main(["sweep", "--limit", "0"])
    assert caught.value.code == 2
    assert "argument --limit: '0' is not a whole number >= 1" in capsys.readouterr().err


def test_the_command_without_datastore_says_what_to_configure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["sweep"]) == 1
    error = capsys.readouterr().err
    assert "the outbox sweeper needs Datastore" in error
    assert "DATASTORE_EMULATOR_HOST" in error
