"""Signed payloads: the key variable, signing in defer, and the handler's refusal."""

from __future__ import annotations

import base64
import dataclasses
import logging
import pickle

import pytest

from cloudtasks_deferred import Client, ConfigurationError, Handler, Settings
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.errors import PayloadRefusedError
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import (
    FLAG_SIGNED,
    PayloadSignatureError,
    SigningKey,
    decode,
    encode,
)
from cloudtasks_deferred.payload.signing import parse_signing_keys
from cloudtasks_deferred.receive.outcomes import Outcome, outcome_of
from cloudtasks_deferred.testing import in_memory_queue
from tests import tasks
from tests.conftest import SIGNED_SETTINGS
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ

SECRET_1 = bytes(range(32))
SECRET_2 = bytes(range(100, 140))
# 33 bytes: 44 base64 characters, no padding, so that a decoder skipping one stray
# character in the middle would still decode the rest to the full secret.
SECRET_33 = bytes(range(200, 233))
VARIABLE = "CLOUDTASKS_DEFERRED_SIGNING_KEYS"


def b64url(secret: bytes, *, padded: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(secret).decode()
    return encoded if padded else encoded.rstrip("=")


KEYS_VALUE = f"new:{b64url(SECRET_2)}, old:{b64url(SECRET_1)}"
KEY_NEW = SigningKey("new", SECRET_2)
KEY_OLD = SigningKey("old", SECRET_1)


def test_the_variable_holds_ordered_key_id_secret_pairs() -> None:
    assert parse_signing_keys(KEYS_VALUE) == (KEY_NEW, KEY_OLD)


@pytest.mark.parametrize(
    "encoded",
    [
        b64url(SECRET_2, padded=True),
        base64.b64encode(SECRET_2).decode(),
        base64.b64encode(SECRET_2).decode().rstrip("="),
    ],
    ids=["base64url padded", "standard base64", "standard unpadded"],
)
def test_secret_encodings(encoded: str) -> None:
    assert parse_signing_keys(f"k:{encoded}") == (SigningKey("k", SECRET_2),)


def test_base64url_secrets_use_dash_and_underscore() -> None:
    secret = bytes([0xFB, 0xEF, 0xFF] * 11)  # base64url "-_-_...", standard "+/+/..."
    encoded = b64url(secret)
    assert "-" in encoded
    assert "_" in encoded
    assert parse_signing_keys(f"k:{encoded}") == (SigningKey("k", secret),)


def test_a_value_parsed_directly_is_named_as_the_caller_says() -> None:
    # For keys read from elsewhere than the variable (SECURITY.md: Secret Manager).
    with pytest.raises(ConfigurationError, match=r"^the signing keys, entry 2: "):
        parse_signing_keys(f"new:{b64url(SECRET_2)},old")
    with pytest.raises(ConfigurationError, match=r"^secret task-keys, entry 1: "):
        parse_signing_keys("old", variable="secret task-keys")


@pytest.mark.parametrize("value", [None, "", " ", " , "])
def test_blank_means_no_keys(value: str | None) -> None:
    assert parse_signing_keys(value) == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b64url(SECRET_1), "entry 1: expected comma-separated key_id:secret"),
        (f"k1:{b64url(SECRET_1)},:{b64url(SECRET_2)}", "entry 2: expected"),
        (f"k1:{b64url(SECRET_1)},k2:", "entry 2: expected"),
        (f"k1:{b64url(SECRET_1)},,k2:{b64url(SECRET_2)}", "entry 2: expected"),
        ("k1:" + b64url(b"short secret"), "at least 32 bytes once decoded .this one has 12"),
        ("k1:" + b64url(SECRET_1)[:-1] + "!", "entry 1: the secret is not base64url"),
        ("k1:" + b64url(SECRET_1) + "AA", "entry 1: the secret is not base64url"),
        ("k1:" + b64url(SECRET_33)[:20] + "!" + b64url(SECRET_33)[20:], "not base64url"),
        ("k1:" + b64url(SECRET_33)[:20] + " " + b64url(SECRET_33)[20:], "not base64url"),
        ("k1:" + b64url(SECRET_33)[:20] + "." + b64url(SECRET_33)[20:], "not base64url"),
        (f"k1:{b64url(SECRET_1)}:{b64url(SECRET_2)}", "entry 1: the secret is not base64url"),
        (f"bad id!:{b64url(SECRET_1)}", "key ID must be 1-64 letters"),
        (f"k1:{b64url(SECRET_1)},k1:{b64url(SECRET_2)}", "entry 2: the key ID repeats"),
    ],
    ids=[
        "no key id",
        "empty key id",
        "empty secret",
        "empty entry",
        "short secret",
        "bad character",
        "bad length",
        "bang in the middle",
        "space in the middle",
        "dot in the middle",
        "colon in the secret",
        "bad key id",
        "duplicate key id",
    ],
)
def test_bad_values_name_the_variable_and_entry_never_the_secret(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Settings.from_env({VARIABLE: value})
    text = str(raised.value)
    assert text.startswith(VARIABLE)
    for part in value.replace(",", ":").split(":"):
        if len(part) >= 8:  # every secret-like fragment of the value
            assert part not in text
    assert raised.value.__cause__ is None  # no chained error quoting the value


def test_settings_read_the_keys_and_hide_them_in_repr() -> None:
    settings = Settings.from_env({VARIABLE: KEYS_VALUE})
    assert settings.signing_keys == (KEY_NEW, KEY_OLD)
    assert settings.signing_key == KEY_NEW
    assert dict(settings.verification_keys or {}) == {"new": SECRET_2, "old": SECRET_1}
    text = repr(settings)
    assert "SigningKey(key_id='new', secret=<40 bytes>)" in text
    assert repr(SECRET_2) not in text
    assert b64url(SECRET_2) not in text


def test_no_keys_means_nothing_to_sign_or_verify_with() -> None:
    settings = Settings()
    assert settings.signing_key is None
    assert settings.verification_keys is None


def test_settings_refuse_duplicate_key_ids_and_non_keys() -> None:
    with pytest.raises(ConfigurationError, match="distinct key IDs"):
        Settings(signing_keys=(KEY_OLD, SigningKey("old", SECRET_2)))
    with pytest.raises(ConfigurationError, match=f"signing_keys .{VARIABLE}. must be SigningKey"):
        Settings(signing_keys=("old:secret",))  # type: ignore[arg-type]


# --- defer signs; the handler requires a signature -------------------------------------

SIGNED = dataclasses.replace(SIGNED_SETTINGS, signing_keys=(KEY_NEW, KEY_OLD))


def signed_client_for(settings: Settings, base: Client) -> Client:
    return Client(
        settings,
        transport=InMemoryTransport(),
        authenticator=base.authenticator,
        dead_letters=base.dead_letters,
    )


def test_defer_signs_with_the_first_key(signed_client: Client) -> None:
    client = signed_client_for(SIGNED, signed_client)
    body = client.defer(tasks.record, 1).http_request.body
    assert body[5] & FLAG_SIGNED
    assert decode(body, keys={"new": SECRET_2}, require_signature=True).key_id == "new"
    with pytest.raises(PayloadSignatureError, match="unknown key"):
        decode(body, keys={"old": SECRET_1}, require_signature=True)


def test_without_keys_defer_does_not_sign(signed_client: Client) -> None:
    body = signed_client.defer(tasks.record, 1).http_request.body
    assert not body[5] & FLAG_SIGNED


def test_signed_tasks_run_end_to_end() -> None:
    with in_memory_queue(dataclasses.replace(SIGNED, ndb=False)) as queue:
        queue.client.defer(tasks.record, "signed")
        assert queue.run_pending() == [200]
    assert RECORDER.named("record") == ["signed"]


def test_any_configured_key_verifies_during_rotation(signed_client: Client, issuer: Issuer) -> None:
    client = signed_client_for(SIGNED, signed_client)
    body = encode(serialize(tasks.record, "old key"), signing_key=KEY_OLD)
    env = environ(body, headers={"Authorization": f"Bearer {issuer.token()}"})
    assert call(Handler(client=client), env).code == 200
    assert RECORDER.named("record") == ["old key"]


def forged_bodies() -> dict[str, bytes]:
    good = bytearray(encode(serialize(tasks.canary, "ran"), signing_key=KEY_NEW))
    flipped = bytearray(good)
    flipped[-3] ^= 0x01
    unflagged = bytearray(good)
    unflagged[5] &= ~FLAG_SIGNED
    return {
        "unsigned frame": encode(serialize(tasks.canary, "ran")),
        "bare pickle": pickle.dumps((tasks.canary, ("ran",), {})),
        "canary instance": pickle.dumps(tasks.Canary()),
        "empty body": b"",
        "flipped bit": bytes(flipped),
        "flag cleared": bytes(unflagged),
        "unknown key": encode(serialize(tasks.canary), signing_key=SigningKey("x", SECRET_2)),
        "wrong secret": encode(serialize(tasks.canary), signing_key=SigningKey("new", SECRET_1)),
        "other magic": b"\x89CTX" + bytes(good[4:]),
    }


@pytest.mark.parametrize(("name", "body"), list(forged_bodies().items()), ids=list(forged_bodies()))
def test_unsigned_or_badly_signed_payloads_get_403_and_nothing_is_unpickled(
    signed_client: Client,
    issuer: Issuer,
    caplog: pytest.LogCaptureFixture,
    name: str,
    body: bytes,
) -> None:
    client = signed_client_for(SIGNED, signed_client)
    env = environ(body, headers={"Authorization": f"Bearer {issuer.token()}"})
    with caplog.at_level(logging.WARNING, logger="cloudtasks_deferred"):
        response = call(Handler(client=client), env)
    assert response.code == 403
    assert response.body.startswith(b"Forbidden: the payload ")
    assert RECORDER.calls == []
    assert "refused the payload" in caplog.text
    for secret in (SECRET_1, SECRET_2):
        assert b64url(secret) not in caplog.text
        assert b64url(secret).encode() not in response.body


def test_refusal_bodies_say_which_check_failed(signed_client: Client, issuer: Issuer) -> None:
    client = signed_client_for(SIGNED, signed_client)
    bodies = forged_bodies()
    expected = {
        "unsigned frame": b"Forbidden: the payload is not signed",
        "flipped bit": b"Forbidden: the payload signature does not verify",
        "unknown key": b"Forbidden: the payload is signed with an unknown key",
    }
    for name, body in expected.items():
        env = environ(bodies[name], headers={"Authorization": f"Bearer {issuer.token()}"})
        assert call(Handler(client=client), env).body == body


def test_refusals_are_retried_and_never_dead_lettered(
    signed_client: Client, issuer: Issuer
) -> None:
    client = signed_client_for(SIGNED, signed_client)
    handler = Handler(client=client)
    meta = {"retry": {"task_retry_limit": 0}}
    body = encode(serialize(tasks.record), meta)  # unsigned, with a retry limit of 0
    env = environ(body, headers={"Authorization": f"Bearer {issuer.token()}"})
    env["HTTP_X_CLOUDTASKS_TASKRETRYCOUNT"] = "5"
    assert call(handler, env).code == 403
    assert client.dead_letters.letters == []  # type: ignore[attr-defined]
    # run_from_request answers a refused payload too, rather than raising it.
    again = environ(body, headers={"Authorization": f"Bearer {issuer.token()}"})
    assert handler.run_from_request(again)[:2] == (
        "Forbidden: the payload is not signed",
        403,
    )


def test_keys_on_the_handler_but_not_on_the_enqueuer_keep_tasks_queued() -> None:
    # The misconfiguration: tasks are retried (403), not dropped, until keys match.
    with in_memory_queue(dataclasses.replace(SIGNED_SETTINGS, ndb=False)) as queue:
        queue.client.defer(tasks.record, "queued")
    handler_side = dataclasses.replace(SIGNED, ndb=False)
    [task] = queue.tasks
    with in_memory_queue(handler_side, max_attempts=3) as strict:
        strict.transport.create_task(task.name.split("/tasks/")[0], task)
        assert strict.run_pending() == [403, 403, 403]
        assert [t.name for t in strict.given_up] == [task.name]
        assert strict.dead_letters == []
    assert RECORDER.named("record") == []


def test_payload_refusals_map_to_unauthenticated() -> None:
    assert outcome_of(PayloadSignatureError("x")) is Outcome.UNAUTHENTICATED
    assert outcome_of(PayloadRefusedError("x")) is Outcome.UNAUTHENTICATED
