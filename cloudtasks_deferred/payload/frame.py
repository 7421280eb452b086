"""The task body's frame: header, metadata, optional compression and signature.

Layout, integers big-endian::

    offset  size  field
    0       4     magic b"\\x89CTD"
    4       1     version, 1
    5       1     flags: 0x01 the pickle is zlib-compressed, 0x02 the frame is signed
    6       2     M, the metadata's length
    -- only when signed --
    8       1     K, the key ID's length
    9       K     key ID (ASCII)
    9+K     32    HMAC-SHA256, with that key, over every other byte of the frame
    -- always --
    ...     M     metadata: a JSON object (what the handler enforces, e.g. retry limits)
    ...           the pickle of ``(callable, args, kwargs)``, compressed if flagged

:func:`decode` checks, in this order, the header, the signature (in constant time,
before anything else is parsed), the metadata, and decompresses with a bound on
the result, so that neither a forged frame nor a compression bomb gets further.
Where a signature is required, a body is verified or refused
(:class:`PayloadSignatureError`, 403): a truncated or unsigned frame included.
:func:`read_header` reads the header alone, verifying nothing (for tools).

A bare pickle, what the legacy ``serialize`` returned, is accepted as an unsigned,
unframed body: protocol 2 or later (it starts with ``PROTO``), or protocols 0 and 1,
which Python 2 wrote by default and the bundled Python 3 library wrote for
cross-compatibility (a task's ``(callable, args, kwargs)`` tuple starts with
``MARK``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import Mapping
from typing import Any, Final

from cloudtasks_deferred.errors import Error, PayloadRefusedError, PermanentTaskFailure

__all__ = [
    "FLAG_COMPRESSED",
    "FLAG_SIGNED",
    "MAGIC",
    "MAX_PICKLE_BYTES",
    "MIN_SECRET_BYTES",
    "DecodedFrame",
    "FrameHeader",
    "InvalidPayloadError",
    "PayloadSignatureError",
    "SigningKey",
    "UnsupportedPayloadError",
    "decode",
    "encode",
    "read_header",
]

MAGIC: Final = b"\x89CTD"
VERSION: Final = 1
FLAG_COMPRESSED: Final = 0x01
FLAG_SIGNED: Final = 0x02
_KNOWN_FLAGS: Final = FLAG_COMPRESSED | FLAG_SIGNED
_HEADER: Final = struct.Struct(">4sBBH")  # magic, version, flags, metadata length
_MAC_BYTES: Final = 32
_PICKLE_PROTO: Final = 0x80  # first byte of every pickle of protocol 2 or later
_PICKLE_MARK: Final = ord("(")  # first byte of a protocol 0 or 1 pickle of a tuple
_KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: Largest pickle a frame may decompress to, in bytes; larger is a compression bomb.
MAX_PICKLE_BYTES: Final = 32 * 1024 * 1024
#: Shortest HMAC secret accepted, in bytes (RFC 2104: at least the hash's output).
MIN_SECRET_BYTES: Final = 32


class InvalidPayloadError(PermanentTaskFailure):
    """The body is not a task payload: truncated, malformed, or inflating too far.

    A permanent failure: delivering the same bytes again cannot succeed.
    """


class UnsupportedPayloadError(Error):
    """The frame uses a version or flag this deployment does not know.

    Not permanent: a newer version of the code enqueued it, and the task succeeds
    once that version serves the handler, so Cloud Tasks should retry it.
    """


class PayloadSignatureError(PayloadRefusedError):
    """The frame is unsigned where a signature is required, or its signature is wrong."""


@dataclasses.dataclass(frozen=True, repr=False)
class SigningKey:
    """An HMAC-SHA256 key that signs frames.

    Attributes:
        key_id: 1-64 of ``[A-Za-z0-9._-]``; travels in the frame to pick the key.
        secret: At least :data:`MIN_SECRET_BYTES` random bytes.

    Raises:
        ValueError: The key ID or the secret does not qualify.
    """

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise ValueError(
                f"signing key ID {self.key_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"signing key {self.key_id!r} has {len(self.secret)} bytes; at least "
                f"{MIN_SECRET_BYTES} random bytes are needed"
            )

    def __repr__(self) -> str:  # never print the secret
        return f"SigningKey(key_id={self.key_id!r}, secret=<{len(self.secret)} bytes>)"


@dataclasses.dataclass(frozen=True)
class DecodedFrame:
    """A decoded task body.

    Attributes:
        metadata: The frame's metadata (empty for a bare pickle).
        pickled: The pickle, decompressed.
        key_id: The key that signed the frame, ``None`` if unsigned or unchecked.
        compressed: Whether the pickle travelled compressed.
    """

    metadata: dict[str, Any]
    pickled: bytes
    key_id: str | None = None
    compressed: bool = False


@dataclasses.dataclass(frozen=True)
class FrameHeader:
    """A frame's header, as :func:`read_header` reads it: nothing in it is verified.

    Attributes:
        version: The frame's version.
        flags: :data:`FLAG_COMPRESSED` and :data:`FLAG_SIGNED` bits.
        key_id: The key ID a signed frame names, **unverified**; ``None`` if unsigned.
        metadata_start: Offset of the metadata: past the header, key ID and MAC.
        metadata_length: The metadata's length in bytes, as the header states it
            (not checked against the data's length).
    """

    version: int
    flags: int
    key_id: str | None
    metadata_start: int
    metadata_length: int


def read_header(data: bytes) -> FrameHeader | None:
    """Reads a frame's header without verifying its signature or parsing anything else.

    Args:
        data: A task body.

    Returns:
        The header; ``None`` if ``data`` is not a frame (a bare pickle, or not a
        payload at all: :func:`decode` tells them apart).

    Raises:
        InvalidPayloadError: The header, key ID or MAC is truncated.
        UnsupportedPayloadError: The frame's version or flags are newer than this
            code, which then cannot know the header's layout.
    """
    if not data.startswith(MAGIC):
        return None
    if len(data) < _HEADER.size:
        raise InvalidPayloadError("the payload frame is truncated")
    _, version, flags, meta_len = _HEADER.unpack_from(data)
    if version != VERSION or flags & ~_KNOWN_FLAGS:
        raise UnsupportedPayloadError(
            f"payload frame version {version} with flags {flags:#04x} needs a newer "
            "cloudtasks_deferred than this deployment runs"
        )
    if not flags & FLAG_SIGNED:
        return FrameHeader(version, flags, None, _HEADER.size, meta_len)
    key_id_start = _HEADER.size + 1
    if len(data) < key_id_start:
        raise InvalidPayloadError("the payload frame is truncated")
    key_id_end = key_id_start + data[_HEADER.size]
    if len(data) < key_id_end + _MAC_BYTES:
        raise InvalidPayloadError("the payload frame is truncated")
    key_id = data[key_id_start:key_id_end].decode("ascii", errors="replace")
    return FrameHeader(version, flags, key_id, key_id_end + _MAC_BYTES, meta_len)


def encode(
    pickled: bytes,
    metadata: Mapping[str, Any] | None = None,
    *,
    compress: bool = False,
    signing_key: SigningKey | None = None,
) -> bytes:
    """Frames a pickle.

    Args:
        pickled: The pickle of ``(callable, args, kwargs)``.
        metadata: JSON-serializable options for the handler.
        compress: zlib-compress the pickle.
        signing_key: Sign the frame with this key.

    Returns:
        The task body.
    """
    meta = json.dumps(metadata, separators=(",", ":")).encode() if metadata else b""
    body = zlib.compress(pickled) if compress else pickled
    flags = (FLAG_COMPRESSED if compress else 0) | (FLAG_SIGNED if signing_key else 0)
    header = _HEADER.pack(MAGIC, VERSION, flags, len(meta))
    if signing_key is None:
        return header + meta + body
    key_id = signing_key.key_id.encode()
    signed_prefix = header + bytes([len(key_id)]) + key_id
    mac = _mac(signing_key.secret, signed_prefix, meta, body)
    return signed_prefix + mac + meta + body


def decode(
    data: bytes,
    *,
    keys: Mapping[str, bytes] | None = None,
    require_signature: bool = False,
    max_pickle_bytes: int = MAX_PICKLE_BYTES,
) -> DecodedFrame:
    """Checks and opens a task body.

    Args:
        data: A frame, or a bare pickle.
        keys: Secrets by key ID to verify signatures with; ``None`` skips signature
            checks (for bytes the caller already trusts).
        require_signature: Refuse frames not signed by one of ``keys``.
        max_pickle_bytes: Refuse pickles that decompress beyond this size.

    Returns:
        The metadata and the pickle.

    Raises:
        PayloadSignatureError: A signature is required and missing, truncated or wrong.
        InvalidPayloadError: The body is malformed or inflates too far.
        UnsupportedPayloadError: The frame's version or flags are newer than this code.
    """
    try:
        header = read_header(data)
    except InvalidPayloadError as exc:
        if require_signature:  # nothing unverified gets further than a refusal
            raise PayloadSignatureError(f"the payload is not signed: {exc}") from None
        raise
    if header is None:
        if require_signature:
            raise PayloadSignatureError("the payload is not signed")
        if data[:1] in (bytes([_PICKLE_PROTO]), bytes([_PICKLE_MARK])):
            return DecodedFrame(metadata={}, pickled=data)
        raise InvalidPayloadError("the body is not a deferred task payload")
    key_id = None
    if header.key_id is not None:
        if keys is not None:
            _check_signature(data, header, keys)
            key_id = header.key_id
    elif require_signature:
        raise PayloadSignatureError("the payload is not signed")
    meta_end = header.metadata_start + header.metadata_length
    if len(data) < meta_end:
        raise InvalidPayloadError("the payload frame is truncated")
    metadata = _metadata(data[header.metadata_start : meta_end])
    body = data[meta_end:]
    compressed = bool(header.flags & FLAG_COMPRESSED)
    pickled = _inflate(body, max_pickle_bytes) if compressed else body
    return DecodedFrame(metadata=metadata, pickled=pickled, key_id=key_id, compressed=compressed)


def _check_signature(data: bytes, header: FrameHeader, keys: Mapping[str, bytes]) -> None:
    secret = keys.get(header.key_id or "")
    if secret is None:
        raise PayloadSignatureError("the payload is signed with an unknown key")
    mac_start = header.metadata_start - _MAC_BYTES
    expected = _mac(secret, data[:mac_start], data[header.metadata_start :])
    if not hmac.compare_digest(expected, data[mac_start : header.metadata_start]):
        raise PayloadSignatureError("the payload signature does not verify")


def _mac(secret: bytes, *parts: bytes) -> bytes:
    digest = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        digest.update(part)
    return digest.digest()


def _metadata(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise InvalidPayloadError("the payload metadata is not JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidPayloadError("the payload metadata is not a JSON object")
    return metadata


def _inflate(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        pickled = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise InvalidPayloadError(f"the compressed payload is corrupt: {exc}") from exc
    if inflater.unconsumed_tail:
        raise InvalidPayloadError(f"the payload inflates beyond {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise InvalidPayloadError("the compressed payload is truncated or has trailing bytes")
    return pickled
