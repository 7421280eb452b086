"""Inspecting payloads: frames, flags, metadata, task JSON, and nothing ever run."""

from __future__ import annotations

import base64
import datetime
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudtasks_deferred.payload.calls import invoke_member, serialize
from cloudtasks_deferred.payload.frame import MAGIC, SigningKey, encode
from cloudtasks_deferred.payload.inspection import (
    MAX_INPUT_BYTES,
    InspectError,
    format_inspection,
    inspect_input,
)
from tests import tasks
from tests.run_cli import clean_env, cli, one_error_line
from tests.tasks import RECORDER

KEY = SigningKey("key-2024", b"s" * 32)


def test_a_plain_call() -> None:
    found = inspect_input(encode(serialize(tasks.record, "hello", extra=1)))
    assert found.call is not None
    assert found.call.callable == "tests.tasks.record"
    report = format_inspection(found)
    assert "callable    tests.tasks.record\n" in report
    assert "arguments   'hello'\n" in report
    assert "keywords    extra=1\n" in report
    assert "frame       version 1, flags 0x00 (none)\n" in report
    assert "references  tests.tasks.record\n" in report


def test_flags_key_id_and_metadata_of_a_compressed_signed_frame() -> None:
    metadata = {"retry": {"task_retry_limit": 3, "task_age_limit": 60}, "t0": 1700000000.0}
    body = encode(serialize(tasks.record, 1), metadata, compress=True, signing_key=KEY)
    found = inspect_input(body)
    assert (found.flags, found.key_id, found.metadata) == (0x03, "key-2024", metadata)
    report = format_inspection(found)
    assert "flags 0x03 (compressed, signed)" in report
    assert "key 'key-2024' (inspect does not verify signatures)" in report
    assert "retry limits: task_retry_limit=3, task_age_limit=60" in report
    assert "task age counted from 2023-11-14T22:13:20+00:00" in report


def test_a_bad_signature_is_not_checked() -> None:
    body = encode(serialize(tasks.record, 1), signing_key=KEY)
    forged = body.replace(b"K\x01", b"K\x02")  # the argument changed after signing
    assert forged != body
    found = inspect_input(forged)
    assert found.key_id == "key-2024"
    assert found.call is not None
    assert found.call.args == (2,)


def test_unknown_metadata_is_shown_as_json() -> None:
    report = format_inspection(inspect_input(encode(serialize(tasks.record), {"outbox": [1]})))
    assert "outbox: [1]" in report


def test_a_bare_legacy_pickle() -> None:
    found = inspect_input(serialize(tasks.Point, 5, 6))
    assert found.frame_version is None
    report = format_inspection(found)
    assert "frame       none: a bare pickle" in report
    assert "arguments   5, 6\n" in report


@pytest.mark.parametrize(
    ("func", "callable_name", "target"),
    [
        (tasks.Counter(20).add, "tests.tasks.Counter.add", "<tests.tasks.Counter object"),
        (tasks.Counter.make, "tests.tasks.Counter.make", "tests.tasks.Counter"),
        (
            datetime.datetime(2024, 1, 1).isoformat,
            "datetime.datetime.isoformat",
            "datetime.datetime(2024, 1, 1, 0, 0)",
        ),
    ],
)
def test_member_calls_name_the_class_and_member(func: Any, callable_name: str, target: str) -> None:
    found = inspect_input(encode(serialize(func)))
    assert found.call is not None
    assert found.call.callable == callable_name
    assert "on object   " + target in format_inspection(found)


def test_member_calls_on_protocol_0_objects_name_their_class() -> None:
    call = (invoke_member, (tasks.Counter(1), "add", 5), {})
    found = inspect_input(encode(pickle.dumps(call, protocol=0)))
    assert found.call is not None
    assert found.call.callable == "tests.tasks.Counter.add"
    assert found.call.args == (5,)


def test_nothing_is_unpickled_or_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    canary = inspect_input(encode(serialize(tasks.record, tasks.Canary())))
    system = inspect_input(encode(serialize(os.system, f"touch {marker}")))
    assert "tests.tasks.canary('unpickled')" in format_inspection(canary)
    assert system.call is not None
    assert system.call.callable == f"{os.system.__module__}.system"
    assert RECORDER.named("canary") == []
    assert not marker.exists()


def test_a_missing_module_is_named_not_imported() -> None:
    pickled = serialize(tasks.record, "x").replace(b"\x8c\x0btests.tasks", b"\x8c\x0bno_such_mod")
    found = inspect_input(encode(pickled))
    assert found.call is not None
    assert found.call.callable == "no_such_mod.record"
    assert "no_such_mod" not in sys.modules


def test_a_pickle_that_is_not_a_call_has_no_call() -> None:
    found = inspect_input(encode(pickle.dumps(tasks.Canary(), protocol=5)))
    assert found.call is None
    assert "problem" in format_inspection(found)


def test_disassembly_lists_the_opcodes() -> None:
    report = format_inspection(inspect_input(serialize(tasks.record, 1)), disassemble=True)
    assert "STACK_GLOBAL" in report
    assert "SHORT_BINUNICODE 'tests.tasks'" in report


def task_json(payload: bytes | None, **request: Any) -> bytes:
    http: dict[str, Any] = {
        "url": "http://127.0.0.1:8080/_ah/queue/deferred",
        "httpMethod": "POST",
        "headers": {"Authorization": "Bearer secret-token"},
        **request,
    }
    if payload is not None:
        http["body"] = base64.b64encode(payload).decode()
    task = {
        "name": "projects/p/locations/l/queues/default/tasks/123",
        "httpRequest": http,
        "scheduleTime": "2024-01-01T00:00:00Z",
        "dispatchCount": 2,
    }
    return json.dumps(task, indent=2).encode()


def test_task_json_from_gcloud() -> None:
    found = inspect_input(task_json(encode(serialize(tasks.record, 7))))
    report = format_inspection(found)
    assert "task        projects/p/locations/l/queues/default/tasks/123\n" in report
    assert "target      http://127.0.0.1:8080/_ah/queue/deferred\n" in report
    assert "scheduled   2024-01-01T00:00:00Z\n" in report
    assert "dispatches  2\n" in report
    assert "arguments   7\n" in report
    assert "secret-token" not in report


def test_app_engine_task_json() -> None:
    task = {
        "name": "projects/p/locations/l/queues/default/tasks/9",
        "appEngineHttpRequest": {
            "relativeUri": "/_ah/queue/deferred",
            "body": base64.b64encode(serialize(tasks.record)).decode(),
        },
    }
    report = format_inspection(inspect_input(json.dumps(task).encode()))
    assert "target      /_ah/queue/deferred\n" in report


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello", "not a deferred task payload"),
        (MAGIC + b"\x09\x00\x00\x00", "needs a newer cloudtasks_deferred"),
        (MAGIC + b"\x01\x01\x00\x00" + b"not zlib", "compressed payload is corrupt"),
        (b"{not json", "not JSON"),
        (b"[1]", "not a deferred task payload"),
        (b'{"a": 1}', "neither httpRequest nor appEngineHttpRequest"),
        (task_json(None), "--response-view=full"),
        (task_json(None, body="***"), "not base64"),
        (b"\x80" * (MAX_INPUT_BYTES + 1), "a task is at most 1 MB"),
    ],
)
def test_what_is_not_a_payload_is_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InspectError, match=message):
        inspect_input(data)


# Malformed input: what could be read, and the problem (issue 10, class 5).


def test_a_truncated_pickle_is_reported_with_what_was_read() -> None:
    pickled = serialize(tasks.record, "x", os.system)
    found = inspect_input(encode(pickled[:-12], {"retry": {"task_retry_limit": 2}}))
    assert found.call is None
    assert found.problem is not None
    assert found.problem.startswith("the payload is not a readable pickle: ")
    assert [str(ref) for ref in found.references] == ["tests.tasks.record"]
    report = format_inspection(found, disassemble=True)
    assert "retry limits: task_retry_limit=2" in report
    assert "references  tests.tasks.record (read before the problem)\n" in report
    assert "(the listing stops here: " in report


@pytest.mark.parametrize(
    ("pickled", "problem"),
    [
        (b"\x80\x05NN.", "the pickle stops with a malformed stack"),
        (b"\x80\x04j\xff\xff\xff\xff.", "memo entry 4294967295 was never stored"),
        (
            b"\x80\x02\x8d" + (1 << 62).to_bytes(8, "little") + b".",
            "expected 4611686018427387904 bytes",
        ),
        (b"\x80\x05\xf0", "unknown opcode b'\\xf0'"),
        (b"L" + b"9" * 5000 + b"L\n.", "Exceeds the limit (4300 digits)"),
    ],
    ids=["stack", "memo", "forged-length", "garbage", "long-text"],
)
def test_malformed_pickles_say_what_is_wrong(pickled: bytes, problem: str) -> None:
    found = inspect_input(encode(pickled))
    assert found.problem is not None
    assert problem in found.problem


def test_too_many_opcodes_stop_the_reading() -> None:
    found = inspect_input(encode(b"\x80\x05" + b"N" * 1_000_001 + b".", compress=True))
    assert found.problem is not None
    assert found.problem.endswith("stopped after 1,000,000 opcodes: too many to read")


def test_a_huge_integer_is_shown_by_its_size() -> None:
    huge = 1 << 20_000
    report = format_inspection(inspect_input(encode(serialize(tasks.record, huge))))
    assert "arguments   <an int of 20,001 bits>\n" in report


def test_a_long_argument_list_is_cut_to_one_row() -> None:
    found = inspect_input(encode(serialize(tasks.record, *range(10_000))))
    row = next(line for line in format_inspection(found).splitlines() if line.startswith("argu"))
    assert len(row) < 5000
    assert row.endswith("more)")


def test_what_the_terminal_would_interpret_is_escaped() -> None:
    call = (invoke_member, (tasks.Counter(1), "\x1b]0;owned\x07", 1), {"\x1b[2J": 2})
    metadata = {"\x1b[31m": 1, "t0": 1e300}
    report = format_inspection(inspect_input(encode(pickle.dumps(call, protocol=5), metadata)))
    assert "\x1b" not in report
    assert "\x07" not in report
    assert "callable    tests.tasks.Counter.'\\x1b]0;owned\\x07'\n" in report
    assert "keywords    '\\x1b[2J'=2\n" in report
    assert "task age counted from 1e+300 (not a time)" in report


def test_json_nested_too_deeply_is_refused() -> None:
    with pytest.raises(InspectError, match="nests too deeply"):
        inspect_input(b'{"a":' + b"[" * 100_000)
    with pytest.raises(InspectError, match="metadata is not JSON"):
        inspect_input(MAGIC + b"\x01\x00" + (20_000).to_bytes(2, "big") + b"[" * 20_000)


def test_the_disassembly_is_bounded() -> None:
    found = inspect_input(encode(b"\x80\x02" + b"(" * 30_000 + b"l" * 30_000 + b"."))
    listing = format_inspection(found, disassemble=True).split("\n\n", 1)[1]
    assert listing.count("\n") == 20_001
    assert "(the listing stops after 20,000 opcodes)" in listing


# Python 2's payloads read readably (issue 15, item 4).

#: (tests.tasks.record, (datetime(2024, 1, 2, 3, 4, 5, 678901),), {}) as the legacy
#: library's serialize() pickled it on Python 2 (protocol 2, the str as SHORT_BINSTRING).
PY2_CALL = (
    b"\x80\x02ctests.tasks\nrecord\nq\x00cdatetime\ndatetime\nq\x01"
    b"U\n\x07\xe8\x01\x02\x03\x04\x05\n[\xf5q\x02\x85q\x03Rq\x04\x85q\x05}q\x06\x87q\x07."
)
#: The same datetime pickled by Python 2 at protocol 0, as an argument inside a frame.
PY2_DATETIME_0 = b"cdatetime\ndatetime\n(S'\\x07\\xe8\\x01\\x02\\x03\\x04\\x05\\n[\\xf5'\ntR"


@pytest.mark.parametrize(
    "body",
    [PY2_CALL, encode(b"(ctests.tasks\nrecord\n(" + PY2_DATETIME_0 + b"t(dt.")],
    ids=["protocol-2", "protocol-0"],
)
def test_a_python_2_payload_with_a_datetime(body: bytes) -> None:
    pickled = body if body.startswith(b"\x80") else body[8:]
    assert pickle.loads(pickled, encoding="latin1")[1][0] == datetime.datetime(
        2024, 1, 2, 3, 4, 5, 678901
    )
    report = format_inspection(inspect_input(body))
    assert "arguments   datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)\n" in report


# The command, as a user runs it.


def test_the_command_shows_a_python_2_datetime(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(PY2_CALL)
    result = cli("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "arguments   datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)\n" in result.stdout


def test_the_command_reports_a_malformed_pickle_and_exits_1() -> None:
    body = encode(serialize(tasks.record, "x")[:-3])
    result = cli("inspect", "-", stdin=body)
    assert result.returncode == 1
    assert result.stderr == ""
    assert "problem     the payload is not a readable pickle: " in result.stdout
    assert "references  tests.tasks.record (read before the problem)" in result.stdout


def test_the_command_refuses_what_is_not_a_payload_in_one_line() -> None:
    result = cli("inspect", "-", stdin=b"\x00garbage")
    assert result.returncode == 1
    assert result.stdout == ""
    assert one_error_line(result, "cloudtasks-deferred inspect: ") == (
        "cloudtasks-deferred inspect: the body is not a deferred task payload"
    )


def test_the_command_survives_an_ascii_terminal(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(encode(serialize(tasks.record, "café ☕")))
    result = cli("inspect", str(path), env=clean_env(PYTHONIOENCODING="ascii"))
    assert result.returncode == 0, result.stderr
    assert "arguments   'caf\\xe9 \\u2615'" in result.stdout
