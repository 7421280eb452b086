"""A bounded cache of verified ID tokens, so a reused token is not verified again.

Cloud Tasks reuses one ID token for many tasks while it is valid (an hour), and
checking an RS256 signature costs tens of microseconds — more than the rest of the
handler's work for a small task. :class:`VerifiedTokens` remembers the claims of
tokens that passed every check of :class:`~cloudtasks_deferred.receive.auth.oidc.OIDCVerifier`:

* the key is the **exact token string** (a token differing in one byte is a miss);
* only tokens that passed every check are stored, never refusals;
* an entry never outlives the token's ``exp`` (no clock skew is added);
* at most ``max_entries`` tokens are kept, least recently used evicted first;
* the stored claims are read-only.

Checks that must hold on every request stay per request in the verifier: expiry,
and that the signing key is still published with the same certificate (a key
Google withdrew stops verifying cached tokens too). A cache belongs to one verifier,
whose audiences and invokers are fixed, so those checks cannot change for a token.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["DEFAULT_MAX_ENTRIES", "CachedToken", "VerifiedTokens"]

#: Tokens kept by default: Cloud Tasks uses one per service account and audience.
DEFAULT_MAX_ENTRIES: Final = 256


@dataclasses.dataclass(frozen=True)
class CachedToken:
    """A verified token's claims and what must still hold to reuse them.

    Attributes:
        claims: The verified claims (read-only).
        kid: The key ID that signed the token.
        cert: The certificate (PEM) the signature was checked with.
        expires_at: The token's ``exp``, in seconds since the epoch.
    """

    claims: Mapping[str, Any]
    kid: str
    cert: str
    expires_at: float


class VerifiedTokens:
    """A thread-safe LRU map from token strings to :class:`CachedToken`.

    Args:
        max_entries: Most tokens kept; at least 1.

    Raises:
        ValueError: ``max_entries`` is less than 1.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[str, CachedToken] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._most_recent: str | None = None
        #: Lookups answered from the cache (for tests and benchmarks; approximate when
        #: threads race).
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> CachedToken | None:
        """Returns the entry for exactly ``token`` if it has not expired at ``now``.

        Args:
            token: The compact JWT.
            now: Seconds since the epoch.
        """
        # A dict lookup is atomic; a racing put or eviction at worst costs a miss, that
        # is, a full verification. The lock is taken only to change the order, which
        # the one token Cloud Tasks reuses (already the most recent) does not need.
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry.expires_at:
            with self._lock:
                self._entries.pop(token, None)
            return None
        if token != self._most_recent:
            with self._lock:
                if token in self._entries:
                    self._entries.move_to_end(token)
                    self._most_recent = token
        self.hits += 1
        return entry

    def put(self, token: str, entry: CachedToken) -> None:
        """Stores a token that passed every check, evicting the least recently used."""
        with self._lock:
            self._entries[token] = entry
            self._entries.move_to_end(token)
            self._most_recent = token
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
