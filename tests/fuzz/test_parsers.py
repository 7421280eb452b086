"""Fuzz targets for the parsers an attacker reaches: tokens, frames, the checked unpickler.

Each target takes arbitrary bytes and structured inputs built to get past the first
checks, and asserts what must hold for every input: the parser answers with its own
refusal or a result that passed every rule, nothing outside the allowlist is imported
or called, and no error escapes as anything a handler would turn into a 500.
"""

from __future__ import annotations

import base64
import json
import pickle
import pickletools
import struct
import sys
import time

from hypothesis import given
from hypothesis import strategies as st

from cloudtasks_deferred.payload.allowlist import Allowlist, DisallowedReferenceError
from cloudtasks_deferred.payload.budget import DecodeBudget, DecodeLimitError
from cloudtasks_deferred.payload.frame import (
    FLAG_COMPRESSED,
    FLAG_SIGNED,
    MAGIC,
    InvalidPayloadError,
    PayloadSignatureError,
    SigningKey,
    UnsupportedPayloadError,
    decode,
    encode,
)
from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.auth.oidc import AuthenticationError, OIDCVerifier
from tests.fuzz.conftest import FUZZ
from tests.oidc import AUDIENCE, INVOKER, Issuer
from tests.security.opcodes import ALLOWED, ref, task, text
from tests.tasks import RECORDER

ISSUER = Issuer()
VERIFIER = OIDCVerifier(certs=StaticCerts(ISSUER.certs), audiences=[AUDIENCE], invokers=[INVOKER])
KEY = SigningKey("fuzz-1", bytes(range(32)))
ALLOWLIST = Allowlist([ALLOWED])
BUDGET = DecodeBudget(opcodes=20_000, memory=2 * 1024 * 1024)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- the token parser -----------------------------------------------------------------
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
CLAIM_VALUES = st.one_of(
    JSON,
    st.just(int(time.time()) + 3600),
    st.just(int(time.time())),
    st.sampled_from([AUDIENCE, INVOKER, "https://accounts.google.com", True]),
)


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """JWT-shaped strings: valid signatures over odd claims, forged ones, mangled ones."""
    header = {"alg": draw(st.sampled_from(["RS256", "none", "HS256", ""])), "kid": ISSUER.kid}
    header.update(draw(st.dictionaries(st.sampled_from(["kid", "typ", "x"]), JSON, max_size=2)))
    claims = ISSUER.claims()
    claims.update(
        draw(
            st.dictionaries(
                st.sampled_from(["exp", "iat", "nbf", "aud", "iss", "email", "email_verified"]),
                CLAIM_VALUES,
                max_size=4,
            )
        )
    )
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = _b64(ISSUER.signer.sign(signing_input.encode()))
    token = f"{signing_input}.{signature}"
    cut = draw(st.integers(min_value=0, max_value=len(token)))
    return draw(
        st.sampled_from(
            [token, token[:cut], token[:cut] + "A" + token[cut + 1 :], token + ".", token.upper()]
        )
    )


def verifies_or_refuses(token: str) -> None:
    try:
        claims = VERIFIER.verify(token)
    except AuthenticationError:
        return
    # Accepted: every rule of the module docstring held.
    assert claims["aud"] == AUDIENCE
    assert claims["email"] == INVOKER
    assert claims["email_verified"] is True
    assert isinstance(claims["exp"], (int, float))
    assert claims["exp"] > time.time() - 60


def test_control_an_unmangled_structured_token_verifies() -> None:
    # The structured strategy starts from tokens that pass: without this, a verifier
    # refusing everything would pass every target.
    verifies_or_refuses(ISSUER.token())
    assert VERIFIER.verify(ISSUER.token())["email"] == INVOKER


@FUZZ
@given(st.text(max_size=2000))
def test_token_parser_arbitrary_strings(token: str) -> None:
    verifies_or_refuses(token)


@FUZZ
@given(tokens())
def test_token_parser_structured_tokens(token: str) -> None:
    verifies_or_refuses(token)


# --- the frame parser -------------------------------------------------------------------
@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Frames near the format: valid ones, then a byte flipped, cut, or a header forged."""
    metadata = draw(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
    signed = draw(st.booleans())
    body = encode(
        draw(st.binary(max_size=200)),
        metadata,
        compress=draw(st.booleans()),
        signing_key=KEY if signed else None,
    )
    mutation = draw(st.sampled_from(["none", "flip", "cut", "header"]))
    if mutation == "flip" and body:
        index = draw(st.integers(min_value=0, max_value=len(body) - 1))
        body = body[:index] + bytes([body[index] ^ draw(st.integers(1, 255))]) + body[index + 1 :]
    elif mutation == "cut":
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    elif mutation == "header":
        flags = draw(st.integers(0, 255)) & (FLAG_COMPRESSED | FLAG_SIGNED | 0x80)
        body = MAGIC + bytes([draw(st.integers(0, 3)), flags]) + draw(st.binary(max_size=80))
    return body


def decodes_or_refuses(data: bytes) -> None:
    for keys, required in (({KEY.key_id: KEY.secret}, True), (None, False)):
        try:
            frame = decode(data, keys=keys, require_signature=required)
        except (InvalidPayloadError, PayloadSignatureError, UnsupportedPayloadError):
            continue
        if required:
            assert frame.key_id == KEY.key_id  # nothing unverified gets through


@FUZZ
@given(st.binary(max_size=2000))
def test_frame_parser_arbitrary_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(frames())
def test_frame_parser_structured_frames(data: bytes) -> None:
    decodes_or_refuses(data)


# --- the checked unpickler ----------------------------------------------------------------
OPCODES = [op for op in pickletools.opcodes if op.name not in ("PERSID", "BINPERSID")]
MODULES = st.sampled_from(
    [ALLOWED, "tests.tasks", "os", "builtins", "datetime", "tests.security.allowed_pkg.__main__"]
)
NAMES = st.sampled_from(
    ["noop", "witness", "canary", "system", "Job", "Job.fire", "datetime", "len"]
)


@st.composite
def opcode_streams(draw: st.DrawFn) -> bytes:
    """Sequences of real opcodes with well-formed arguments, in a random order."""
    out = [b"\x80" + bytes([draw(st.integers(0, 5))])]
    for _ in range(draw(st.integers(0, 40))):
        op = draw(st.sampled_from(OPCODES))
        out.append(op.code.encode("latin-1"))
        arg = op.arg
        if arg is None:
            continue
        if arg.name in ("uint1", "int4", "uint2", "uint4", "uint8"):
            value = draw(st.integers(0, 2 ** (8 * arg.n) - 1 if arg.n > 0 else 255))
            out.append(value.to_bytes(arg.n, "little"))
        elif arg.name in (
            "stringnl",
            "stringnl_noescape",
            "decimalnl_short",
            "decimalnl_long",
            "floatnl",
            "unicodestringnl",
        ):
            out.append(draw(st.sampled_from([b"1", b"'a'", b"x", b"0.5", b"1L"])) + b"\n")
        elif arg.name == "stringnl_noescape_pair":
            out.append(draw(MODULES).encode() + b"\n" + draw(NAMES).encode() + b"\n")
        else:
            data = draw(st.binary(max_size=8))
            out.append(struct.pack("<I", len(data))[: max(arg.n, 1)] if arg.n > 0 else b"")
            out.append(data)
    out.append(b".")
    return b"".join(out)


@st.composite
def mutated_tasks(draw: st.DrawFn) -> bytes:
    """Real task pickles, with references swapped and bytes flipped."""
    pickled = draw(
        st.sampled_from(
            [
                task(ref(ALLOWED, "witness"), text("fuzz")),
                task(
                    ref("cloudtasks_deferred.payload", "invoke_member"),
                    ref(ALLOWED, "Job"),
                    text("fire"),
                ),
                pickle.dumps((print, ("x",), {}), protocol=4),
                pickle.dumps(({1, 2}, [b"x"] * 3, {"a": (1.5, None)}), protocol=2),
            ]
        )
    )
    if draw(st.booleans()) and pickled:
        index = draw(st.integers(0, len(pickled) - 1))
        pickled = pickled[:index] + bytes([draw(st.integers(0, 255))]) + pickled[index + 1 :]
    return pickled


def unpickles_within_the_rules(data: bytes) -> None:
    before = set(sys.modules)
    try:
        ALLOWLIST.loads(data, budget=BUDGET)
    except (DisallowedReferenceError, DecodeLimitError):
        pass
    except (MemoryError, RecursionError, SystemExit, KeyboardInterrupt):
        raise
    except Exception:  # noqa: S110 - any other refusal of malformed bytes is a permanent failure
        pass
    assert RECORDER.named("canary") == []
    imported = {name for name in set(sys.modules) - before if not name.startswith(ALLOWED)}
    assert not {name for name in imported if name.startswith(("tests.", "os", "subprocess"))}


@FUZZ
@given(st.binary(max_size=2000))
def test_checked_unpickler_arbitrary_bytes(data: bytes) -> None:
    unpickles_within_the_rules(data)


@FUZZ
@given(opcode_streams())
def test_checked_unpickler_opcode_streams(data: bytes) -> None:
    unpickles_within_the_rules(data)


@FUZZ
@given(mutated_tasks())
def test_checked_unpickler_mutated_tasks(data: bytes) -> None:
    unpickles_within_the_rules(data)
