"""Dev mode: tasks signed with a local key, verified by the production code path.

The Cloud Tasks emulator ignores ``oidc_token``, so in dev mode ``defer`` puts an
``Authorization: Bearer`` header in the task itself, holding an ID token shaped like
Google's (same issuer, audience and email claims) but signed with a local RSA key.
The handler verifies it with the same :class:`~cloudtasks_deferred.receive.auth.oidc.OIDCVerifier`
as in production, only with this key as its certificate source.

:class:`~cloudtasks_deferred.settings.Settings` refuses dev mode on App Engine and
Cloud Run, so a deployed service never accepts the local key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cloudtasks_deferred._memo import once_per_process
from cloudtasks_deferred.errors import ConfigurationError

__all__ = ["DEV_INVOKER", "DevKey", "dev_key"]

#: The caller email dev tokens carry when no service account is configured.
DEV_INVOKER: Final = "dev-invoker@cloudtasks-deferred.localhost"
#: How long a dev token stays valid after the task's scheduled time.
DEV_TOKEN_LIFETIME: Final = timedelta(hours=1)
_KEY_BITS: Final = 2048
_DEV_KEY_FILE: Final = "CLOUDTASKS_DEFERRED_DEV_KEY_FILE"


class DevKey:
    """An RSA key that signs dev-mode ID tokens.

    Args:
        private_pem: The PKCS#8 PEM private key.
    """

    def __init__(self, private_pem: bytes) -> None:
        # cryptography and google-auth load with the first dev key (cold starts).
        from cryptography.hazmat.primitives import serialization
        from google.auth import crypt

        key = serialization.load_pem_private_key(private_pem, password=None)
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = hashlib.sha256(public_pem).hexdigest()[:16]
        self.certs = {self.kid: public_pem.decode()}
        self._signer = crypt.RSASigner.from_string(private_pem, key_id=self.kid)

    @classmethod
    def generate(cls) -> DevKey:
        """Returns a new key that lives only in this process."""
        return cls(_new_private_pem())

    @classmethod
    def load_or_create(cls, path: Path) -> DevKey:
        """Reads the key at ``path``, creating it (mode 0600) if it does not exist.

        Any number of processes may call this at once: the key is written whole to a
        temporary file beside ``path`` and then linked to ``path``, which fails if
        another process got there first, whose key is then read. A reader never sees
        a half-written file, and every process ends up with the same key (a rename
        would let a later process replace a key an earlier one already signs with).

        Args:
            path: The PEM file; its directory is created if needed.

        Raises:
            ConfigurationError: ``path`` holds something that is not a PEM private key.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            pem = _new_private_pem()
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as file:  # mkstemp creates it with mode 0600
                    file.write(pem)
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process created it first: use its key
            else:
                return cls(pem)
            finally:
                os.unlink(temporary)
        try:
            return cls(path.read_bytes())
        except ValueError as exc:
            raise ConfigurationError(
                f"the dev key file {path} ({_DEV_KEY_FILE}) does not hold a PEM private key "
                f"({exc}): delete it, and a new key is created on the next start"
            ) from exc

    def mint(self, *, email: str, audience: str, valid_from: datetime | None = None) -> str:
        """Signs an ID token like the ones Cloud Tasks attaches.

        Args:
            email: The caller (service account) email.
            audience: The ``aud`` claim.
            valid_from: When the task may run; the token lasts until
                :data:`DEV_TOKEN_LIFETIME` after it. Defaults to now.

        Returns:
            The compact JWT.
        """
        from google.auth import jwt  # loaded on the first dev token (cold starts)

        now = datetime.now(UTC)
        expiry = max(valid_from or now, now) + DEV_TOKEN_LIFETIME
        claims = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "sub": email,
            "email": email,
            "email_verified": True,
            "iat": int(now.timestamp()),
            "exp": int(expiry.timestamp()),
        }
        token: bytes = jwt.encode(self._signer, claims)
        return token.decode()


@once_per_process
def dev_key(path: Path | None) -> DevKey:
    """Returns the process's dev key for ``path`` (a per-process key when ``None``)."""
    return DevKey.generate() if path is None else DevKey.load_or_create(path)


def _new_private_pem() -> bytes:
    # cryptography loads only when a dev key is made (cold starts).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
