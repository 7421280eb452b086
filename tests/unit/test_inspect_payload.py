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

from cloudtasks_deferred.frame import MAGIC, SigningKey, encode
from cloudtasks_deferred.inspect_payload import (
    MAX_INPUT_BYTES,
    InspectError,
    format_inspection,
    inspect_input,
)
from cloudtasks_deferred.payload import invoke_member, serialize
from tests import tasks
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
            "datetime.datetime(b",
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
        (encode(b"\x80\x05NN."), "not a readable pickle"),
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
