"""Each rule of the unpickling allowlist on its own: a test that fails when only it is gone.

Most attacks on the allowlist are refused by several rules at once (``os.system``
through an allowed module is both a module object and a non-class looked into), so
a test of the attack stays green when one rule is deleted. Each test here names an
object of :mod:`tests.unit.allowlist_targets` that every other rule lets through:
it fails when the rule it is named after is removed, and only then. Lists of
refused names are spelled out literally: a test that builds its cases from the set
under test loses a case whenever the set loses an entry.
"""

from __future__ import annotations

import collections
import dbm
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtasks_deferred.payload.allowlist import Allowlist, DisallowedReferenceError, check_entries
from tests.security.opcodes import pickle_of, ref, text
from tests.unit import allowlist_targets
from tests.unit.allowlist_targets import (
    SHARED,
    Job,
    never_filled_in,
)

TARGETS = "tests.unit.allowlist_targets"
ALLOWED = Allowlist([TARGETS])


def refused_reference(name: str) -> str:
    """The refusal's stable phrase for ``TARGETS.name``."""
    return f"references '{TARGETS}.{name}', which"


# --- rules on what a reference may name -------------------------------------------------


def test_module_object_rule_refuses_a_module_reached_through_an_allowed_module() -> None:
    # allowlist_targets imports subprocess: nothing but the module-object check stops
    # "allowlist_targets.subprocess" (a module has no __module__ and is not callable).
    with pytest.raises(DisallowedReferenceError, match=refused_reference("subprocess")):
        ALLOWED.loads(pickle_of(ref(TARGETS, "subprocess")))


def test_module_object_rule_refuses_a_module_named_by_an_exact_entry() -> None:
    allowlist = Allowlist([f"{TARGETS}.subprocess"])
    with pytest.raises(DisallowedReferenceError, match=refused_reference("subprocess")):
        allowlist.loads(pickle_of(ref(TARGETS, "subprocess")))


def test_only_classes_are_looked_into_so_a_shared_instances_method_is_refused() -> None:
    # SHARED is a Job of an allowed module and SHARED.run is defined there too: only
    # "only classes are looked into" refuses the bound method of the shared instance.
    assert SHARED.run.__module__ == TARGETS
    with pytest.raises(DisallowedReferenceError, match=refused_reference("SHARED.run")):
        ALLOWED.loads(pickle_of(ref(TARGETS, "SHARED.run")))


@pytest.mark.parametrize("name", ["Job.__init__", "__builtins__", "__name__"])
def test_dunder_rule_refuses_a_name_part_starting_with_two_underscores(name: str) -> None:
    # Job.__init__ is a function defined in the allowed module, reached through a
    # class; __builtins__ (a dict) and __name__ (a str) are plain data without a
    # __module__: every other rule lets each of them through.
    with pytest.raises(DisallowedReferenceError, match=refused_reference(name)):
        ALLOWED.loads(pickle_of(ref(TARGETS, name)))


def test_defining_module_rule_refuses_a_nested_name_defined_elsewhere() -> None:
    # Job.shell = subprocess.run: a class attribute of an allowed class, defined in
    # subprocess. Only the defining-module check of the nested part refuses it.
    assert Job.shell is subprocess.run
    with pytest.raises(DisallowedReferenceError, match=refused_reference("Job.shell")):
        ALLOWED.loads(pickle_of(ref(TARGETS, "Job.shell")))


def test_defining_module_rule_refuses_a_top_level_name_defined_elsewhere() -> None:
    with pytest.raises(DisallowedReferenceError, match=refused_reference("run_elsewhere")):
        ALLOWED.loads(pickle_of(ref(TARGETS, "run_elsewhere")))


def test_defining_module_rule_admits_a_re_exported_name_listed_exactly() -> None:
    # uuid.UUID is defined in uuid, not in the allowed module, but is listed exactly
    # (a safe global): the same object is allowed under either name.
    assert ALLOWED.loads(pickle_of(ref(TARGETS, "UUID"))) is uuid.UUID


def test_the_allowed_counterparts_load() -> None:
    # The rules above refuse only what they target: the same paths to this module's
    # own code load (so each refusal above is the rule's, not a missing name).
    assert ALLOWED.loads(pickle_of(ref(TARGETS, "Job"))) is Job
    assert ALLOWED.loads(pickle_of(ref(TARGETS, "Job.run"))) is Job.run
    assert ALLOWED.loads(pickle_of(ref(TARGETS, "SHARED"))) is SHARED
    assert ALLOWED.loads(pickle_of(ref(TARGETS, "never_filled_in"))) is never_filled_in


# --- entries that are never allowed, each listed literally --------------------------------

DANGEROUS_BUILTINS_LISTED = [
    "builtins.__import__",
    "builtins.breakpoint",
    "builtins.compile",
    "builtins.delattr",
    "builtins.eval",
    "builtins.exec",
    "builtins.getattr",
    "builtins.globals",
    "builtins.input",
    "builtins.locals",
    "builtins.open",
    "builtins.setattr",
    "builtins.type",
    "builtins.vars",
]


@pytest.mark.parametrize("entry", DANGEROUS_BUILTINS_LISTED)
def test_each_dangerous_builtin_is_refused_as_an_entry(entry: str) -> None:
    # "builtins.<name>" passes every other check (exact built-ins are allowed): only
    # its place in DANGEROUS_BUILTINS refuses it.
    with pytest.raises(ValueError, match="would let a payload reach arbitrary code"):
        check_entries([entry])


REFUSED_MODULES_LISTED = [
    "builtins",
    "cloudtasks_deferred",
    "code",
    "codeop",
    "ctypes",
    "importlib",
    "io",
    "marshal",
    "multiprocessing",
    "nt",
    "operator",
    "_operator",
    "os",
    "pickle",
    "_pickle",
    "posix",
    "pty",
    "runpy",
    "shutil",
    "socket",
    "subprocess",
    "sys",
    "types",
]


@pytest.mark.parametrize("module", REFUSED_MODULES_LISTED)
def test_each_refused_module_is_refused_as_an_entry_wholly_or_in_part(module: str) -> None:
    for entry in (module, f"{module}.anything"):
        if entry == "builtins.anything":
            continue  # an exact built-in: allowed unless dangerous (test above)
        with pytest.raises(ValueError, match="would let a payload reach arbitrary code"):
            check_entries([entry])


@pytest.mark.parametrize("entry", ["os", "builtins.eval", "my app", "builtins.str.join"])
def test_an_allowlist_validates_its_entries_itself(entry: str) -> None:
    # Not only Settings: an Allowlist built in code refuses what the settings refuse.
    with pytest.raises(ValueError, match=r"arbitrary code|not a dotted|exact name"):
        Allowlist([entry])


# --- objects a pickle may never fill in, one per type -------------------------------------

NEVER_FILLED_IN_KINDS = [
    "module",
    "function",
    "builtin function",
    "method",
    "method-wrapper",
    "wrapper descriptor",
    "method descriptor",
    "classmethod descriptor",
    "getset descriptor",
    "member descriptor",
    "code",
    "staticmethod",
    "classmethod",
    "property",
]
ATTRIBUTE = "set_by_the_payload"


@pytest.fixture
def restore_never_filled_in() -> Iterator[None]:
    """Removes what a failing test's BUILD may have set (on ``collections``, say)."""
    yield
    for kind in NEVER_FILLED_IN_KINDS:
        target: Any = never_filled_in(kind)
        if ATTRIBUTE in getattr(target, "__dict__", {}):
            delattr(target, ATTRIBUTE)


def test_never_filled_in_kinds_cover_one_object_each() -> None:
    kinds = [type(never_filled_in(kind)).__name__ for kind in NEVER_FILLED_IN_KINDS]
    assert len(set(kinds)) == len(NEVER_FILLED_IN_KINDS), kinds
    assert never_filled_in("module") is collections


@pytest.mark.parametrize("kind", NEVER_FILLED_IN_KINDS)
def test_build_is_refused_on_each_never_filled_in_type(
    kind: str, restore_never_filled_in: None
) -> None:
    # never_filled_in(kind) is allowed code returning the object: find_class did not
    # return it, so only its type (in _NEVER_FILLED_IN) refuses the BUILD.
    forged = pickle_of(
        ref(TARGETS, "never_filled_in") + text(kind) + b"\x85R",  # never_filled_in(kind)
        b"N}" + text(ATTRIBUTE) + text("owned") + b"s\x86b",  # BUILD (None, {attr: ...})
        b"0",
        ref(TARGETS, "Job") + b")}\x87",  # (Job, (), {}): a valid task after it
    )
    with pytest.raises(DisallowedReferenceError, match="BUILD opcode would modify"):
        ALLOWED.loads(forged)
    assert ATTRIBUTE not in getattr(never_filled_in(kind), "__dict__", {})


def test_an_instance_the_pickle_makes_is_still_filled_in() -> None:
    # The counterpart: BUILD on a Job the pickle creates itself is allowed.
    made = pickle_of(
        ref(TARGETS, "Job") + b")R",  # Job()
        b"N}" + text("name") + text("built") + b"s\x86b",
    )
    loaded = ALLOWED.loads(made)
    assert isinstance(loaded, Job)
    assert loaded.name == "built"
    assert allowlist_targets.SHARED.name == "shared"


def test_python_2_names_are_translated_exactly_once() -> None:
    # whichdb.whichdb is dbm.whichdb in Python 3; translating that again (the base
    # unpickler's fix_imports) would turn the module dbm into dbm.ndbm.
    allowlist = Allowlist(["dbm.whichdb"])
    assert allowlist.loads(b"\x80\x02cwhichdb\nwhichdb\n.") is dbm.whichdb


# --- each rule's reach past the first part, and what each refusal names --------------------


def test_underscore_rule_looks_at_every_module_part_past_the_entry() -> None:
    # A private module below an allowed package's public one: "sub._hidden" has a part
    # starting with "_" only once split at its dots.
    allowlist = Allowlist(["pkg"])
    assert allowlist.allows_module("pkg.sub")
    assert not allowlist.allows_module("pkg.sub._hidden")
    assert not allowlist.allows_module("pkg.sub.__main__")


def test_a_refused_entry_says_what_to_list_instead() -> None:
    with pytest.raises(ValueError, match="arbitrary code") as refused:
        check_entries(["os"])
    assert str(refused.value) == (
        "'os' would let a payload reach arbitrary code; list your task modules and exact "
        "data types (e.g. builtins.len, uuid.UUID) instead"
    )


@pytest.mark.parametrize("entry", ["collections.XXXX", "collections.None"])
def test_data_defined_elsewhere_matches_no_exact_entry(entry: str) -> None:
    # TALLY is a Counter: defined in collections, with no qualified name of its own, so
    # no entry of collections can name it; only a class or function listed exactly is
    # admitted where it is re-exported.
    with pytest.raises(DisallowedReferenceError, match=refused_reference("TALLY")):
        Allowlist([TARGETS, entry]).loads(pickle_of(ref(TARGETS, "TALLY")))


def test_entries_after_invoke_member_are_checked_too() -> None:
    # Listing invoke_member (always allowed) skips that entry, not the rest.
    with pytest.raises(ValueError, match="'os' would let a payload reach arbitrary code"):
        check_entries(["cloudtasks_deferred.payload.invoke_member", "os"])
