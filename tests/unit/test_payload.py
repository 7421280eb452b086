"""serialize/run with every legacy callable kind; framing; decoding failures."""

from __future__ import annotations

import datetime
import logging
import pickle
import traceback
from typing import Any

import pytest

from cloudtasks_deferred import Client, Handler, deferred
from cloudtasks_deferred.payload.calls import (
    describe_callable,
    invoke_member,
    load_call,
    run,
    serialize,
)
from cloudtasks_deferred.payload.frame import InvalidPayloadError, encode
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters
from tests import tasks
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ


@pytest.mark.parametrize(
    ("obj", "args", "expected"),
    [
        pytest.param(tasks.record, (5,), "recorded", id="top-level function"),
        pytest.param(tasks.Counter(10), (5,), 15, id="callable instance"),
        pytest.param(tasks.Counter(1).add, (2,), 3, id="bound method"),
        pytest.param(tasks.Counter.make, (7,), 7, id="class method"),
        pytest.param(tasks.Counter.double, (4,), 8, id="static method"),
        pytest.param(len, ([1, 2, 3],), 3, id="builtin function"),
        pytest.param(
            datetime.datetime(2020, 1, 2, 3, 4, 5).isoformat,
            (),
            "2020-01-02T03:04:05",
            id="builtin method",
        ),
        pytest.param(dict.fromkeys, (("a",), 1), {"a": 1}, id="builtin classmethod"),
        pytest.param(tasks.Counter(3).secret_method(), (), "secret", id="private method"),
    ],
)
def test_run_of_serialize_is_the_call(obj: Any, args: tuple[Any, ...], expected: Any) -> None:
    assert run(serialize(obj, *args)) == expected


def test_a_class_is_deferrable() -> None:
    run(serialize(tasks.Point, 1, y=2))
    assert RECORDER.named("Point") == [(1, 2)]


def test_keyword_arguments_reach_the_callable() -> None:
    assert run(serialize(tasks.record, 1, extra="x")) == "recorded"
    assert RECORDER.named("record") == [(1, {"extra": "x"})]


def test_bound_methods_travel_as_invoke_member() -> None:
    func, args, kwargs = pickle.loads(serialize(tasks.Counter(1).add, 2, k=3))
    assert func is invoke_member
    assert isinstance(args[0], tasks.Counter)
    assert args[1:] == ("add", 2)
    assert kwargs == {"k": 3}


def test_builtin_methods_travel_as_invoke_member() -> None:
    when = datetime.datetime(2021, 5, 6)
    func, args, _ = pickle.loads(serialize(when.isoformat))
    assert func is invoke_member
    assert args == (when, "isoformat")


def test_invoke_member_calls_the_member() -> None:
    assert invoke_member(tasks.Counter(2), "add", 3) == 5


def lambda_task() -> Any:
    return lambda: None


def nested_function() -> Any:
    def inner() -> None:
        pass

    return inner


def nested_class_instance() -> Any:
    class Inner:
        def __call__(self) -> None:
            pass

    return Inner()


@pytest.mark.parametrize(
    "make", [lambda_task, nested_function, nested_class_instance], ids=lambda f: f.__name__
)
def test_unpicklable_callables_fail_at_serialize_time(make: Any) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError)):
        serialize(make())


def test_unpicklable_arguments_fail_at_serialize_time() -> None:
    with pytest.raises((pickle.PicklingError, AttributeError)):
        serialize(tasks.record, lambda: None)


def test_non_callables_are_refused() -> None:
    with pytest.raises(ValueError, match="must be callable"):
        serialize(42)  # type: ignore[arg-type]


def test_run_accepts_frames_and_bare_legacy_pickles() -> None:
    pickled = serialize(tasks.record, 7)
    assert run(encode(pickled)) == "recorded"
    assert run(encode(pickled, compress=True)) == "recorded"
    assert run(pickled) == "recorded"
    assert RECORDER.named("record") == [7, 7, 7]


@pytest.mark.parametrize(
    "pickled",
    [
        pytest.param(b"\x80\x05\x95", id="truncated pickle"),
        pytest.param(pickle.dumps("not a tuple"), id="not a tuple"),
        pytest.param(pickle.dumps((1, (), {})), id="not callable"),
        pytest.param(pickle.dumps((len, [1], {})), id="args not a tuple"),
        pytest.param(pickle.dumps((len, (1,), [])), id="kwargs not a dict"),
    ],
)
def test_load_call_rejects_malformed_pickles(pickled: bytes) -> None:
    with pytest.raises(InvalidPayloadError):
        load_call(pickled)


def test_pickles_naming_missing_code_are_retryable_errors() -> None:
    missing_module = serialize(tasks.record).replace(b"tests.tasks", b"tests.gone!")
    with pytest.raises(ImportError):
        load_call(missing_module)
    missing_attribute = serialize(tasks.record).replace(b"record", b"absent")
    with pytest.raises(AttributeError):
        load_call(missing_attribute)


def test_describe_callable_names_without_arguments() -> None:
    assert describe_callable(tasks.record) == "tests.tasks.record"
    func, args, _ = pickle.loads(serialize(tasks.Counter(1).add, "secret-argument"))
    assert describe_callable(func, args) == "tests.tasks.Counter.add"
    func, args, _ = pickle.loads(serialize(tasks.Counter.make, 1))
    assert describe_callable(func, args) == "tests.tasks.Counter.make"


def test_legacy_module_exposes_the_same_functions() -> None:
    assert deferred.serialize is serialize
    assert deferred.run is run
    assert deferred.invoke_member is invoke_member


# --- what an error may say about a payload ------------------------------------------------

SECRET = b"password=hunter2 \xc3("
#: (len, ('password=hunter2 \xc3(',), {}) whose text is not UTF-8: the decoder's error
#: quotes the bytes.
BAD_TEXT = b"\x80\x03cbuiltins\nlen\nX" + len(SECRET).to_bytes(4, "little") + SECRET + b"\x85}\x87."
#: int("password=hunter2") while unpickling: the ValueError quotes the argument.
BAD_INT = b"\x80\x02c__builtin__\nint\nX\x10\x00\x00\x00password=hunter2\x85R)}\x87."


@pytest.mark.parametrize(
    ("pickled", "reason"),
    [
        (BAD_TEXT, "UnicodeDecodeError: a string is not valid utf-8"),
        (BAD_INT, "ValueError"),
    ],
    ids=["undecodable text", "constructor error"],
)
def test_unpickling_errors_name_the_error_never_the_payload(pickled: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        load_call(pickled)
    assert str(caught.value).startswith(f"the payload does not unpickle: {reason}")
    # Not in the message, nor in the traceback a log prints (causes included).
    assert "hunter2" not in "".join(traceback.format_exception(caught.value))


def test_an_undecodable_payload_leaves_no_argument_in_logs_or_dead_letters(
    signed_client: Client, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    with caplog.at_level(logging.DEBUG):
        response = call(Handler(client=signed_client), environ(BAD_TEXT, headers=auth))
    assert (response.code, response.body) == (200, b"PermanentTaskFailure")
    assert isinstance(signed_client.dead_letters, InMemoryDeadLetters)
    [letter] = signed_client.dead_letters.letters
    assert "UnicodeDecodeError" in letter.reason
    assert "hunter2" not in letter.reason
    assert "permanent failure" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_stored_payloads_key_argument_is_not_quoted_when_invalid() -> None:
    from cloudtasks_deferred.storage import entities as storage

    with pytest.raises(InvalidPayloadError, match="not a URL-safe Datastore key") as caught:
        storage.parse_key("password=hunter2", storage.DeferredTaskEntity)
    assert "hunter2" not in str(caught.value)
    # A logged traceback shows no cause (whose text could quote the value).
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_describe_callable_names_only_a_member_that_is_a_name() -> None:
    job = tasks.Counter(1)
    assert describe_callable(invoke_member, (job, "add")) == "tests.tasks.Counter.add"
    shown = describe_callable(invoke_member, (job, "password=hunter2\nforged log line"))
    assert shown == "cloudtasks_deferred.payload.invoke_member"
