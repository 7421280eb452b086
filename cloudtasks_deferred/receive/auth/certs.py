"""Token-signing certificates: fetched once per cache period, shared by every request.

google-auth's ``id_token.verify_token`` fetches the certificates on every call
unless its transport caches them; at one fetch per task that is both slow and a
dependency on Google's endpoint for every request. :class:`CachedCerts` keeps
them for the ``Cache-Control: max-age`` the endpoint sends:

* one fetch per cache period, whatever the number of threads asking: the fetch
  happens under a lock, readers of a fresh cache take no lock, and while one thread
  refreshes an expired cache the others keep verifying with it instead of waiting;
* the lifetime is ``max-age`` minus ``Age`` (an ``Age`` that is not a finite,
  non-negative number counts as 0), kept between
  :data:`MIN_REFRESH_INTERVAL` and :data:`MAX_CACHE_SECONDS`, or
  :data:`DEFAULT_MAX_AGE` without a usable ``max-age``;
* a key ID the cache does not know (Google rotated keys, or a forged token) triggers
  a refresh at most once per :data:`MIN_REFRESH_INTERVAL`, so unknown key IDs cannot
  make us hammer the endpoint;
* when a refresh fails, certificates fetched less than :data:`STALE_GRACE` past
  their expiry keep verifying, and the fetch is retried at most once per
  :data:`RETRY_INTERVAL`, not once per request;
* with no certificates at all, :class:`CertsUnavailableError` (the handler answers
  503, which Cloud Tasks retries); fetches are then retried at most once per
  :data:`RETRY_INTERVAL` and requests in between fail fast rather than queue behind
  one fetch after another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from cloudtasks_deferred._memo import once_per_process
from cloudtasks_deferred.errors import Error

__all__ = [
    "CachedCerts",
    "CertSource",
    "CertsUnavailableError",
    "StaticCerts",
    "shared_certs",
]

#: Cache lifetime, in seconds, when the endpoint sends no usable ``max-age``.
DEFAULT_MAX_AGE: Final = 300.0
#: Seconds between refreshes triggered by unknown key IDs (and the shortest cache life).
MIN_REFRESH_INTERVAL: Final = 30.0
#: Longest cache lifetime in seconds, whatever ``max-age`` says.
MAX_CACHE_SECONDS: Final = 86400.0
#: Seconds between fetch attempts after a failed one.
RETRY_INTERVAL: Final = 5.0
#: Seconds past expiry during which cached certificates still verify if refreshing fails.
STALE_GRACE: Final = 3600.0
#: Seconds a certificate fetch may take.
FETCH_TIMEOUT: Final = 10.0

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)
_logger = logging.getLogger(__name__)

#: ``fetch(url) -> (status, headers, body)``.
Fetch = Callable[[str], tuple[int, Mapping[str, str], bytes]]


class CertsUnavailableError(Error):
    """No certificates could be obtained to verify tokens (a transient condition)."""


class CertSource(Protocol):
    """Gives the PEM certificate or public key for a token's key ID."""

    def get(self, kid: str) -> str | None:
        """Returns the PEM for ``kid``, or ``None`` if no such key is known.

        Raises:
            CertsUnavailableError: No certificates could be obtained at all.
        """
        ...


class StaticCerts:
    """A fixed ``{key id: PEM}`` map (dev mode, tests).

    Args:
        certs: The key IDs and their PEM certificates or public keys.
    """

    def __init__(self, certs: Mapping[str, str]) -> None:
        self._certs = dict(certs)

    def get(self, kid: str) -> str | None:
        """Returns the PEM for ``kid``, or ``None``."""
        return self._certs.get(kid)


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    certs: Mapping[str, str]
    expires_at: float
    fetched_at: float


class CachedCerts:
    """Certificates from a URL, cached per its ``Cache-Control``. Thread-safe.

    Args:
        url: The ``{key id: PEM certificate}`` JSON endpoint.
        fetch: Performs the HTTP GET; defaults to ``requests``.
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(
        self, url: str, *, fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self._fetch = fetch or _requests_fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._last_attempt = float("-inf")
        self._last_error = ""
        #: Fetches attempted so far (for tests and benchmarks).
        self.fetch_count = 0

    def get(self, kid: str) -> str | None:
        """Returns the PEM for ``kid``, refreshing the cache when it expired or lacks ``kid``.

        Raises:
            CertsUnavailableError: Nothing usable is cached and the fetch failed (now or
                less than :data:`RETRY_INTERVAL` ago).
        """
        snapshot = self._snapshot
        now = self._clock()
        if snapshot is not None and now < snapshot.expires_at:
            pem = snapshot.certs.get(kid)
            if pem is not None or now - self._last_attempt < MIN_REFRESH_INTERVAL:
                return pem  # known, or unknown and refreshed recently: no lock
        usable = snapshot is not None and now < snapshot.expires_at + STALE_GRACE
        # With certificates to fall back on, never wait for another thread's fetch.
        if not self._lock.acquire(blocking=not usable):
            assert snapshot is not None  # noqa: S101 - usable implies a snapshot
            return snapshot.certs.get(kid)
        try:
            return self._get_locked(kid)
        finally:
            self._lock.release()

    def _get_locked(self, kid: str) -> str | None:
        snapshot = self._snapshot
        now = self._clock()
        since_attempt = now - self._last_attempt
        if snapshot is not None and now < snapshot.expires_at:
            if kid in snapshot.certs or since_attempt < MIN_REFRESH_INTERVAL:
                return snapshot.certs.get(kid)
        elif since_attempt < RETRY_INTERVAL:
            # The last fetch failed moments ago (or another thread's just did).
            if snapshot is not None and now < snapshot.expires_at + STALE_GRACE:
                return snapshot.certs.get(kid)
            raise CertsUnavailableError(
                f"cannot fetch token certificates from {self.url}: {self._last_error}; "
                f"retrying at most every {RETRY_INTERVAL:g} s"
            )
        return self._refresh(now).certs.get(kid)

    def _refresh(self, now: float) -> _Snapshot:
        self._last_attempt = now
        self.fetch_count += 1
        try:
            status, headers, body = self._fetch(self.url)
            if status != 200:
                raise CertsUnavailableError(f"HTTP {status}")
            certs = json.loads(body)
            if not isinstance(certs, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in certs.items()
            ):
                raise CertsUnavailableError("the response is not a {key id: PEM} JSON object")
        except Exception as exc:
            self._last_error = str(exc) or type(exc).__name__
            stale = self._snapshot
            if stale is not None and now < stale.expires_at + STALE_GRACE:
                _logger.warning(
                    "refreshing token certificates from %s failed (%s); still using the "
                    "ones fetched %.0f s ago",
                    self.url,
                    self._last_error,
                    now - stale.fetched_at,
                )
                return stale
            raise CertsUnavailableError(
                f"cannot fetch token certificates from {self.url}: {self._last_error}"
            ) from exc
        max_age = _max_age(headers)
        self._snapshot = _Snapshot(certs=certs, expires_at=now + max_age, fetched_at=now)
        return self._snapshot


@once_per_process
def shared_certs(url: str) -> CachedCerts:
    """Returns the process-wide cache for ``url``, so that every handler shares one."""
    return CachedCerts(url)


def _max_age(headers: Mapping[str, str]) -> float:
    lowered = {k.lower(): v for k, v in headers.items()}
    match = _MAX_AGE.search(lowered.get("cache-control", ""))
    if not match:
        return DEFAULT_MAX_AGE
    try:
        age = float(lowered.get("age", "0"))
    except ValueError:
        age = 0.0
    if not math.isfinite(age) or age < 0:
        # Not a delta-seconds value (RFC 9111, 5.1); "nan" would make the lifetime NaN,
        # and certificates that expire at once answer 503 between fetches.
        age = 0.0
    return min(max(float(match.group(1)) - age, MIN_REFRESH_INTERVAL), MAX_CACHE_SECONDS)


def _requests_fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
    import requests  # loaded on the first certificate fetch, not at import (cold starts)

    response = requests.get(url, timeout=FETCH_TIMEOUT)
    return response.status_code, response.headers, response.content
