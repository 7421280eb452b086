"""The certificate cache: one fetch per cache period, rotation, failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import pytest

from cloudtasks_deferred.auth import certs as certs_module
from cloudtasks_deferred.auth.certs import CachedCerts, CertsUnavailableError, shared_certs
from tests.oidc import CertsServer


class FakeEndpoint:
    def __init__(self, certs: dict[str, str], cache_control: str = "public, max-age=600") -> None:
        self.certs = certs
        self.cache_control = cache_control
        self.status = 200
        self.fail: Exception | None = None
        self.calls = 0

    def __call__(self, url: str) -> tuple[int, Mapping[str, str], bytes]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return self.status, headers, json.dumps(self.certs).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_fetches_once_per_max_age(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    for _ in range(100):
        assert cache.get("k1") == "PEM1"
    assert endpoint.calls == 1
    clock.now += 599
    cache.get("k1")
    assert endpoint.calls == 1
    clock.now += 2
    cache.get("k1")
    assert endpoint.calls == 2


def test_age_header_shortens_the_lifetime(clock: Clock) -> None:
    cache = CachedCerts(
        "https://certs",
        fetch=lambda url: (200, {"cache-control": "max-age=600", "Age": "500"}, b'{"k1": "P"}'),
        clock=clock,
    )
    cache.get("k1")
    clock.now += 99
    cache.get("k1")
    assert cache.fetch_count == 1
    clock.now += 2
    cache.get("k1")
    assert cache.fetch_count == 2


@pytest.mark.parametrize("cache_control", ["", "no-cache", "max-age=0", "max-age=abc"])
def test_without_a_usable_max_age_the_cache_still_lasts(clock: Clock, cache_control: str) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"}, cache_control=cache_control)
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    clock.now += certs_module.MIN_REFRESH_INTERVAL - 1
    cache.get("k1")
    assert endpoint.calls == 1


def test_an_unknown_kid_refreshes_at_most_once_per_interval(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    clock.now += certs_module.MIN_REFRESH_INTERVAL
    for _ in range(50):
        assert cache.get("rotated") is None
    assert endpoint.calls == 2
    endpoint.certs = {"k1": "PEM1", "rotated": "PEM2"}
    assert cache.get("rotated") is None  # still inside the interval
    clock.now += certs_module.MIN_REFRESH_INTERVAL
    assert cache.get("rotated") == "PEM2"
    assert endpoint.calls == 3


def test_a_failed_refresh_keeps_the_cached_certificates(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    endpoint.fail = OSError("network down")
    clock.now += 601
    assert cache.get("k1") == "PEM1"
    clock.now += certs_module.STALE_GRACE
    with pytest.raises(CertsUnavailableError, match="network down"):
        cache.get("k1")


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b"{}", "HTTP 500"),
        (200, b"not json", "cannot fetch"),
        (200, b'{"keys": [{"kid": "x"}]}', "not a {key id: PEM}"),
        (200, b"[]", "not a {key id: PEM}"),
    ],
)
def test_no_certificates_at_all_is_unavailable(status: int, body: bytes, message: str) -> None:
    cache = CachedCerts("https://certs", fetch=lambda url: (status, {}, body))
    with pytest.raises(CertsUnavailableError, match=message):
        cache.get("k1")


def test_concurrent_requests_share_one_fetch() -> None:
    gate = threading.Event()
    endpoint = FakeEndpoint({"k1": "PEM1"})

    def slow_fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
        gate.wait(5)
        return endpoint(url)

    cache = CachedCerts("https://certs", fetch=slow_fetch)
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k1"))) for _ in range(20)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == ["PEM1"] * 20
    assert endpoint.calls == 1


def test_fetches_over_real_http(certs_server: CertsServer) -> None:
    cache = CachedCerts(certs_server.url)
    kid = next(iter(certs_server.certs))
    assert cache.get(kid) == certs_server.certs[kid]
    assert cache.get(kid) == certs_server.certs[kid]
    assert certs_server.fetches == 1


def test_shared_certs_is_one_cache_per_url() -> None:
    assert shared_certs("https://a.example/c") is shared_certs("https://a.example/c")
    assert shared_certs("https://a.example/c") is not shared_certs("https://b.example/c")
