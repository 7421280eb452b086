"""Shared fixtures: an isolated environment for every test, and real signed tokens."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.client import default_client
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.receive.auth import authenticator_for
from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters
from tests.oidc import AUDIENCE, INVOKER, CertsServer, Issuer
from tests.tasks import RECORDER

# Every log record of the battery, scanned for the tests' tokens, keys and payloads.
pytest_plugins = ["tests.logscan"]

PACKAGE = "cloudtasks_deferred"
_VARIABLES = (
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUD_TASKS_EMULATOR_HOST",
    "DATASTORE_EMULATOR_HOST",
    "DATASTORE_PROJECT_ID",
    "GAE_ENV",
    "GAE_SERVICE",
    "GAE_VERSION",
    "GAE_APPLICATION",
    "K_SERVICE",
    "K_REVISION",
    "CLOUD_RUN_JOB",
)


@pytest.fixture(autouse=True)
def isolate_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's environment, the default client, or old calls."""
    for name in list(os.environ):
        if name.startswith("CLOUDTASKS_DEFERRED_") or name in _VARIABLES:
            monkeypatch.delenv(name)
    # google-auth must not find real credentials on a developer's machine.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    default_client.cache_clear()
    RECORDER.clear()
    yield
    default_client.cache_clear()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """What a test changes of the root and library loggers (a client built on a simulated
    Cloud Run structures the library's logs; configure_logging() the root's) ends with it."""
    loggers = [logging.getLogger(), logging.getLogger(PACKAGE)]
    saved = [(list(each.handlers), each.level, each.propagate) for each in loggers]
    yield
    for each, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        for handler in list(each.handlers):  # pytest's own come and go by themselves
            if handler not in handlers and type(handler).__module__.startswith(PACKAGE):
                each.removeHandler(handler)
        each.setLevel(level)
        each.propagate = propagate


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    """A token issuer with a real RSA key (generated once per session)."""
    return Issuer()


@pytest.fixture
def certs_server(issuer: Issuer) -> Iterator[CertsServer]:
    """The issuer's certificates served over HTTP on loopback."""
    with CertsServer(issuer.certs).running() as server:
        yield server


#: HTTP tasks for https://tasks.test, invoked by the test issuer's service account.
SIGNED_SETTINGS = Settings(
    project="p", location="us-central1", base_url=AUDIENCE, service_account=INVOKER, ndb=False
)


@pytest.fixture
def signed_client(issuer: Issuer) -> Client:
    """A client with an in-memory transport whose handler trusts the test issuer's tokens."""
    return Client(
        SIGNED_SETTINGS,
        transport=InMemoryTransport(),
        authenticator=authenticator_for(SIGNED_SETTINGS, certs=StaticCerts(issuer.certs)),
        dead_letters=InMemoryDeadLetters(),
    )
