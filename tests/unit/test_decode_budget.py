"""What decoding a payload may cost: opcodes and memory, bounded by the body's size.

Each hostile pickle here allocated hundreds of megabytes, or ran for seconds, before
the budget: the tests measure the peak memory with tracemalloc and count the opcodes
the budget allows, never the time.
"""

from __future__ import annotations

import pickle
import tracemalloc
import zlib
from typing import Any

import pytest

from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.allowlist import Allowlist
from cloudtasks_deferred.payload.budget import MAX_MARK_DEPTH, DecodeBudget, DecodeLimitError
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.checked import CheckedUnpickler
from cloudtasks_deferred.payload.frame import InvalidPayloadError, encode
from cloudtasks_deferred.payload.unpickler import BoundedUnpickler
from tests.security.opcodes import ALLOWED, call, integer, ref, task, text
from tests.tasks import RECORDER, record

MiB = 1024 * 1024
SMALL = DecodeBudget(opcodes=100_000, memory=4 * MiB)
WITNESS = ref(ALLOWED, "witness")


def peak_of(action: Any) -> int:
    """The peak traced memory while ``action()`` runs, in bytes."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def load(pickled: bytes, budget: DecodeBudget = SMALL) -> Any:
    return Allowlist([ALLOWED]).loads(pickled, budget=budget)


def test_the_default_budget_grows_with_the_body() -> None:
    assert DecodeBudget.for_body(100) == DecodeBudget(opcodes=1_000_000, memory=16 * MiB)
    assert DecodeBudget.for_body(1_000_000) == DecodeBudget(opcodes=4_000_000, memory=128_000_000)


@pytest.mark.parametrize(
    ("pickled", "reason"),
    [
        (task(WITNESS, call(ref("builtins", "bytearray"), integer(10**8))), "sizes a bytes object"),
        (task(WITNESS, call(ref("builtins", "bytes"), integer(10**8))), "sizes a bytes object"),
        (
            task(
                WITNESS,
                call(ref("builtins", "list"), call(ref("builtins", "range"), integer(10**7))),
            ),
            "consumes a range",
        ),
        (
            task(
                WITNESS,
                ref("builtins", "tuple") + call(ref("builtins", "range"), integer(10**7)) + b"R",
            ),
            "arguments that are not a tuple",
        ),
        (
            task(
                WITNESS,
                call(ref("collections", "Counter"), call(ref("builtins", "range"), integer(10**7))),
            ),
            "consumes a range",
        ),
        (b"\x80\x04" + b"\x8f" * 200_000 + b".", "creates more than 4194304 bytes"),
        (b"\x80\x04" + b"]\x94" * 100_000 + b".", "creates more than 4194304 bytes"),
        (
            b"\x80\x04" + b"(" * (MAX_MARK_DEPTH + 1) + b".",
            f"nests more than {MAX_MARK_DEPTH} marks",
        ),
    ],
    ids=[
        "bytearray of a forged size",
        "bytes of a forged size",
        "list of a range",
        "call unpacking a range",
        "counter of a range",
        "empty sets",
        "empty lists, memoized",
        "nested marks",
    ],
)
def test_a_hostile_pickle_stops_within_its_memory_budget(pickled: bytes, reason: str) -> None:
    def refused() -> None:
        with pytest.raises(DecodeLimitError, match=reason):
            load(pickled)

    # The budget, the pickle itself, and the unpickler's own small change.
    assert peak_of(refused) < SMALL.memory + len(pickled) + 2 * MiB
    assert RECORDER.calls == []


@pytest.mark.parametrize(
    ("factory", "argument"),
    [("bytearray", 10**8), ("list", 10**7)],
    ids=["bytearray", "list of a range"],
)
def test_a_call_that_would_allocate_is_refused_before_it_allocates(
    factory: str, argument: int
) -> None:
    inner = integer(argument)
    if factory == "list":
        inner = call(ref("builtins", "range"), inner)

    def refused() -> None:
        with pytest.raises(DecodeLimitError):
            load(task(WITNESS, call(ref("builtins", factory), inner)))

    assert peak_of(refused) < 2 * MiB  # nothing of the claimed size was ever allocated


def test_the_opcode_budget_stops_a_run_of_no_ops() -> None:
    no_ops = b"\x80\x04" + b"N0" * 60_000 + b"N."
    budget = DecodeBudget(opcodes=100_000, memory=64 * MiB)
    with pytest.raises(DecodeLimitError, match="runs more than 100000 opcodes"):
        BoundedUnpickler(no_ops, budget=budget).load()
    assert BoundedUnpickler(no_ops[: 2 + 2 * 40_000] + b"N.", budget=budget).load() is None


# 128 opcodes (127 NONE, then STOP), each NONE charged its stack slot (8 bytes): the
# unpickler counts opcodes and adds their fixed costs every 64 opcodes, so a run of
# twice 64 is counted and charged in full.
NONES = b"N" * 127 + b"."


def test_the_opcode_budget_admits_exactly_the_opcodes_it_counts() -> None:
    exact = DecodeBudget(opcodes=128, memory=MiB)
    assert BoundedUnpickler(NONES, budget=exact).load() is None
    with pytest.raises(DecodeLimitError) as refused:
        BoundedUnpickler(NONES, budget=DecodeBudget(opcodes=127, memory=MiB)).load()
    assert str(refused.value) == "the pickle runs more than 127 opcodes"


def test_the_fixed_costs_of_opcodes_are_charged_exactly() -> None:
    assert BoundedUnpickler(NONES, budget=DecodeBudget(opcodes=128, memory=1016)).load() is None
    with pytest.raises(DecodeLimitError) as refused:
        BoundedUnpickler(NONES, budget=DecodeBudget(opcodes=128, memory=1015)).load()
    assert str(refused.value) == "the pickle creates more than 1015 bytes of objects"


def test_a_compressed_run_of_no_ops_gets_the_budget_of_its_body(client: Client) -> None:
    # 16 million opcodes deflate to ~30 KB: the body's budget is a million opcodes.
    body = encode(b"\x80\x04" + b"N0" * 8_000_000 + b"N.", compress=True)
    with pytest.raises(InvalidPayloadError, match="runs more than 1000000 opcodes"):
        client.open_payload(body)


def test_a_forged_memo_index_costs_nothing() -> None:
    forged = b"\x80\x04N" + b"r\xff\xff\xff\xff0" + task(WITNESS, text("memo"))[2:]
    loaded: list[Any] = []
    assert peak_of(lambda: loaded.append(load(forged))) < MiB
    assert loaded[0][1] == ("memo",)


def test_a_checked_unpickler_keeps_the_budget_of_its_base() -> None:
    unpickler = CheckedUnpickler(
        b"\x80\x04" + b"\x8f" * 200_000 + b".",
        resolve=lambda find, module, name: find(module, name),
        refuse=ValueError,
        budget=SMALL,
    )
    with pytest.raises(DecodeLimitError):
        unpickler.load()


@pytest.fixture
def client() -> Client:
    settings = Settings(
        project="p",
        location="us-central1",
        base_url="https://tasks.test",
        allowed_modules=(ALLOWED, "tests.tasks"),
        ndb=False,
    )
    return Client(settings, transport=InMemoryTransport())


def records(count: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"]} for i in range(count)
    ]


def test_real_records_fit_the_budget_of_their_compressed_body(client: Client) -> None:
    # Records compress about sevenfold and take about 90 bytes of objects per byte of
    # compressed body: the default budget allows 128.
    pickled = serialize(record, records(20_000))
    body = encode(pickled, compress=True)
    assert len(body) < len(pickled) / 5
    opened = client.open_payload(body)
    assert opened.args[0] == records(20_000)


def test_an_ordinary_pickle_is_read_exactly_as_pickle_reads_it() -> None:
    data = {"records": records(50), "blob": b"\x00\xff" * 100, "when": 1.5, "set": {1, 2}}
    pickled = pickle.dumps(data, protocol=5)
    assert BoundedUnpickler(pickled).load() == pickle.loads(pickled)
    assert zlib.crc32(pickled)  # the pickle is not empty
