"""The checked unpickler's refusals to fill in what a pickle did not create (``checked.py``).

``test_unpickling.py`` shows that every fill-in opcode is refused on shared data;
these pin what the refusal says: the opcode by its name in ``pickletools`` (what a
reader of the log looks up), and the target by name, or by kind when it has no
name, never by its contents.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cloudtasks_deferred.payload.allowlist import Allowlist, DisallowedReferenceError
from cloudtasks_deferred.payload.checked import CheckedUnpickler
from tests.security.opcodes import pickle_of, ref, text
from tests.unit import allowlist_targets

TARGETS = "tests.unit.allowlist_targets"
ALLOWED = Allowlist([TARGETS])


@pytest.fixture
def shared_data() -> Iterator[None]:
    """Module-level containers of the allowed module, restored whatever a test did."""
    allowlist_targets.NAMES[:] = ["default"]
    allowlist_targets.TAGS.clear()
    allowlist_targets.TAGS.add("test")
    yield
    allowlist_targets.NAMES[:] = ["default"]
    allowlist_targets.TAGS.clear()
    allowlist_targets.TAGS.add("test")


@pytest.mark.parametrize(
    ("target", "opcodes", "message"),
    [
        (
            "NAMES",
            text("owned") + b"a",
            "the payload's APPEND opcode would modify a list object, which it did not create",
        ),
        (
            "NAMES",
            b"(" + text("owned") + b"e",
            "the payload's APPENDS opcode would modify a list object, which it did not create",
        ),
        (
            "TAGS",
            b"(" + text("owned") + b"\x90",
            "the payload's ADDITEMS opcode would modify a set object, which it did not create",
        ),
    ],
    ids=["APPEND", "APPENDS", "ADDITEMS"],
)
def test_a_refused_fill_in_names_its_opcode_and_the_kind_of_target(
    target: str, opcodes: bytes, message: str, shared_data: None
) -> None:
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.loads(pickle_of(ref(TARGETS, target), opcodes))
    assert str(refused.value) == message
    assert allowlist_targets.NAMES == ["default"]
    assert sorted(allowlist_targets.TAGS) == ["test"]


def test_an_instance_is_named_by_its_kind_not_by_its_module_alone() -> None:
    # An instance of a class has a __module__ (its class's) but no __qualname__:
    # the refusal names its kind, "a Job object", not a half name.
    forged = pickle_of(
        ref(TARGETS, "SHARED"),
        b"N}" + text("name") + text("owned") + b"s\x86b",  # BUILD (None, {"name": ...})
    )
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.loads(forged)
    assert str(refused.value) == (
        "the payload's BUILD opcode would modify a Job object, which it did not create"
    )
    assert allowlist_targets.SHARED.name == "shared"


def test_a_class_is_named_by_its_module_and_qualified_name() -> None:
    forged = pickle_of(
        ref(TARGETS, "Job"),
        b"N}" + text("run") + text("owned") + b"s\x86b",
    )
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.loads(forged)
    assert str(refused.value) == (
        f"the payload's BUILD opcode would modify {TARGETS}.Job, which it did not create"
    )


def test_what_a_reference_found_stays_alive_so_no_new_object_takes_its_id() -> None:
    # A lookup that answers with a fresh list (as a classmethod looked up on a class
    # answers with a fresh bound method). Once the pickle drops it, a list the pickle
    # then makes could reuse its memory, and so its id: it would be taken for the shared
    # object and refused, unless the unpickler holds on to what it found.
    def resolve(find: Any, module: str, name: str) -> list[str]:
        return []

    pickled = pickle_of(ref(TARGETS, "fresh"), b"0]", text("mine"), b"a")
    unpickler = CheckedUnpickler(pickled, resolve=resolve, refuse=DisallowedReferenceError)
    assert unpickler.load() == ["mine"]
    assert list(unpickler.found.values()) == [[]]


@pytest.mark.parametrize(
    ("opcodes", "opcode"),
    [
        (text("name") + text("owned") + b"s", "SETITEM"),
        (b"(" + text("name") + text("owned") + b"u", "SETITEMS"),
    ],
    ids=["SETITEM", "SETITEMS"],
)
def test_a_refused_dict_fill_in_names_its_opcode(opcodes: bytes, opcode: str) -> None:
    # The allowed module shares no dict: a lookup answering with one stands in for it.
    shared = {"name": "default"}

    def resolve(find: Any, module: str, name: str) -> dict[str, str]:
        return shared

    pickled = pickle_of(ref(TARGETS, "shared"), opcodes)
    unpickler = CheckedUnpickler(pickled, resolve=resolve, refuse=DisallowedReferenceError)
    with pytest.raises(DisallowedReferenceError) as refused:
        unpickler.load()
    assert str(refused.value) == (
        f"the payload's {opcode} opcode would modify a dict object, which it did not create"
    )
    assert shared == {"name": "default"}
