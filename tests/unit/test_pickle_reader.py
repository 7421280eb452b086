"""Reading pickles symbolically: what they would build, with nothing imported or run."""

from __future__ import annotations

import collections
import os
import pickle
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.reader import Global, Instance, UnreadablePickleError, read
from cloudtasks_deferred.payload.render import render
from tests import tasks
from tests.tasks import RECORDER

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)

# Plain data renders exactly as Python's repr, whatever the protocol.
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.tuples(children, children, children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(value=plain, protocol=st.sampled_from(PROTOCOLS))
def test_plain_data_renders_as_its_repr(value: Any, protocol: int) -> None:
    structure = read(pickle.dumps(value, protocol=protocol))
    assert render(structure.value, limit=100_000) == repr(value)
    assert structure.references == ()


@pytest.mark.parametrize("protocol", range(3, pickle.HIGHEST_PROTOCOL + 1))
def test_bytes_sets_and_shared_references(protocol: int) -> None:
    shared = [1]
    value = [b"\x00raw", bytearray(b"ba"), {1, 2}, frozenset({3}), set(), shared, shared]
    text = render(read(pickle.dumps(value, protocol=protocol)).value)
    if protocol >= 5:
        assert text == "[b'\\x00raw', bytearray(b'ba'), {1, 2}, frozenset({3}), set(), [1], [1]]"
    else:  # sets and bytearrays are calls before protocol 4/5
        assert text.startswith("[b'\\x00raw', builtins.bytearray(b'ba')")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_list_holding_itself_is_elided(protocol: int) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert render(read(pickle.dumps(loop, protocol=protocol)).value) == "[1, …]"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_calls_are_described_not_made(protocol: int) -> None:
    structure = read(pickle.dumps(tasks.Canary(), protocol=protocol))
    assert render(structure.value) == "tests.tasks.canary('unpickled')"
    assert structure.references == (Global("tests.tasks", "canary"),)
    assert RECORDER.named("canary") == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_objects_show_their_class_and_state(protocol: int) -> None:
    structure = read(pickle.dumps(tasks.Counter(3), protocol=protocol))
    text = render(structure.value)
    assert "tests.tasks.Counter" in text
    assert "state {'start': 3}" in text
    assert Global("tests.tasks", "Counter") in structure.references


def test_new_objects_and_keyword_constructors() -> None:
    value = read(serialize(tasks.Counter(20).add, 2)).value
    assert render(value[1][0]) == "<tests.tasks.Counter object, state {'start': 20}>"
    ordered = read(pickle.dumps(collections.OrderedDict(a=1), protocol=5)).value
    assert render(ordered) == "<collections.OrderedDict(), items (('a', 1),)>"
    assert isinstance(ordered, Instance)


def test_stdlib_objects_are_calls_of_their_reducers() -> None:
    ordered = collections.Counter("aab")
    text = render(read(pickle.dumps(ordered, protocol=5)).value)
    assert text == "collections.Counter({'a': 2, 'b': 1})"


def test_a_pickle_naming_os_system_is_read_not_run(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    structure = read(serialize(os.system, f"touch {marker}"))
    assert render(structure.value) == f"({os.system.__module__}.system, ('touch {marker}',), {{}})"
    assert not marker.exists()


def test_a_module_that_does_not_exist_is_named_not_imported() -> None:
    pickled = serialize(tasks.record, "x").replace(b"\x8c\x0btests.tasks", b"\x8c\x0bno_such_mod")
    structure = read(pickled)
    assert structure.references == (Global("no_such_mod", "record"),)
    assert "no_such_mod" not in sys.modules
    with pytest.raises(ModuleNotFoundError):  # what unpickling would have done
        pickle.loads(pickled)


def test_long_values_are_shortened() -> None:
    text = render(read(pickle.dumps(["x" * 1000, b"y" * 1000], protocol=5)).value)
    assert "…[1000 chars]" in text
    assert "…[1000 bytes]" in text
    assert len(render(read(pickle.dumps(list(range(5000)))).value, limit=50)) == 50


def test_a_value_shared_many_times_over_is_shown_within_the_limit() -> None:
    level: Any = [0]
    for _ in range(6):
        level = [level] * 1000  # the pickle stays small: 1000 memo references per level
    pickled = pickle.dumps(level, protocol=5)
    assert len(pickled) < 50_000
    text = render(read(pickled).value)  # 10**18 values if each were shown
    assert len(text) <= 2000
    assert text.startswith("[[[[[[[0], [0]")


def test_deep_nesting_is_elided() -> None:
    value: Any = 0
    for _ in range(40):
        value = [value]
    assert render(read(pickle.dumps(value)).value).count("[") < 20


def test_protocol_is_reported() -> None:
    assert read(pickle.dumps(1, protocol=2)).protocol == 2
    assert read(pickle.dumps(1, protocol=0)).protocol == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "STOP"),
        (b"\x80\x05", "STOP"),
        (b"\x80\x05NN.", "malformed stack"),
        (b"\x80\x05\x93.", "underflow"),
        (b"\x80\x05h\x05.", "memo entry 5"),
        (b"\x80\x05NN\x93.", "two strings"),
        (b"\x80\x05\xff.", "malformed pickle"),
        (b"\x80\x05Ns.", "malformed pickle"),
        (b"\x80\x05K\x01K\x02a.", "cannot append"),
    ],
)
def test_malformed_pickles_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(UnreadablePickleError, match=message):
        read(data)
