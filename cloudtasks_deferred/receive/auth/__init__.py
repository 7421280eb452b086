"""Who may run tasks: the rules the handler applies before it reads a byte of the body.

* **App Engine queue headers** (``X-AppEngine-QueueName``) prove the request came
  from a queue only on App Engine standard (``GAE_ENV=standard``), which strips
  ``X-AppEngine-*`` from outside requests. Elsewhere they are ignored.
* **OIDC**: ``Authorization: Bearer <ID token>``, verified by
  :class:`~cloudtasks_deferred.receive.auth.oidc.OIDCVerifier` against Google's certificates
  (or, in dev mode, the local key) and the configured audiences and invokers.
* ``X-CloudTasks-*`` headers prove nothing: Cloud Run passes them through from anyone.
* With neither configured, every request is refused and the log says what to set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from cloudtasks_deferred.dev_key import DEV_INVOKER, dev_key
from cloudtasks_deferred.receive.auth.certs import (
    CertSource,
    CertsUnavailableError,
    StaticCerts,
    shared_certs,
)
from cloudtasks_deferred.receive.auth.oidc import AuthenticationError, OIDCVerifier
from cloudtasks_deferred.settings import Platform, Settings

__all__ = [
    "AuthenticationError",
    "Authenticator",
    "Caller",
    "CertsUnavailableError",
    "RequestAuthenticator",
    "authenticator_for",
]

_logger = logging.getLogger(__name__)


class Caller(NamedTuple):
    """An authenticated task request (a named tuple: built on every request).

    Attributes:
        via: ``"oidc"`` or ``"app-engine"``.
        identity: The token's email, or the App Engine queue name.
    """

    via: str
    identity: str


class Authenticator(Protocol):
    """Decides from a request's headers alone whether it may run a task."""

    def authenticate(self, environ: Mapping[str, Any]) -> Caller:
        """Returns the caller, or raises.

        Raises:
            AuthenticationError: The request is not from an allowed caller.
            CertsUnavailableError: Verification is impossible right now.
        """
        ...


class RequestAuthenticator:
    """The production rules (module docstring).

    Args:
        trust_app_engine_headers: Accept ``X-AppEngine-QueueName`` as proof; only
            true on App Engine standard.
        verifier: Verifies bearer tokens; ``None`` when OIDC is not configured.
        configuration_hint: Logged once when a request is refused because nothing
            is configured, saying what to set.
    """

    def __init__(
        self,
        *,
        trust_app_engine_headers: bool,
        verifier: OIDCVerifier | None,
        configuration_hint: str = "",
    ) -> None:
        self.trust_app_engine_headers = trust_app_engine_headers
        self.verifier = verifier
        self._hint = configuration_hint
        self._hint_lock = threading.Lock()
        self._hint_logged = False

    def authenticate(self, environ: Mapping[str, Any]) -> Caller:
        """Applies the rules to ``environ``'s headers; see :class:`Authenticator`."""
        queue = environ.get("HTTP_X_APPENGINE_QUEUENAME")
        if self.trust_app_engine_headers and isinstance(queue, str) and queue:
            return Caller(via="app-engine", identity=queue)
        if self.verifier is None:
            self._log_hint()
            raise AuthenticationError(
                "task authentication is not configured on this service"
                if not self.trust_app_engine_headers
                else "the request is not from an App Engine queue and OIDC is not configured"
            )
        authorization = environ.get("HTTP_AUTHORIZATION")
        if not isinstance(authorization, str) or not authorization:
            raise AuthenticationError("the request has no Authorization: Bearer token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("the Authorization header is not a Bearer token")
        claims = self.verifier.verify(token)
        return Caller("oidc", claims["email"])

    def _log_hint(self) -> None:
        with self._hint_lock:
            if self._hint_logged:
                return
            self._hint_logged = True
        _logger.error("refusing every task request: %s", self._hint)


def authenticator_for(
    settings: Settings, *, certs: CertSource | None = None
) -> RequestAuthenticator:
    """Builds the production authenticator for ``settings``.

    Args:
        settings: The service's settings.
        certs: Where token-signing keys come from; by default Google's certificates
            (``settings.oidc_certs_url``) or, in dev mode, the local dev key.

    Returns:
        An authenticator; one that refuses everything (and says why in the log) when
        nothing is configured.
    """
    on_app_engine = settings.platform is Platform.APP_ENGINE
    audiences = settings.effective_audiences
    invokers = settings.effective_invokers
    if settings.dev_mode:
        invokers = invokers or (DEV_INVOKER,)
    if certs is None:
        certs = (
            StaticCerts(dev_key(settings.dev_key_file).certs)
            if settings.dev_mode
            else shared_certs(settings.oidc_certs_url)
        )
    verifier = (
        OIDCVerifier(certs=certs, audiences=audiences, invokers=invokers)
        if audiences and invokers
        else None
    )
    hint = (
        "set CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT (or CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS) to "
        "the service account Cloud Tasks signs tokens as, and CLOUDTASKS_DEFERRED_BASE_URL "
        "(or CLOUDTASKS_DEFERRED_AUDIENCE) to this service's URL"
        + ("" if on_app_engine else ", or deploy on App Engine standard to use queue headers")
    )
    return RequestAuthenticator(
        trust_app_engine_headers=on_app_engine, verifier=verifier, configuration_hint=hint
    )
