"""Fuzzing the handler in-process with hypothesis: headers, tokens, lengths and bodies.

Five properties, 4,000 examples each (20,000 in all), derandomized so CI runs the same
examples every time; ``FUZZ_EXAMPLES`` sets another count, randomized (``scripts/fuzz``
runs 100,000 of each, as tests/fuzz/conftest.py does for the parsers). Each asserts
that the WSGI app always answers (no exception escapes, ``start_response`` is called)
with a status from the documented table, that no canary ran (nothing from an
unauthenticated, unsigned or disallowed request was unpickled or called), and the
answer each class of input must get: the class is read from the input's shape
(:func:`signed_class`, :func:`length_class`), never from what the handler did with it.
"""

from __future__ import annotations

import base64
import os
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtasks_deferred import Client, Handler, Settings
from cloudtasks_deferred.payload.calls import invoke_member, serialize
from cloudtasks_deferred.payload.frame import FLAG_COMPRESSED, FLAG_SIGNED, MAGIC, encode
from tests import tasks
from tests.oidc import AUDIENCE, INVOKER
from tests.security import allowed_tasks
from tests.security.cases import Kit, Reduce, canary_frame, canary_pickle, harmless_frame
from tests.security.profiles import ALLOWED_MODULES
from tests.tasks import RECORDER
from tests.wsgi import call, environ

#: Every status the handler documents (handler.py's table).
DOCUMENTED = frozenset({200, 400, 403, 405, 408, 413, 500, 503})
CI_EXAMPLES = 4000
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", CI_EXAMPLES))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES == CI_EXAMPLES,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,  # the autouse env isolation; nothing per example
        HealthCheck.data_too_large,
    ],
)

QUEUE_HEADER_NAMES = [
    f"X-{family}-{name}"
    for family in ("CloudTasks", "AppEngine")
    for name in (
        "QueueName",
        "TaskName",
        "TaskRetryCount",
        "TaskExecutionCount",
        "TaskETA",
        "TaskPreviousResponse",
        "TaskRetryReason",
    )
]
OTHER_HEADER_NAMES = [
    "X-AppEngine-Cron",
    "X-AppEngine-Inbound-AppId",
    "X-Serverless-Authorization",
    "X-Goog-Authenticated-User-Email",
    "X-Forwarded-For",
    "Forwarded",
    "Content-Type",
    "Transfer-Encoding",
    "Expect",
]
METHODS = ["GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "TRACE", "CONNECT", "post", ""]


@pytest.fixture(scope="module")
def apps(profiles: dict[str, dict[str, str]]) -> dict[str, Handler]:
    """A handler per deployment, configured from that deployment's environment."""
    oidc = profiles["oidc"]
    variants = {
        "oidc": oidc,
        "signed": profiles["signed"],
        "allowlisted": {**oidc, "CLOUDTASKS_DEFERRED_ALLOWED_MODULES": ALLOWED_MODULES},
    }
    return {name: Handler(client=Client(Settings.from_env(env))) for name, env in variants.items()}


def wsgi(
    app: Handler,
    body: bytes,
    headers: dict[str, str],
    *,
    method: str = "POST",
    content_length: str | None = None,
    chunked: bool = False,
) -> tuple[int, bytes, int]:
    env = environ(body, method=method, headers=headers, content_length=content_length)
    if chunked:
        env["CONTENT_LENGTH"] = ""
        env["wsgi.input_terminated"] = True
    response = call(app, env)
    assert response.code in DOCUMENTED, response.status
    assert RECORDER.named("canary") == [], "a canary ran"
    return response.code, response.body, env["wsgi.input"].reads


def mutate(data: bytes, edits: bytes) -> bytes:
    """Applies edits, 4 bytes each (kind, position high, position low, value): flip a
    bit, overwrite a byte, insert one, delete one, or cut the rest."""
    out = bytearray(data)
    for start in range(0, len(edits) - 3, 4):
        kind, high, low, value = edits[start : start + 4]
        if not out:
            out.append(value)
            continue
        index = (high << 8 | low) % len(out)
        if kind % 5 == 0:
            out[index] ^= 1 << (value % 8)
        elif kind % 5 == 1:
            out[index] = value
        elif kind % 5 == 2:
            out.insert(index, value)
        elif kind % 5 == 3:
            del out[index]
        else:
            del out[index:]
    return bytes(out)


# One binary draw per example (cheaper to generate than a list of tuples).
EDITS = st.binary(min_size=4, max_size=16)


def same_jwt(a: str, b: str) -> bool:
    """Whether two compact JWTs decode to the same bytes (base64 has spare bits)."""

    def parts(token: str) -> list[bytes] | None:
        try:
            return [
                base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in token.strip().split(".")
            ]
        except ValueError:
            return None

    return parts(a) is not None and parts(a) == parts(b)


def forged_bodies(kit: Kit) -> list[bytes]:
    """Bodies an attacker would try: canaries in every wrapping, and harmless tasks."""
    return [
        canary_pickle(),
        canary_frame(),
        canary_frame(kit.signing_key),
        encode(canary_pickle(), compress=True),
        encode(canary_pickle(), compress=True, signing_key=kit.signing_key),
        pickle.dumps(tasks.Canary(), protocol=0),
        pickle.dumps(
            (allowed_tasks.noop, (Reduce(invoke_member, allowed_tasks.Job(), "fire"),), {})
        ),
        harmless_frame(),
        harmless_frame(kit.signing_key),
        encode(serialize(allowed_tasks.record, [1, 2, 3]), {"retry": {"task_retry_limit": 1}}),
        MAGIC + bytes([1, FLAG_COMPRESSED | FLAG_SIGNED]) + b"\0\0",
        b"",
    ]


def tokens(kit: Kit) -> list[str]:
    return [
        kit.issuer.token(),
        kit.issuer.token(aud="https://elsewhere.example"),
        kit.issuer.unsigned_token(),
        kit.issuer.hs256_token(),
        kit.attacker.token(),
        kit.impostor.token(),
        kit.dev_key.mint(email=INVOKER, audience=AUDIENCE),
    ]


def test_fuzz_requests_without_a_valid_token(kit: Kit, apps: dict[str, Handler]) -> None:
    """Any method, spoofed headers, junk or forged tokens, any body: 405 or 403, unread."""
    valid = kit.issuer.token()
    invalid_tokens = [t for t in tokens(kit) if t != valid]
    header_value = st.one_of(
        st.text(max_size=20),
        st.sampled_from(["default", "0", "-1", "1e9", "true", "127.0.0.1", valid]),
    )
    authorization = st.one_of(
        st.none(),
        st.text(max_size=30),
        st.sampled_from(invalid_tokens).map(lambda t: f"Bearer {t}"),
        st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcg==", f"Basic {valid}", valid]),
    )

    @FUZZ
    @given(
        method=st.sampled_from(["POST"] * 5 + METHODS),
        profile=st.sampled_from(sorted(apps)),
        headers=st.dictionaries(
            st.sampled_from(QUEUE_HEADER_NAMES + OTHER_HEADER_NAMES), header_value, max_size=4
        ),
        auth=authorization,
        body=st.one_of(st.sampled_from(forged_bodies(kit)), st.binary(max_size=512)),
    )
    def check(
        method: str, profile: str, headers: dict[str, str], auth: str | None, body: bytes
    ) -> None:
        if auth is not None:
            headers = {**headers, "Authorization": auth}
        status, response, reads = wsgi(apps[profile], body, headers, method=method)
        if method == "POST":
            # Refused on the headers: the body says which check failed, and it is
            # never a verdict on the payload, which nobody read.
            assert status == 403
            assert response.startswith(b"Forbidden: the "), response
            assert not response.startswith(REFUSED_PAYLOAD), response
        else:
            assert (status, response) == (405, b"MethodNotAllowed")
        assert reads == 0

    check()


def test_fuzz_mutated_tokens(kit: Kit, apps: dict[str, Handler]) -> None:
    """A valid token with bytes flipped, inserted, deleted or cut is refused, unless it
    still decodes to the very same token."""
    valid = kit.issuer.token()
    body = harmless_frame()

    @FUZZ
    @given(edits=EDITS, scheme=st.sampled_from(["Bearer ", "bearer ", "BEARER  "]))
    def check(edits: bytes, scheme: str) -> None:
        raw = mutate(valid.encode(), edits)
        token = raw.decode("latin-1")
        status, response, _ = wsgi(apps["oidc"], body, {"Authorization": scheme + token})
        if status != 403:
            assert status == 200, response
            assert same_jwt(token, valid), token

    check()


#: A frame's header: magic, version, flags, metadata length (frame.py's layout).
HEADER_BYTES = 8
MAC_BYTES = 32


def signed_class(body: bytes, key_id: str) -> str:
    """The class of a body sent where signatures are required, from its bytes alone."""
    if not body.startswith(MAGIC):
        return "not a frame"
    if len(body) < HEADER_BYTES:
        return "truncated header"
    version, flags = body[4], body[5]
    if version != 1 or flags & ~(FLAG_COMPRESSED | FLAG_SIGNED):
        return "newer frame"
    if not flags & FLAG_SIGNED:
        return "unsigned frame"
    if len(body) <= HEADER_BYTES or len(body) < HEADER_BYTES + 1 + body[8] + MAC_BYTES:
        return "truncated signature"
    named = body[HEADER_BYTES + 1 : HEADER_BYTES + 1 + body[8]]
    return "names the key" if named == key_id.encode() else "names another key"


#: Refusals of a payload (the token was valid): the body says which check failed.
NOT_SIGNED = b"Forbidden: the payload is not signed"
REFUSED_PAYLOAD = b"Forbidden: the payload "


def test_fuzz_bodies_where_signatures_are_required(kit: Kit, apps: dict[str, Handler]) -> None:
    """Valid token, signed profile: mutated frames and junk never get unpickled, and
    each class of body gets its own answer."""
    pool = forged_bodies(kit)
    signed_harmless = harmless_frame(kit.signing_key)
    auth = kit.bearer()  # one token, as Cloud Tasks reuses one
    key_id = kit.signing_key.key_id
    # The pool's canaries signed with the key pass the signature and meet the allowlist.
    signed_canaries = {
        b for b in pool if b != signed_harmless and signed_class(b, key_id) == "names the key"
    }
    assert len(signed_canaries) == 2

    @FUZZ
    @given(
        body=st.one_of(
            st.binary(max_size=1024),
            st.tuples(st.sampled_from(pool), EDITS).map(lambda pair: mutate(*pair)),
            st.sampled_from(pool),
        )
    )
    def check(body: bytes) -> None:
        status, response, _ = wsgi(apps["signed"], body, auth)
        if body == signed_harmless:
            assert (status, response) == (200, b"Success")
            return
        if body in signed_canaries:
            assert status == 403, response
            assert response.startswith(b"Forbidden: the payload references 'tests.tasks.canary'")
            return
        kind = signed_class(body, key_id)
        if kind in ("not a frame", "unsigned frame"):
            assert (status, response) == (403, NOT_SIGNED), kind
        elif kind == "names the key":  # and is not one of the pool's: altered
            assert (status, response) == (403, REFUSED_PAYLOAD + b"signature does not verify")
        elif kind == "names another key":
            assert (status, response) == (403, REFUSED_PAYLOAD + b"is signed with an unknown key")
        elif kind == "newer frame":
            # Retried until a newer deployment reads it: never run, never dropped.
            assert status >= 500, response
        else:
            # A header cut short is dropped as malformed, or refused as unsigned: either
            # way nothing is unpickled and nothing retries it forever.
            assert kind in ("truncated header", "truncated signature"), kind
            assert (status, response) == (200, b"PermanentTaskFailure") or (
                status == 403 and response.startswith(REFUSED_PAYLOAD)
            ), response

    check()


#: What allowed code records when it runs (tests.security.allowed_tasks).
ALLOWED_RECORDS = frozenset({"allowed_record", "job", "static"})


def test_fuzz_pickles_against_the_allowlist(kit: Kit, apps: dict[str, Handler]) -> None:
    """Valid token, no signatures, an allowlist: whatever the pickle, no canary, and
    only allowed code runs."""
    pool = forged_bodies(kit)
    frames = [b for b in pool if b.startswith(MAGIC) or b[:1] == b"\x80"]
    auth = kit.bearer()

    @FUZZ
    @given(
        body=st.one_of(
            st.tuples(st.sampled_from(frames), EDITS).map(lambda pair: mutate(*pair)),
            st.binary(max_size=256).map(lambda junk: b"\x80\x05" + junk),
            st.sampled_from(pool),
        )
    )
    def check(body: bytes) -> None:
        RECORDER.clear()
        status, response, _ = wsgi(apps["allowlisted"], body, auth)
        kind = signed_class(body, "")
        if not body.startswith(MAGIC) and body[:1] != b"\x80":
            # Neither a frame nor a pickle (a mutation hit the first byte).
            assert (status, response) == (
                200,
                b"PermanentTaskFailure",
            ), response
        elif kind == "truncated header":
            assert (status, response) == (200, b"PermanentTaskFailure")
        elif kind == "newer frame":
            assert status >= 500, response  # retried, never run
        elif status == 403:
            # Refused by the allowlist (the token was valid): the body says what.
            assert response.startswith(REFUSED_PAYLOAD), response
        else:
            # Not a pickle of a call (dropped), allowed code ran, or allowed code raised
            # or is missing (retried). Nothing here raises SingularTaskFailure: no 408.
            assert (status, response) in (
                (200, b"Success"),
                (200, b"PermanentTaskFailure"),
                (500, b"Error"),
            ), response
        assert {name for name, _ in RECORDER.calls} <= ALLOWED_RECORDS, RECORDER.calls

    check()


def test_fuzz_lengths_and_queue_headers(kit: Kit, apps: dict[str, Handler]) -> None:
    """Valid token and task: lying or malformed lengths, chunking, odd queue headers."""
    body = harmless_frame()
    signed = harmless_frame(kit.signing_key)
    auth = kit.bearer()
    lengths = st.one_of(
        st.none(),
        st.integers(-5, 3 * 1024 * 1024).map(str),
        st.sampled_from(["", " ", "0x10", "1e3", "+5", "٣", "10 ", "99999999999999999999"]),
        st.text(max_size=8),
    )

    @FUZZ
    @given(
        profile=st.sampled_from(["oidc", "signed"]),
        content_length=lengths,
        chunked=st.booleans(),
        queue=st.dictionaries(
            st.sampled_from(QUEUE_HEADER_NAMES), st.text(max_size=20), max_size=4
        ),
    )
    def check(
        profile: str, content_length: str | None, chunked: bool, queue: dict[str, str]
    ) -> None:
        payload = signed if profile == "signed" else body
        headers = {**queue, **auth}
        status, response, _ = wsgi(
            apps[profile], payload, headers, content_length=content_length, chunked=chunked
        )
        declared = (
            None if chunked else str(len(payload)) if content_length is None else content_length
        )
        kind = length_class(declared, len(payload))
        if kind == "exact":
            assert (status, response) == (200, b"Success")
        elif kind == "malformed":
            assert (status, response) == (400, b"BadRequest: invalid Content-Length")
        elif kind == "too large":
            assert (status, response) == (
                413,
                b"PayloadTooLarge: a task body is at most 1048576 bytes",
            )
        elif kind == "longer than the body":
            assert (status, response) == (
                400,
                b"BadRequest: the body is shorter than its Content-Length",
            )
        elif profile == "oidc":
            # No length, or a prefix of the frame: not a whole payload, dropped.
            assert (status, response) == (200, b"PermanentTaskFailure"), kind
        else:
            # A prefix of a signed frame: unsigned or cut in its signature or after it.
            assert status == 403 or (status, response) == (200, b"PermanentTaskFailure")
            if status == 403:
                assert response.startswith(REFUSED_PAYLOAD), response

    check()


def length_class(declared: str | None, size: int) -> str:
    """How a request declares its body's length (``None``: chunked), per HTTP/1.1."""
    if declared is None:
        return "exact"  # chunked: the whole body is read
    if declared == "":
        return "no length"  # neither Content-Length nor chunked: an empty body
    if not (declared.isascii() and declared.isdigit()):
        return "malformed"
    length = int(declared)
    if length > 1024 * 1024:
        return "too large"
    if length > size:
        return "longer than the body"
    return "exact" if length == size else "a prefix"
