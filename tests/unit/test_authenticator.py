"""Who may run tasks: App Engine headers only on App Engine, OIDC anywhere, else nobody."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from cloudtasks_deferred import Settings
from cloudtasks_deferred.dev_key import DEV_INVOKER, DevKey, dev_key
from cloudtasks_deferred.receive.auth import (
    AuthenticationError,
    RequestAuthenticator,
    authenticator_for,
)
from cloudtasks_deferred.receive.auth.certs import CachedCerts, StaticCerts
from cloudtasks_deferred.receive.auth.oidc import OIDCVerifier
from cloudtasks_deferred.settings import Platform
from tests.oidc import AUDIENCE, INVOKER, Issuer

CLOUD_RUN = Settings(base_url=AUDIENCE, service_account=INVOKER, platform=Platform.CLOUD_RUN)
APP_ENGINE = Settings(platform=Platform.APP_ENGINE)


def bearer(token: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_oidc_caller(issuer: Issuer) -> None:
    auth = authenticator_for(CLOUD_RUN, certs=StaticCerts(issuer.certs))
    caller = auth.authenticate(bearer(issuer.token()))
    assert (caller.via, caller.identity) == ("oidc", INVOKER)


def test_bearer_scheme_is_case_insensitive(issuer: Issuer) -> None:
    auth = authenticator_for(CLOUD_RUN, certs=StaticCerts(issuer.certs))
    caller = auth.authenticate({"HTTP_AUTHORIZATION": f"bearer  {issuer.token()} "})
    assert caller == ("oidc", INVOKER)


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "no Authorization: Bearer token"),
        ({"HTTP_AUTHORIZATION": ""}, "no Authorization: Bearer token"),
        ({"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"}, "not a Bearer token"),
        ({"HTTP_AUTHORIZATION": "Bearer"}, "not a Bearer token"),
        ({"HTTP_AUTHORIZATION": "Bearer   "}, "not a Bearer token"),
        ({"HTTP_X_APPENGINE_QUEUENAME": "default"}, "no Authorization"),
        ({"HTTP_X_CLOUDTASKS_QUEUENAME": "default"}, "no Authorization"),
    ],
    ids=["none", "empty", "basic", "bare scheme", "blank token", "gae spoof", "cloudtasks spoof"],
)
def test_off_app_engine_headers_prove_nothing(
    issuer: Issuer, environ: dict[str, Any], reason: str
) -> None:
    auth = authenticator_for(CLOUD_RUN, certs=StaticCerts(issuer.certs))
    with pytest.raises(AuthenticationError, match=reason):
        auth.authenticate(environ)


def test_on_app_engine_queue_headers_are_trusted() -> None:
    auth = authenticator_for(APP_ENGINE)
    caller = auth.authenticate({"HTTP_X_APPENGINE_QUEUENAME": "default"})
    assert (caller.via, caller.identity) == ("app-engine", "default")


def test_on_app_engine_other_requests_need_a_token() -> None:
    auth = authenticator_for(APP_ENGINE)
    with pytest.raises(AuthenticationError, match="not from an App Engine queue"):
        auth.authenticate({"HTTP_X_CLOUDTASKS_QUEUENAME": "default"})


def test_on_app_engine_oidc_works_too(issuer: Issuer) -> None:
    settings = Settings(platform=Platform.APP_ENGINE, base_url=AUDIENCE, service_account=INVOKER)
    auth = authenticator_for(settings, certs=StaticCerts(issuer.certs))
    assert auth.authenticate(bearer(issuer.token())).via == "oidc"


def test_nothing_configured_refuses_everything_and_logs_what_to_set_once(
    issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    auth = authenticator_for(Settings(platform=Platform.CLOUD_RUN))
    assert auth.verifier is None
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            with pytest.raises(AuthenticationError, match="not configured"):
                auth.authenticate(bearer(issuer.token()))
    hints = [r.getMessage() for r in caplog.records if "refusing every task" in r.getMessage()]
    assert len(hints) == 1
    assert hints[0].startswith(
        "refusing every task request: set CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT (or "
        "CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS) to the service account"
    )
    assert "CLOUDTASKS_DEFERRED_BASE_URL" in hints[0]


def test_invokers_without_audience_is_not_configured() -> None:
    auth = authenticator_for(Settings(service_account=INVOKER))
    assert auth.verifier is None


def test_an_audience_without_invokers_refuses_the_dev_invoker_outside_dev_mode(
    issuer: Issuer,
) -> None:
    # Dev mode alone falls back to the dev invoker; a deployed service with a base URL
    # and no service account must not accept a (Google-signed) token for that email.
    settings = Settings(base_url=AUDIENCE, platform=Platform.CLOUD_RUN)
    auth = authenticator_for(settings, certs=StaticCerts(issuer.certs))
    assert auth.verifier is None
    with pytest.raises(AuthenticationError, match="not configured"):
        auth.authenticate(bearer(issuer.token(email=DEV_INVOKER)))


def test_in_dev_mode_an_audience_without_invokers_accepts_the_dev_invoker_only(
    issuer: Issuer, tmp_path: Path
) -> None:
    settings = Settings(base_url=AUDIENCE, dev_mode=True, dev_key_file=tmp_path / "k.pem")
    auth = authenticator_for(settings, certs=StaticCerts(issuer.certs))
    assert auth.authenticate(bearer(issuer.token(email=DEV_INVOKER))).identity == DEV_INVOKER
    with pytest.raises(AuthenticationError, match="not an allowed invoker"):
        auth.authenticate(bearer(issuer.token(email=INVOKER)))


def test_default_certs_come_from_the_shared_cache_of_the_certs_url() -> None:
    auth = authenticator_for(CLOUD_RUN)
    assert isinstance(auth.verifier, OIDCVerifier)
    assert isinstance(auth.verifier.certs, CachedCerts)
    assert auth.verifier.certs.url == CLOUD_RUN.oidc_certs_url


def test_dev_mode_verifies_tokens_signed_by_the_dev_key(tmp_path: Path) -> None:
    settings = Settings(
        base_url="http://127.0.0.1:8080", dev_mode=True, dev_key_file=tmp_path / "k.pem"
    )
    key = dev_key(settings.dev_key_file)
    auth = authenticator_for(settings)
    token = key.mint(email=DEV_INVOKER, audience="http://127.0.0.1:8080")
    assert auth.authenticate(bearer(token)).identity == DEV_INVOKER
    # A token from Google's (here: another) key is not accepted in dev mode.
    with pytest.raises(AuthenticationError, match="unknown key"):
        auth.authenticate(bearer(Issuer().token(aud="http://127.0.0.1:8080", email=DEV_INVOKER)))


def test_dev_token_is_refused_when_dev_mode_is_off(tmp_path: Path, issuer: Issuer) -> None:
    key = DevKey.load_or_create(tmp_path / "k.pem")
    auth = authenticator_for(CLOUD_RUN, certs=StaticCerts(issuer.certs))
    with pytest.raises(AuthenticationError, match="unknown key"):
        auth.authenticate(bearer(key.mint(email=INVOKER, audience=AUDIENCE)))


def test_dev_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "dev-key.pem"
    first = DevKey.load_or_create(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    second = DevKey.load_or_create(path)
    assert first.kid == second.kid
    assert first.certs == second.certs
    assert os.path.getsize(path) > 1000


def test_request_authenticator_is_usable_directly(issuer: Issuer) -> None:
    verifier = OIDCVerifier(
        certs=StaticCerts(issuer.certs), audiences=[AUDIENCE], invokers=[INVOKER]
    )
    auth = RequestAuthenticator(trust_app_engine_headers=False, verifier=verifier)
    assert auth.authenticate(bearer(issuer.token())).identity == INVOKER


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            Settings(platform=Platform.CLOUD_RUN),
            "task authentication is not configured on this service",
        ),
        (APP_ENGINE, "the request is not from an App Engine queue and OIDC is not configured"),
    ],
    ids=["elsewhere", "app engine"],
)
def test_without_oidc_the_refusal_says_what_is_missing(settings: Settings, message: str) -> None:
    auth = authenticator_for(settings)
    with pytest.raises(AuthenticationError) as refused:
        auth.authenticate({"HTTP_X_CLOUDTASKS_QUEUENAME": "default"})
    assert str(refused.value) == message


def test_an_authenticator_built_without_a_verifier_or_hint_logs_the_refusal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = RequestAuthenticator(trust_app_engine_headers=False, verifier=None)
    with caplog.at_level(logging.ERROR, logger="cloudtasks_deferred.receive.auth"):
        for _ in range(2):
            with pytest.raises(AuthenticationError):
                auth.authenticate({})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "refusing every task request: ")
    ]


@pytest.mark.parametrize(
    ("platform", "suffix"),
    [
        (Platform.CLOUD_RUN, ", or deploy on App Engine standard to use queue headers"),
        (Platform.APP_ENGINE, ""),
    ],
    ids=["elsewhere", "app engine"],
)
def test_the_hint_says_which_settings_to_set_and_where_queue_headers_work(
    caplog: pytest.LogCaptureFixture, platform: Platform, suffix: str
) -> None:
    auth = authenticator_for(Settings(platform=platform))
    with (
        caplog.at_level(logging.ERROR, logger="cloudtasks_deferred.receive.auth"),
        pytest.raises(AuthenticationError),
    ):
        auth.authenticate({})
    assert [r.getMessage() for r in caplog.records] == [
        "refusing every task request: set CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT (or "
        "CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS) to the service account Cloud Tasks signs "
        "tokens as, and CLOUDTASKS_DEFERRED_BASE_URL (or CLOUDTASKS_DEFERRED_AUDIENCE) to "
        "this service's URL" + suffix
    ]
