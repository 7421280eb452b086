"""The unpickling allowlist: what a payload may reference, refused before any import."""

from __future__ import annotations

import collections
import copy
import copyreg
import dataclasses
import datetime
import decimal
import functools
import pickle
import pickletools
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtasks_deferred import Client, ConfigurationError, Handler, Settings, deferred
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.allowlist import (
    DANGEROUS_BUILTINS,
    INVOKE_MEMBER,
    RUN_FROM_DATASTORE,
    Allowlist,
    DisallowedReferenceError,
    check_entries,
)
from cloudtasks_deferred.payload.calls import invoke_member, load_call, serialize
from cloudtasks_deferred.payload.frame import InvalidPayloadError, encode
from tests import tasks
from tests.conftest import SIGNED_SETTINGS
from tests.oidc import Issuer
from tests.security import allowed_tasks
from tests.tasks import RECORDER
from tests.wsgi import call, environ

# As the facade builds it: the library's run_from_datastore handed back by name.
ALLOWED = Allowlist(
    ["tests.security.allowed_tasks"], library={RUN_FROM_DATASTORE: deferred.run_from_datastore}
)
CANARY_MODULE = "tests.security.import_canary"


class Reduce:
    """Pickles as ``func(*args)``: a hand-made REDUCE, as a forged payload would hold."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def global_ref(module: str, name: str) -> bytes:
    """A protocol-4 pickle of the bare global ``module.name`` (STACK_GLOBAL)."""
    return (
        b"\x80\x04"
        + pickle.dumps(module, protocol=4)[2:-1]
        + pickle.dumps(name, protocol=4)[2:-1]
        + b"\x93."
    )


@pytest.fixture
def forget_canary_module() -> Iterator[None]:
    sys.modules.pop(CANARY_MODULE, None)
    yield
    sys.modules.pop(CANARY_MODULE, None)


def loads(data: bytes, allowlist: Allowlist = ALLOWED) -> Any:
    return load_call(data, loads=allowlist.loads)


# --- what is allowed --------------------------------------------------------------------


def test_allowed_module_functions_classes_and_methods() -> None:
    job = allowed_tasks.Job("j")
    assert loads(serialize(allowed_tasks.record, 1))[0] is allowed_tasks.record
    assert loads(serialize(allowed_tasks.Job, "x"))[0] is allowed_tasks.Job
    assert loads(serialize(allowed_tasks.Job.static_record, 2))[0] is (
        allowed_tasks.Job.static_record
    )
    func, args, _ = loads(serialize(job.run))
    assert func is invoke_member  # the real one, not the marker
    assert args[1] == "run"


def test_data_types_in_arguments_need_no_listing() -> None:
    values = [
        datetime.datetime.now(datetime.UTC),
        datetime.date(2026, 1, 1),
        datetime.time(1, 2),
        datetime.timedelta(seconds=5),
        decimal.Decimal("1.25"),
        uuid.uuid4(),
        collections.OrderedDict(a=1),
        collections.Counter("aab"),
        collections.defaultdict(list, a=[1]),
        collections.deque([1, 2]),
        {1, 2},
        frozenset({3}),
        bytearray(b"x"),
        complex(1, 2),
        range(3),
        slice(1, 2),
        b"bytes",
        object,
    ]
    _, args, _ = loads(serialize(allowed_tasks.record, values[:-1]))
    assert args[0] == values[:-1]


def test_protocol_0_and_2_pickles_use_copyreg_reconstructors() -> None:
    job = allowed_tasks.Job("old")
    # Protocol 0 names copy_reg._reconstructor (the Python 2 name, translated);
    # protocol 2 writes NEWOBJ, which calls copyreg.__newobj__'s logic without a name.
    data = pickle.dumps((allowed_tasks.noop, (job,), {}), protocol=0)
    assert b"ccopy_reg\n_reconstructor\n" in data
    assert loads(data)[1][0].name == "old"
    data = pickle.dumps((allowed_tasks.noop, (job,), {}), protocol=2)
    opcodes = {opcode.name for opcode, _, _ in pickletools.genops(data)}
    assert "NEWOBJ" in opcodes
    assert b"copy_reg" not in data
    assert loads(data)[1][0].name == "old"


def test_exact_entries_allow_one_name() -> None:
    allowlist = Allowlist(["tests.tasks.record", "builtins.len"])
    assert loads(serialize(tasks.record), allowlist)[0] is tasks.record
    assert loads(serialize(len, "abc"), allowlist)[0] is len
    with pytest.raises(DisallowedReferenceError, match=r"'tests\.tasks\.crash'"):
        loads(serialize(tasks.crash), allowlist)
    with pytest.raises(DisallowedReferenceError, match=r"'builtins\.print'"):
        loads(serialize(print), allowlist)


def test_a_prefix_covers_submodules_but_not_lookalikes() -> None:
    allowlist = Allowlist(["tests.security"])
    assert allowlist.allows_module("tests.security")
    assert allowlist.allows_module("tests.security.allowed_tasks")
    assert not allowlist.allows_module("tests.securityx")
    assert not allowlist.allows_module("tests")


# --- what is refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reference"),
    [
        (lambda: serialize(tasks.record), "tests.tasks.record"),
        (lambda: pickle.dumps(tasks.Canary()), "tests.tasks.canary"),
        (lambda: serialize(allowed_tasks.record, tasks.Canary()), "tests.tasks.canary"),
        (lambda: global_ref("os", "system"), "os.system"),
        (lambda: global_ref("builtins", "eval"), "builtins.eval"),
        (lambda: global_ref("builtins", "getattr"), "builtins.getattr"),
        (lambda: global_ref("builtins", "__import__"), "builtins.__import__"),
        (lambda: global_ref("subprocess", "run"), "subprocess.run"),
        (lambda: global_ref("cloudtasks_deferred.payload.calls", "run"), "payload.calls.run"),
        (lambda: global_ref("__builtin__", "eval"), "'builtins.eval'"),
    ],
    ids=[
        "other module",
        "canary",
        "canary in arguments",
        "os.system",
        "eval",
        "getattr",
        "__import__",
        "subprocess",
        "the library's own run",
        "python 2 names",
    ],
)
def test_references_outside_the_allowlist_are_refused(payload: Any, reference: str) -> None:
    with pytest.raises(DisallowedReferenceError, match=reference):
        loads(payload())
    assert RECORDER.calls == []


@pytest.mark.parametrize(
    "name",
    [
        "os.system",  # allowed_tasks imports os
        "tasks.canary",  # a module attribute of an allowed module
        "canary",  # imported into the allowed module, defined elsewhere
        "RECORDER.add",  # an instance of a class defined elsewhere
        "__builtins__.get",  # dunder: the way to eval
        "record.__globals__",
        "Job.__init__.__globals__",
        "Job.fire.__call__",
        "CONFIG.get",  # only classes are looked into
        "Job.run.__qualname__",
        "Job..run",
        "",
    ],
)
def test_names_inside_an_allowed_module_cannot_reach_elsewhere(name: str) -> None:
    with pytest.raises(DisallowedReferenceError, match="does not allow"):
        ALLOWED.loads(global_ref("tests.security.allowed_tasks", name))


def test_module_objects_are_refused() -> None:
    with pytest.raises(DisallowedReferenceError):
        Allowlist(["tests.security"]).loads(global_ref("tests", "security"))
    with pytest.raises(DisallowedReferenceError):
        Allowlist(["tests.security.allowed_tasks"]).loads(
            global_ref("tests.security", "allowed_tasks")
        )


def test_a_refused_reference_never_imports_its_module(forget_canary_module: None) -> None:
    with pytest.raises(DisallowedReferenceError, match="import_canary"):
        loads(global_ref(CANARY_MODULE, "harmless"))
    assert CANARY_MODULE not in sys.modules
    assert RECORDER.calls == []
    # The same reference, allowed, does import it: the test above could fail.
    Allowlist([CANARY_MODULE]).loads(global_ref(CANARY_MODULE, "harmless"))
    assert RECORDER.named("canary") == [("imported tests.security.import_canary",)]


def test_invoke_member_cannot_be_called_while_unpickling() -> None:
    # invoke_member(job, "fire") during unpickling would call the canary; a chain of
    # such calls reaches eval through __globals__.
    forged = pickle.dumps(
        (allowed_tasks.noop, (Reduce(invoke_member, allowed_tasks.Job(), "fire"),), {})
    )
    with pytest.raises(DisallowedReferenceError, match="only as the task's callable"):
        loads(forged)
    assert RECORDER.calls == []


def test_invoke_member_elsewhere_stays_an_inert_marker() -> None:
    _, args, _ = loads(serialize(allowed_tasks.noop, invoke_member))
    assert args[0] is not invoke_member
    with pytest.raises(DisallowedReferenceError):
        args[0](allowed_tasks.Job(), "fire")
    assert RECORDER.calls == []


def test_run_from_datastore_is_allowed_as_the_tasks_callable_only() -> None:
    from cloudtasks_deferred import deferred

    func, args, _ = loads(serialize(deferred.run_from_datastore, "stored-key"))
    assert func is deferred.run_from_datastore
    assert args == ("stored-key",)
    forged = pickle.dumps(
        (allowed_tasks.noop, (Reduce(deferred.run_from_datastore, "stored-key"),), {})
    )
    with pytest.raises(DisallowedReferenceError, match="only as the task's callable"):
        loads(forged)


def test_missing_allowed_code_is_an_import_or_attribute_error() -> None:
    with pytest.raises(AttributeError):
        loads(global_ref("tests.security.allowed_tasks", "gone"))
    with pytest.raises(ImportError):
        Allowlist(["tests.nothing"]).loads(global_ref("tests.nothing.here", "f"))


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "builtins",
        *sorted(DANGEROUS_BUILTINS),
        "builtins.str.join",
        "os",
        "os.path",
        "subprocess",
        "sys",
        "pickle",
        "operator",
        "types",
        "importlib.import_module",
        "cloudtasks_deferred",
        "cloudtasks_deferred.deferred",
        "my app",
        "app.",
        "1app",
        "",
    ],
)
def test_entries_that_reach_arbitrary_code_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"arbitrary code|not a dotted|exact name"):
        check_entries([entry])


def test_safe_entries_are_accepted() -> None:
    entries = ["myapp", "myapp.tasks", "builtins.len", "uuid.UUID", "functools.partial"]
    assert check_entries(entries) is None
    allowlist = Allowlist([*entries, INVOKE_MEMBER])  # listing invoke_member changes nothing
    assert allowlist.entries == (*entries, INVOKE_MEMBER)
    assert allowlist.allows_module("myapp.tasks.mail")
    assert allowlist.loads(global_ref("builtins", "len")) is len
    assert allowlist.loads(global_ref("functools", "partial")) is functools.partial


def test_settings_read_the_allowlist_and_name_the_variable() -> None:
    settings = Settings.from_env({"CLOUDTASKS_DEFERRED_ALLOWED_MODULES": "myapp, builtins.len"})
    assert settings.allowed_modules == ("myapp", "builtins.len")
    with pytest.raises(ConfigurationError, match=r"CLOUDTASKS_DEFERRED_ALLOWED_MODULES.*eval"):
        Settings.from_env({"CLOUDTASKS_DEFERRED_ALLOWED_MODULES": "myapp,builtins.eval"})


# --- through the handler --------------------------------------------------------------------


def test_the_handler_answers_403_naming_the_reference(
    signed_client: Client, issuer: Issuer, forget_canary_module: None
) -> None:
    settings = dataclasses.replace(
        SIGNED_SETTINGS, allowed_modules=("tests.security.allowed_tasks",)
    )
    client = Client(
        settings, transport=InMemoryTransport(), authenticator=signed_client.authenticator
    )
    handler = Handler(client=client)
    auth = {"Authorization": f"Bearer {issuer.token()}"}

    ok = call(handler, environ(encode(serialize(allowed_tasks.record, 7)), headers=auth))
    assert ok.code == 200
    assert RECORDER.named("allowed_record") == [7]

    refused = call(handler, environ(encode(serialize(tasks.canary)), headers=auth))
    assert refused.code == 403
    assert refused.body == (
        b"Forbidden: the payload references 'tests.tasks.canary', which "
        b"CLOUDTASKS_DEFERRED_ALLOWED_MODULES does not allow"
    )
    body = encode(global_ref(CANARY_MODULE, "harmless"))
    response = call(handler, environ(body, headers=auth))
    assert (response.code, response.body) == (
        403,
        b"Forbidden: the payload references 'tests.security.import_canary.harmless', which "
        b"CLOUDTASKS_DEFERRED_ALLOWED_MODULES does not allow",
    )
    assert CANARY_MODULE not in sys.modules
    assert RECORDER.named("canary") == []


@pytest.mark.parametrize(
    "pickled",
    [
        b"\x80\x05M\xa0\x8dr\x92\x82\xbfF\x1c\x1a",  # LONG_BINPUT 3.2e9, found by the fuzz
        b"\x80\x02K\x01p99999999999\n.",  # PUT with a text index
        b"\x80\x05\x96" + (64 * 2**20).to_bytes(8, "little") + b"x.",  # BYTEARRAY8 of 64 MiB
    ],
    ids=["long_binput", "put", "bytearray8"],
)
def test_forged_memo_indices_and_lengths_cost_no_memory(pickled: bytes) -> None:
    # The C unpickler sizes (and clears) its memo by the largest index: gigabytes. The
    # pure-Python one keeps a dict, but would allocate a BYTEARRAY8's claimed length.
    tracemalloc.start()
    try:
        with pytest.raises(InvalidPayloadError):
            loads(pickled)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


# --- callables without a module (item: built-in bound methods) --------------------------

ALLOWED_TASKS = "tests.security.allowed_tasks"


def text(value: str) -> bytes:
    """SHORT_BINUNICODE ``value``."""
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data


def ref(module: str, name: str) -> bytes:
    """STACK_GLOBAL ``module.name``."""
    return text(module) + text(name) + b"\x93"


def proto4(*opcodes: bytes) -> bytes:
    """A protocol-4 pickle of ``opcodes``, written by hand as a forged payload is."""
    return b"\x80\x04" + b"".join(opcodes) + b"."


def set_attribute(name: str, value: bytes) -> bytes:
    """``(None, {name: value})`` BUILD: pickle's ``setattr`` on the object below it."""
    return b"N}" + text(name) + value + b"s\x86b"


#: ``(noop, (), {})``: a valid task after the forged part.
NOOP_CALL = ref(ALLOWED_TASKS, "noop") + b")}\x87"


@pytest.mark.parametrize("name", ["getrandbits", "record_call"])
def test_callables_without_a_module_name_are_refused(name: str) -> None:
    # Built-in bound methods have __module__ None: "defined in an allowed module" cannot
    # be checked, so they are refused (random.getrandbits, RECORDER.calls.append).
    with pytest.raises(DisallowedReferenceError, match=f"'{ALLOWED_TASKS}.{name}'"):
        loads(proto4(ref(ALLOWED_TASKS, name), text("canary") + text("x") + b"\x86\x85}\x87"))
    assert RECORDER.calls == []


def test_plain_data_without_a_module_name_may_still_be_named() -> None:
    assert ALLOWED.loads(global_ref(ALLOWED_TASKS, "CONFIG")) is allowed_tasks.CONFIG


# --- BUILD and friends may only fill in what the pickle created ----------------------------


def test_build_cannot_change_an_always_allowed_class(monkeypatch: pytest.MonkeyPatch) -> None:
    original = collections.Counter.most_common
    monkeypatch.setattr(collections.Counter, "most_common", original)  # restored regardless
    # Counter.most_common = "owned", then a refused reference: nothing may remain changed.
    forged = proto4(
        ref("collections", "Counter"),
        set_attribute("most_common", text("owned")),
        b"0",
        ref("tests.tasks", "canary"),
        b")}\x87",
    )
    with pytest.raises(DisallowedReferenceError, match="BUILD opcode would modify collections"):
        loads(forged)
    assert collections.Counter.most_common is original


def test_build_cannot_change_a_task_functions_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    record = allowed_tasks.record
    monkeypatch.setattr(record, "__defaults__", record.__defaults__)  # restored regardless
    forged = proto4(
        ref(ALLOWED_TASKS, "record"),
        set_attribute("__defaults__", text("attacker@evil.test") + b"\x85"),
        b")}\x87",
    )
    with pytest.raises(DisallowedReferenceError, match=f"would modify {ALLOWED_TASKS}.record,"):
        loads(forged)
    assert record.__defaults__ == (None,)


def test_build_cannot_turn_the_library_marker_into_another_function() -> None:
    # The marker stands for invoke_member in every payload of the process; were it
    # renamed, it would hand back any function it names (here the canary) as the task.
    marker = ALLOWED.loads(global_ref("cloudtasks_deferred.payload", "invoke_member"))
    forged = proto4(
        ref("cloudtasks_deferred.payload", "invoke_member"),
        set_attribute("name", text("tests.tasks.canary")),
        text("renamed") + b"\x85}\x87",
    )
    with pytest.raises(DisallowedReferenceError, match="BUILD opcode would modify"):
        loads(forged)
    # It has no state at all to change, by any path.
    for name in ("name", "__class__", "__call__"):
        with pytest.raises((AttributeError, TypeError)):
            object.__setattr__(marker, name, "tests.tasks.canary")
    assert loads(serialize(allowed_tasks.Job().run))[0] is invoke_member
    assert RECORDER.calls == []


@pytest.mark.parametrize(
    ("target", "opcodes"),
    [
        ("CONFIG", text("mode") + text("owned") + b"s"),
        ("CONFIG", b"(" + text("mode") + text("owned") + b"u"),
        ("CONFIG", set_attribute("x", text("owned"))),
        ("NAMES", text("owned") + b"a"),
        ("NAMES", b"(" + text("owned") + b"e"),
        ("TAGS", b"(" + text("owned") + b"\x90"),
    ],
    ids=["SETITEM", "SETITEMS", "BUILD", "APPEND", "APPENDS", "ADDITEMS"],
)
def test_module_level_data_cannot_be_filled_in(
    target: str, opcodes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = getattr(allowed_tasks, target)
    kept = copy.copy(original)
    monkeypatch.setattr(allowed_tasks, target, original)  # a failure must not leak changes
    with pytest.raises(DisallowedReferenceError, match="opcode would modify a"):
        loads(proto4(ref(ALLOWED_TASKS, target), opcodes, b"0", NOOP_CALL))
    assert original == kept


def test_classes_returned_by_listed_code_cannot_be_filled_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = allowed_tasks.Job.__dict__["run"]
    monkeypatch.setattr(allowed_tasks.Job, "run", run)  # restored regardless
    # job_class() returns Job; Job.run = Job.fire would make every Job.run call the canary.
    forged = proto4(
        ref(ALLOWED_TASKS, "job_class") + b")R",
        set_attribute("run", ref(ALLOWED_TASKS, "Job.fire")),
        b"0",
        NOOP_CALL,
    )
    with pytest.raises(DisallowedReferenceError, match=f"would modify {ALLOWED_TASKS}.Job,"):
        loads(forged)
    assert allowed_tasks.Job.__dict__["run"] is run


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_objects_the_pickle_creates_are_filled_in_as_before(protocol: int) -> None:
    job = allowed_tasks.Job("built")
    job.extra = {"nested": [1, {2}]}  # type: ignore[attr-defined]
    values = [
        job,
        {"a": [1, 2]},
        {3, 4},
        collections.OrderedDict(b=2),
        collections.defaultdict(list, a=[1]),
        collections.deque([1, 2]),
        collections.Counter("aab"),
        uuid.UUID(int=7),
    ]
    if protocol >= 3:  # protocols 0-2 write bytes with _codecs.encode, which is not listed
        values.append(bytearray(b"x" * 300))
    _, (loaded,), _ = loads(pickle.dumps((allowed_tasks.noop, (values,), {}), protocol))
    assert vars(loaded[0]) == vars(job)
    assert loaded[1:] == values[1:]


def test_a_partial_the_pickle_makes_is_filled_in_when_listed() -> None:
    # A partial pickles as partial(func) then BUILD (func, args, keywords, dict).
    allowlist = Allowlist([ALLOWED_TASKS, "functools.partial"])
    made = functools.partial(allowed_tasks.record, "bound", extra=1)
    _, (loaded,), _ = loads(serialize(allowed_tasks.noop, made), allowlist)
    assert (loaded.func, loaded.args, loaded.keywords) == (made.func, made.args, made.keywords)


def test_extension_codes_go_through_the_allowlist_not_copyregs_cache() -> None:
    code = 0x7FFF_FF00
    copyreg.add_extension("tests.tasks", "canary", code)
    try:
        # What an earlier load by the C unpickler leaves in the process-wide cache.
        copyreg._extension_cache[code] = tasks.canary  # type: ignore[attr-defined]
        forged = b"\x80\x02\x84" + code.to_bytes(4, "little") + b")}\x87."  # EXT4
        with pytest.raises(DisallowedReferenceError, match=r"'tests\.tasks\.canary'"):
            loads(forged)
    finally:
        copyreg.remove_extension("tests.tasks", "canary", code)
    copyreg.add_extension(ALLOWED_TASKS, "noop", code)
    try:
        allowed = b"\x80\x02\x84" + code.to_bytes(4, "little") + b")}\x87."
        assert loads(allowed)[0] is allowed_tasks.noop
    finally:
        copyreg.remove_extension(ALLOWED_TASKS, "noop", code)
    assert RECORDER.calls == []
