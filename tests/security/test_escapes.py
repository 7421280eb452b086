"""Round two of the battery (:mod:`tests.security.escapes`), in-process and on gunicorn.

Every run asserts the status and its reason, that no canary ran and no refused module
was imported, how the refusal was logged (one warning, never a traceback, for a
refused credential or payload), and then that innocent tasks — a direct call and a
member call — still run exactly what they name, and that nothing a task may not
change has changed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtasks_deferred.client import default_client
from cloudtasks_deferred.payload import allowlist as unpickling
from tests.security import allowed_tasks
from tests.security.cases import Kit, Request
from tests.security.clients import send_socket, send_wsgi
from tests.security.conftest import Servers
from tests.security.escapes import ESCAPES, INVALID, Escape, frame_for, witness_tasks
from tests.security.profiles import IMPORT_CANARY
from tests.security.server import application
from tests.tasks import RECORDER

RUNS = [(escape, profile) for escape in ESCAPES for profile in escape.profiles]
BATTERY = pytest.mark.parametrize(
    ("escape", "profile"), RUNS, ids=[f"{escape.name}[{profile}]" for escape, profile in RUNS]
)
NEVER_IMPORTED = (
    IMPORT_CANARY,
    "tests.security.allowed_pkg.__main__",
    "tests.security.allowed_pkg._private",
)
ORIGINAL_WITNESS = allowed_tasks.Job.witness


def test_the_second_round_is_broad_enough() -> None:
    kinds = {escape.name.removesuffix("-legacy-alias") for escape in ESCAPES}
    assert len(kinds) >= 40
    assert len({escape.name for escape in ESCAPES}) == len(ESCAPES)
    assert sum(escape.name.endswith("-legacy-alias") for escape in ESCAPES) >= 20


def unchanged() -> None:
    """What no payload may change, by any path."""
    assert allowed_tasks.CONFIG == {"mode": "test"}
    assert allowed_tasks.NAMES == ["default"]
    assert {"test"} == allowed_tasks.TAGS
    assert allowed_tasks.record.__defaults__ == (None,)
    assert allowed_tasks.noop.__kwdefaults__ is None
    assert allowed_tasks.Job.witness is ORIGINAL_WITNESS
    assert unpickling._MARKERS[unpickling.INVOKE_MEMBER] is unpickling._INVOKE_MEMBER_MARKER
    assert unpickling._LEGACY_CALLABLES == {
        "google.appengine.ext.deferred.deferred.invoke_member": unpickling.INVOKE_MEMBER,
        "google.appengine.ext.deferred.deferred.run_from_datastore": unpickling.RUN_FROM_DATASTORE,
    }


@pytest.fixture(autouse=True)
def forget_canary_modules() -> Iterator[None]:
    for name in NEVER_IMPORTED:
        sys.modules.pop(name, None)
    yield
    for name in NEVER_IMPORTED:
        sys.modules.pop(name, None)


@pytest.fixture
def deploy(
    profiles: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], None]:
    """Makes the in-process app serve a profile: its environment, a fresh default client."""

    def use(profile: str) -> None:
        for name, value in profiles[profile].items():
            monkeypatch.setenv(name, value)
        default_client.cache_clear()

    return use


def follow_up_profile(profile: str) -> str:
    return "allowlisted" if profile == "oidc" else profile


def check_log(escape: Escape, records: list[logging.LogRecord]) -> None:
    ours = [r for r in records if r.name.startswith("cloudtasks_deferred")]
    if escape.status == 200 and escape.reason == INVALID:
        return  # a permanent failure: logged with its traceback, as the contract says
    assert not any(r.exc_info for r in ours), [r.getMessage() for r in ours]
    assert not any(r.levelno >= logging.ERROR for r in ours), [r.getMessage() for r in ours]
    if escape.status in (403, 500):
        warnings = [r for r in ours if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]


@BATTERY
def test_in_process(
    escape: Escape,
    profile: str,
    kit: Kit,
    deploy: Callable[[str], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    deploy(profile)

    with caplog.at_level(logging.INFO):
        response, _ = send_wsgi(application, escape.request(kit, profile))

    assert response.code == escape.status, response.body
    assert response.body.startswith(escape.reason), response.body
    check_log(escape, caplog.records)
    assert escape.logged in caplog.text
    assert RECORDER.named("canary") == []
    assert not set(NEVER_IMPORTED) & set(sys.modules)
    unchanged()

    after = follow_up_profile(profile)
    deploy(after)
    for pickled, _label in witness_tasks():
        request = Request(headers=kit.bearer(), body=frame_for(kit, after, pickled))
        assert send_wsgi(application, request)[0].code == 200
    assert RECORDER.named("witness") == [*escape.runs, "direct", "job-member"]
    assert RECORDER.named("canary") == []
    unchanged()


@pytest.fixture
def witnesses(canary_dir: Path) -> Path:
    path = canary_dir.parent / "witnesses"
    path.mkdir(exist_ok=True)
    for old in path.iterdir():
        old.unlink()
    return path


@BATTERY
def test_real_server(
    escape: Escape, profile: str, kit: Kit, servers: Servers, witnesses: Path
) -> None:
    canary_dir = witnesses.parent / "canaries"
    server = servers.get(profile)
    logged = len(server.log.read_bytes())
    response = send_socket(server.port, escape.request(kit, profile))
    canaries = sorted(path.read_text() for path in canary_dir.iterdir())
    for path in canary_dir.iterdir():
        path.unlink()  # so that one failure does not fail the runs after it
    new_log = server.log.read_bytes()[logged:].decode(errors="replace")

    assert response.code == escape.status, (response.body, server.output())
    assert response.body.startswith(escape.reason), response.body
    assert canaries == [], "a canary ran in the server process"
    if not (escape.status == 200 and escape.reason == INVALID):
        assert "Traceback" not in new_log, new_log
    assert escape.logged in new_log, new_log

    after = follow_up_profile(profile)
    follow_up = servers.get(after)
    for pickled, _label in witness_tasks():
        request = Request(headers=kit.bearer(), body=frame_for(kit, after, pickled))
        health = send_socket(follow_up.port, request)
        assert health.code == 200, (health.body, follow_up.output())
    labels = sorted(path.name.rsplit("-", 2)[0] for path in witnesses.iterdir())
    assert labels == sorted([*escape.runs, "direct", "job-member"])
    assert list(canary_dir.iterdir()) == []
    assert server.alive()


def test_control_the_witness_sees_a_member_call_that_was_rewired(
    kit: Kit, deploy: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without this, the follow-up could pass vacuously: rewire the class by hand (to
    # another allowed method) and the member-call witness must notice.
    deploy("allowlisted")
    monkeypatch.setattr(allowed_tasks.Job, "witness", allowed_tasks.Job.run)
    pickled, _ = witness_tasks()[1]
    request = Request(headers=kit.bearer(), body=frame_for(kit, "allowlisted", pickled))
    assert send_wsgi(application, request)[0].code == 200
    assert RECORDER.named("witness") == []
    assert RECORDER.named("job") == ["member"]
