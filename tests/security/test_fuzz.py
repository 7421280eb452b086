"""Fuzzing the handler in-process with hypothesis: headers, tokens, lengths and bodies.

Five properties, 4,000 examples each (20,000 in all), derandomized so CI runs the same
examples every time. Each asserts that the WSGI app always answers (no exception
escapes, ``start_response`` is called) with a status from the documented table, and
that no canary ran: nothing from an unauthenticated, unsigned or disallowed request was
unpickled or called.
"""

from __future__ import annotations

import base64
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtasks_deferred import Client, Handler, Settings
from cloudtasks_deferred.frame import FLAG_COMPRESSED, FLAG_SIGNED, MAGIC, encode
from cloudtasks_deferred.payload import invoke_member, serialize
from tests import tasks
from tests.oidc import AUDIENCE, INVOKER
from tests.security import allowed_tasks
from tests.security.cases import Kit, Reduce, canary_frame, canary_pickle, harmless_frame
from tests.security.profiles import ALLOWED_MODULES
from tests.tasks import RECORDER
from tests.wsgi import call, environ

#: Every status the handler documents (handler.py's table).
DOCUMENTED = frozenset({200, 400, 403, 405, 408, 413, 500, 503})
EXAMPLES = 4000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
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
        status, _, reads = wsgi(apps[profile], body, headers, method=method)
        assert status == (403 if method == "POST" else 405)
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


def test_fuzz_bodies_where_signatures_are_required(kit: Kit, apps: dict[str, Handler]) -> None:
    """Valid token, signed profile: mutated frames and junk never get unpickled."""
    pool = forged_bodies(kit)
    signed_harmless = harmless_frame(kit.signing_key)
    auth = kit.bearer()  # one token, as Cloud Tasks reuses one

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
        assert status in (200, 403, 500), response
        if status == 200:  # only the untouched signed task runs; truncated frames are dropped
            assert body == signed_harmless or response == b"PermanentTaskFailure", response

    check()


def test_fuzz_pickles_against_the_allowlist(kit: Kit, apps: dict[str, Handler]) -> None:
    """Valid token, no signatures, an allowlist: whatever the pickle, no canary."""
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
        status, response, _ = wsgi(apps["allowlisted"], body, auth)
        assert status in (200, 403, 408, 500), response

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
        exact = chunked or content_length == str(len(payload))
        if exact:
            assert status == 200, response
        else:
            assert status in (200, 400, 403, 413), response

    check()
