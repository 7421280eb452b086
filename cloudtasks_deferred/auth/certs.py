"""Token-signing certificates: fetched once per cache period, shared by every request.

google-auth's ``id_token.verify_token`` fetches the certificates on every call
unless its transport caches them; at one fetch per task that is both slow and a
dependency on Google's endpoint for every request. :class:`CachedCerts` keeps
them for the ``Cache-Control: max-age`` the endpoint sends:

* one fetch per cache period, whatever the number of threads asking (the fetch
  happens under a lock; readers of a fresh cache take no lock);
* a key ID the cache does not know (Google rotated keys) triggers a refresh, at
  most once per :data:`MIN_REFRESH_INTERVAL`;
* when a refresh fails, certificates fetched less than :data:`STALE_GRACE` past
  their expiry keep verifying; with none at all, :class:`CertsUnavailableError`
  (the handler answers 503, which Cloud Tasks retries).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from cloudtasks_deferred._memo import once_per_process

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
#: Seconds past expiry during which cached certificates still verify if refreshing fails.
STALE_GRACE: Final = 3600.0
#: Seconds a certificate fetch may take.
FETCH_TIMEOUT: Final = 10.0

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)
_logger = logging.getLogger(__name__)

#: ``fetch(url) -> (status, headers, body)``.
Fetch = Callable[[str], tuple[int, Mapping[str, str], bytes]]


class CertsUnavailableError(Exception):
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
        self.fetch_count = 0

    def get(self, kid: str) -> str | None:
        """Returns the PEM for ``kid``, refreshing the cache when it expired or lacks ``kid``.

        Raises:
            CertsUnavailableError: Nothing usable is cached and the fetch failed.
        """
        snapshot = self._snapshot
        now = self._clock()
        if snapshot is not None and now < snapshot.expires_at and kid in snapshot.certs:
            return snapshot.certs[kid]
        with self._lock:
            snapshot = self._snapshot
            now = self._clock()
            expired = snapshot is None or now >= snapshot.expires_at
            unknown = snapshot is not None and kid not in snapshot.certs
            may_refresh = now - self._last_attempt >= MIN_REFRESH_INTERVAL
            if snapshot is None or expired or (unknown and may_refresh):
                snapshot = self._refresh(now)
            return snapshot.certs.get(kid)

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
            stale = self._snapshot
            if stale is not None and now < stale.expires_at + STALE_GRACE:
                _logger.warning(
                    "refreshing token certificates from %s failed (%s); still using the "
                    "ones fetched %.0f s ago",
                    self.url,
                    exc,
                    now - stale.fetched_at,
                )
                return stale
            raise CertsUnavailableError(
                f"cannot fetch token certificates from {self.url}: {exc}"
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
    return max(float(match.group(1)) - age, MIN_REFRESH_INTERVAL)


def _requests_fetch(url: str) -> tuple[int, Mapping[str, str], bytes]:
    import requests

    response = requests.get(url, timeout=FETCH_TIMEOUT)
    return response.status_code, response.headers, response.content
