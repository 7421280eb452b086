"""The verified-token cache: exact keys, bounded, never past exp, per-request key check."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.auth.oidc import AuthenticationError, OIDCVerifier
from cloudtasks_deferred.receive.auth.token_cache import (
    DEFAULT_MAX_ENTRIES,
    CachedToken,
    VerifiedTokens,
)
from tests.oidc import AUDIENCE, INVOKER, Issuer


class CountingCerts:
    """A mutable certificate source that counts lookups."""

    def __init__(self, certs: Mapping[str, str]) -> None:
        self.certs = dict(certs)
        self.lookups = 0

    def get(self, kid: str) -> str | None:
        self.lookups += 1
        return self.certs.get(kid)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def cache(verifier: OIDCVerifier) -> VerifiedTokens:
    assert verifier.cache is not None
    return verifier.cache


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def certs(issuer: Issuer) -> CountingCerts:
    return CountingCerts(issuer.certs)


@pytest.fixture
def verifier(certs: CountingCerts, clock: Clock) -> OIDCVerifier:
    return OIDCVerifier(certs=certs, audiences=[AUDIENCE], invokers=[INVOKER], clock=clock)


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every signature verification google-auth performs."""
    from google.auth import jwt

    calls: list[str] = []
    real = jwt.decode

    def counting(token: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("verify", True):
            calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


def test_a_reused_token_is_verified_once(
    verifier: OIDCVerifier, issuer: Issuer, signatures: list[str]
) -> None:
    token = issuer.token()
    first = verifier.verify(token)
    for _ in range(50):
        assert verifier.verify(token) == first
    assert len(signatures) == 1
    assert cache(verifier).hits == 50


def test_the_key_is_the_exact_token(
    verifier: OIDCVerifier, issuer: Issuer, signatures: list[str]
) -> None:
    token = issuer.token()
    verifier.verify(token)
    with pytest.raises(AuthenticationError):
        verifier.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(AuthenticationError):
        verifier.verify(token + " ")  # whitespace is part of the string
    other = issuer.token(sub="another")  # same audience and email, another token
    verifier.verify(other)
    assert signatures[0] == token
    assert signatures[-1] == other  # verified in full, not answered from the cache
    assert len(cache(verifier)) == 2


def test_refused_tokens_are_never_cached(verifier: OIDCVerifier, issuer: Issuer) -> None:
    bad = issuer.token(aud="https://elsewhere.example")
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="audience"):
            verifier.verify(bad)
    assert len(cache(verifier)) == 0


def test_an_entry_never_outlives_exp(verifier: OIDCVerifier, issuer: Issuer, clock: Clock) -> None:
    exp = int(clock.now) + 120
    token = issuer.token(exp=exp)
    verifier.verify(token)
    clock.now = exp - 1
    verifier.verify(token)
    assert cache(verifier).hits == 1
    clock.now = exp  # the entry is gone; full verification decides (with its skew)
    verifier.verify(token)
    assert cache(verifier).hits == 1
    clock.now = exp + verifier.clock_skew + 1
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(token)


def test_a_withdrawn_or_replaced_key_stops_cached_tokens(
    verifier: OIDCVerifier, issuer: Issuer, certs: CountingCerts
) -> None:
    token = issuer.token()
    verifier.verify(token)
    lookups = certs.lookups
    verifier.verify(token)
    assert certs.lookups == lookups + 1  # the key is checked on every request
    certs.certs = {issuer.kid: Issuer(kid=issuer.kid).cert_pem}  # same kid, new key
    with pytest.raises(AuthenticationError, match="signature does not verify"):
        verifier.verify(token)
    certs.certs = {}
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(token)


def test_the_cache_is_bounded_least_recently_used_first(issuer: Issuer) -> None:
    verifier = OIDCVerifier(
        certs=StaticCerts(issuer.certs),
        audiences=[AUDIENCE],
        invokers=[INVOKER],
        cache_size=3,
    )
    tokens = [issuer.token(sub=str(i)) for i in range(5)]
    for token in tokens[:3]:
        verifier.verify(token)
    verifier.verify(tokens[0])  # now the most recently used
    verifier.verify(tokens[3])
    verifier.verify(tokens[4])
    assert len(cache(verifier)) == 3
    hits = cache(verifier).hits
    verifier.verify(tokens[0])
    assert cache(verifier).hits == hits + 1
    verifier.verify(tokens[1])  # evicted: verified again
    assert cache(verifier).hits == hits + 1


def test_cached_claims_are_read_only(verifier: OIDCVerifier, issuer: Issuer) -> None:
    token = issuer.token()
    claims = verifier.verify(token)
    with pytest.raises(TypeError):
        claims["email"] = "attacker@evil.example"  # type: ignore[index]
    assert verifier.verify(token)["email"] == INVOKER


def test_a_verifier_without_a_cache_verifies_every_request(
    issuer: Issuer, signatures: list[str]
) -> None:
    verifier = OIDCVerifier(
        certs=StaticCerts(issuer.certs), audiences=[AUDIENCE], invokers=[INVOKER], cache_size=0
    )
    token = issuer.token()
    verifier.verify(token)
    verifier.verify(token)
    assert verifier.cache is None
    assert len(signatures) == 2


def test_concurrent_verification(verifier: OIDCVerifier, issuer: Issuer) -> None:
    tokens = [issuer.token(sub=str(i)) for i in range(4)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                for token in tokens:
                    assert verifier.verify(token)["email"] == INVOKER
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(cache(verifier)) == 4


def test_verified_tokens_directly() -> None:
    cache = VerifiedTokens(max_entries=1)
    entry = CachedToken(claims={}, kid="k", cert="PEM", expires_at=100.0)
    cache.put("t1", entry)
    assert cache.get("t1", 99.9) is entry
    assert cache.get("t1", 100.0) is None
    assert len(cache) == 0
    cache.put("t1", entry)
    cache.put("t2", entry)
    assert cache.get("t1", 0) is None
    assert cache.get("t2", 0) is entry
    with pytest.raises(ValueError, match="at least 1"):
        VerifiedTokens(max_entries=0)


def test_the_default_cache_keeps_256_tokens(issuer: Issuer) -> None:
    verifier = OIDCVerifier(
        certs=StaticCerts(issuer.certs), audiences=[AUDIENCE], invokers=[INVOKER]
    )
    assert cache(verifier).max_entries == DEFAULT_MAX_ENTRIES == 256
    tokens = VerifiedTokens()
    entry = CachedToken(claims={}, kid="k", cert="PEM", expires_at=100.0)
    for index in range(257):
        tokens.put(f"t{index}", entry)
    assert len(tokens) == 256
    assert tokens.get("t0", 0) is None  # the least recently used went
    assert tokens.get("t1", 0) is entry
    assert tokens.get("t256", 0) is entry


def test_a_cache_of_one_token_still_caches(
    certs: CountingCerts, clock: Clock, issuer: Issuer, signatures: list[str]
) -> None:
    verifier = OIDCVerifier(
        certs=certs, audiences=[AUDIENCE], invokers=[INVOKER], clock=clock, cache_size=1
    )
    token = issuer.token()
    for _ in range(3):
        verifier.verify(token)
    assert (len(signatures), cache(verifier).hits) == (1, 2)


class HeldLock:
    """Stands in for the cache's lock; counts the threads waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = threading.Semaphore(0)

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.waiting.release()
            assert self._lock.acquire(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_threads_finding_the_same_expired_token_all_miss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both see the expired entry before either removes it: the second finds it gone.
    tokens = VerifiedTokens()
    tokens.put("t", CachedToken(claims={}, kid="k", cert="PEM", expires_at=100.0))
    lock = HeldLock()
    monkeypatch.setattr(tokens, "_lock", lock)
    results: list[object] = []

    def get() -> None:
        try:
            results.append(tokens.get("t", 100.0))
        except Exception as exc:
            results.append(exc)

    with lock:
        threads = [threading.Thread(target=get) for _ in range(2)]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert lock.waiting.acquire(timeout=10)
    for thread in threads:
        thread.join(10)
    assert results == [None, None]
    assert len(tokens) == 0
