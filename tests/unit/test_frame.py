"""The frame: metadata, compression with a bound, HMAC signatures checked first."""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

import pytest

from cloudtasks_deferred import PermanentTaskFailure
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import (
    FLAG_COMPRESSED,
    FLAG_SIGNED,
    MAGIC,
    DecodedFrame,
    FrameHeader,
    InvalidPayloadError,
    PayloadSignatureError,
    SigningKey,
    UnsupportedPayloadError,
    decode,
    encode,
    read_header,
)
from tests import tasks

PICKLED = serialize(tasks.record, "x" * 1000)
KEY = SigningKey("k1", b"s" * 32)
OTHER = SigningKey("k2", b"t" * 32)
KEYS = {KEY.key_id: KEY.secret, OTHER.key_id: OTHER.secret}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("signing_key", [None, KEY])
def test_round_trip(compress: bool, signing_key: SigningKey | None) -> None:
    metadata = {"retry": {"task_retry_limit": 2}}
    body = encode(PICKLED, metadata, compress=compress, signing_key=signing_key)
    assert body.startswith(MAGIC)
    decoded = decode(body, keys=KEYS)
    assert decoded == DecodedFrame(
        metadata=metadata,
        pickled=PICKLED,
        key_id=signing_key.key_id if signing_key else None,
        compressed=compress,
    )


def test_compression_shrinks_compressible_payloads() -> None:
    assert len(encode(PICKLED, compress=True)) < len(PICKLED) // 5


def test_bare_pickles_are_unsigned_legacy_bodies() -> None:
    assert decode(PICKLED) == DecodedFrame(metadata={}, pickled=PICKLED)


def test_signatures_are_not_checked_without_keys() -> None:
    body = encode(PICKLED, signing_key=KEY)
    assert decode(body).key_id is None
    assert decode(body).pickled == PICKLED


def test_any_configured_key_verifies_for_rotation() -> None:
    assert decode(encode(PICKLED, signing_key=OTHER), keys=KEYS).key_id == "k2"


NOT_SIGNED = "the payload is not signed"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(encode(PICKLED), NOT_SIGNED, id="unsigned frame"),
        pytest.param(PICKLED, NOT_SIGNED, id="bare pickle"),
        pytest.param(b"garbage", NOT_SIGNED, id="garbage"),
        pytest.param(
            MAGIC + b"\x01\x02\x00\x00\x02k1" + b"\x00" * 5,
            f"{NOT_SIGNED}: the payload frame is truncated",
            id="truncated signature",
        ),
        pytest.param(
            encode(PICKLED, signing_key=SigningKey("k9", b"u" * 32)),
            "the payload is signed with an unknown key",
            id="unknown key",
        ),
        pytest.param(
            encode(PICKLED, signing_key=SigningKey("k1", b"w" * 32)),
            "the payload signature does not verify",
            id="wrong secret",
        ),
    ],
)
def test_required_signatures(body: bytes, message: str) -> None:
    with pytest.raises(PayloadSignatureError) as refused:
        decode(body, keys=KEYS, require_signature=True)
    assert str(refused.value) == message


def test_every_flipped_bit_is_refused() -> None:
    body = encode(PICKLED, {"a": 1}, compress=True, signing_key=KEY)
    for index in range(len(body)):
        for bit in range(8):
            tampered = bytearray(body)
            tampered[index] ^= 1 << bit
            with pytest.raises(
                (PayloadSignatureError, InvalidPayloadError, UnsupportedPayloadError)
            ):
                decode(bytes(tampered), keys=KEYS, require_signature=True)


def test_stripping_the_signature_flag_is_refused() -> None:
    body = bytearray(encode(PICKLED, signing_key=KEY))
    body[5] &= ~FLAG_SIGNED
    with pytest.raises((PayloadSignatureError, InvalidPayloadError)):
        decode(bytes(body), keys=KEYS, require_signature=True)


def test_stripping_the_compression_flag_breaks_the_signature() -> None:
    body = bytearray(encode(PICKLED, compress=True, signing_key=KEY))
    body[5] &= ~FLAG_COMPRESSED
    with pytest.raises(PayloadSignatureError):
        decode(bytes(body), keys=KEYS, require_signature=True)


def test_compression_bombs_are_refused() -> None:
    bomb = encode(b"\x80" + b"\x00" * (10 * 1024 * 1024), compress=True)
    assert len(bomb) < 20_000
    with pytest.raises(InvalidPayloadError, match="inflates beyond 1048576 bytes"):
        decode(bomb, max_pickle_bytes=1024 * 1024)


def test_exactly_the_limit_inflates() -> None:
    body = encode(b"\x80" + b"\x00" * 999, compress=True)
    assert len(decode(body, max_pickle_bytes=1000).pickled) == 1000


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello", id="text"),
        pytest.param(b"\x89CT", id="short magic"),
        pytest.param(MAGIC + b"\x01\x00", id="truncated header"),
        pytest.param(MAGIC + b"\x01\x00\x00\x10{}", id="truncated metadata"),
        pytest.param(MAGIC + b"\x01\x00\x00\x02[]" + b"\x80\x05N.", id="metadata not object"),
        pytest.param(MAGIC + b"\x01\x00\x00\x03{x}" + b"\x80\x05N.", id="metadata not json"),
        pytest.param(MAGIC + b"\x01\x02\x00\x00", id="signed without key id"),
        pytest.param(MAGIC + b"\x01\x02\x00\x00\x02k1" + b"\x00" * 5, id="truncated mac"),
        pytest.param(MAGIC + b"\x01\x01\x00\x00" + b"not zlib", id="corrupt zlib"),
        pytest.param(
            MAGIC + b"\x01\x01\x00\x00" + zlib.compress(PICKLED)[:-5], id="truncated zlib"
        ),
        pytest.param(
            MAGIC + b"\x01\x01\x00\x00" + zlib.compress(PICKLED) + b"junk", id="zlib trailer"
        ),
    ],
)
def test_malformed_bodies_are_invalid_payloads(body: bytes) -> None:
    with pytest.raises(InvalidPayloadError):
        decode(body, keys=KEYS)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(MAGIC + b"\x01\x00", id="truncated header"),
        pytest.param(MAGIC + b"\x01\x02\x00\x00", id="signed without key id"),
        pytest.param(MAGIC + b"\x01\x02\x00\x00\x02k1" + b"\x00" * 5, id="truncated mac"),
    ],
)
def test_truncated_headers_are_invalid_payloads(body: bytes) -> None:
    with pytest.raises(InvalidPayloadError) as refused:
        read_header(body)
    assert str(refused.value) == "the payload frame is truncated"


@pytest.mark.parametrize("compress", [False, True])
def test_read_header_of_an_unsigned_frame(compress: bool) -> None:
    body = encode(PICKLED, {"retry": {"task_retry_limit": 2}}, compress=compress)
    header = read_header(body)
    assert header == FrameHeader(
        version=1,
        flags=FLAG_COMPRESSED if compress else 0,
        key_id=None,
        metadata_start=8,
        metadata_length=len(b'{"retry":{"task_retry_limit":2}}'),
    )
    metadata_end = header.metadata_start + header.metadata_length
    assert body[header.metadata_start : metadata_end] == b'{"retry":{"task_retry_limit":2}}'


def test_read_header_names_the_key_without_verifying_it() -> None:
    body = bytearray(encode(PICKLED, {"t0": 1}, compress=True, signing_key=KEY))
    body[-1] ^= 1  # the signature no longer verifies: read_header does not look
    header = read_header(bytes(body))
    assert header == FrameHeader(
        version=1,
        flags=FLAG_COMPRESSED | FLAG_SIGNED,
        key_id="k1",
        metadata_start=8 + 1 + 2 + 32,
        metadata_length=len(b'{"t0":1}'),
    )
    with pytest.raises(PayloadSignatureError):
        decode(bytes(body), keys=KEYS)


@pytest.mark.parametrize("body", [PICKLED, b"", b"hello"], ids=["bare pickle", "empty", "text"])
def test_read_header_of_what_is_not_a_frame_is_none(body: bytes) -> None:
    assert read_header(body) is None


def test_invalid_payloads_are_permanent_failures() -> None:
    assert issubclass(InvalidPayloadError, PermanentTaskFailure)


@pytest.mark.parametrize(
    ("version", "flags", "frame"),
    [(2, 0, "version 2 with flags 0x00"), (1, 0x80, "version 1 with flags 0x80")],
    ids=["version", "flag"],
)
def test_newer_frames_are_retryable(version: int, flags: int, frame: str) -> None:
    body = struct.pack(">4sBBH", MAGIC, version, flags, 0) + PICKLED
    message = f"payload frame {frame} needs a newer cloudtasks_deferred than this deployment runs"
    with pytest.raises(UnsupportedPayloadError) as refused:
        decode(body)
    assert str(refused.value) == message
    with pytest.raises(UnsupportedPayloadError) as refused:
        read_header(body)  # its layout is unknown too
    assert str(refused.value) == message
    assert not issubclass(UnsupportedPayloadError, PermanentTaskFailure)


@pytest.mark.parametrize(
    ("key_id", "secret", "message"),
    [
        ("", b"s" * 32, "must be 1-64"),
        ("has space", b"s" * 32, "must be 1-64"),
        ("k" * 65, b"s" * 32, "must be 1-64"),
        ("k1", b"short", "at least 32 random bytes"),
    ],
)
def test_signing_keys_are_validated(key_id: str, secret: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SigningKey(key_id, secret)


def test_signing_key_repr_hides_the_secret() -> None:
    assert "sss" not in repr(KEY)
    assert repr(KEY) == "SigningKey(key_id='k1', secret=<32 bytes>)"


def test_an_empty_key_set_verifies_nothing_when_signatures_are_required() -> None:
    # keys={} is "no key is trusted", not "no keys given" (None): a signed frame is
    # refused rather than opened unchecked.
    for key in (KEY, OTHER):
        with pytest.raises(PayloadSignatureError, match="unknown key"):
            decode(encode(PICKLED, signing_key=key), keys={}, require_signature=True)
    with pytest.raises(PayloadSignatureError, match="not signed"):
        decode(encode(PICKLED), keys={}, require_signature=True)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", "the body is not a deferred task payload", id="empty"),
        pytest.param(b"\x89CT", "the body is not a deferred task payload", id="short magic"),
        pytest.param(MAGIC + b"\x01\x00", "the payload frame is truncated", id="header"),
        pytest.param(MAGIC + b"\x01\x00\x00\x10{}", "the payload frame is truncated", id="meta"),
        pytest.param(
            MAGIC + b"\x01\x00\x00\x03{x}", "the payload metadata is not JSON", id="not json"
        ),
        pytest.param(
            MAGIC + b"\x01\x00\x00\x02[]",
            "the payload metadata is not a JSON object",
            id="not an object",
        ),
        pytest.param(
            MAGIC + b"\x01\x01\x00\x00not zlib", "the compressed payload is corrupt", id="zlib"
        ),
        pytest.param(
            MAGIC + b"\x01\x01\x00\x00" + zlib.compress(PICKLED)[:-5],
            "the compressed payload is truncated or has trailing bytes",
            id="truncated zlib",
        ),
        pytest.param(
            MAGIC + b"\x01\x01\x00\x00" + zlib.compress(PICKLED) + b"junk",
            "the compressed payload is truncated or has trailing bytes",
            id="zlib trailer",
        ),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, reason: str) -> None:
    # The reason reaches the dead letter and the log: it must say what was wrong.
    with pytest.raises(InvalidPayloadError, match=f"^{reason}"):
        decode(body, keys=KEYS)


def test_a_frame_may_end_right_after_its_signature_or_metadata() -> None:
    # Nothing after the MAC (signed) or the metadata: complete frames, not truncated.
    signed = encode(b"", signing_key=KEY)
    assert read_header(signed) == FrameHeader(1, FLAG_SIGNED, "k1", len(signed), 0)
    assert decode(signed, keys=KEYS, require_signature=True) == DecodedFrame({}, b"", "k1")
    with_metadata = encode(b"", {"a": 1})
    assert decode(with_metadata) == DecodedFrame({"a": 1}, b"")
    header_alone = encode(b"")  # unsigned, no metadata: the 8-byte header is the frame
    assert read_header(header_alone) == FrameHeader(1, 0, None, 8, 0)
    assert decode(header_alone) == DecodedFrame({}, b"")


def test_the_frames_key_id_picks_the_key_verbatim() -> None:
    # An empty key ID is looked up as "", like any other: it names no configured key.
    secret = b"e" * 32
    header = struct.pack(">4sBBH", MAGIC, 1, FLAG_SIGNED, 0) + b"\x00"
    frame = header + hmac.new(secret, header + PICKLED, hashlib.sha256).digest() + PICKLED
    assert decode(frame, keys={"": secret}, require_signature=True).key_id == ""
    with pytest.raises(PayloadSignatureError, match="unknown key"):
        decode(frame, keys=KEYS, require_signature=True)


def test_read_header_shows_a_non_ascii_key_id_byte_by_byte() -> None:
    # Key IDs are ASCII: other bytes are shown as one replacement character each.
    body = bytearray(encode(PICKLED, signing_key=SigningKey("ab", b"s" * 32)))
    body[9:11] = "é".encode()  # two bytes in UTF-8
    header = read_header(bytes(body))
    assert header is not None
    assert header.key_id == "\ufffd\ufffd"
