"""The certificate cache at its limits: the stale grace, slow fetches, what it says.

``test_certs.py`` covers the cache's behaviour; these tests pin each limit at its
exact value (a bound moved by one second changes the answer) and the words of the
errors and warnings an operator reads when Google's endpoint is unreachable.
"""

from __future__ import annotations

import json
import logging
import threading
import types
from collections.abc import Mapping
from typing import Any

import pytest
import requests

from cloudtasks_deferred.receive.auth import certs as certs_module
from cloudtasks_deferred.receive.auth.certs import CachedCerts, CertsUnavailableError

URL = "https://certs.example.test/oauth2/v1/certs"
CERTS = json.dumps({"k1": "PEM1"}).encode()


class Clock:
    """Seconds, set by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """Answers with ``{"k1": "PEM1"}`` and ``max-age=600`` until told to fail."""

    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.calls = 0

    def __call__(self, url: str) -> tuple[int, Mapping[str, str], bytes]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return 200, {"Cache-Control": "max-age=600"}, CERTS


def test_the_documented_limits() -> None:
    assert certs_module.STALE_GRACE == 3600.0
    assert certs_module.RETRY_INTERVAL == 5.0
    assert certs_module.FETCH_TIMEOUT == 10.0


def test_a_refresh_failing_exactly_at_the_end_of_the_grace_is_unavailable() -> None:
    # Fetched at 1000 with max-age 600: expired at 1600, usable if refreshing fails
    # until 1600 + 3600 = 5200, and not at 5200 itself.
    clock, endpoint = Clock(), Endpoint()
    cache = CachedCerts(URL, fetch=endpoint, clock=clock)
    assert cache.get("k1") == "PEM1"
    endpoint.fail = OSError("network down")
    clock.now = 5200.0
    with pytest.raises(CertsUnavailableError) as raised:
        cache.get("k1")
    assert str(raised.value) == f"cannot fetch token certificates from {URL}: network down"


def test_a_refresh_failing_just_inside_the_grace_keeps_the_certificates() -> None:
    clock, endpoint = Clock(), Endpoint()
    cache = CachedCerts(URL, fetch=endpoint, clock=clock)
    cache.get("k1")
    endpoint.fail = OSError("network down")
    clock.now = 5199.0
    assert cache.get("k1") == "PEM1"


def test_between_retries_stale_certificates_stop_exactly_at_the_end_of_the_grace() -> None:
    clock, endpoint = Clock(), Endpoint()
    cache = CachedCerts(URL, fetch=endpoint, clock=clock)
    cache.get("k1")
    endpoint.fail = OSError("network down")
    clock.now = 5198.0
    assert cache.get("k1") == "PEM1"  # the refresh failed; the stale ones serve
    clock.now = 5199.0
    assert cache.get("k1") == "PEM1"  # within the retry interval: no fetch, still stale
    clock.now = 5200.0  # 2 s after the failed attempt: no new fetch, and the grace is over
    with pytest.raises(CertsUnavailableError) as raised:
        cache.get("k1")
    assert str(raised.value) == (
        f"cannot fetch token certificates from {URL}: network down; retrying at most every 5 s"
    )
    assert endpoint.calls == 2


def test_a_failed_refresh_is_logged_with_the_url_the_error_and_the_certificates_age(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, endpoint = Clock(), Endpoint()
    cache = CachedCerts(URL, fetch=endpoint, clock=clock)
    cache.get("k1")
    endpoint.fail = OSError("network down")
    clock.now = 1601.0
    with caplog.at_level(logging.WARNING, logger="cloudtasks_deferred.receive.auth.certs"):
        assert cache.get("k1") == "PEM1"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f"refreshing token certificates from {URL} failed (network down); "
            "still using the ones fetched 601 s ago",
        )
    ]


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    endpoint = Endpoint()
    endpoint.fail = ConnectionResetError()
    cache = CachedCerts(URL, fetch=endpoint, clock=Clock())
    with pytest.raises(CertsUnavailableError) as raised:
        cache.get("k1")
    assert str(raised.value) == f"cannot fetch token certificates from {URL}: ConnectionResetError"


def test_a_response_that_is_not_a_key_map_says_so() -> None:
    cache = CachedCerts(URL, fetch=lambda url: (200, {}, b'{"keys": []}'), clock=Clock())
    with pytest.raises(CertsUnavailableError) as raised:
        cache.get("k1")
    assert str(raised.value) == (
        f"cannot fetch token certificates from {URL}: "
        "the response is not a {key id: PEM} JSON object"
    )


def test_threads_waiting_on_a_slow_fetch_use_its_certificates_without_fetching_again() -> None:
    # The first fetch takes 40 s (the clock moves while it runs). A thread that waited
    # for it then finds fresh certificates holding its key: it must not fetch again,
    # although the last attempt began more than MIN_REFRESH_INTERVAL (30 s) ago.
    clock = Clock(1000.0)
    reads = threading.Semaphore(0)

    def counted_clock() -> float:
        reads.release()
        return clock.now

    release = threading.Event()
    fetches: list[str] = []

    def slow_fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
        fetches.append(url)
        assert release.wait(10)
        return 200, {"Cache-Control": "max-age=3600"}, CERTS

    cache = CachedCerts(URL, fetch=slow_fetch, clock=counted_clock)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(cache.get("k1")))
    first.start()
    assert reads.acquire(timeout=10)  # get() read the clock,
    assert reads.acquire(timeout=10)  # and so did the fetch under the lock
    waiting = threading.Thread(target=lambda: results.append(cache.get("k1")))
    waiting.start()
    assert reads.acquire(timeout=10)  # the second thread found no certificates: it waits
    clock.now = 1040.0
    release.set()
    first.join(10)
    waiting.join(10)
    assert results == ["PEM1", "PEM1"]
    assert fetches == [URL]


def test_the_certificate_fetch_gives_up_after_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def get(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return types.SimpleNamespace(
            status_code=200, headers={"Cache-Control": "max-age=600"}, content=CERTS
        )

    monkeypatch.setattr(requests, "get", get)
    assert CachedCerts(URL).get("k1") == "PEM1"
    assert calls == [((URL,), {"timeout": 10.0})]


def test_an_age_below_one_second_still_shortens_the_lifetime() -> None:
    clock = Clock()
    headers = {"Cache-Control": "max-age=600", "Age": "0.5"}
    cache = CachedCerts(URL, fetch=lambda url: (200, headers, CERTS), clock=clock)
    cache.get("k1")
    clock.now = 1599.25
    cache.get("k1")
    assert cache.fetch_count == 1
    clock.now = 1599.5  # 600 - 0.5 s after the fetch
    cache.get("k1")
    assert cache.fetch_count == 2


def test_an_unknown_key_id_refreshes_after_the_interval_whatever_the_clock_s_origin() -> None:
    # time.monotonic's origin is undefined: its readings may be negative.
    clock, rotated = Clock(-1000.0), {"k1": "PEM1"}
    cache = CachedCerts(
        URL,
        fetch=lambda url: (200, {"Cache-Control": "max-age=600"}, json.dumps(rotated).encode()),
        clock=clock,
    )
    assert cache.get("k1") == "PEM1"
    rotated["k2"] = "PEM2"
    clock.now = -1000.0 + certs_module.MIN_REFRESH_INTERVAL
    assert cache.get("k2") == "PEM2"
    assert cache.fetch_count == 2


class WatchedLock:
    """Stands in for the cache's lock: counts acquisitions, and tells when one has to wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquired = 0
        self.contended = threading.Event()

    def acquire(self, blocking: bool = True) -> bool:
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            if not blocking or not self._lock.acquire(timeout=10):
                return False
        self.acquired += 1
        return True

    def release(self) -> None:
        self._lock.release()


def test_readers_of_fresh_certificates_take_no_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    # A known key, or an unknown one refreshed less than MIN_REFRESH_INTERVAL ago:
    # answered from the cache without the lock, so no reader queues behind a fetch.
    clock, endpoint = Clock(), Endpoint()
    cache = CachedCerts(URL, fetch=endpoint, clock=clock)
    cache.get("k1")
    lock = WatchedLock()
    monkeypatch.setattr(cache, "_lock", lock)
    clock.now = 1010.0
    assert cache.get("unknown") is None
    clock.now = 1599.0  # 599 s after the last fetch: still fresh
    assert cache.get("k1") == "PEM1"
    assert (lock.acquired, endpoint.calls) == (0, 1)


def test_at_the_end_of_the_grace_a_request_waits_for_the_refresh_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fetched at 1000 with max-age 600: expired at 1600, usable until 5200. At 5200 a
    # request finding another's refresh in flight must wait for it, not verify with
    # the expired certificates; that refresh fails, so it answers unavailable too.
    clock = Clock()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
        calls.append(url)
        if len(calls) == 1:
            return 200, {"Cache-Control": "max-age=600"}, CERTS
        started.set()
        release.wait(10)
        raise OSError("network down")

    cache = CachedCerts(URL, fetch=fetch, clock=clock)
    cache.get("k1")
    lock = WatchedLock()
    monkeypatch.setattr(cache, "_lock", lock)
    clock.now = 5200.0
    outcomes: dict[str, object] = {}

    def get(who: str) -> None:
        try:
            outcomes[who] = cache.get("k1")
        except CertsUnavailableError as exc:
            outcomes[who] = str(exc)

    refresher = threading.Thread(target=get, args=("refresher",))
    refresher.start()
    assert started.wait(10)
    waiter = threading.Thread(target=get, args=("waiter",))
    waiter.start()
    assert lock.contended.wait(10)  # the waiter reached the lock the refresher holds
    release.set()
    refresher.join(10)
    waiter.join(10)
    assert outcomes == {
        "refresher": f"cannot fetch token certificates from {URL}: network down",
        "waiter": f"cannot fetch token certificates from {URL}: network down; "
        "retrying at most every 5 s",
    }
    assert len(calls) == 2
