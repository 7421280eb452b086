"""P4: certificate fetches per 1,000 verified requests, ours vs google-auth's default.

Both verify the same 1,000 distinct, valid ID tokens (so that no verified-token cache
helps) against certificates served by a loopback endpoint that counts fetches and
sends ``Cache-Control: max-age=22000`` like Google's:

* ours: 1,000 requests through the handler with the production authenticator
  (a fresh :class:`~cloudtasks_deferred.receive.auth.certs.CachedCerts`);
* google-auth: ``google.oauth2.id_token.verify_token(token, request, audience=...,
  certs_url=...)`` with one plain ``google.auth.transport.requests.Request()``.

``--quick`` shortens only google-auth's side (one fetch per call, 200 calls): a fetch
count is not extrapolated, so ours always serves the full 1,000 requests.
"""

from __future__ import annotations

import io
import time

from cloudtasks_deferred import Client, Handler
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.receive.auth.certs import CachedCerts
from tests.oidc import AUDIENCE, CertsServer, Issuer

from .common import Result
from .p3_auth_throughput import SETTINGS, _oidc
from .tasks import process

REQUESTS = 1000
TARGET = 1.0


def run(quick: bool = False) -> Result:
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    issuer = Issuer()
    tokens = [issuer.token(sub=str(i)) for i in range(REQUESTS)]
    compared = tokens[:200] if quick else tokens
    body = encode(serialize(process, "user-42", 20))

    with CertsServer(issuer.certs, max_age=22000).running() as server:
        handler = Handler(
            client=Client(
                SETTINGS,
                transport=InMemoryTransport(),
                authenticator=_oidc(CachedCerts(server.url), cache_size=256),
            )
        )
        started = time.perf_counter()
        for token in tokens:
            statuses: list[str] = []
            environ = {
                "REQUEST_METHOD": "POST",
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_AUTHORIZATION": f"Bearer {token}",
                "wsgi.input": io.BytesIO(body),
            }
            handler(environ, lambda status, headers, s=statuses: s.append(status))
            if statuses != ["200 OK"]:
                raise AssertionError(f"a verified request failed: {statuses}")
        ours_seconds = time.perf_counter() - started
        ours = server.fetches

        server.fetches = 0
        request = Request()
        started = time.perf_counter()
        for token in compared:
            claims = id_token.verify_token(token, request, audience=AUDIENCE, certs_url=server.url)
            if claims["aud"] != AUDIENCE:
                raise AssertionError("google-auth returned the wrong claims")
        theirs_seconds = time.perf_counter() - started
        theirs = server.fetches

    return Result(
        key="P4",
        title="cert fetches per 1,000 verified requests",
        value=ours,
        unit="fetches",
        target=TARGET,
        detail=f"ours {ours} fetch(es) for {REQUESTS} requests ({ours_seconds:.2f} s through "
        f"the handler); google-auth's verify_token {theirs} fetches for {len(compared)} of "
        f"the same tokens ({theirs * 1000 / len(compared):.0f} per 1,000, "
        f"{theirs_seconds:.2f} s)",
    )
