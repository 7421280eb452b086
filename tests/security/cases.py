"""The hostile-request battery: every kind of request an attacker (or a mistake) sends.

Each :class:`Case` names a deployment profile (how the service is configured, see
:mod:`tests.security.profiles`), builds its request from a :class:`Kit` (real keys:
Google's stand-in issuer, an attacker's keys, the dev key, the signing key), and says
the status the handler must answer. Every body that could run something holds the
canary (``tests.tasks.Canary``/``canary``), so a test sees any unpickling or call.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import zlib
from collections.abc import Callable
from typing import Any

from cloudtasks_deferred.dev_key import DevKey
from cloudtasks_deferred.payload.calls import invoke_member, serialize
from cloudtasks_deferred.payload.frame import (
    FLAG_COMPRESSED,
    FLAG_SIGNED,
    MAGIC,
    SigningKey,
    encode,
)
from tests import tasks
from tests.oidc import AUDIENCE, INVOKER, Issuer
from tests.security import allowed_tasks

TASK_PATH = "/_ah/queue/deferred"
OTHER_SERVICE = "https://other-service-abc123-uc.a.run.app"
ATTACKER = "attacker@evil-project.iam.gserviceaccount.com"


@dataclasses.dataclass(frozen=True)
class Request:
    """An HTTP request, sent in-process (WSGI) or over a socket.

    Attributes:
        content_length: The header's value; ``None`` means the body's true length,
            ``""`` means no header.
        chunked: Send the body with ``Transfer-Encoding: chunked`` (no length).
    """

    method: str = "POST"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    content_length: str | None = None
    chunked: bool = False
    query: str = ""
    path: str = TASK_PATH


@dataclasses.dataclass(frozen=True)
class Kit:
    """Keys the cases sign with (all real)."""

    issuer: Issuer  # stands for Google: the services trust its certificates
    attacker: Issuer  # an RSA key of the attacker's, with its own key ID
    impostor: Issuer  # the attacker's key under the trusted key's ID
    dev_key: DevKey  # the local dev-mode key
    signing_key: SigningKey  # the key the signed profile's tasks carry

    def bearer(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.token(**claims)}"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One kind of hostile request.

    Attributes:
        name: Its id in the test report.
        profile: The deployment it is sent to.
        status: The status the handler must answer.
        build: Makes the request (tokens are minted fresh, at test time).
        body_starts: What the response body must start with, when it matters.
    """

    name: str
    profile: str
    status: int
    build: Callable[[Kit], Request]
    body_starts: bytes = b""


def canary_pickle() -> bytes:
    """A pickle that calls the canary when unpickled, and again when run."""
    return pickle.dumps((tasks.canary, (tasks.Canary(),), {}), protocol=pickle.HIGHEST_PROTOCOL)


def canary_frame(signing_key: SigningKey | None = None) -> bytes:
    return encode(canary_pickle(), signing_key=signing_key)


def harmless_frame(signing_key: SigningKey | None = None) -> bytes:
    """A task that does nothing: the health check between cases."""
    return encode(serialize(allowed_tasks.noop), signing_key=signing_key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reheader(token: str, **changes: Any) -> str:
    header_b64, payload_b64, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    header.update(changes)
    return f"{_b64(json.dumps(header).encode())}.{payload_b64}.{signature}"


def _flip_signature_bit(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{_b64(bytes(raw))}"


def _clear_signed_flag(frame: bytes) -> bytes:
    return frame[:5] + bytes([frame[5] & ~FLAG_SIGNED]) + frame[6:]


def _flip_bit(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 0x01
    return bytes(flipped)


class Reduce:
    """Pickles as ``func(*args)``: a hand-made REDUCE, as a forged payload holds."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _text(value: str) -> bytes:  # SHORT_BINUNICODE
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _ref(module: str, name: str) -> bytes:  # STACK_GLOBAL
    return _text(module) + _text(name) + b"\x93"


def _global_call(module: str, name: str, *args: str) -> bytes:
    """``(module.name(*args), (), {})``: a pickle that calls a global while unpickling.

    Written opcode by opcode, so that building it imports nothing.
    """
    arguments = b"(" + b"".join(_text(arg) for arg in args) + b"t"  # MARK ... TUPLE
    # PROTO 4, STACK_GLOBAL, REDUCE, EMPTY_TUPLE, EMPTY_DICT, TUPLE3, STOP
    return b"\x80\x04" + _ref(module, name) + arguments + b"R)}\x87."


def _set_attribute(name: str, value: bytes) -> bytes:
    """``(None, {name: value})`` BUILD: pickle's ``setattr`` on the object below it."""
    return b"N}" + _text(name) + value + b"s\x86b"


ALLOWED_TASKS = "tests.security.allowed_tasks"
#: ``cloudtasks_deferred.payload.invoke_member``: the marker the allowlist hands out.
INVOKE_MEMBER = ("cloudtasks_deferred.payload", "invoke_member")

#: Renames the invoke_member marker to the canary, then uses it as the task's callable.
RENAMED_MARKER = (
    b"\x80\x04"
    + _ref(*INVOKE_MEMBER)
    + _set_attribute("name", _text("tests.tasks.canary"))
    + _text("a renamed marker")
    + b"\x85}\x87."
)
#: Job.run = Job.fire (which calls the canary), then runs invoke_member(Job(), "run").
REWIRED_CLASS = (
    b"\x80\x04"
    + _ref(ALLOWED_TASKS, "Job")
    + _set_attribute("run", _ref(ALLOWED_TASKS, "Job.fire"))
    + b"0"  # POP
    + _ref(*INVOKE_MEMBER)
    + _ref(ALLOWED_TASKS, "Job")
    + b")R"  # Job()
    + _text("run")
    + b"\x86}\x87."
)
#: CONFIG["mode"] = "owned" (module-level data of an allowed module), then a harmless task.
CHANGED_MODULE_DATA = (
    b"\x80\x04"
    + _ref(ALLOWED_TASKS, "CONFIG")
    + _text("mode")
    + _text("owned")
    + b"s0"  # SETITEM, POP
    + _ref(ALLOWED_TASKS, "noop")
    + b")}\x87."
)
#: RECORDER.calls.append(("canary", ...)) as the task: a built-in bound method.
BOUND_BUILTIN_METHOD = (
    b"\x80\x04"
    + _ref(ALLOWED_TASKS, "record_call")
    + _text("canary")
    + _text("a built-in bound method ran")
    + b"\x86\x85}\x87."
)


def _compression_bomb() -> bytes:
    # 64 MiB of zeros deflate to ~64 KiB: under the 1 MB limit, far over the inflate bound.
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    header = MAGIC + bytes([1, FLAG_COMPRESSED]) + b"\0\0"
    return header + bomb


def _post(kit: Kit, body: bytes, **claims: Any) -> Request:
    return Request(headers=kit.bearer(**claims), body=body)


def _method(method: str) -> Callable[[Kit], Request]:
    return lambda kit: Request(method=method, headers=kit.bearer(), body=canary_frame())


def _token_case(name: str, make: Callable[[Kit], str], reason: bytes = b"") -> Case:
    return Case(
        name,
        "oidc",
        403,
        lambda kit: Request(headers={"Authorization": make(kit)}, body=canary_frame()),
        b"Forbidden: " + reason,
    )


QUEUE_HEADERS = {
    "X-CloudTasks-QueueName": "default",
    "X-CloudTasks-TaskName": "spoofed",
    "X-CloudTasks-TaskRetryCount": "0",
    "X-CloudTasks-TaskExecutionCount": "0",
    "X-CloudTasks-TaskETA": "1767225600",
}
APP_ENGINE_HEADERS = {k.replace("CloudTasks", "AppEngine"): v for k, v in QUEUE_HEADERS.items()}

CASES: list[Case] = [
    # --- headers anyone can send to Cloud Run prove nothing -------------------------------
    Case(
        "spoofed-x-cloudtasks-headers",
        "oidc",
        403,
        lambda kit: Request(headers=QUEUE_HEADERS, body=canary_frame()),
        b"Forbidden: the request has no Authorization",
    ),
    Case(
        "spoofed-x-appengine-headers-off-app-engine",
        "oidc",
        403,
        lambda kit: Request(headers=APP_ENGINE_HEADERS, body=canary_frame()),
    ),
    Case(
        "spoofed-both-queue-header-families",
        "oidc",
        403,
        lambda kit: Request(headers={**QUEUE_HEADERS, **APP_ENGINE_HEADERS}, body=canary_frame()),
    ),
    Case(
        "spoofed-appengine-cron-and-inbound-appid",
        "oidc",
        403,
        lambda kit: Request(
            headers={"X-AppEngine-Cron": "true", "X-AppEngine-Inbound-AppId": "my-project"},
            body=canary_pickle(),
        ),
    ),
    Case(
        "spoofed-iap-identity-headers",
        "oidc",
        403,
        lambda kit: Request(
            headers={
                "X-Goog-Authenticated-User-Email": f"accounts.google.com:{INVOKER}",
                "X-Goog-IAP-JWT-Assertion": kit.issuer.token(),
            },
            body=canary_frame(),
        ),
    ),
    Case(
        "valid-token-in-x-serverless-authorization-only",
        "oidc",
        403,
        lambda kit: Request(
            headers={"X-Serverless-Authorization": f"Bearer {kit.issuer.token()}"},
            body=canary_frame(),
        ),
    ),
    Case(
        "spoofed-loopback-forwarding-headers",
        "oidc",
        403,
        lambda kit: Request(
            headers={
                "X-Forwarded-For": "127.0.0.1",
                "X-Real-IP": "127.0.0.1",
                "Forwarded": "for=127.0.0.1;proto=https",
                **APP_ENGINE_HEADERS,
            },
            body=canary_frame(),
        ),
    ),
    Case(
        "valid-token-in-query-string",
        "oidc",
        403,
        lambda kit: Request(query=f"access_token={kit.issuer.token()}", body=canary_frame()),
    ),
    # --- the bearer token itself --------------------------------------------------------------
    Case(
        "no-authorization-header",
        "oidc",
        403,
        lambda kit: Request(body=canary_frame()),
        b"Forbidden: the request has no Authorization: Bearer token",
    ),
    _token_case("basic-authorization", lambda kit: "Basic dGFza3M6dGFza3M=", b"the Authorization"),
    _token_case("bearer-without-token", lambda kit: "Bearer ", b"the Authorization"),
    _token_case("bearer-garbage", lambda kit: "Bearer not-a-token", b"the bearer token"),
    _token_case("bearer-malformed-base64", lambda kit: "Bearer a!.b?.c$", b"the bearer token"),
    _token_case(
        "token-with-trailing-junk",
        lambda kit: f"Bearer {kit.issuer.token()} extra",
        b"the bearer token",
    ),
    _token_case(
        "unsigned-token",
        lambda kit: "Bearer " + kit.issuer.token().rsplit(".", 1)[0] + ".",
        b"the token signature",
    ),
    _token_case("alg-none", lambda kit: f"Bearer {kit.issuer.unsigned_token()}", b"the token is"),
    _token_case(
        "hs256-signed-with-the-public-key",
        lambda kit: f"Bearer {kit.issuer.hs256_token()}",
        b"the token is not signed with RS256",
    ),
    _token_case("rs512-header", lambda kit: "Bearer " + _reheader(kit.issuer.token(), alg="RS512")),
    _token_case(
        "expired", lambda kit: "Bearer " + kit.issuer.token(exp=1_700_000_000), b"the token has"
    ),
    _token_case(
        "not-yet-valid",
        lambda kit: "Bearer " + kit.issuer.token(iat=kit.issuer.claims()["iat"] + 600),
        b"the token is not valid yet",
    ),
    _token_case(
        "not-before-in-the-future",
        lambda kit: "Bearer " + kit.issuer.token(nbf=kit.issuer.claims()["iat"] + 600),
        b"the token is not valid yet",
    ),
    _token_case(
        "wrong-audience",
        lambda kit: "Bearer " + kit.issuer.token(aud="https://example.com"),
        b"the token audience",
    ),
    _token_case(
        "audience-with-task-path",
        lambda kit: "Bearer " + kit.issuer.token(aud=AUDIENCE + TASK_PATH),
        b"the token audience",
    ),
    _token_case(
        "token-for-another-service",
        lambda kit: "Bearer " + kit.issuer.token(aud=OTHER_SERVICE),
        b"the token audience",
    ),
    _token_case(
        "wrong-issuer",
        lambda kit: "Bearer " + kit.issuer.token(iss="https://evil.example"),
        b"the token issuer",
    ),
    _token_case(
        "wrong-email",
        lambda kit: "Bearer " + kit.issuer.token(email=ATTACKER),
        b"the token email is not an allowed",
    ),
    _token_case(
        "unverified-email",
        lambda kit: "Bearer " + kit.issuer.token(email_verified=False),
        b"the token email is not verified",
    ),
    _token_case(
        "missing-email", lambda kit: "Bearer " + kit.issuer.token(email=None), b"the token email"
    ),
    _token_case(
        "attacker-key-unknown-kid",
        lambda kit: "Bearer " + kit.attacker.token(),
        b"the token is signed by an unknown key",
    ),
    _token_case(
        "attacker-key-under-trusted-kid",
        lambda kit: "Bearer " + kit.impostor.token(),
        b"the token signature does not verify",
    ),
    _token_case(
        "flipped-signature-bit",
        lambda kit: "Bearer " + _flip_signature_bit(kit.issuer.token()),
        b"the token signature does not verify",
    ),
    _token_case("oversized-token", lambda kit: "Bearer " + "A" * 20_000, b"the bearer token"),
    _token_case(
        "dev-mode-token-with-dev-mode-off",
        lambda kit: "Bearer " + kit.dev_key.mint(email=INVOKER, audience=AUDIENCE),
        b"the token is signed by an unknown key",
    ),
    # --- methods ---------------------------------------------------------------------------------
    *(
        Case(f"method-{method.lower()}", "oidc", 405, _method(method))
        for method in ("GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH")
    ),
    # --- sizes and framing of the body, with a valid token --------------------------------------
    Case(
        "giant-body",
        "oidc",
        413,
        lambda kit: _post(kit, b"\x80" + b"A" * (1024 * 1024)),
        b"PayloadTooLarge",
    ),
    Case(
        "content-length-claims-10-mb",
        "oidc",
        413,
        lambda kit: dataclasses.replace(_post(kit, canary_frame()), content_length="10485760"),
    ),
    Case(
        "content-length-longer-than-body",
        "oidc",
        400,
        lambda kit: dataclasses.replace(_post(kit, canary_frame()), content_length="5000"),
        b"BadRequest: the body is shorter",
    ),
    Case(
        "content-length-shorter-than-body",
        "oidc",
        200,
        lambda kit: dataclasses.replace(_post(kit, canary_frame()), content_length="10"),
        b"PermanentTaskFailure",
    ),
    Case(
        "non-numeric-content-length",
        "oidc",
        400,
        lambda kit: dataclasses.replace(_post(kit, canary_frame()), content_length="12abc"),
    ),
    Case(
        "negative-content-length",
        "oidc",
        400,
        lambda kit: dataclasses.replace(_post(kit, canary_frame()), content_length="-1"),
    ),
    Case(
        "chunked-giant-body",
        "oidc",
        413,
        lambda kit: dataclasses.replace(
            _post(kit, b"\x80" + b"B" * (1024 * 1024 + 10)), chunked=True
        ),
    ),
    Case("empty-body", "oidc", 200, lambda kit: _post(kit, b""), b"PermanentTaskFailure"),
    Case(
        "garbage-body",
        "oidc",
        200,
        lambda kit: _post(kit, b"\x00garbage\xff" * 100),
        b"PermanentTaskFailure",
    ),
    Case(
        "truncated-pickle",
        "oidc",
        200,
        lambda kit: _post(kit, serialize(tasks.canary, "x" * 100)[:60]),
        b"PermanentTaskFailure",
    ),
    Case(
        "truncated-frame-header",
        "oidc",
        200,
        lambda kit: _post(kit, MAGIC + b"\x01"),
        b"PermanentTaskFailure",
    ),
    Case(
        "compression-bomb",
        "oidc",
        200,
        lambda kit: _post(kit, _compression_bomb()),
        b"PermanentTaskFailure",
    ),
    # --- a pickle that would call something, without credentials ---------------------------
    Case(
        "os-system-style-pickle-without-credentials",
        "oidc",
        403,
        lambda kit: Request(body=canary_pickle()),
    ),
    Case(
        "os-system-style-pickle-with-expired-token",
        "oidc",
        403,
        lambda kit: _post(kit, canary_pickle(), exp=1_700_000_000),
    ),
    # --- signed payloads (the "signed" profile requires them) ---------------------------------
    Case(
        "unsigned-payload-with-valid-token",
        "signed",
        403,
        lambda kit: _post(kit, canary_frame()),
        b"Forbidden: the payload is not signed",
    ),
    Case(
        "bare-legacy-pickle-with-valid-token",
        "signed",
        403,
        lambda kit: _post(kit, canary_pickle()),
        b"Forbidden: the payload is not signed",
    ),
    Case(
        "signed-payload-with-a-flipped-bit",
        "signed",
        403,
        lambda kit: _post(kit, _flip_bit(canary_frame(kit.signing_key), -5)),
        b"Forbidden: the payload signature does not verify",
    ),
    Case(
        "signed-payload-with-signed-flag-cleared",
        "signed",
        403,
        lambda kit: _post(kit, _clear_signed_flag(canary_frame(kit.signing_key))),
        b"Forbidden: the payload is not signed",
    ),
    Case(
        "payload-signed-with-an-unknown-key",
        "signed",
        403,
        lambda kit: _post(kit, canary_frame(SigningKey("attacker", b"a" * 32))),
        b"Forbidden: the payload is signed with an unknown key",
    ),
    Case(
        "payload-signed-with-a-guessed-secret",
        "signed",
        403,
        lambda kit: _post(kit, canary_frame(SigningKey(kit.signing_key.key_id, b"0" * 32))),
        b"Forbidden: the payload signature does not verify",
    ),
    Case(
        "empty-body-where-signatures-are-required",
        "signed",
        403,
        lambda kit: _post(kit, b""),
        b"Forbidden: the payload is not signed",
    ),
    # --- the allowlist, as if the signing key had leaked --------------------------------------
    Case(
        "leaked-key-payload-outside-the-allowlist",
        "signed",
        403,
        lambda kit: _post(kit, canary_frame(kit.signing_key)),
        b"Forbidden: the payload references 'tests.tasks.canary'",
    ),
    Case(
        "leaked-key-payload-naming-an-unimported-module",
        "signed",
        403,
        lambda kit: _post(
            kit,
            encode(
                _global_call("tests.security.import_canary", "harmless"),
                signing_key=kit.signing_key,
            ),
        ),
        b"Forbidden: the payload references 'tests.security.import_canary.harmless'",
    ),
    Case(
        "leaked-key-reaching-through-an-allowed-module",
        "signed",
        403,
        lambda kit: _post(
            kit,
            encode(
                _global_call("tests.security.allowed_tasks", "tasks.canary", "through"),
                signing_key=kit.signing_key,
            ),
        ),
    ),
    Case(
        "leaked-key-dunder-path-to-builtins",
        "signed",
        403,
        lambda kit: _post(
            kit,
            encode(
                _global_call("tests.security.allowed_tasks", "__builtins__.get", "canary"),
                signing_key=kit.signing_key,
            ),
        ),
    ),
    Case(
        "leaked-key-invoke-member-chain",
        "signed",
        403,
        lambda kit: _post(
            kit,
            encode(
                pickle.dumps(
                    (
                        allowed_tasks.noop,
                        (Reduce(invoke_member, allowed_tasks.Job(), "fire"),),
                        {},
                    )
                ),
                signing_key=kit.signing_key,
            ),
        ),
        b"Forbidden: the payload calls cloudtasks_deferred.payload.invoke_member",
    ),
    Case(
        "leaked-key-builtin-bound-method-in-an-allowed-module",
        "signed",
        403,
        lambda kit: _post(kit, encode(BOUND_BUILTIN_METHOD, signing_key=kit.signing_key)),
        b"Forbidden: the payload references 'tests.security.allowed_tasks.record_call'",
    ),
    Case(
        "leaked-key-build-renames-the-library-marker",
        "signed",
        403,
        lambda kit: _post(kit, encode(RENAMED_MARKER, signing_key=kit.signing_key)),
        b"Forbidden: the payload's BUILD opcode would modify",
    ),
    Case(
        "leaked-key-build-rewires-an-allowed-class",
        "signed",
        403,
        lambda kit: _post(kit, encode(REWIRED_CLASS, signing_key=kit.signing_key)),
        b"Forbidden: the payload's BUILD opcode would modify tests.security.allowed_tasks.Job,",
    ),
    Case(
        "leaked-key-setitem-on-module-level-data",
        "signed",
        403,
        lambda kit: _post(kit, encode(CHANGED_MODULE_DATA, signing_key=kit.signing_key)),
        b"Forbidden: the payload's SETITEM opcode would modify a dict object",
    ),
    # --- dev mode where it must not switch on ---------------------------------------------------
    Case(
        "dev-mode-on-cloud-run-with-dev-token",
        "dev-mode-on-cloud-run",
        500,
        lambda kit: Request(
            headers={
                "Authorization": "Bearer " + kit.dev_key.mint(email=INVOKER, audience=AUDIENCE)
            },
            body=canary_frame(),
        ),
        b"Error: the task handler is misconfigured",
    ),
    Case(
        "dev-mode-on-cloud-run-with-google-token",
        "dev-mode-on-cloud-run",
        500,
        lambda kit: _post(kit, canary_frame()),
    ),
    Case(
        "dev-mode-on-app-engine-with-dev-token",
        "dev-mode-on-app-engine",
        500,
        lambda kit: Request(
            headers={
                "Authorization": "Bearer " + kit.dev_key.mint(email=INVOKER, audience=AUDIENCE)
            },
            body=canary_frame(),
        ),
    ),
    Case(
        "dev-mode-on-app-engine-with-queue-headers",
        "dev-mode-on-app-engine",
        500,
        lambda kit: Request(headers=APP_ENGINE_HEADERS, body=canary_pickle()),
    ),
    # --- no certificates to verify with ----------------------------------------------------------
    Case(
        "valid-token-while-certificates-are-unavailable",
        "no-certs",
        503,
        lambda kit: _post(kit, canary_frame()),
        b"ServiceUnavailable: token verification is unavailable",
    ),
]
