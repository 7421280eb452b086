"""The hostile-request battery, in-process (WSGI calls) and against gunicorn on loopback.

Every case asserts the status, that no canary ran (so nothing was unpickled or called,
and the allowlist imported nothing), and that the service still serves afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloudtasks_deferred.client import default_client
from tests.security.cases import CASES, Case, Kit, Request, canary_frame
from tests.security.clients import send_socket, send_wsgi
from tests.security.conftest import Servers
from tests.security.profiles import HEALTH, IMPORT_CANARY
from tests.security.server import application
from tests.tasks import RECORDER

BATTERY = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])


def test_the_battery_is_broad_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


def refused_before_reading(case: Case, body: bytes) -> bool:
    """Whether the handler must answer without reading the body."""
    refused = case.status in (403, 405, 413, 500, 503)
    return refused and not body.startswith(b"Forbidden: the payload")


@pytest.fixture
def forget_import_canary() -> None:
    sys.modules.pop(IMPORT_CANARY, None)


@BATTERY
def test_in_process(
    case: Case,
    kit: Kit,
    profiles: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    forget_import_canary: None,
) -> None:
    for name, value in profiles[case.profile].items():
        monkeypatch.setenv(name, value)
    default_client.cache_clear()  # the app reads this profile's environment

    request = case.build(kit)
    response, reads = send_wsgi(application, request)

    assert response.code == case.status, response.body
    assert response.body.startswith(case.body_starts), response.body
    if refused_before_reading(case, response.body) and not request.chunked:
        assert reads == 0, "the body was read before the request was refused"
    assert RECORDER.named("canary") == []
    assert IMPORT_CANARY not in sys.modules

    make_health, status = HEALTH[case.profile]
    assert send_wsgi(application, make_health(kit))[0].code == status
    assert RECORDER.named("canary") == []


@BATTERY
def test_real_server(case: Case, kit: Kit, servers: Servers, canary_dir: Path) -> None:
    server = servers.get(case.profile)
    response = send_socket(server.port, case.build(kit))
    canaries = sorted(path.read_text() for path in canary_dir.iterdir())
    for path in canary_dir.iterdir():
        path.unlink()  # so that one failure does not fail the cases after it

    assert response.code == case.status, (response.body, server.output())
    assert response.body.startswith(case.body_starts), response.body
    assert canaries == [], "a canary ran in the server process"

    make_health, status = HEALTH[case.profile]
    health = send_socket(server.port, make_health(kit))
    assert health.code == status, (health.body, server.output())
    assert server.alive()
    assert list(canary_dir.iterdir()) == []


def test_control_a_canary_payload_that_is_let_through_is_seen_in_process(
    kit: Kit, profiles: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without this, a battery whose canary never fires could pass vacuously.
    for name, value in profiles["oidc"].items():
        monkeypatch.setenv(name, value)
    default_client.cache_clear()
    request = Request(headers=kit.bearer(), body=canary_frame())
    assert send_wsgi(application, request)[0].code == 200
    assert len(RECORDER.named("canary")) == 2  # unpickled, then called


def test_control_a_canary_payload_that_is_let_through_is_seen_across_processes(
    kit: Kit, servers: Servers, canary_dir: Path
) -> None:
    server = servers.get("oidc")
    try:
        response = send_socket(server.port, Request(headers=kit.bearer(), body=canary_frame()))
        assert response.code == 200
        assert len(list(canary_dir.iterdir())) == 2
    finally:
        for path in canary_dir.iterdir():
            path.unlink()
