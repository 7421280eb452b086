"""Tasks the legacy library queued: its own helpers' names are read as ours."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from cloudtasks_deferred import Client, Handler, deferred
from cloudtasks_deferred.payload.allowlist import (
    RUN_FROM_DATASTORE,
    Allowlist,
    DisallowedReferenceError,
)
from cloudtasks_deferred.payload.calls import LEGACY_NAMES, invoke_member, load_call, run, unpickle
from cloudtasks_deferred.payload.frame import SigningKey
from tests.legacy import LEGACY_MODULE, legacy_library, legacy_task
from tests.oidc import Issuer
from tests.security import allowed_tasks
from tests.tasks import RECORDER
from tests.wsgi import call, environ

# As the facade builds it: the library's run_from_datastore handed back by name.
ALLOWED = Allowlist(
    ["tests.security.allowed_tasks"], library={RUN_FROM_DATASTORE: deferred.run_from_datastore}
)


def test_google_appengine_is_not_installed() -> None:
    # Otherwise these tests would pass by importing the real legacy module.
    assert importlib.util.find_spec("google.appengine") is None


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("loads", [None, unpickle], ids=["default", "unpickle"])
def test_a_legacy_bound_method_task_runs_as_ours(
    protocol: int, loads: Callable[[bytes], Any] | None
) -> None:
    body = legacy_task("invoke_member", datetime.date(2020, 1, 2), "isoformat", protocol=protocol)
    assert LEGACY_MODULE.encode() in body
    func, args, kwargs = load_call(body, loads=loads)  # Client passes unpickle
    assert func is invoke_member
    assert func(*args, **kwargs) == "2020-01-02"
    assert run(body) == "2020-01-02"


def test_a_legacy_datastore_task_runs_our_run_from_datastore() -> None:
    func, args, _ = load_call(legacy_task("run_from_datastore", "ahFzfm15LWFwcHIbCxIS"))
    assert func is deferred.run_from_datastore
    assert args == ("ahFzfm15LWFwcHIbCxIS",)


def test_only_the_two_helpers_are_mapped() -> None:
    assert set(LEGACY_NAMES) == {
        (LEGACY_MODULE, "invoke_member"),
        (LEGACY_MODULE, "run_from_datastore"),
    }
    with pytest.raises(ImportError, match=r"google\.appengine"):
        load_call(legacy_task("defer"))  # missing code, as any other name would be


@pytest.mark.parametrize("allowlist", [(), ("tests.security.allowed_tasks",)])
def test_a_legacy_queued_task_runs_through_the_handler(
    signed_client: Client, issuer: Issuer, allowlist: tuple[str, ...]
) -> None:
    settings = dataclasses.replace(signed_client.settings, allowed_modules=allowlist)
    client = Client(settings, authenticator=signed_client.authenticator)
    body = legacy_task("invoke_member", allowed_tasks.Job("queued before the switch"), "run")
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(Handler(client=client), environ(body, headers=auth))
    assert (response.code, response.body) == (200, b"Success")
    assert RECORDER.named("job") == ["queued before the switch"]


def test_signing_keys_refuse_every_bare_legacy_pickle(
    signed_client: Client, issuer: Issuer
) -> None:
    # Why queues must drain before signing is switched on (docs/migration.md).
    keys = (SigningKey("k1", bytes(range(32))),)
    settings = dataclasses.replace(signed_client.settings, signing_keys=keys)
    client = Client(settings, authenticator=signed_client.authenticator)
    body = legacy_task("invoke_member", allowed_tasks.Job("legacy"), "run")
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(Handler(client=client), environ(body, headers=auth))
    assert (response.code, response.body) == (403, b"Forbidden: the payload is not signed")
    assert RECORDER.calls == []


def test_under_the_allowlist_legacy_names_are_markers_outside_the_tasks_callable() -> None:
    func, args, _ = ALLOWED.loads(legacy_task("invoke_member", allowed_tasks.Job("j"), "run"))
    assert args[1] == "run"
    assert func is invoke_member
    func, _, _ = ALLOWED.loads(legacy_task("run_from_datastore", "key"))
    assert func is deferred.run_from_datastore

    class Reduce:
        def __init__(self, func: Any, *args: Any) -> None:
            self.func, self.args = func, args

        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            return self.func, self.args

    # Called while unpickling, invoke_member would chain attribute lookups to eval.
    with legacy_library() as module:
        forged = pickle.dumps(
            (allowed_tasks.noop, (Reduce(module.invoke_member, allowed_tasks.Job(), "fire"),), {})
        )
    with pytest.raises(DisallowedReferenceError, match="only as the task's callable"):
        ALLOWED.loads(forged)
    assert RECORDER.calls == []
