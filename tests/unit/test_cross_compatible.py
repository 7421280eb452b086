"""Split-traffic migrations: payloads a Python 2 version of the app can run, and so can we.

With ``CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_PAYLOADS``, ``defer`` writes what the Python 2
SDK's ``deferred.defer`` wrote: a bare protocol 2 pickle whose names are Python 2's
(``__builtin__``, ``copy_reg``, ``google.appengine.ext.deferred.deferred.invoke_member``).
The tests read every opcode with ``pickletools`` and run the task through our handler.
"""

from __future__ import annotations

import dataclasses
import datetime
import pickletools
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred import ConfigurationError, PayloadTooLargeError, Settings, deferred
from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.oversized import place
from cloudtasks_deferred.enqueue.tasks import build_task
from cloudtasks_deferred.payload.calls import serialize_for_python2
from cloudtasks_deferred.payload.frame import MAGIC, SigningKey
from cloudtasks_deferred.payload.retry import TaskRetryOptions
from cloudtasks_deferred.settings import Platform
from cloudtasks_deferred.testing import in_memory_queue
from tests import tasks
from tests.tasks import RECORDER

CROSS = Settings(
    project="test-project",
    location="us-central1",
    platform=Platform.APP_ENGINE,
    app_engine_service="default",
    ndb=False,
    cross_compatible_payloads=True,
)
PYTHON_3_ONLY_MODULES = {"builtins", "copyreg", "cloudtasks_deferred.payload.calls"}


def globals_of(body: bytes) -> list[str]:
    """Every ``module name`` the pickle references, in order."""
    names = []
    for opcode, argument, _ in pickletools.genops(body):
        assert opcode.proto <= 2, f"{opcode.name} needs protocol {opcode.proto}"
        if opcode.name == "GLOBAL":
            names.append(str(argument))
    return names


def test_defer_writes_a_protocol_2_pickle_with_python_2_names() -> None:
    when = datetime.datetime(2024, 2, 29, 12, 0, 0, 999999)
    with in_memory_queue(CROSS) as queue:
        deferred.defer(tasks.Counter(5).add, 2)
        deferred.defer(tasks.record, {"s": "naïve", "b": b"\xff\x00", "set": {1}, "when": when})
        bodies = [task.app_engine_http_request.body for task in queue.tasks]
        assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]

    member, direct = bodies
    assert not member.startswith(MAGIC)
    assert member[:2] == b"\x80\x02"
    assert globals_of(member) == [
        "google.appengine.ext.deferred.deferred invoke_member",
        "tests.tasks Counter",
    ]
    direct_globals = globals_of(direct)
    assert "tests.tasks record" in direct_globals
    assert "__builtin__ set" in direct_globals
    assert not {name.split()[0] for name in direct_globals} & PYTHON_3_ONLY_MODULES
    # ... and our handler ran both, with exactly the arguments given.
    assert RECORDER.named("method") == [7]
    assert RECORDER.named("record") == [{"s": "naïve", "b": b"\xff\x00", "set": {1}, "when": when}]


def test_the_setting_is_read_from_the_environment() -> None:
    environ = {
        "GAE_ENV": "standard",
        "GAE_SERVICE": "default",
        "GAE_APPLICATION": "s~test-project",
        "CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_PAYLOADS": "true",
    }
    assert Settings.from_env(environ).cross_compatible_payloads is True
    assert Settings.from_env({}).cross_compatible_payloads is False


@pytest.mark.parametrize(
    "changes",
    [
        {"signing_keys": (SigningKey("k1", b"s" * 32),)},
        {"base_url": "https://tasks.test", "service_account": "a@b.iam.gserviceaccount.com"},
    ],
    ids=["signing keys", "HTTP tasks"],
)
def test_cross_compatible_payloads_refuse_what_python_2_cannot_read(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError, match="CLOUDTASKS_DEFERRED_CROSS_COMPATIBLE_PAYLOADS"):
        dataclasses.replace(CROSS, **changes)


@pytest.mark.parametrize(
    "option",
    [{"_retry_options": TaskRetryOptions(task_retry_limit=1)}, {"_transactional": True}],
    ids=["retry options", "transactional"],
)
def test_options_that_need_the_frame_are_refused(option: dict[str, Any]) -> None:
    with (
        in_memory_queue(CROSS) as queue,
        pytest.raises(ValueError, match="Python 2 handler cannot read"),
    ):
        deferred.defer(tasks.record, 1, **option)
    assert queue.tasks == []


def test_a_payload_too_large_for_a_task_is_refused_not_compressed_or_stored() -> None:
    with in_memory_queue(CROSS) as queue:
        client = queue.client
    options, _ = split_options({})

    def build(body: bytes) -> Any:
        return build_task(body, options, client.settings, parent="projects/p/locations/l/queues/q")

    fits = serialize_for_python2(tasks.record, b"x" * 500_000)
    assert place(client, fits, {}, build).task is not None
    too_large = serialize_for_python2(tasks.record, b"x" * 1_100_000)
    with pytest.raises(PayloadTooLargeError, match="neither compressed nor stored"):
        place(client, too_large, {}, build)
