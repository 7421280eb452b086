"""``cloudtasks-deferred inspect`` on any byte string: an answer, never a crash (issue 10,
class 5). Hypothesis feeds the inspect code path (``inspect_input``, then the report with
its disassembly) arbitrary bytes, framed and compressed bytes, task JSON, pickles built
opcode by opcode with forged lengths and memo indices, and real pickles cut and flipped.

Each example must end in a report or an :class:`InspectError`; the report must be
printable text; nothing the pickle names may be imported or called.

The normal run tries 300 examples per property, derandomized so CI runs the same ones.
For a long run: ``INSPECT_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest
tests/unit/test_inspect_fuzz.py``.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import pickletools
import struct
import sys
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.payload.inspection import InspectError, format_inspection, inspect_input
from tests import tasks
from tests.tasks import RECORDER

FUZZ = settings(
    max_examples=int(os.environ.get("INSPECT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

#: Modules a fuzzed pickle may name; none of them may be imported by inspecting it.
NAMED = ["os", "subprocess", "tests.tasks", "no_such_module", "datetime", "uuid", "__main__"]


def inspected(data: bytes) -> None:
    """Inspects ``data`` as the command does, and checks the answer."""
    before = set(sys.modules)
    try:
        found = inspect_input(data)
    except InspectError as exc:
        refused = str(exc)
        assert refused, "a refusal says why"
        return
    report = format_inspection(found, disassemble=True)
    assert report.endswith("\n")
    unprintable = {char for char in report if not char.isprintable() and char != "\n"}
    assert unprintable == set()
    report.encode("utf-8")  # no lone surrogates
    imported = set(sys.modules) - before
    assert not {ref.module for ref in found.references} & imported
    assert RECORDER.named("canary") == []
    if found.problem is None:
        assert found.structure is not None


def wrapped(data: bytes, how: str) -> bytes:
    if how == "frame":
        return encode(data)
    if how == "compressed":
        return encode(data, {"retry": {"task_retry_limit": 1}}, compress=True)
    if how == "task-json":
        body = base64.b64encode(encode(data)).decode()
        return json.dumps({"name": "t", "httpRequest": {"url": "u", "body": body}}).encode()
    return data


HOW = st.sampled_from(["bare", "frame", "compressed", "task-json"])


@FUZZ
@given(data=st.binary(max_size=3000), how=HOW)
def test_arbitrary_bytes(data: bytes, how: str) -> None:
    inspected(wrapped(data, how))


@FUZZ
@given(data=st.binary(max_size=3000), protocol=st.integers(0, 255), how=HOW)
def test_arbitrary_bytes_after_a_pickle_header(data: bytes, protocol: int, how: str) -> None:
    inspected(wrapped(bytes([0x80, protocol]) + data, how))


def length(size: int) -> st.SearchStrategy[int]:
    """A length as stated: -1 for the right one, else forged (up to the field's maximum)."""
    return st.one_of(st.just(-1), st.integers(0, (1 << (8 * size)) - 1))


@st.composite
def argument(draw: st.DrawFn, opcode: pickletools.OpcodeInfo) -> bytes:
    """Bytes for ``opcode``'s argument, well-formed or not."""
    descriptor = opcode.arg
    if descriptor is None:
        return b""
    n = descriptor.n
    if n >= 0:  # a fixed-size field: any bytes
        return draw(st.binary(min_size=n, max_size=n))
    if n == pickletools.UP_TO_NEWLINE:
        if descriptor.name == "stringnl_noescape_pair":
            module = draw(st.sampled_from(NAMED) | st.text(max_size=10))
            name = draw(
                st.sampled_from(["system", "canary", "datetime", "x"]) | st.text(max_size=5)
            )
            return f"{module}\n{name}\n".encode(errors="surrogatepass")
        if descriptor.name in ("decimalnl_short", "decimalnl_long"):
            digits = draw(st.integers(1, 6000))
            return b"9" * digits + (b"L" if descriptor.name.endswith("long") else b"") + b"\n"
        return draw(st.binary(max_size=30)) + b"\n"
    size = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4}.get(n, 8)
    body = draw(st.binary(max_size=200) | st.just(b"\x7f" * draw(st.integers(0, 6000))))
    body = body[:255] if size == 1 else body
    stated = draw(length(size))
    stated = len(body) if stated == -1 else stated
    signed = size == 4 and descriptor.name in ("long4", "string4")
    fmt = {1: "<B", 4: "<i" if signed else "<I", 8: "<Q"}[size]
    stated = min(stated, (1 << 31) - 1) if signed else stated
    return struct.pack(fmt, stated) + body


@st.composite
def opcode_pickles(draw: st.DrawFn) -> bytes:
    """A pickle written opcode by opcode: any opcodes, any arguments, STOP at the end."""
    chosen = draw(st.lists(st.sampled_from(pickletools.opcodes), max_size=40))
    body = b"".join(op.code.encode("latin-1") + draw(argument(op)) for op in chosen)
    head = draw(st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"]))
    return head + body + b"."


@FUZZ
@given(data=opcode_pickles(), how=HOW)
def test_pickles_built_opcode_by_opcode(data: bytes, how: str) -> None:
    inspected(wrapped(data, how))


values = st.recursive(
    st.none()
    | st.integers()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.datetimes()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.builds(tasks.Canary),
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def damaged_calls(draw: st.DrawFn) -> bytes:
    """A deferred call's real pickle, cut short or with bytes changed."""
    call = (tasks.record, tuple(draw(st.lists(values, max_size=3))), {"note": draw(values)})
    data = bytearray(pickle.dumps(call, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL))))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@FUZZ
@given(data=damaged_calls(), how=HOW)
def test_real_pickles_cut_and_flipped(data: bytes, how: str) -> None:
    inspected(wrapped(data, how))


def test_the_cases_issue_10_names() -> None:
    """The shapes that crashed or hung inspect before, each once, deliberately."""
    huge_long = b"\x80\x02\x8b" + struct.pack("<i", 8000) + b"\x7f" * 8000 + b"."
    cases: list[Any] = [
        huge_long,  # an int beyond Python's int-string conversion limit
        b"L" + b"9" * 5000 + b"L\n.",  # the same as text
        b"\x80\x02\x8d" + struct.pack("<Q", 1 << 62) + b".",  # a forged BINUNICODE8 length
        b"\x80\x04j\xff\xff\xff\xff.",  # a memo index never stored
        b"\x80\x02" + b"(" * 50_000 + b"l" * 50_000 + b".",  # deep nesting
        # A call whose callable is a tuple nested 300,000 deep: hashing it (to compare it
        # with invoke_member) would overflow the C stack and kill the process.
        b"\x80\x02N" + b"\x85" * 300_000 + b")}\x87.",
        b"\x80\x02]" * 10 + b"\x93" * 10 + b".",  # garbage
        pickle.dumps((tasks.record, (), {}))[:-5],  # truncated
    ]
    for data in cases:
        for how in ("bare", "frame", "compressed"):
            inspected(wrapped(data, how))
