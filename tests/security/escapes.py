"""Round two of the battery: an attacker who *can* get one payload run.

Each :class:`Escape` is a kind of attack from the security review: allowlist
escapes through ``invoke_member`` and ``getattr``, dunder module parts, tokens that
crash a verifier, replayed signed payloads, payloads that cost memory or time, and
frames at the edges of the format. Member-call kinds run through the library's name
for ``invoke_member`` and through the legacy ``google.appengine.ext.deferred.deferred``
alias; every kind runs signed with a leaked key (the ``signed`` profile) and, where a
signature is not the point, unsigned from a caller holding a valid token (the
``allowlisted`` profile); the tests send each in-process and to gunicorn. After each,
innocent tasks run and must still do exactly what they say.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import zlib
from collections.abc import Callable

from cloudtasks_deferred.payload.binding import bind
from cloudtasks_deferred.payload.frame import FLAG_SIGNED, MAGIC, encode
from tests.oidc import AUDIENCE, INVOKER, Issuer
from tests.security.cases import Kit, Request, canary_frame
from tests.security.opcodes import (
    ALLOWED,
    INVOKE_MEMBER,
    LEGACY_INVOKE_MEMBER,
    LEGACY_RUN_FROM_DATASTORE,
    RUN_FROM_DATASTORE,
    call,
    dict_of,
    integer,
    member_task,
    new,
    ref,
    task,
    text,
    tup,
)

ALLOWLIST_PROFILES = ("signed", "allowlisted")
REFUSED = b"Forbidden: the payload"
INVALID = b"PermanentTaskFailure"


def frame_for(kit: Kit, profile: str, pickled: bytes, **binding: object) -> bytes:
    """Frames a pickle as the profile's enqueuer would: signed and bound, or plain."""
    if profile != "signed":
        return encode(pickled)
    claims: dict[str, object] = {"destination": AUDIENCE, "now": time.time(), **binding}
    metadata = bind({}, str(claims["destination"]), float(claims["now"]))  # type: ignore[arg-type]
    return encode(pickled, metadata, signing_key=kit.signing_key)


def witness_tasks() -> list[tuple[bytes, str]]:
    """The innocent tasks run after each attack, direct and member call, with what each
    must record."""
    return [
        (task(ref(ALLOWED, "witness"), text("direct")), "direct"),
        (
            member_task(new(ref(ALLOWED, "Job"), dict_of(name=text("member"))), "witness"),
            "job-member",
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Escape:
    """One kind of attack, sent to each of its profiles.

    Attributes:
        name: Its id in the test report.
        status: What the handler must answer.
        pickled: The attack's pickle (framed per profile); or ``body`` makes the body.
        body: Makes a whole body, for attacks on the frame itself.
        headers: Makes the request's headers; a valid token by default.
        reason: What the response body must start with.
        profiles: The deployments it is sent to.
        runs: What the attack itself may make the witness record (a harmless payload
            the rules let through); nothing else may run.
        logged: Text the service's log must show (why a payload was given up).
    """

    name: str
    status: int
    pickled: bytes | None = None
    body: Callable[[Kit, str], bytes] | None = None
    headers: Callable[[Kit], dict[str, str]] | None = None
    reason: bytes = b""
    profiles: tuple[str, ...] = ALLOWLIST_PROFILES
    runs: tuple[str, ...] = ()
    logged: str = ""

    def request(self, kit: Kit, profile: str) -> Request:
        if self.body is not None:
            body = self.body(kit, profile)
        else:
            assert self.pickled is not None
            body = frame_for(kit, profile, self.pickled)
        headers = self.headers(kit) if self.headers else kit.bearer()
        return Request(headers=headers, body=body)


def _members(
    name: str, obj: bytes, member: str, *args: bytes, reason: bytes = REFUSED
) -> list[Escape]:
    """A member-call attack through our name for invoke_member and the legacy alias."""
    return [
        Escape(name, 403, member_task(obj, member, *args), reason=reason),
        Escape(
            f"{name}-legacy-alias",
            403,
            member_task(obj, member, *args, via=LEGACY_INVOKE_MEMBER),
            reason=reason,
        ),
    ]


JOB = new(ref(ALLOWED, "Job"), dict_of(name=text("attacker")))
MARKER = ref(*INVOKE_MEMBER)

# --- class 1: whatever invoke_member reaches passes the allowlist ----------------------
MEMBER_ESCAPES = [
    *_members("member-reinitialises-the-marker", MARKER, "__init__", text("tests.tasks.canary")),
    *_members(
        "member-reinitialises-the-legacy-marker",
        ref(*LEGACY_INVOKE_MEMBER),
        "__init__",
        text("tests.tasks.canary"),
    ),
    *_members(
        "member-setattr-on-the-marker",
        MARKER,
        "__setattr__",
        text("name"),
        text("tests.tasks.canary"),
    ),
    *_members("member-class-of-the-marker", MARKER, "__class__"),
    *_members("member-call-the-marker", MARKER, "__call__", text("x")),
    *_members("member-on-the-run-from-datastore-marker", ref(*RUN_FROM_DATASTORE), "__init__"),
    *_members(
        "member-on-the-legacy-run-from-datastore-marker",
        ref(*LEGACY_RUN_FROM_DATASTORE),
        "function",
    ),
    *_members(
        "member-rewrites-function-defaults",
        ref(ALLOWED, "record"),
        "__setattr__",
        text("__defaults__"),
        tup(text("owned")),
    ),
    *_members(
        "member-rewrites-function-kwdefaults",
        ref(ALLOWED, "noop"),
        "__setattr__",
        text("__kwdefaults__"),
        dict_of(x=text("owned")),
    ),
    *_members(
        "member-reads-function-globals",
        ref(ALLOWED, "noop"),
        "__getattribute__",
        text("__globals__"),
    ),
    *_members(
        "member-rewires-a-class",
        ref(ALLOWED, "Job"),
        "__setattr__",
        text("witness"),
        ref(ALLOWED, "Job.fire"),
    ),
    *_members("member-deletes-from-a-class", ref(ALLOWED, "Job"), "__delattr__", text("witness")),
    *_members("member-dunder-init-of-an-instance", JOB, "__init__", text("owned")),
    *_members("member-subclasses-of-a-class", ref(ALLOWED, "Job"), "__subclasses__"),
    *_members("member-single-underscore", JOB, "_unlisted"),
    *_members("member-name-not-an-identifier", JOB, "fire()"),
    *_members("member-of-the-metaclass", ref(ALLOWED, "Job"), "mro"),
    *_members(
        "member-updates-shared-module-data",
        ref(ALLOWED, "CONFIG"),
        "update",
        dict_of(mode=text("owned")),
    ),
    *_members("member-appends-to-shared-module-data", ref(ALLOWED, "NAMES"), "append", text("x")),
    *_members("member-adds-to-shared-module-data", ref(ALLOWED, "TAGS"), "add", text("x")),
    *_members(
        "member-is-a-function-defined-elsewhere",
        new(ref(ALLOWED, "Relay")),
        "relay",
        text("through a class attribute"),
    ),
    *_members("member-answered-by-getattr", new(ref(ALLOWED, "Dynamic")), "anything"),
    *_members(
        "member-shadowed-by-an-instance-attribute",
        new(
            ref(ALLOWED, "Job"),
            dict_of(witness=call(ref(ALLOWED, "lookup"), text("canary"))),
        ),
        "witness",
        text("shadowed"),
    ),
    *_members(
        "member-of-a-data-type-not-listed", integer(0), "to_bytes", integer(2**30), text("big")
    ),
    *_members("member-classmethod-of-a-data-type", ref("datetime", "datetime"), "now"),
    *_members("member-of-the-os-module-through-an-allowed-one", ref(ALLOWED, "os"), "system"),
]

# --- the task's callable, however the pickle produced it, passes the allowlist --------
CALLABLE_ESCAPES = [
    Escape(
        "callable-returned-by-listed-code",
        403,
        task(call(ref(ALLOWED, "lookup"), text("canary")), text("returned")),
        reason=REFUSED,
    ),
    Escape(
        "callable-is-a-data-type",
        403,
        task(ref("builtins", "bytearray"), integer(2**30)),
        reason=REFUSED,
    ),
    Escape(
        "callable-is-a-reconstructor",
        403,
        task(ref("copyreg", "_reconstructor"), ref(ALLOWED, "Job"), ref("builtins", "object")),
        reason=REFUSED,
    ),
    Escape(
        "callable-is-a-builtin-bound-method",
        403,
        task(ref(ALLOWED, "record_call"), tup(text("canary"), text("x"))),
        reason=REFUSED,
    ),
    Escape(
        "callable-is-the-marker-called-by-listed-code",
        403,
        task(ref(ALLOWED, "call"), ref(*INVOKE_MEMBER), ref(ALLOWED, "Job"), text("fire")),
        reason=b"Forbidden: the payload calls cloudtasks_deferred.payload.invoke_member",
    ),
]

# --- class 2: module path parts starting with "_" -------------------------------------
PKG = "tests.security.allowed_pkg"
MODULE_ESCAPES = [
    Escape(
        "module-dunder-main-of-a-listed-package",
        403,
        task(ref(f"{PKG}.__main__", "harmless")),
        reason=REFUSED,
    ),
    Escape(
        "module-private-submodule", 403, task(ref(f"{PKG}._private", "harmless")), reason=REFUSED
    ),
    Escape(
        "module-dunder-init-spelled-out",
        403,
        task(ref(f"{PKG}.__init__", "witness"), text("x")),
        reason=REFUSED,
    ),
    Escape(
        "module-dunder-name-part",
        403,
        task(ref(PKG, "__builtins__.get"), text("x")),
        reason=REFUSED,
    ),
    Escape(
        "module-nested-underscore-name",
        403,
        task(ref(ALLOWED, "Job._unlisted"), JOB),
        reason=REFUSED,
    ),
    Escape(
        "module-dunder-name-of-a-class",
        403,
        task(ref(ALLOWED, "Job.__init__"), JOB),
        reason=REFUSED,
    ),
]


# --- class 3: credentials that once crashed the verifier ------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(issuer: Issuer, header: bytes, claims: bytes) -> str:
    """An RS256 token over exactly these JSON texts, signed with the issuer's key."""
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    return f"{signing_input}.{_b64(issuer.signer.sign(signing_input.encode()))}"


def _claims_text(**raw: str) -> bytes:
    """The issuer's usual claims as JSON, with some values replaced by raw JSON text."""
    now = int(time.time())
    values = {
        "iss": json.dumps("https://accounts.google.com"),
        "aud": json.dumps(AUDIENCE),
        "email": json.dumps(INVOKER),
        "email_verified": "true",
        "iat": str(now),
        "exp": str(now + 3600),
        **raw,
    }
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in values.items()) + "}").encode()


def _header(kit: Kit, **raw: str) -> bytes:
    values = {"alg": '"RS256"', "kid": json.dumps(kit.issuer.kid), "typ": '"JWT"', **raw}
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in values.items()) + "}").encode()


def _token_escape(
    name: str, make: Callable[[Kit], str], reason: bytes = b"Forbidden: the "
) -> Escape:
    return Escape(
        name,
        403,
        body=lambda kit, profile: canary_frame(kit.signing_key if profile == "signed" else None),
        headers=lambda kit: {"Authorization": f"Bearer {make(kit)}"},
        reason=reason,
        profiles=("oidc", "signed"),
    )


def _signed_claims(**raw: str) -> Callable[[Kit], str]:
    return lambda kit: raw_token(kit.issuer, _header(kit), _claims_text(**raw))


def _flip_low_bits(token: str) -> str:
    """The same signature bytes, in a non-canonical encoding (unused low bits set)."""
    head, claims, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    return f"{head}.{claims}.{signature[:-1]}{alphabet[last | 1]}"


NESTED = "[" * 5000 + "]" * 5000
TOKEN_ESCAPES = [
    _token_escape(
        "token-header-nested-json",
        lambda kit: raw_token(kit.issuer, _header(kit, x=NESTED), _claims_text()),
    ),
    _token_escape("token-claims-nested-json", _signed_claims(extra=NESTED)),
    _token_escape("token-exp-huge-integer", _signed_claims(exp="1" + "0" * 400)),
    _token_escape("token-exp-huge-float", _signed_claims(exp="1e400")),
    _token_escape("token-exp-nan", _signed_claims(exp="NaN")),
    _token_escape("token-exp-infinity", _signed_claims(exp="Infinity")),
    _token_escape("token-exp-negative-infinity", _signed_claims(exp="-Infinity")),
    _token_escape("token-exp-string", _signed_claims(exp='"9999999999"')),
    _token_escape("token-exp-boolean", _signed_claims(exp="true")),
    _token_escape("token-exp-null", _signed_claims(exp="null")),
    _token_escape("token-iat-nan", _signed_claims(iat="NaN")),
    _token_escape("token-iat-huge-integer", _signed_claims(iat="9" * 400)),
    _token_escape("token-nbf-nan", _signed_claims(nbf="NaN")),
    _token_escape("token-nbf-huge-float", _signed_claims(nbf="1e400")),
    _token_escape("token-nbf-string", _signed_claims(nbf='"0"')),
    _token_escape("token-issuer-not-a-string", _signed_claims(iss="[]")),
    _token_escape("token-audience-a-list", _signed_claims(aud=json.dumps([AUDIENCE]))),
    _token_escape(
        "token-claims-not-an-object", lambda kit: raw_token(kit.issuer, _header(kit), b"[1,2]")
    ),
    _token_escape(
        "token-header-not-an-object", lambda kit: raw_token(kit.issuer, b'"RS256"', _claims_text())
    ),
    _token_escape(
        "token-claims-not-utf8", lambda kit: raw_token(kit.issuer, _header(kit), b'{"a":"\xff"}')
    ),
    _token_escape(
        "token-kid-not-a-string",
        lambda kit: raw_token(kit.issuer, _header(kit, kid="[1]"), _claims_text()),
    ),
    _token_escape(
        "token-signature-non-canonical-base64", lambda kit: _flip_low_bits(kit.issuer.token())
    ),
]


# --- class 4: signed payloads replayed to another service, or too late ----------------
def _bound(pickled: bytes, **metadata: object) -> Callable[[Kit, str], bytes]:
    return lambda kit, profile: encode(pickled, metadata, signing_key=kit.signing_key)


CANARY_TASK = task(ref(ALLOWED, "witness"), text("replayed"))
NOW = int(time.time())
REPLAY_ESCAPES = [
    Escape(
        "replay-signed-for-another-service",
        403,
        body=_bound(CANARY_TASK, dst="https://other-service.test", iat=NOW),
        reason=b"Forbidden: the payload is signed for 'https://other-service.test'",
        profiles=("signed",),
    ),
    Escape(
        "replay-signed-for-an-app-engine-service",
        403,
        body=_bound(CANARY_TASK, dst="app-engine:test-project/default", iat=NOW),
        reason=b"Forbidden: the payload is signed for",
        profiles=("signed",),
    ),
    Escape(
        "replay-signed-too-long-ago",
        403,
        body=_bound(CANARY_TASK, dst=AUDIENCE, iat=NOW - 40 * 86400),
        reason=b"Forbidden: the payload was signed more than",
        profiles=("signed",),
    ),
    Escape(
        "replay-signed-in-the-future",
        403,
        body=_bound(CANARY_TASK, dst=AUDIENCE, iat=NOW + 86400),
        reason=b"Forbidden: the payload's signed issue time is in the future",
        profiles=("signed",),
    ),
    Escape(
        "replay-destination-not-a-string",
        403,
        body=_bound(CANARY_TASK, dst=[AUDIENCE], iat=NOW),
        reason=b"Forbidden: the payload is signed for 'nowhere'",
        profiles=("signed",),
    ),
    Escape(
        "replay-issue-time-not-a-number",
        403,
        body=_bound(CANARY_TASK, dst=AUDIENCE, iat="now"),
        reason=b"Forbidden: the payload's signed issue time is not a number",
        profiles=("signed",),
    ),
]


# --- class 5: payloads that cost memory or time ---------------------------------------
def _compressed(pickled: bytes) -> Callable[[Kit, str], bytes]:
    def build(kit: Kit, profile: str) -> bytes:
        if profile == "signed":
            return encode(
                pickled, bind({}, AUDIENCE, time.time()), compress=True, signing_key=kit.signing_key
            )
        return encode(pickled, compress=True)

    return build


_WITNESS = ref(ALLOWED, "witness")
RESOURCE_ESCAPES = [
    Escape(
        "cost-bytearray-of-a-forged-size",
        200,
        task(_WITNESS, call(ref("builtins", "bytearray"), integer(2**31 - 1))),
        reason=INVALID,
        logged="sizes a bytes object",
    ),
    Escape(
        "cost-bytes-of-a-forged-size",
        200,
        task(_WITNESS, call(ref("builtins", "bytes"), integer(2**31 - 1))),
        reason=INVALID,
        logged="sizes a bytes object",
    ),
    Escape(
        "cost-list-of-a-huge-range",
        200,
        task(
            _WITNESS, call(ref("builtins", "list"), call(ref("builtins", "range"), integer(10**12)))
        ),
        reason=INVALID,
        logged="consumes a range",
    ),
    Escape(
        "cost-set-of-a-huge-range",
        200,
        task(
            _WITNESS, call(ref("builtins", "set"), call(ref("builtins", "range"), integer(10**12)))
        ),
        reason=INVALID,
        logged="consumes a range",
    ),
    Escape(
        "cost-deque-of-a-huge-range",
        200,
        task(
            _WITNESS,
            call(ref("collections", "deque"), call(ref("builtins", "range"), integer(10**12))),
        ),
        reason=INVALID,
        logged="consumes a range",
    ),
    Escape(
        "cost-call-unpacking-a-range",
        200,
        task(
            _WITNESS,
            ref("builtins", "tuple") + call(ref("builtins", "range"), integer(10**12)) + b"R",
        ),
        reason=INVALID,
        logged="arguments that are not a tuple",
    ),
    Escape(
        "cost-a-million-empty-sets",
        200,
        b"\x80\x04" + b"\x8f" * 1_000_000 + b".",
        reason=INVALID,
        logged="creates more than",
    ),
    Escape(
        "cost-marks-nested-deep",
        200,
        b"\x80\x04" + b"(" * 500_000 + b".",
        reason=INVALID,
        logged="nests more than",
    ),
    Escape(
        "cost-compressed-run-of-no-ops",
        200,
        body=_compressed(b"\x80\x04" + b"N0" * 16_000_000 + b"N."),
        reason=INVALID,
        logged="runs more than 1000000 opcodes",
    ),
    Escape(
        "cost-memo-index-forged",
        200,
        b"\x80\x04N" + b"r\xff\xff\xff\xff" + b"0" + task(_WITNESS, text("memo"))[2:],
        reason=b"Success",
        runs=("memo",),
    ),
    Escape(
        "cost-bytearray8-length-forged",
        200,
        task(_WITNESS, b"\x96" + (2**40).to_bytes(8, "little") + b"short"),
        reason=INVALID,
        logged="UnpicklingError",
    ),
    Escape(
        "cost-long-integer-beyond-the-string-limit",
        200,
        task(ref(ALLOWED, "noop"), integer(10**5000)),
        reason=b"Success",
    ),
]


# --- class 6: frames at the edges of the format ---------------------------------------
def _truncated_key_id(kit: Kit, profile: str) -> bytes:
    # Signed flag, then a key ID that claims 200 bytes of a 20-byte body.
    return MAGIC + bytes([1, FLAG_SIGNED]) + b"\x00\x00" + bytes([200]) + b"k" * 11


def _newer_version(kit: Kit, profile: str) -> bytes:
    return MAGIC + bytes([9, 0]) + b"\x00\x00" + zlib.compress(b"future")


EDGE_ESCAPES = [
    Escape(
        "frame-key-id-runs-past-the-body",
        403,
        body=_truncated_key_id,
        reason=b"Forbidden: the payload is not signed",
        profiles=("signed",),
    ),
    Escape(
        "frame-written-by-a-newer-release",
        500,
        body=_newer_version,
        reason=b"Error",
        profiles=("signed", "allowlisted", "oidc"),
    ),
]

ESCAPES: list[Escape] = [
    *MEMBER_ESCAPES,
    *CALLABLE_ESCAPES,
    *MODULE_ESCAPES,
    *TOKEN_ESCAPES,
    *REPLAY_ESCAPES,
    *RESOURCE_ESCAPES,
    *EDGE_ESCAPES,
]
