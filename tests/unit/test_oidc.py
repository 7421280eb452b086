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
    MAX_TIMESTAMP,
    MAX_TOKEN_BYTES,
    AuthenticationError,
    OIDCVerifier,
)
from tests.oidc import AUDIENCE, INVOKER, Issuer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


#: A header whose "alg" is NaN: JSON only with Python's extensions.
NAN_HEADER = _b64(b'{"alg":NaN}')


def noncanonical_signature(token: str) -> str:
    """``token`` with its signature's unused low bits set: the same bytes, another string."""
    header, claims, signature = token.split(".")
    assert len(signature) % 4 == 2  # a 256-byte RS256 signature: 4 unused bits at the end
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) + 1]
    return f"{header}.{claims}.{signature[:-1]}{last}"


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
        (lambda i: "not-a-jwt", "the bearer token is not a valid JWT"),
        (lambda i: "a.b.c", "the bearer token is not a valid JWT"),
        (lambda i: i.token()[:-10], "the token signature does not verify"),
        (lambda i: i.unsigned_token(), "the token is not signed with RS256"),
        (lambda i: i.hs256_token(), "the token is not signed with RS256"),
        (lambda i: Issuer(kid=i.kid).token(), "the token signature does not verify"),
        (lambda i: Issuer(kid="other").token(), "the token is signed by an unknown key"),
        (lambda i: i.token(exp=int(time.time()) - 60), "the token has expired"),
        (lambda i: i.token(iat=int(time.time()) + 300), "the token is not valid yet"),
        (lambda i: i.token(nbf=int(time.time()) + 300), "the token is not valid yet"),
        (lambda i: i.token(exp=None), "the token lacks numeric exp and iat claims"),
        (lambda i: i.token(iat="yesterday"), "the token lacks numeric exp and iat claims"),
        (lambda i: i.token(iss="https://evil.example"), "the token issuer is not Google"),
        (lambda i: i.token(iss=None), "the token issuer is not Google"),
        (
            lambda i: i.token(aud="https://other-service.a.run.app"),
            "the token audience is not this service",
        ),
        (lambda i: i.token(aud=[AUDIENCE]), "the token audience is not this service"),
        (
            lambda i: i.token(email="attacker@evil.example"),
            "the token email is not an allowed invoker",
        ),
        (lambda i: i.token(email=None), "the token email is not an allowed invoker"),
        (lambda i: i.token(email_verified=False), "the token email is not verified"),
        (lambda i: i.token(email_verified="true"), "the token email is not verified"),
        (lambda i: i.token(email_verified=None), "the token email is not verified"),
        (lambda i: "x" * 20000, "the bearer token is too long"),
        (lambda i: reheader(i, alg="RS512"), "the token is not signed with RS256"),
        (lambda i: reheader(i, alg="ES256"), "the token is not signed with RS256"),
        (lambda i: reheader(i, alg="rs256"), "the token is not signed with RS256"),
        (lambda i: reheader(i, kid=None), "the token names no signing key"),
        (lambda i: reheader(i, kid=""), "the token names no signing key"),
        (
            lambda i: i.token(iss="accounts.google.com.evil.example"),
            "the token issuer is not Google",
        ),
        (lambda i: i.token(email=INVOKER.upper()), "the token email is not an allowed invoker"),
        (
            lambda i: i.token(aud=AUDIENCE + "/_ah/queue/deferred"),
            "the token audience is not this service",
        ),
        (lambda i: i.token(aud=AUDIENCE + "/?q=1"), "the token audience is not this service"),
        (lambda i: i.token().replace(".", ". ", 2), "the bearer token is not a valid JWT"),
        (lambda i: i.token() + "==", "the bearer token is not a valid JWT"),
        (lambda i: i.token() + ".x", "the bearer token is not a valid JWT"),
        (lambda i: i.token(nbf="soon"), "the token's nbf claim is not a valid time"),
        (lambda i: noncanonical_signature(i.token()), "the bearer token is not a valid JWT"),
        (lambda i: "AB.e30.AA", "the bearer token is not a valid JWT"),
        (lambda i: f"{NAN_HEADER}.e30.AA", "the bearer token is not a valid JWT"),
        (lambda i: i.token() + "AAA", "the bearer token is not a valid JWT"),
        (lambda i: "e30.e30.AAAX", "the token is not signed with RS256"),
        (lambda i: f"{_b64(b'[]')}.e30.AA", "the bearer token is not a valid JWT"),
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
        "nbf not a time",
        "signature with unused bits set",
        "header with unused bits set",
        "NaN in the header",
        "signature of no possible length",
        "canonical segment ending in X",
        "header not an object",
    ],
)
def test_bad_tokens_are_refused_with_the_failed_check(
    verifier: OIDCVerifier, issuer: Issuer, make: Any, reason: str
) -> None:
    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(make(issuer))
    assert str(refused.value) == reason


def test_time_claims_at_the_documented_bounds_are_numbers(
    verifier: OIDCVerifier, issuer: Issuer
) -> None:
    # exp, iat and nbf are numbers from 0 to MAX_TIMESTAMP, both included.
    assert verifier.verify(issuer.token(iat=0))["iat"] == 0
    assert verifier.verify(issuer.token(nbf=0))["nbf"] == 0
    assert verifier.verify(issuer.token(exp=MAX_TIMESTAMP))["exp"] == MAX_TIMESTAMP


def test_a_verifier_needs_an_audience_and_an_invoker(issuer: Issuer) -> None:
    message = "^an OIDC verifier needs at least one audience and one invoker$"
    with pytest.raises(ValueError, match=message):
        OIDCVerifier(certs=StaticCerts(issuer.certs), audiences=[], invokers=[INVOKER])
    with pytest.raises(ValueError, match=message):
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
