"""The deployments the battery attacks, each described only by its environment variables."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from cloudtasks_deferred.payload.frame import SigningKey
from tests.oidc import AUDIENCE, INVOKER
from tests.security.cases import Kit, Request, harmless_frame

#: The signed profile's key (a test key: random bytes need not be secret here).
SIGNING_KEY = SigningKey("battery-1", bytes(range(7, 39)))
ALLOWED_MODULES = "tests.security.allowed_tasks,tests.security.allowed_pkg"
IMPORT_CANARY = "tests.security.import_canary"


def environments(
    *, certs_url: str, dead_certs_url: str, dev_key_file: Path
) -> dict[str, dict[str, str]]:
    """Profile name -> the environment variables of that deployment."""
    secret = base64.urlsafe_b64encode(SIGNING_KEY.secret).decode().rstrip("=")
    cloud_run = {
        "K_SERVICE": "tasks-service",
        "K_REVISION": "tasks-service-00001-abc",
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "CLOUDTASKS_DEFERRED_LOCATION": "us-central1",
        "CLOUDTASKS_DEFERRED_BASE_URL": AUDIENCE,
        "CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT": INVOKER,
        "CLOUDTASKS_DEFERRED_OIDC_CERTS_URL": certs_url,
        "CLOUDTASKS_DEFERRED_NDB": "false",
    }
    dev_mode = {
        "CLOUDTASKS_DEFERRED_DEV_MODE": "true",
        "CLOUDTASKS_DEFERRED_DEV_KEY_FILE": str(dev_key_file),
    }
    app_engine = {
        "GAE_ENV": "standard",
        "GAE_SERVICE": "default",
        "GAE_VERSION": "v1",
        "GAE_APPLICATION": "s~test-project",
        "CLOUDTASKS_DEFERRED_NDB": "false",
    }
    return {
        # Cloud Run with OIDC, as the README's minimum.
        "oidc": cloud_run,
        # Cloud Run with signed payloads and an allowlist, as SECURITY.md recommends.
        "signed": {
            **cloud_run,
            "CLOUDTASKS_DEFERRED_SIGNING_KEYS": f"{SIGNING_KEY.key_id}:{secret}",
            "CLOUDTASKS_DEFERRED_ALLOWED_MODULES": ALLOWED_MODULES,
        },
        # Cloud Run with an allowlist but unsigned payloads: the attacker holds a token.
        "allowlisted": {**cloud_run, "CLOUDTASKS_DEFERRED_ALLOWED_MODULES": ALLOWED_MODULES},
        # Dev mode switched on in a deployed service: it must refuse to start serving tasks.
        "dev-mode-on-cloud-run": {**cloud_run, **dev_mode},
        "dev-mode-on-app-engine": {**app_engine, **dev_mode},
        # The certificate endpoint is unreachable.
        "no-certs": {**cloud_run, "CLOUDTASKS_DEFERRED_OIDC_CERTS_URL": dead_certs_url},
    }


#: Profile -> (a request proving the service still serves, its status).
HEALTH: dict[str, tuple[Callable[[Kit], Request], int]] = {
    "oidc": (lambda kit: Request(headers=kit.bearer(), body=harmless_frame()), 200),
    "signed": (
        lambda kit: Request(headers=kit.bearer(), body=harmless_frame(kit.signing_key)),
        200,
    ),
    "allowlisted": (lambda kit: Request(headers=kit.bearer(), body=harmless_frame()), 200),
    "dev-mode-on-cloud-run": (lambda kit: Request(method="GET"), 405),
    "dev-mode-on-app-engine": (lambda kit: Request(method="GET"), 405),
    "no-certs": (lambda kit: Request(method="GET"), 405),
}
