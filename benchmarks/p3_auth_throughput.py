"""P3: handler throughput with OIDC verification on (warm certificates) vs auth off.

The same :class:`~cloudtasks_deferred.Handler`, settings and task (a no-op,
``process("user-42", 20)``) serve 5,000 in-process WSGI requests each way, in
interleaved rounds: once with the production authenticator (google-auth RS256
verification against certificates fetched from a loopback endpoint, already cached),
once with a benchmark-local authenticator that accepts everything. Every request
carries the same ID token, as Cloud Tasks reuses one for its lifetime. The ratio is
throughput(on) / throughput(off). Reported beside it, for information: the same with
the verified-token cache disabled (every request checks the RSA signature).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

from cloudtasks_deferred import Client, Handler, Settings
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.receive.auth import Caller, RequestAuthenticator
from cloudtasks_deferred.receive.auth.certs import CachedCerts
from cloudtasks_deferred.receive.auth.oidc import OIDCVerifier
from tests.oidc import AUDIENCE, INVOKER, CertsServer, Issuer

from .common import Result, interleaved
from .tasks import process

REQUESTS = 5000
ROUND = 250
TARGET = 0.85
SETTINGS = Settings(
    project="bench-project",
    location="us-central1",
    base_url=AUDIENCE,
    service_account=INVOKER,
    ndb=False,
)


class AcceptEverything:
    """Auth off: every request is a caller (benchmark only)."""

    def authenticate(self, environ: Mapping[str, Any]) -> Caller:
        return Caller(via="benchmark", identity="anyone")


def _environ(body: bytes, token: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/_ah/queue/deferred",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/octet-stream",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_X_CLOUDTASKS_QUEUENAME": "default",
        "HTTP_X_CLOUDTASKS_TASKNAME": "task-1",
        "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": "0",
        "HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT": "0",
        "HTTP_X_CLOUDTASKS_TASKETA": "1767225600.0",
        "wsgi.input": io.BytesIO(body),
    }


def _serve(handler: Handler, body: bytes, token: str, count: int) -> Callable[[], None]:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    def run() -> None:
        for _ in range(count):
            handler(_environ(body, token), start_response)
        if statuses[-1] != "200 OK" or len(set(statuses)) != 1:
            raise AssertionError(f"the benchmark's requests failed: {set(statuses)}")
        statuses.clear()

    return run


def _handler(authenticator: Any) -> Handler:
    client = Client(SETTINGS, transport=InMemoryTransport(), authenticator=authenticator)
    return Handler(client=client)


def _oidc(certs: CachedCerts, cache_size: int) -> RequestAuthenticator:
    verifier = OIDCVerifier(
        certs=certs, audiences=[AUDIENCE], invokers=[INVOKER], cache_size=cache_size
    )
    return RequestAuthenticator(trust_app_engine_headers=False, verifier=verifier)


def run(quick: bool = False) -> list[Result]:
    total = 1000 if quick else REQUESTS
    issuer = Issuer()
    token = issuer.token()
    body = encode(serialize(process, "user-42", 20))
    with CertsServer(issuer.certs, max_age=22000).running() as server:
        certs = CachedCerts(server.url)
        certs.get(issuer.kid)  # warm
        off = _handler(AcceptEverything())
        results = []
        for key, cache_size, target in (("P3", 256, TARGET), ("P3-nocache", 0, None)):
            on = _handler(_oidc(certs, cache_size))
            count = total if target else total // 5
            rounds = max(count // ROUND, 2)
            per_round = count // rounds
            _serve(on, body, token, 50)()  # warm both paths
            _serve(off, body, token, 50)()
            times_on, times_off = interleaved(
                _serve(on, body, token, per_round),
                _serve(off, body, token, per_round),
                rounds=rounds,
                between=lambda: None,
            )
            rate_on = per_round * rounds / sum(times_on)
            rate_off = per_round * rounds / sum(times_off)
            results.append(
                Result(
                    key=key,
                    title="handler throughput, OIDC on / auth off"
                    + ("" if target else " (no token cache)"),
                    value=rate_on / rate_off,
                    unit="x",
                    target=target,
                    higher_is_better=True,
                    detail=f"{rate_on:.0f} vs {rate_off:.0f} requests/s over "
                    f"{per_round * rounds} requests each"
                    + ("" if target else " (informational: RSA verification every request)"),
                )
            )
        if certs.fetch_count != 1:
            raise AssertionError(f"the warm cache fetched {certs.fetch_count} times")
    return results
