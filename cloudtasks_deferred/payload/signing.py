"""Payload signing keys: the ``CLOUDTASKS_DEFERRED_SIGNING_KEYS`` format, and rotation.

Signing is defence in depth behind OIDC: with keys configured, ``defer`` signs every
task body (HMAC-SHA256 over the framed bytes, :mod:`cloudtasks_deferred.payload.frame`)
with the **first** key, and the handler refuses, before unpickling, any body that is
not signed by **one of** the keys. Someone who gets past the token check (a stolen
token, an invoker account shared with other code) still cannot make the handler
unpickle bytes of their choosing.

The variable holds comma-separated ``key_id:secret`` entries::

    CLOUDTASKS_DEFERRED_SIGNING_KEYS=k2:<base64url secret>,k1:<base64url secret>

* ``key_id``: 1-64 of ``[A-Za-z0-9._-]``; it travels in each frame to pick the key.
* ``secret``: base64url (``-_``) or standard base64 (``+/``), padding optional,
  decoding to at least 32 random bytes. Make one with
  ``python -c "import secrets; print('k1:' + secrets.token_urlsafe(32))"``.

Keep the value in Secret Manager and expose it as the variable (Cloud Run:
``gcloud run deploy ... --set-secrets=CLOUDTASKS_DEFERRED_SIGNING_KEYS=task-signing-keys:latest``).
Errors name the variable and the entry's position, never any part of the value.

Rotation, without refusing a queued task: add the new key *second* and deploy
everywhere (it verifies but does not sign); move it first and deploy (it signs);
remove the old key once no task signed with it can still be delivered (the queue's
retry window plus the longest ``_countdown``/``_eta`` you use; Cloud Tasks keeps a
task at most 31 days).
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.payload.frame import MIN_SECRET_BYTES, SigningKey

__all__ = ["parse_signing_keys"]

_FORMAT: Final = (
    "expected comma-separated key_id:secret entries, each secret base64url-encoded "
    f"and at least {MIN_SECRET_BYTES} bytes once decoded"
)


def parse_signing_keys(
    value: str | None, *, variable: str = "the signing keys"
) -> tuple[SigningKey, ...]:
    """Parses the signing-keys variable (format in the module docstring).

    Args:
        value: The variable's value; ``None`` or blank means no keys.
        variable: Where the value came from, for error messages:
            :meth:`Settings.from_env <cloudtasks_deferred.Settings.from_env>` passes
            the variable's name.

    Returns:
        The keys, in order: the first signs, all verify. Empty when ``value`` is blank.

    Raises:
        ConfigurationError: An entry is malformed, a secret is too short or not
            base64, or two entries share a key ID. The message names the variable and
            the entry's position and never repeats any part of the value.
    """
    keys: list[SigningKey] = []
    seen: set[str] = set()
    entries = [entry.strip() for entry in (value or "").split(",")]
    if not any(entries):
        return ()
    for position, entry in enumerate(entries, start=1):
        where = f"{variable}, entry {position}"
        key_id, colon, encoded = entry.partition(":")
        if not colon or not key_id.strip() or not encoded.strip():
            raise ConfigurationError(f"{where}: {_FORMAT}.")
        secret = _decode_secret(encoded.strip(), where)
        try:
            key = SigningKey(key_id.strip(), secret)
        except ValueError:
            # SigningKey's own message quotes the key ID, which may be a pasted secret.
            raise ConfigurationError(
                f"{where}: the key ID must be 1-64 letters, digits, '.', '_' or '-', and "
                f"the secret at least {MIN_SECRET_BYTES} bytes once decoded "
                f"(this one has {len(secret)})."
            ) from None
        if key.key_id in seen:
            raise ConfigurationError(f"{where}: the key ID repeats an earlier entry's.")
        seen.add(key.key_id)
        keys.append(key)
    return tuple(keys)


def _decode_secret(encoded: str, where: str) -> bytes:
    standard = encoded.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{where}: the secret is not base64url; {_FORMAT}.") from None
