"""The bounded unpickler opcode by opcode (``payload/unpickler.py``), without an allowlist.

Each test hand-writes the opcodes a forged or a Python 2 payload holds and checks
what one rule of :class:`BoundedUnpickler` does with them: the exact charge of a
container (a budget one byte short refuses it, the exact budget admits it), the
three ways ``INST``/``OBJ`` build an old-style instance, ``NEWOBJ_EX``'s keyword
arguments, and the words of each refusal.
"""

from __future__ import annotations

import copyreg
import dbm
import io
import pickle
import pickletools
import struct
import sys
from typing import Any, ClassVar

import pytest

from cloudtasks_deferred.payload.budget import DecodeBudget, DecodeLimitError
from cloudtasks_deferred.payload.unpickler import BoundedUnpickler

HERE = __name__


def load(pickled: bytes, budget: DecodeBudget | None = None) -> Any:
    return BoundedUnpickler(pickled, budget=budget).load()


def budget(memory: int) -> DecodeBudget:
    """A budget of ``memory`` bytes; fewer than 64 opcodes are never charged their fixed
    cost (the unpickler adds it every 64 opcodes), so only per-item charges count."""
    return DecodeBudget(opcodes=10_000, memory=memory)


def ints(*values: int) -> bytes:
    """BININT1 of each value."""
    return b"".join(b"K" + bytes([value]) for value in values)


# --- what old-style instances (INST, OBJ) become ----------------------------------------


class Point:
    """Built with arguments: ``Point(1, 2)``."""

    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x, self.y = x, y
        self.initialised = True


class Legacy:
    """Without arguments and without ``__getinitargs__``: built without ``__init__``."""

    def __init__(self) -> None:
        self.initialised = True


class WithInitArgs:
    """Declares ``__getinitargs__``: Python 2 called ``__init__`` for it, and so do we."""

    def __init__(self) -> None:
        self.initialised = True

    def __getinitargs__(self) -> tuple[()]:
        return ()


def made_by_a_function() -> str:
    return "made by a function"


def inst(name: str, args: bytes = b"") -> bytes:
    """``INST`` of ``HERE.name`` with ``args`` (protocol 0)."""
    return b"(" + args + b"i" + HERE.encode() + b"\n" + name.encode() + b"\n."


def test_inst_with_arguments_calls_the_class_with_them() -> None:
    point = load(inst("Point", ints(1, 2)))
    assert isinstance(point, Point)
    assert (point.x, point.y, point.initialised) == (1, 2, True)


def test_obj_with_arguments_calls_the_class_with_them() -> None:
    pickled = b"\x80\x01(c" + HERE.encode() + b"\nPoint\n" + ints(3, 4) + b"o."
    point = load(pickled)
    assert (point.x, point.y, point.initialised) == (3, 4, True)


def test_inst_without_arguments_skips_init_as_python_2_did() -> None:
    legacy = load(inst("Legacy"))
    assert type(legacy) is Legacy
    assert "initialised" not in vars(legacy)


def test_inst_of_a_class_with_getinitargs_calls_init() -> None:
    made = load(inst("WithInitArgs"))
    assert type(made) is WithInitArgs
    assert made.initialised is True


def test_inst_of_a_function_without_arguments_calls_it() -> None:
    assert load(inst("made_by_a_function")) == "made by a function"


def test_inst_arguments_are_checked_like_any_call() -> None:
    # bytes(10**8) would allocate 100 MB from a few bytes of pickle.
    pickled = b"(I100000000\nibuiltins\nbytes\n."
    with pytest.raises(DecodeLimitError) as refused:
        load(pickled)
    assert str(refused.value) == "a call in the pickle sizes a bytes object"


# --- NEWOBJ_EX (protocol 4 keyword arguments) ------------------------------------------


class Keyworded:
    """Made by ``__new__`` with keyword arguments: pickled with ``NEWOBJ_EX`` and no
    state, so what it holds comes from ``__new__``'s arguments alone."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Keyworded:
        made = super().__new__(cls)
        made.args, made.kwargs = args, kwargs
        return made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return copyreg.__newobj_ex__, (type(self), self.args, self.kwargs)  # type: ignore[attr-defined]


def test_newobj_ex_passes_arguments_and_keyword_arguments_to_new() -> None:
    pickled = pickle.dumps(Keyworded(1, "two", three=3), protocol=4)
    opcodes = [op.name for op, _, _ in pickletools.genops(pickled)]
    assert "NEWOBJ_EX" in opcodes
    assert "BUILD" not in opcodes
    made = load(pickled)
    assert type(made) is Keyworded
    assert (made.args, made.kwargs) == ((1, "two"), {"three": 3})


def newobj_ex(args: bytes, kwargs: bytes) -> bytes:
    """``NEWOBJ_EX`` of Keyworded with hand-written argument opcodes."""
    cls = b"\x8c" + bytes([len(HERE)]) + HERE.encode() + b"\x8c\x09Keyworded\x93"
    return b"\x80\x04" + cls + args + kwargs + b"\x92."


def test_newobj_ex_takes_keyword_arguments_only_as_a_dict() -> None:
    with pytest.raises(DecodeLimitError) as refused:
        load(newobj_ex(b")", b"]"))  # a list where the dict belongs
    assert str(refused.value) == "a call in the pickle takes arguments that are not a tuple"


def test_newobj_ex_takes_arguments_only_as_a_tuple() -> None:
    with pytest.raises(DecodeLimitError) as refused:
        load(newobj_ex(b"]", b"}"))
    assert str(refused.value) == "a call in the pickle takes arguments that are not a tuple"


def test_newobj_ex_refuses_a_range_among_the_keyword_arguments() -> None:
    lazy_range = b"\x8c\x08builtins\x8c\x05range\x93J\x00\xe1\xf5\x05\x85R"  # range(10**8)
    kwargs = b"}\x8c\x01r" + lazy_range + b"s"
    with pytest.raises(DecodeLimitError) as refused:
        load(newobj_ex(b")", kwargs))
    assert str(refused.value) == "a call in the pickle consumes a range"


def test_newobj_ex_arguments_are_checked_like_any_call() -> None:
    # bytes.__new__(bytes, 10): a size, not contents (bytes(10**9) from a few bytes).
    pickled = b"\x80\x04\x8c\x08builtins\x8c\x05bytes\x93K\x0a\x85}\x92."
    with pytest.raises(DecodeLimitError) as refused:
        load(pickled)
    assert str(refused.value) == "a call in the pickle sizes a bytes object"


def test_newobj_ex_charges_the_object_it_makes() -> None:
    pickled = pickle.dumps(Keyworded(three=3), protocol=4)
    with pytest.raises(DecodeLimitError, match="creates more than 1 bytes"):
        load(pickled, budget(1))


# --- what containers are charged: 48 bytes per item -------------------------------------

FROZENSET_OF_3 = b"\x80\x04(" + ints(1, 2, 3) + b"\x91."
ADDITEMS_3 = b"\x80\x04\x8f(" + ints(1, 2, 3) + b"\x90."
DICT_OF_3 = b"(" + ints(1, 2, 3, 4, 5, 6) + b"d."
SETITEMS_3 = b"\x80\x02}(" + ints(1, 2, 3, 4, 5, 6) + b"u."


@pytest.mark.parametrize(
    ("pickled", "value"),
    [
        (FROZENSET_OF_3, frozenset({1, 2, 3})),
        (ADDITEMS_3, {1, 2, 3}),
        (DICT_OF_3, {1: 2, 3: 4, 5: 6}),
        (SETITEMS_3, {1: 2, 3: 4, 5: 6}),
    ],
    ids=["FROZENSET", "ADDITEMS", "DICT", "SETITEMS"],
)
def test_three_items_cost_exactly_144_bytes(pickled: bytes, value: Any) -> None:
    assert load(pickled, budget(144)) == value
    with pytest.raises(DecodeLimitError) as refused:
        load(pickled, budget(143))
    assert str(refused.value) == "the pickle creates more than 143 bytes of objects"


@pytest.mark.parametrize(
    "pickled",
    [b"(" + ints(1, 2, 3, 4, 5, 6, 7) + b"d.", b"\x80\x02}(" + ints(1, 2, 3, 4, 5, 6, 7) + b"u."],
    ids=["DICT", "SETITEMS"],
)
def test_a_dict_is_charged_per_complete_pair(pickled: bytes) -> None:
    # A key and no value: the 3 pairs are charged (144 bytes), the lone key is not
    # (not half an item either), and the base unpickler then finds the pair incomplete.
    with pytest.raises(IndexError):
        load(pickled, budget(144))


# --- malformed pickles: what each refusal says ------------------------------------------


def test_an_unknown_opcode_is_refused_by_name() -> None:
    with pytest.raises(pickle.UnpicklingError) as refused:
        load(b"\x80\x04\xff.")
    assert str(refused.value) == "the pickle holds an unknown opcode"


def test_a_text_opcode_without_its_newline_is_truncated() -> None:
    with pytest.raises(pickle.UnpicklingError) as refused:
        load(b"I12")
    assert str(refused.value) == "pickle data was truncated"


@pytest.mark.parametrize("claimed", [2**63 + 5, 2**64 - 1, 100])
def test_a_bytearray8_longer_than_the_pickle_is_refused(claimed: int) -> None:
    # The size is unsigned: 2**64 - 1 is not -1 (which would read the rest as the value).
    pickled = b"\x80\x05\x96" + struct.pack("<Q", claimed) + b"abc."
    with pytest.raises(pickle.UnpicklingError) as refused:
        load(pickled)
    assert str(refused.value) == "BYTEARRAY8 is longer than the pickle"


def test_an_unregistered_extension_code_is_refused_naming_it() -> None:
    code = 0x7FFF_FF01
    assert code not in copyreg._inverted_registry  # type: ignore[attr-defined]
    with pytest.raises(pickle.UnpicklingError) as refused:
        load(b"\x80\x02\x84" + struct.pack("<i", code) + b".")
    assert str(refused.value) == f"unregistered extension code {code}"


def test_python_2_names_are_translated_without_an_allowlist() -> None:
    # __builtin__.xrange is range, UserDict.UserDict is collections.UserDict.
    assert load(b"c__builtin__\nxrange\n.") is range
    assert load(b"c__builtin__\nunicode\n.") is str
    # Exactly once: whichdb.whichdb is dbm.whichdb, and the base unpickler's fix_imports
    # would translate dbm again, to dbm.ndbm.
    assert load(b"cwhichdb\nwhichdb\n.") is dbm.whichdb


# --- the opcode table a subclass dispatches through -------------------------------------


def test_a_subclass_dispatches_through_a_table_built_from_its_own_dispatch() -> None:
    # CheckedUnpickler's checked opcodes reach it only this way: the table is built
    # when the subclass is defined, from the subclass's dispatch.
    seen: list[str] = []

    class Recording(BoundedUnpickler):
        dispatch: ClassVar[dict[int, Any]] = dict(BoundedUnpickler.dispatch)

        def load_none(self) -> None:
            seen.append("NONE")
            self.append(None)

        dispatch[pickle.NONE[0]] = load_none

    assert Recording(b"N.").load() is None
    assert seen == ["NONE"]
    assert Recording(b"K\x07.").load() == 7  # the base's handlers stay in its table
    with pytest.raises(pickle.UnpicklingError) as refused:
        Recording(b"\xff.").load()
    assert str(refused.value) == "the pickle holds an unknown opcode"


def least_memory(pickled: bytes) -> int:
    """The smallest memory budget that loads ``pickled``."""
    return next(m for m in range(4096) if _loads_within(pickled, m))


def _loads_within(pickled: bytes, memory: int) -> bool:
    try:
        load(pickled, budget(memory))
    except DecodeLimitError:
        return False
    return True


@pytest.mark.parametrize(
    ("below", "above"), [(b"", b""), (b"]", b"a")], ids=["alone", "above a list"]
)
def test_build_is_charged_per_item_of_its_state(below: bytes, above: bytes) -> None:
    # The same old-style instance and state dict, with and without the BUILD that sets
    # the three attributes: BUILD costs exactly three items, whatever lies below the
    # instance on the stack (here, the list it is then appended to).
    state = b"}(" + b"".join(b"X\x01\x00\x00\x00" + n + b"K\x01" for n in (b"a", b"b", b"c")) + b"u"
    without_build = below + inst("Legacy")[:-1] + state + b"0" + above + b"."
    with_build = below + inst("Legacy")[:-1] + state + b"b" + above + b"."
    built = load(with_build)
    if above:
        (built,) = built
    assert (built.a, built.b, built.c) == (1, 1, 1)
    assert least_memory(with_build) - least_memory(without_build) == 144


# --- calls: NEWOBJ's arguments, and the charge for what a call returns ------------------


def test_newobj_passes_its_arguments_to_new() -> None:
    pickled = b"\x80\x02c" + HERE.encode() + b"\nKeyworded\nK\x01K\x02\x86\x81."
    made = load(pickled)
    assert type(made) is Keyworded
    assert (made.args, made.kwargs) == ((1, 2), {})


def test_newobj_arguments_are_checked_like_any_call() -> None:
    # bytes.__new__(bytes, 10): a size, not contents (bytes(10**9) from a few bytes).
    pickled = b"\x80\x02cbuiltins\nbytes\nK\x0a\x85\x81."
    with pytest.raises(DecodeLimitError) as refused:
        load(pickled)
    assert str(refused.value) == "a call in the pickle sizes a bytes object"


TEXT_200 = b"X\xc8\x00\x00\x00" + b"x" * 200  # BINUNICODE of 200 characters
BYTES_200 = b"C\xc8" + b"x" * 200  # SHORT_BINBYTES of 200 bytes


@pytest.mark.parametrize(
    ("pickled", "value"),
    [
        (b"\x80\x02cbuiltins\nbytearray\n" + BYTES_200 + b"\x85R.", bytearray(b"x" * 200)),
        (b"\x80\x02cbuiltins\nstr\n" + TEXT_200 + b"\x85\x81.", "x" * 200),
    ],
    ids=["REDUCE", "NEWOBJ"],
)
def test_a_call_is_charged_exactly_the_size_of_what_it_returns(pickled: bytes, value: Any) -> None:
    size = sys.getsizeof(value)
    assert size > 200
    assert load(pickled, budget(size)) == value
    with pytest.raises(DecodeLimitError) as refused:
        load(pickled, budget(size - 1))
    assert str(refused.value) == f"the pickle creates more than {size - 1} bytes of objects"


# --- malformed pickles fail as in the standard unpickler --------------------------------


@pytest.mark.parametrize(
    "pickled",
    [b"b.", b"N\x81.", b"u.", b"s.", b"d.", b"\x90.", b"\x91."],
    ids=["BUILD", "NEWOBJ", "SETITEMS", "SETITEM", "DICT", "ADDITEMS", "FROZENSET"],
)
def test_an_opcode_short_of_its_operands_fails_as_in_the_standard_unpickler(
    pickled: bytes,
) -> None:
    # The checks and charges added to an opcode run first, on a stack that may be
    # short: they leave the failure to the opcode itself, as pickle's own code has it
    # (the stack it pops from is empty).
    with pytest.raises(IndexError) as standard:
        pickle._Unpickler(io.BytesIO(pickled)).load()
    with pytest.raises(IndexError) as ours:
        load(pickled)
    assert str(ours.value) == str(standard.value) == "pop from empty list"
