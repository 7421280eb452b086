"""Security fixtures: real keys, a certificate server, the profiles, gunicorn per profile.

Without gunicorn the real-server battery skips on a developer's machine (and fails
under ``CI=true``); :func:`pytest_terminal_summary` then says so in a banner at the
end of the run, so that a green local run cannot pass for a full one.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtasks_deferred.dev_key import DevKey
from tests.integration.conftest import require
from tests.oidc import CertsServer, Issuer
from tests.security.cases import Kit
from tests.security.clients import Gunicorn, server_environment
from tests.security.profiles import SIGNING_KEY, environments


@pytest.fixture(scope="session")
def security_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="session")
def kit(issuer: Issuer, security_dir: Path) -> Kit:
    return Kit(
        issuer=issuer,
        attacker=Issuer(kid="attacker-key"),
        impostor=Issuer(kid=issuer.kid),
        dev_key=DevKey.load_or_create(security_dir / "dev-key.pem"),
        signing_key=SIGNING_KEY,
    )


@pytest.fixture(scope="session")
def google_certs(issuer: Issuer) -> Iterator[CertsServer]:
    """The issuer's certificates on loopback, as Google's endpoint serves them."""
    with CertsServer(issuer.certs, max_age=22000).running() as server:
        yield server


@pytest.fixture(scope="session")
def profiles(google_certs: CertsServer, security_dir: Path) -> dict[str, dict[str, str]]:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/oauth2/v1/certs"
    return environments(
        certs_url=google_certs.url, dead_certs_url=dead, dev_key_file=security_dir / "dev-key.pem"
    )


@pytest.fixture(scope="session")
def canary_dir(security_dir: Path) -> Path:
    """Where canaries called in a server process leave a file."""
    path = security_dir / "canaries"
    path.mkdir()
    return path


class Servers:
    """One gunicorn per profile, started on first use, stopped at the end of the session."""

    def __init__(self, profiles: dict[str, dict[str, str]], canary_dir: Path, logs: Path) -> None:
        self._profiles = profiles
        self._canary_dir = canary_dir
        self._logs = logs
        self._running: dict[str, Gunicorn] = {}

    def get(self, profile: str) -> Gunicorn:
        if profile not in self._running:
            env = server_environment(self._profiles[profile], self._canary_dir)
            self._running[profile] = Gunicorn(
                "tests.security.server:application", env, self._logs / f"gunicorn-{profile}.log"
            )
        return self._running[profile]

    def stop(self) -> None:
        for server in self._running.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(
    profiles: dict[str, dict[str, str]], canary_dir: Path, security_dir: Path
) -> Iterator[Servers]:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        require(False, "gunicorn is not installed: pip install -e '.[dev]'")
    running = Servers(profiles, canary_dir, security_dir)
    yield running
    running.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Ends the run with a banner naming the security tests that were skipped, and why."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if report.nodeid.startswith("tests/security/")
    ]
    if not skipped:
        return
    reasons = Counter(
        str(
            report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        ).removeprefix("Skipped: ")
        for report in skipped
    )
    terminalreporter.section("SECURITY TESTS NOT RUN", sep="!", red=True, bold=True)
    for reason, count in reasons.most_common():
        terminalreporter.line(f"{count} skipped: {reason}", red=True, bold=True)
    terminalreporter.line(
        "This run does not cover the hostile-request battery against a real server; "
        "CI (CI=true) fails these tests instead of skipping them.",
        red=True,
    )
