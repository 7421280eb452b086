"""Each rule the allowlist applies to a task's callable and to member calls, on its own.

The companion of ``test_allowlist_rules.py`` (what a pickle may reference): here the
callable a task runs (:meth:`Allowlist.check_callable`), the member an ``invoke_member``
task calls (:meth:`Allowlist.check_member`) and the library's own callables. As there,
each test names an object of :mod:`tests.unit.allowlist_targets` that every other rule
lets through, and asserts what the refusal names: an operator reads it in the log.
"""

from __future__ import annotations

import subprocess
import types
from typing import Any

import pytest

from cloudtasks_deferred.payload.allowlist import Allowlist, DisallowedReferenceError
from tests.security.opcodes import INVOKE_MEMBER, RUN_FROM_DATASTORE, ref, task, text
from tests.unit.allowlist_targets import (
    SHARED,
    Described,
    Helper,
    Job,
    OwnLookup,
    make_nested,
    never_filled_in,
)

TARGETS = "tests.unit.allowlist_targets"
ALLOWED = Allowlist([TARGETS])


def refused_reference(name: str) -> str:
    """The refusal's stable phrase for ``TARGETS.name``."""
    return f"references '{TARGETS}.{name}', which"


# --- what each refusal of a call names ------------------------------------------------------


def test_dunder_rule_of_task_callables_looks_at_every_part_of_the_name() -> None:
    # Job.__init__ is a function of an allowed module: only its dunder part refuses it.
    with pytest.raises(DisallowedReferenceError, match=refused_reference("Job.__init__")):
        ALLOWED.check_callable(Job.__init__)
    ALLOWED.check_callable(Job.run)  # the same, without a dunder, is allowed


class _CustomLookup:
    def __getattribute__(self, name: str) -> Any:
        return object.__getattribute__(self, name)

    def run(self) -> None:
        """A member its own lookup could swap."""


class _NotAllowed:
    def run(self) -> None:
        """A public member of a class no entry allows."""


@pytest.mark.parametrize(
    ("obj", "member", "where"),
    [
        (Job("j"), "_private", f"{TARGETS}.Job._private"),
        (_CustomLookup(), "run", f"{__name__}._CustomLookup.run"),
        (Job("j"), "missing", f"{TARGETS}.Job.missing"),
        (_NotAllowed(), "run", f"{__name__}._NotAllowed.run"),
    ],
    ids=["underscore", "own lookup", "no such member", "class not allowed"],
)
def test_each_member_refusal_names_the_member(obj: Any, member: str, where: str) -> None:
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.check_member(obj, member)
    assert str(refused.value).startswith(f"the payload references {where!r}, which")


# --- member calls (invoke_member), rule by rule ---------------------------------------------


@pytest.mark.parametrize("name", [5, None, "not-a-name", "two words"])
def test_a_member_name_must_be_an_identifier(name: Any) -> None:
    with pytest.raises(DisallowedReferenceError, match="whose name is not an identifier"):
        ALLOWED.check_member(Job("j"), name)


def test_a_member_of_a_class_itself_is_looked_up_on_the_class() -> None:
    ALLOWED.check_member(Job, "run")  # Job.run, not type.run (there is none)


def test_a_shared_instance_s_member_is_refused_but_a_shared_class_s_is_not() -> None:
    with pytest.raises(DisallowedReferenceError, match="on an object it names"):
        ALLOWED.check_member(SHARED, "run", shared={id(SHARED): SHARED})
    ALLOWED.check_member(Job, "run", shared={id(Job): Job})


def test_an_allowed_class_with_its_own_lookup_is_refused() -> None:
    # Everything else about OwnLookup.run is allowed: only its __getattribute__ refuses.
    with pytest.raises(DisallowedReferenceError, match=refused_reference("OwnLookup.run")):
        ALLOWED.check_member(OwnLookup(), "run")


def test_an_instance_attribute_is_checked_as_the_callable_it_holds() -> None:
    job = Job("j")
    job.__dict__["run"] = never_filled_in  # shadows Job.run: getattr returns this
    ALLOWED.check_member(job, "run")
    job.__dict__["run"] = subprocess.run
    with pytest.raises(DisallowedReferenceError, match=r"'subprocess\.run'"):
        ALLOWED.check_member(job, "run")


def test_a_static_method_is_checked_as_the_function_it_wraps() -> None:
    ALLOWED.check_member(Job("j"), "static")  # len: a built-in, allowed as a member
    with pytest.raises(DisallowedReferenceError, match=r"'subprocess\.run'"):
        ALLOWED.check_member(Job("j"), "spawn")


def test_a_callable_object_stored_on_the_class_is_checked_by_its_class() -> None:
    ALLOWED.check_member(Job("j"), "helper")  # an instance of allowlist_targets.Helper
    with pytest.raises(DisallowedReferenceError, match=r"'functools\.partial'"):
        ALLOWED.check_member(Job("j"), "runner")


def test_a_class_listed_exactly_has_its_members_allowed() -> None:
    # The module is not allowed: only the exact entry for Job lets its member through.
    exact = Allowlist([f"{TARGETS}.Job"])
    exact.check_member(Job("j"), "static")
    with pytest.raises(DisallowedReferenceError):
        Allowlist(["uuid"]).check_member(Job("j"), "static")


@pytest.mark.parametrize("member", ["set_only", "delete_only"])
def test_a_data_descriptor_on_the_class_wins_over_the_instance_dict(member: str) -> None:
    # As in getattr: a descriptor with __set__, or with __delete__, answers even though
    # the instance's __dict__ holds a value of that name. The descriptor's class is
    # checked (allowed), not the instance's value (subprocess.run).
    described = Described()
    described.__dict__[member] = subprocess.run
    assert isinstance(getattr(described, member), Helper)
    ALLOWED.check_member(described, member)


# --- task callables, rule by rule ------------------------------------------------------------


def test_a_bound_method_is_judged_by_its_function() -> None:
    ALLOWED.check_callable(Job("j").run)


def test_a_callable_instance_is_judged_by_its_class() -> None:
    ALLOWED.check_callable(Helper())
    with pytest.raises(DisallowedReferenceError, match=r"'functools\.partial'"):
        ALLOWED.check_callable(Job.runner)


@pytest.mark.parametrize(
    ("method", "named"),
    [
        (types.MethodType(Helper(), SHARED), f"{TARGETS}.method"),
        (types.MethodType((1).__add__, 2), "int.__add__"),  # no __module__ to name it by
    ],
    ids=["a callable instance", "a method-wrapper"],
)
def test_a_method_whose_function_is_not_a_function_is_refused(method: Any, named: str) -> None:
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.check_callable(method)
    assert str(refused.value).startswith(f"the payload references {named!r}, which")


def test_a_built_in_bound_method_is_refused_even_when_listed_exactly() -> None:
    # [].append is bound to an object every task could share: a payload may call it only
    # as a member call, where the object is checked. Its exact entry changes nothing.
    with pytest.raises(DisallowedReferenceError) as refused:
        Allowlist(["list.append"]).check_callable([].append)
    assert str(refused.value).startswith("the payload references 'list.append', which")


def test_a_function_of_a_module_not_allowed_is_refused_by_its_name() -> None:
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.check_callable(subprocess.run)
    assert str(refused.value).startswith("the payload references 'subprocess.run', which")


def test_a_nested_function_of_an_allowed_module_is_refused() -> None:
    # make_nested.<locals>.nested: no part starts with "__"; only "<" refuses it.
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.check_callable(make_nested())
    assert str(refused.value).startswith(
        f"the payload references '{TARGETS}.make_nested.<locals>.nested', which"
    )


# --- the library's callables in a task --------------------------------------------------------


def test_run_from_datastore_is_refused_by_name_where_the_library_gave_none() -> None:
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.loads(task(ref(*RUN_FROM_DATASTORE), text("key")))
    assert str(refused.value).startswith(
        "the payload references 'cloudtasks_deferred.deferred.run_from_datastore', which"
    )


def test_run_from_datastore_stands_for_the_function_the_library_gave() -> None:
    def run_stored(key: str) -> None:
        """What the facade passes as run_from_datastore."""

    library = Allowlist(
        [TARGETS], library={"cloudtasks_deferred.deferred.run_from_datastore": run_stored}
    )
    assert library.loads(task(ref(*RUN_FROM_DATASTORE), text("key"))) == (run_stored, ("key",), {})


@pytest.mark.parametrize(
    "args",
    [
        b"(" + ref(TARGETS, "Job") + b"t",  # a tuple of one: no member name
        b"(" + ref(TARGETS, "Job") + text("run") + b"l",  # a list, not a tuple
    ],
    ids=["one argument", "a list"],
)
def test_invoke_member_needs_a_tuple_of_an_object_and_a_name(args: bytes) -> None:
    with pytest.raises(DisallowedReferenceError) as refused:
        ALLOWED.loads(b"\x80\x04" + ref(*INVOKE_MEMBER) + args + b"}\x87.")
    assert str(refused.value) == "invoke_member needs an object and a member name"


def test_invoke_member_on_an_instance_the_pickle_names_is_refused() -> None:
    # SHARED.run passes every other rule (Job is allowed, run is its own method): only
    # the objects the load found, handed to check_member, refuse it.
    with pytest.raises(DisallowedReferenceError, match="on an object it names"):
        ALLOWED.loads(task(ref(*INVOKE_MEMBER), ref(TARGETS, "SHARED"), text("run")))
