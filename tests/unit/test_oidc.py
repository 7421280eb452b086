"""The OIDC verifier, with tokens really signed by an RSA key."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.auth.oidc import (
    CLOCK_SKEW_SECONDS,
    MAX_TOKEN_BYTES,
    AuthenticationError,
    OIDCVerifier,
)
from tests.oidc import AUDIENCE, INVOKER, Issuer


def reheader(issuer: Issuer, **changes: Any) -> str:
    """A token signed by ``issuer`` whose header is then changed (so its signature breaks)."""
    header_b64, payload_b64, signature = issuer.token().split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    header.update(changes)
    header = {k: v for k, v in header.items() if v is not None}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload_b64}.{signature}"


@pytest.fixture
def verifier(issuer: Issuer) -> OIDCVerifier:
    return OIDCVerifier(certs=StaticCerts(issuer.certs), audiences=[AUDIENCE], invokers=[INVOKER])


def test_a_valid_token_returns_its_claims(verifier: OIDCVerifier, issuer: Issuer) -> None:
    claims = verifier.verify(issuer.token())
    assert claims["email"] == INVOKER
    assert claims["aud"] == AUDIENCE


def test_both_google_issuer_spellings_are_accepted(verifier: OIDCVerifier, issuer: Issuer) -> None:
    assert verifier.verify(issuer.token(iss="accounts.google.com"))["email"] == INVOKER


def test_small_clock_skew_is_tolerated(verifier: OIDCVerifier, issuer: Issuer) -> None:
    now = int(time.time())
    claims = verifier.verify(issuer.token(iat=now + 5, exp=now - 5))
    assert (claims["iat"], claims["exp"]) == (now + 5, now - 5)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: "not-a-jwt", "not a valid JWT"),
        (lambda i: "a.b.c", "not a valid JWT"),
        (lambda i: i.token()[:-10], "signature does not verify"),
        (lambda i: i.unsigned_token(), "not signed with RS256"),
        (lambda i: i.hs256_token(), "not signed with RS256"),
        (lambda i: Issuer(kid=i.kid).token(), "signature does not verify"),
        (lambda i: Issuer(kid="other").token(), "unknown key"),
        (lambda i: i.token(exp=int(time.time()) - 60), "expired"),
        (lambda i: i.token(iat=int(time.time()) + 300), "not valid yet"),
        (lambda i: i.token(nbf=int(time.time()) + 300), "not valid yet"),
        (lambda i: i.token(exp=None), "lacks numeric exp and iat"),
        (lambda i: i.token(iat="yesterday"), "lacks numeric exp and iat"),
        (lambda i: i.token(iss="https://evil.example"), "issuer is not Google"),
        (lambda i: i.token(iss=None), "issuer is not Google"),
        (lambda i: i.token(aud="https://other-service.a.run.app"), "audience is not this"),
        (lambda i: i.token(aud=[AUDIENCE]), "audience is not this"),
        (lambda i: i.token(email="attacker@evil.example"), "not an allowed invoker"),
        (lambda i: i.token(email=None), "not an allowed invoker"),
        (lambda i: i.token(email_verified=False), "not verified"),
        (lambda i: i.token(email_verified="true"), "not verified"),
        (lambda i: i.token(email_verified=None), "not verified"),
        (lambda i: "x" * 20000, "too long"),
        (lambda i: reheader(i, alg="RS512"), "not signed with RS256"),
        (lambda i: reheader(i, alg="ES256"), "not signed with RS256"),
        (lambda i: reheader(i, alg="rs256"), "not signed with RS256"),
        (lambda i: reheader(i, kid=None), "names no signing key"),
        (lambda i: reheader(i, kid=""), "names no signing key"),
        (lambda i: i.token(iss="accounts.google.com.evil.example"), "issuer is not Google"),
        (lambda i: i.token(email=INVOKER.upper()), "not an allowed invoker"),
        (lambda i: i.token(aud=AUDIENCE + "/_ah/queue/deferred"), "audience is not this"),
        (lambda i: i.token(aud=AUDIENCE + "/?q=1"), "audience is not this"),
        (lambda i: i.token().replace(".", ". ", 2), "not a valid JWT"),
        (lambda i: i.token() + "==", "not a valid JWT"),
        (lambda i: i.token() + ".x", "not a valid JWT"),
    ],
    ids=[
        "garbage",
        "bad segments",
        "truncated signature",
        "alg none",
        "hs256 with public key",
        "same kid other key",
        "unknown kid",
        "expired",
        "issued in the future",
        "not before",
        "no exp",
        "non-numeric iat",
        "wrong issuer",
        "no issuer",
        "wrong audience",
        "audience list",
        "wrong email",
        "no email",
        "unverified email",
        "email_verified string",
        "no email_verified",
        "oversized",
        "rs512 header",
        "es256 header",
        "lowercase alg",
        "no kid",
        "empty kid",
        "issuer lookalike",
        "email case",
        "audience with path",
        "audience with query",
        "space inside (decoders skip it)",
        "padding",
        "four segments",
    ],
)
def test_bad_tokens_are_refused_with_the_failed_check(
    verifier: OIDCVerifier, issuer: Issuer, make: Any, reason: str
) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        verifier.verify(make(issuer))


def test_a_verifier_needs_an_audience_and_an_invoker(issuer: Issuer) -> None:
    with pytest.raises(ValueError, match="at least one audience"):
        OIDCVerifier(certs=StaticCerts(issuer.certs), audiences=[], invokers=[INVOKER])
    with pytest.raises(ValueError, match="at least one audience"):
        OIDCVerifier(certs=StaticCerts(issuer.certs), audiences=[AUDIENCE], invokers=[])


def test_every_configured_audience_is_accepted_for_custom_domains(issuer: Issuer) -> None:
    domains = ["https://tasks.example.com", "https://svc-abc-uc.a.run.app"]
    verifier = OIDCVerifier(certs=StaticCerts(issuer.certs), audiences=domains, invokers=[INVOKER])
    for audience in domains:
        assert verifier.verify(issuer.token(aud=audience))["aud"] == audience
    with pytest.raises(AuthenticationError, match="audience"):
        verifier.verify(issuer.token())


def test_several_invokers(issuer: Issuer) -> None:
    other = "other@test-project.iam.gserviceaccount.com"
    verifier = OIDCVerifier(
        certs=StaticCerts(issuer.certs), audiences=[AUDIENCE], invokers=[INVOKER, other]
    )
    assert verifier.verify(issuer.token(email=other))["email"] == other


def test_clock_skew_is_the_documented_ten_seconds(issuer: Issuer) -> None:
    assert CLOCK_SKEW_SECONDS == 10
    exp = int(time.time()) + 3600

    def at(now: float) -> OIDCVerifier:
        return OIDCVerifier(
            certs=StaticCerts(issuer.certs),
            audiences=[AUDIENCE],
            invokers=[INVOKER],
            clock=lambda: now,
            cache_size=0,
        )

    at(exp + CLOCK_SKEW_SECONDS - 1).verify(issuer.token(exp=exp))
    with pytest.raises(AuthenticationError, match="expired"):
        at(exp + CLOCK_SKEW_SECONDS + 1).verify(issuer.token(exp=exp))
    iat = int(time.time())
    at(iat - CLOCK_SKEW_SECONDS + 1).verify(issuer.token(iat=iat))
    with pytest.raises(AuthenticationError, match="not valid yet"):
        at(iat - CLOCK_SKEW_SECONDS - 1).verify(issuer.token(iat=iat))


def test_a_token_is_valid_through_both_skewed_bounds_inclusive(issuer: Issuer) -> None:
    # As google-auth's own checks: expired only after exp + skew, not valid only
    # before iat - skew.
    exp = int(time.time()) + 3600
    iat = int(time.time())

    def at(now: float) -> OIDCVerifier:
        return OIDCVerifier(
            certs=StaticCerts(issuer.certs),
            audiences=[AUDIENCE],
            invokers=[INVOKER],
            clock=lambda: now,
            cache_size=0,
        )

    assert at(exp + CLOCK_SKEW_SECONDS).verify(issuer.token(exp=exp))["exp"] == exp
    assert at(iat - CLOCK_SKEW_SECONDS).verify(issuer.token(iat=iat))["iat"] == iat


@pytest.mark.parametrize(
    "claims",
    [{"exp": True}, {"iat": True}, {"iat": False}, {"exp": 1.5e10, "iat": True}],
    ids=["exp true", "iat true", "iat false", "iat true with a far exp"],
)
def test_booleans_are_not_numbers_for_exp_and_iat(
    verifier: OIDCVerifier, issuer: Issuer, claims: dict[str, Any]
) -> None:
    # JSON true is a Python int: read as 1, "iat": true would be a token issued in 1970.
    with pytest.raises(AuthenticationError, match="numeric exp and iat"):
        verifier.verify(issuer.token(**claims))


def test_the_token_length_limit_is_16_kib(verifier: OIDCVerifier) -> None:
    assert MAX_TOKEN_BYTES == 16 * 1024
    # At the limit the token is parsed (and refused for what it is); one more is too long.
    with pytest.raises(AuthenticationError, match="not a valid JWT"):
        verifier.verify("a" * MAX_TOKEN_BYTES)
    with pytest.raises(AuthenticationError, match="too long"):
        verifier.verify("a" * (MAX_TOKEN_BYTES + 1))


def test_a_long_valid_token_within_the_limit_is_accepted(
    verifier: OIDCVerifier, issuer: Issuer
) -> None:
    token = issuer.token(padding="x" * 10_000)
    assert len(token) < MAX_TOKEN_BYTES
    assert verifier.verify(token)["padding"] == "x" * 10_000
