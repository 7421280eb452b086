"""defer_many: a result per call in input order, shared and own options, concurrency, bad input."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import pickle
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from cloudtasks_deferred import (
    Call,
    Client,
    TaskAlreadyExistsError,
    TaskRetryOptions,
    deferred,
)
from cloudtasks_deferred.enqueue import bulk, oversized
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.retry import RetryOptionsWarning
from cloudtasks_deferred.testing import TEST_SETTINGS, in_memory_queue
from tests import tasks

SETTINGS = dataclasses.replace(TEST_SETTINGS, ndb=False)


class SlowFirstTransport(InMemoryTransport):
    """Answers the first tasks last: each waits longer the earlier its argument."""

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        time.sleep(0.002 * (20 - argument_of(task)))
        return super().create_task(parent, task)


class RefusingTransport(InMemoryTransport):
    """Refuses tasks whose argument is in ``refused``, as Cloud Tasks would."""

    def __init__(self, refused: set[int]) -> None:
        super().__init__()
        self.refused = refused

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        if argument_of(task) in self.refused:
            raise exceptions.PermissionDenied("The principal lacks cloudtasks.tasks.create")
        return super().create_task(parent, task)


class GatedTransport(InMemoryTransport):
    """Lets tasks through in groups of ``width`` in flight at once, and counts the most."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(width, timeout=10)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0

    def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            self.barrier.wait()
            return super().create_task(parent, task)
        finally:
            with self.lock:
                self.in_flight -= 1


def argument_of(task: tasks_v2.Task) -> Any:
    """The first argument of the call a task carries."""
    return Client(SETTINGS).open_payload(task.http_request.body).args[0]


def client_with(transport: InMemoryTransport) -> Client:
    return Client(SETTINGS, transport=transport)


def test_results_are_in_input_order_whatever_order_the_tasks_are_created_in() -> None:
    transport = SlowFirstTransport()
    results = client_with(transport).defer_many(
        [Call(tasks.record, index) for index in range(20)], max_workers=20
    )
    assert [argument_of(task) for task in results] == list(range(20))
    created = [argument_of(task) for task in transport.tasks]
    assert sorted(created) == list(range(20))
    assert created != list(range(20))  # they did complete out of order
    assert {task.name for task in results} == {task.name for task in transport.tasks}


def test_each_call_is_the_defer_call_it_replaces() -> None:
    with in_memory_queue(SETTINGS) as queue:
        [task] = deferred.defer_many([Call(tasks.record, "bulk", extra=1, _queue="mail")])
        alone = deferred.defer(tasks.record, "bulk", extra=1, _queue="mail")
        assert task.name.split("/queues/")[1].startswith("mail/tasks/")
        assert task.http_request.url == alone.http_request.url
        assert dict(task.http_request.headers) == dict(alone.http_request.headers)
        assert task.http_request.oidc_token == alone.http_request.oidc_token
        opened = queue.client.open_payload(task.http_request.body)
        assert (opened.func, opened.args, opened.kwargs) == (tasks.record, ("bulk",), {"extra": 1})
        queue.run_pending()
    assert tasks.RECORDER.named("record") == [("bulk", {"extra": 1})] * 2


def test_a_failing_call_stops_no_other_and_its_exception_is_its_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RefusingTransport(refused={3})
    calls = [
        Call(tasks.record, 0),
        Call(lambda: None),  # not picklable
        Call(tasks.record, 2, _countdwn=5),  # a mistyped option
        Call(tasks.record, 3),  # refused by Cloud Tasks
        Call(tasks.record, 4, _name="taken"),
        Call(tasks.record, 5, _name="taken"),
        Call(tasks.record, 6),
    ]
    with caplog.at_level(logging.WARNING, logger="cloudtasks_deferred.enqueue.bulk"):
        results = client_with(transport).defer_many(calls)
    assert isinstance(results[0], tasks_v2.Task)
    assert isinstance(results[1], (pickle.PicklingError, AttributeError))
    assert isinstance(results[2], TypeError)
    assert "did you mean _countdown" in str(results[2])
    assert isinstance(results[3], exceptions.PermissionDenied)
    assert "roles/cloudtasks.enqueuer" in "".join(results[3].__notes__)
    taken = [result for result in results[4:6] if isinstance(result, TaskAlreadyExistsError)]
    assert len(taken) == 1  # one of the two got the name, the other is told it is taken
    assert isinstance(results[6], tasks_v2.Task)
    named = [index for index in (4, 5) if not isinstance(results[index], Exception)]
    assert sorted(argument_of(task) for task in transport.tasks) == [0, *named, 6]
    [line] = caplog.messages
    assert "4 of 7 calls failed" in line
    assert "1 TypeError" in line
    assert "1 PermissionDenied" in line


def test_shared_options_apply_to_every_call_and_a_calls_own_replace_them() -> None:
    eta = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    with in_memory_queue(SETTINGS):
        shared, own_queue, own_eta, own_headers = deferred.defer_many(
            [
                Call(tasks.record, 0),
                Call(tasks.record, 1, _queue="default"),
                Call(tasks.record, 2, _eta=eta),
                Call(tasks.record, 3, _headers={"X-Own": "1"}),
            ],
            _queue="mail",
            _countdown=600,
            _headers={"X-Shared": "1"},
        )
    assert isinstance(shared, tasks_v2.Task)
    assert "/queues/mail/" in shared.name
    assert "/queues/default/" in own_queue.name
    for task in (shared, own_queue, own_headers):
        scheduled = task.schedule_time - datetime.now(UTC)
        assert timedelta(minutes=9) < scheduled <= timedelta(minutes=10)
    assert own_eta.schedule_time == eta  # its _eta replaced the shared _countdown
    assert "X-Shared" in shared.http_request.headers
    assert "X-Own" in own_headers.http_request.headers
    assert "X-Shared" not in own_headers.http_request.headers


@pytest.mark.parametrize(
    ("calls", "options", "error", "message"),
    [
        ([(tasks.record, (1,), {})], {}, TypeError, r"calls\[0\] is a tuple, not a Call"),
        (Call(tasks.record, 1), {}, TypeError, "takes an iterable of Call, got Call"),
        ("tasks", {}, TypeError, "takes an iterable of Call, got str"),
        ([Call(tasks.record, 1)], {"queue": "mail"}, TypeError, "start with '_'"),
        ([Call(tasks.record, 1)], {"_countdwn": 5}, TypeError, "_countdown"),
        ([Call(tasks.record, 1)], {"_countdown": -5}, ValueError, "_countdown"),
        ([Call(tasks.record, 1)], {"_name": "same"}, ValueError, "give each Call its own"),
        ([Call(tasks.record, 1)], {"max_workers": 0}, ValueError, "at least 1"),
        ([Call(tasks.record, 1)], {"max_workers": True}, TypeError, "must be an int"),
        ([Call(tasks.record, 1)], {"max_workers": 2.5}, TypeError, "must be an int"),
    ],
)
def test_bad_batch_input_raises_before_anything_is_sent(
    calls: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    transport = InMemoryTransport()
    with pytest.raises(error, match=message):
        client_with(transport).defer_many(calls, **options)
    assert transport.tasks == []


def test_an_empty_batch_sends_nothing() -> None:
    assert client_with(InMemoryTransport()).defer_many([]) == []
    assert client_with(InMemoryTransport()).defer_many(iter(())) == []


def test_calls_may_come_from_a_generator() -> None:
    transport = InMemoryTransport()
    results = client_with(transport).defer_many(Call(tasks.record, index) for index in range(3))
    assert [argument_of(task) for task in results] == [0, 1, 2]


def test_round_trips_run_max_workers_at_a_time_and_never_more() -> None:
    transport = GatedTransport(width=4)
    results = client_with(transport).defer_many(
        [Call(tasks.record, index) for index in range(40)], max_workers=4
    )
    # Each create waits until four are in flight: fewer threads would break the barrier.
    assert all(isinstance(result, tasks_v2.Task) for result in results)
    assert transport.most == 4
    assert len(transport.tasks) == 40


def test_preparing_waits_when_enough_tasks_wait_to_be_created() -> None:
    lock = threading.Lock()
    counts = {"prepared": 0, "created": 0}
    ahead: list[int] = []

    class Counted:
        """An argument that counts the calls pickled so far."""

        def __init__(self, index: int) -> None:
            self.index = index

        def __reduce__(self) -> Any:
            with lock:
                counts["prepared"] += 1
            return (int, (self.index,))

    class Slow(InMemoryTransport):
        def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
            time.sleep(0.002)
            with lock:
                ahead.append(counts["prepared"] - counts["created"])
                counts["created"] += 1
            return super().create_task(parent, task)

    results = client_with(Slow()).defer_many(
        [Call(tasks.record, Counted(i)) for i in range(200)], max_workers=2
    )
    assert [argument_of(task) for task in results] == list(range(200))
    # Never more prepared and not yet created than AHEAD per thread, plus the one in hand.
    assert max(ahead) <= bulk.AHEAD * 2 + 1


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_each_round_trip_runs_in_the_callers_context() -> None:
    seen: list[str] = []

    class Looking(InMemoryTransport):
        def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
            seen.append(REQUEST_ID.get())  # what tracing instrumentation would read
            return super().create_task(parent, task)

    token = REQUEST_ID.set("request-7")
    try:
        client_with(Looking()).defer_many([Call(tasks.record, i) for i in range(10)])
    finally:
        REQUEST_ID.reset(token)
    assert seen == ["request-7"] * 10


def test_a_payload_stored_in_datastore_is_sent_from_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []

    def enqueue_stored(client: Any, stored: bytes, metadata: Any, build: Any, create: Any) -> Any:
        threads.append(threading.current_thread())  # it uses the caller's NDB context
        return create(build(b"pointer"))

    monkeypatch.setattr(oversized, "enqueue_stored", enqueue_stored)
    transport = InMemoryTransport()
    large = os.urandom(1_200_000)
    results = client_with(transport).defer_many(
        [Call(tasks.record, 0), Call(tasks.record, large), Call(tasks.record, 2)]
    )
    assert threads == [threading.current_thread()]
    assert [task.http_request.body == b"pointer" for task in results] == [False, True, False]


def test_an_interrupted_batch_sends_no_further_call() -> None:
    interrupted = threading.Event()

    class HeldTransport(InMemoryTransport):
        def create_task(self, parent: str, task: tasks_v2.Task) -> tasks_v2.Task:
            interrupted.wait(10)  # the first call is in flight when the interrupt comes
            return super().create_task(parent, task)

    class Interrupting:
        def __reduce__(self) -> Any:
            interrupted.set()
            raise KeyboardInterrupt

    transport = HeldTransport()
    calls = [Call(tasks.record, 0), Call(tasks.record, 1)]  # in flight, and waiting
    calls += [Call(tasks.record, Interrupting()), Call(tasks.record, 3)]
    with pytest.raises(KeyboardInterrupt):
        client_with(transport).defer_many(calls, max_workers=1)
    # The call in flight finished; the one waiting for the thread, and those after, never ran.
    assert [argument_of(task) for task in transport.tasks] == [0]


def test_retry_options_warnings_point_at_the_caller() -> None:
    options = TaskRetryOptions(min_backoff_seconds=1)
    with in_memory_queue(SETTINGS):
        with pytest.warns(RetryOptionsWarning) as alone:
            deferred.defer(tasks.record, 1, _retry_options=options)
        with pytest.warns(RetryOptionsWarning) as bulk:
            deferred.defer_many([Call(tasks.record, 1)], _retry_options=options)
    assert [warning.filename for warning in (*alone, *bulk)] == [__file__, __file__]


def test_a_call_is_a_plain_record() -> None:
    call = Call(tasks.record, 1, extra=2, _queue="mail")
    assert (call.obj, call.args, dict(call.kwargs)) == (
        tasks.record,
        (1,),
        {"extra": 2, "_queue": "mail"},
    )
    assert call == Call(tasks.record, 1, extra=2, _queue="mail")
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.args = ()  # type: ignore[misc]
