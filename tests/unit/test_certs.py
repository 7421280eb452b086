"""The certificate cache: one fetch per cache period, rotation, failures."""

from __future__ import annotations

import json
import pickle
import socket
import threading
from collections.abc import Mapping

import pytest

from cloudtasks_deferred import Client, Handler, Settings
from cloudtasks_deferred.receive.auth import authenticator_for
from cloudtasks_deferred.receive.auth import certs as certs_module
from cloudtasks_deferred.receive.auth.certs import CachedCerts, CertsUnavailableError, shared_certs
from tests import tasks
from tests.oidc import AUDIENCE, INVOKER, CertsServer, Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ


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


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [("", 300.0), ("no-cache", 300.0), ("max-age=abc", 300.0), ("max-age=0", 30.0)],
    ids=["none", "no max-age", "not a number", "zero: floored"],
)
def test_without_a_usable_max_age_the_cache_lasts_the_default(
    clock: Clock, cache_control: str, lifetime: float
) -> None:
    assert (certs_module.DEFAULT_MAX_AGE, certs_module.MIN_REFRESH_INTERVAL) == (300.0, 30.0)
    endpoint = FakeEndpoint({"k1": "PEM1"}, cache_control=cache_control)
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    clock.now += lifetime - 0.5
    cache.get("k1")
    assert endpoint.calls == 1
    clock.now += 0.5
    cache.get("k1")
    assert endpoint.calls == 2


@pytest.mark.parametrize(
    "age",
    ["abc", "", "1e999x", "nan", "inf", "-inf", "-500"],
    ids=["text", "empty", "garbage", "nan", "infinite", "minus infinite", "negative"],
)
def test_an_age_header_that_is_no_delta_seconds_counts_as_zero(clock: Clock, age: str) -> None:
    # "nan" once made the lifetime NaN: certificates that expired at once, and 503s
    # between fetches; a negative Age would have lengthened max-age.
    cache = CachedCerts(
        "https://certs",
        fetch=lambda url: (200, {"Cache-Control": "max-age=600", "Age": age}, b'{"k1": "P"}'),
        clock=clock,
    )
    cache.get("k1")
    clock.now += 599.5
    cache.get("k1")
    assert cache.fetch_count == 1
    clock.now += 0.5
    cache.get("k1")
    assert cache.fetch_count == 2


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


@pytest.mark.parametrize("status", [204, 301, 302, 304, 401, 404, 429])
def test_only_200_answers_are_read_as_certificates(status: int) -> None:
    # A redirect, a not-modified or a client error with a well-formed body (a captive
    # portal, a cached error page) must not become the trusted keys.
    cache = CachedCerts("https://certs", fetch=lambda url: (status, {}, b'{"k1": "PEM1"}'))
    with pytest.raises(CertsUnavailableError, match=f"HTTP {status}"):
        cache.get("k1")
    assert cache.fetch_count == 1


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


# --- properties added with the security review ---------------------------------------


def test_any_number_of_threads_fetch_once_per_period(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"}, cache_control="max-age=600")
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    for period in range(1, 4):
        threads = [
            threading.Thread(target=lambda: [cache.get("k1") for _ in range(200)]) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert endpoint.calls == period
        clock.now += 600
    assert cache.fetch_count == 3


def test_while_one_thread_refreshes_the_others_use_the_expired_certs(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    release = threading.Event()
    started = threading.Event()

    def fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
        if endpoint.calls:  # the refresh, not the first fetch
            started.set()
            release.wait(10)
        return endpoint(url)

    cache = CachedCerts("https://certs", fetch=fetch, clock=clock)
    cache.get("k1")
    clock.now += 601
    endpoint.certs = {"k1": "PEM1-new"}
    refresher = threading.Thread(target=cache.get, args=("k1",))
    refresher.start()
    assert started.wait(5)
    assert cache.get("k1") == "PEM1"  # did not wait for the refresh
    release.set()
    refresher.join(5)
    assert cache.get("k1") == "PEM1-new"
    assert endpoint.calls == 2


def test_a_failing_refresh_is_retried_once_per_interval_not_per_request(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    endpoint.fail = OSError("network down")
    clock.now += 601
    for _ in range(100):
        assert cache.get("k1") == "PEM1"
    assert endpoint.calls == 2
    clock.now += certs_module.RETRY_INTERVAL
    assert cache.get("k1") == "PEM1"
    assert endpoint.calls == 3
    endpoint.fail = None
    clock.now += certs_module.RETRY_INTERVAL
    endpoint.certs = {"k1": "PEM1-new"}
    assert cache.get("k1") == "PEM1-new"
    assert endpoint.calls == 4


def test_without_certificates_requests_fail_fast_between_retries(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    endpoint.fail = OSError("connection refused")
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    for _ in range(20):
        with pytest.raises(CertsUnavailableError, match="connection refused"):
            cache.get("k1")
    assert endpoint.calls == 1
    endpoint.fail = None
    clock.now += certs_module.RETRY_INTERVAL
    assert cache.get("k1") == "PEM1"
    assert endpoint.calls == 2


def test_threads_waiting_on_a_failed_first_fetch_do_not_refetch() -> None:
    release = threading.Event()
    calls: list[str] = []

    def fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
        calls.append(url)
        release.wait(10)
        raise OSError("timed out")

    cache = CachedCerts("https://certs", fetch=fetch)
    outcomes: list[str] = []

    def get() -> None:
        try:
            cache.get("k1")
        except CertsUnavailableError:
            outcomes.append("unavailable")

    threads = [threading.Thread(target=get) for _ in range(10)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert outcomes == ["unavailable"] * 10
    assert len(calls) == 1


def test_unknown_key_ids_from_many_threads_refresh_once(clock: Clock) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"})
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    clock.now += certs_module.MIN_REFRESH_INTERVAL
    threads = [
        threading.Thread(target=lambda i=i: [cache.get(f"forged-{i}-{n}") for n in range(50)])
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert endpoint.calls == 2


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        ("public, max-age=22000, must-revalidate, no-transform", 22000),
        ("max-age=99999999", certs_module.MAX_CACHE_SECONDS),
        ("max-age=5", certs_module.MIN_REFRESH_INTERVAL),
    ],
    ids=["google's", "capped", "floored"],
)
def test_cache_lifetime_bounds(clock: Clock, cache_control: str, lifetime: float) -> None:
    endpoint = FakeEndpoint({"k1": "PEM1"}, cache_control=cache_control)
    cache = CachedCerts("https://certs", fetch=endpoint, clock=clock)
    cache.get("k1")
    clock.now += lifetime - 1
    cache.get("k1")
    assert endpoint.calls == 1
    clock.now += 1
    cache.get("k1")
    assert endpoint.calls == 2


def test_many_threads_over_real_http_fetch_once(certs_server: CertsServer) -> None:
    cache = CachedCerts(certs_server.url)
    kid = next(iter(certs_server.certs))
    threads = [
        threading.Thread(target=lambda: [cache.get(kid) for _ in range(100)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert certs_server.fetches == 1


def test_the_handler_answers_503_when_no_certificates_can_be_had(issuer: Issuer) -> None:
    # A real fetch to a port nobody listens on: connection refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/certs"
    settings = Settings(base_url=AUDIENCE, service_account=INVOKER, oidc_certs_url=url, ndb=False)
    client = Client(settings, authenticator=authenticator_for(settings, certs=CachedCerts(url)))
    env = environ(
        pickle.dumps(tasks.Canary()), headers={"Authorization": f"Bearer {issuer.token()}"}
    )
    response = call(Handler(client=client), env)
    assert (response.code, response.body) == (
        503,
        b"ServiceUnavailable: token verification is unavailable",
    )
    assert env["wsgi.input"].reads == 0
    assert RECORDER.calls == []
