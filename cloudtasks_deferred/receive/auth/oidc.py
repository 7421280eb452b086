"""Verification of the OIDC ID tokens Cloud Tasks attaches to HTTP tasks, with google-auth.

A token is accepted only if, in this order:

1. it is a compact JWT no longer than :data:`MAX_TOKEN_BYTES`, made only of base64url
   characters and two dots, each part in its one canonical encoding (base64 decoders
   skip other characters and ignore unused low bits, so two different strings could
   otherwise carry one token, and fill the cache of verified tokens);
2. its header and claims are JSON objects parsed strictly (no ``NaN`` or
   ``Infinity``, nesting within Python's recursion limit); its header says
   ``alg: RS256`` (``none``, ``HS256`` and the rest are refused before any key is
   looked up) and names a key ID the certificate source knows;
3. ``exp`` and ``iat`` (and ``nbf`` if present) are finite numbers between 0 and
   :data:`MAX_TIMESTAMP` (booleans, strings, ``1e400`` and ``10**400`` are refused),
   the token has not expired and was not issued in the future, give or take
   :data:`CLOCK_SKEW_SECONDS`;
4. its signature verifies against that key (``google.auth.jwt.decode``);
5. ``iss`` is Google (``accounts.google.com`` with or without ``https://``) — a
   check ``google.oauth2.id_token.verify_token`` does not make;
6. ``aud`` is one of the configured audiences;
7. ``email`` is one of the allowed invokers and ``email_verified`` is true.

Each refusal raises :class:`AuthenticationError` with a reason safe to return to
the caller: it says which check failed and never echoes configuration. Nothing in
a token, however malformed, raises anything else: the handler answers 403 and logs
one warning, never a traceback.

Audiences are compared as exact strings. The default audience is the origin of
``CLOUDTASKS_DEFERRED_BASE_URL`` (``https://host[:port]``, no path, no query), which is
also what Cloud Run accepts for the service and what ``defer`` requests for every
task. A base URL with a query string is refused by the settings: task URLs are the
base URL plus ``_url``, so the query would end up in the middle of every URL, and a
token minted for a URL with a query (Cloud Tasks' default audience is the task's
full URL) never equals the audience the handler and Cloud Run compare it with.
Custom domains: list every audience a token may carry in
``CLOUDTASKS_DEFERRED_AUDIENCE`` (the first is the one ``defer`` requests).

A token that passed every check is remembered (by its exact string, until its
``exp``, in a bounded :class:`~cloudtasks_deferred.receive.auth.token_cache.VerifiedTokens`),
because Cloud Tasks sends the same token with many tasks; each request still checks
that the token has not expired and that its signing key is still published.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from cloudtasks_deferred.errors import Error
from cloudtasks_deferred.receive.auth.certs import CertSource
from cloudtasks_deferred.receive.auth.token_cache import (
    DEFAULT_MAX_ENTRIES,
    CachedToken,
    VerifiedTokens,
)

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "GOOGLE_ISSUERS",
    "MAX_TIMESTAMP",
    "MAX_TOKEN_BYTES",
    "AuthenticationError",
    "OIDCVerifier",
]

#: Issuers of Google-signed ID tokens.
GOOGLE_ISSUERS: Final = ("accounts.google.com", "https://accounts.google.com")
#: Seconds of clock difference tolerated on ``exp`` and ``iat``.
CLOCK_SKEW_SECONDS: Final = 10
#: Longer tokens are refused before parsing; Google ID tokens are about 1 KB.
MAX_TOKEN_BYTES: Final = 16 * 1024
#: Latest time claim accepted, in seconds since the epoch (the year 2286).
MAX_TIMESTAMP: Final = 10**10
# header.payload.signature, base64url without padding (the signature may be empty,
# so that alg "none" is refused by name).
_COMPACT_JWT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class AuthenticationError(Error):
    """The request is not from an allowed caller; ``str(error)`` says which check failed."""


class OIDCVerifier:
    """Verifies ID tokens against a certificate source and the configured claims.

    Args:
        certs: Where the signing keys come from.
        audiences: Accepted ``aud`` values.
        invokers: Accepted ``email`` values.
        issuers: Accepted ``iss`` values.
        clock_skew: Seconds tolerated on ``exp`` and ``iat``.
        clock: Seconds since the epoch; injectable for tests.
        cache_size: Most verified tokens remembered; 0 verifies every request in
            full. The cache is private to this verifier: its audiences and invokers
            are part of what a cached token passed.
    """

    def __init__(
        self,
        *,
        certs: CertSource,
        audiences: Sequence[str],
        invokers: Collection[str],
        issuers: Collection[str] = GOOGLE_ISSUERS,
        clock_skew: int = CLOCK_SKEW_SECONDS,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if not audiences or not invokers:
            raise ValueError("an OIDC verifier needs at least one audience and one invoker")
        self.certs = certs
        # Immutable: cached verdicts depend on them.
        self.audiences = tuple(audiences)
        self.invokers = frozenset(invokers)
        self.issuers = frozenset(issuers)
        self.clock_skew = clock_skew
        self._clock = clock
        self.cache = VerifiedTokens(cache_size) if cache_size > 0 else None

    def verify(self, token: str) -> Mapping[str, Any]:
        """Checks ``token`` and returns its claims.

        Args:
            token: The compact JWT from ``Authorization: Bearer``.

        Returns:
            The verified claims (read-only).

        Raises:
            AuthenticationError: A check failed; the message names it.
            CertsUnavailableError: No certificates could be fetched (transient).
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("the bearer token is too long")
        # A cached token passed every check below, the format included.
        cached = self.cache.get(token, self._clock()) if self.cache is not None else None
        # Per request even for a known token: its key must still be published, unchanged.
        if cached is not None and self.certs.get(cached.kid) == cached.cert:
            return cached.claims
        if not _COMPACT_JWT.fullmatch(token):
            raise AuthenticationError("the bearer token is not a valid JWT")
        claims, kid, cert = self._verify_signature(token)
        issuer, audience = claims.get("iss"), claims.get("aud")
        if not isinstance(issuer, str) or issuer not in self.issuers:
            raise AuthenticationError("the token issuer is not Google")
        if not isinstance(audience, str) or audience not in self.audiences:
            raise AuthenticationError("the token audience is not this service")
        email = claims.get("email")
        if not isinstance(email, str) or email not in self.invokers:
            raise AuthenticationError("the token email is not an allowed invoker")
        if claims.get("email_verified") is not True:
            raise AuthenticationError("the token email is not verified")
        frozen = MappingProxyType(dict(claims))
        exp = _number(claims, "exp")
        if exp is not None and self.cache is not None:
            self.cache.put(token, CachedToken(claims=frozen, kid=kid, cert=cert, expires_at=exp))
        return frozen

    def _verify_signature(self, token: str) -> tuple[Mapping[str, Any], str, str]:
        """Checks the header, the times and the signature: steps 1-4 of the module docstring."""
        from google.auth import jwt  # google-auth loads on the first token (cold starts)

        header, unverified = _parse(token)
        if header.get("alg") != "RS256":
            raise AuthenticationError("the token is not signed with RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("the token names no signing key")
        self._check_times(unverified)
        cert = self.certs.get(kid)
        if cert is None:
            raise AuthenticationError("the token is signed by an unknown key")
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token, certs={kid: cert}, verify=True, clock_skew_in_seconds=self.clock_skew
            )
        except Exception as exc:
            # Only the token's bytes reach this call (the certificate is known): any
            # failure is the token's, and a refusal, never a server error.
            raise AuthenticationError("the token signature does not verify") from exc
        return claims, kid, cert

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if exp is None or iat is None:
            raise AuthenticationError("the token lacks numeric exp and iat claims")
        if exp + self.clock_skew < now:
            raise AuthenticationError("the token has expired")
        nbf = _number(claims, "nbf")
        if nbf is None and "nbf" in claims:
            raise AuthenticationError("the token's nbf claim is not a valid time")
        if max(iat, nbf or iat) - self.clock_skew > now:
            raise AuthenticationError("the token is not valid yet")


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWT, parsed strictly (module docstring, 1-2)."""
    header_b64, claims_b64, signature_b64 = token.split(".")
    if not _canonical(signature_b64):
        raise AuthenticationError("the bearer token is not a valid JWT")
    return _json_object(header_b64), _json_object(claims_b64)


def _canonical(segment: str) -> bool:
    """Whether ``segment`` is the one base64url encoding of the bytes it decodes to."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment


def _json_object(segment: str) -> dict[str, Any]:
    if not _canonical(segment):
        raise AuthenticationError("the bearer token is not a valid JWT")
    try:
        value = json.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)),
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError):
        raise AuthenticationError("the bearer token is not a valid JWT") from None
    if not isinstance(value, dict):
        raise AuthenticationError("the bearer token is not a valid JWT")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed in a token")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim, or ``None`` unless it is a finite number in [0, MAX_TIMESTAMP]."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value <= MAX_TIMESTAMP:  # compared exactly: 10**400 never becomes a float
        return None
    number = float(value)
    return number if math.isfinite(number) else None
