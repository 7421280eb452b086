"""Deferrable callables for the tests: module level, so pickle can find them."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cloudtasks_deferred import (
    PermanentTaskFailure,
    SingularTaskFailure,
    current_task,
    deferred,
    traces,
)


class Recorder:
    """Thread-safe record of task calls, with waiting for the emulator's deliveries."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[str, Any]] = []

    def add(self, name: str, value: Any = None) -> None:
        with self._cond:
            self.calls.append((name, value))
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self.calls.clear()

    def named(self, name: str) -> list[Any]:
        with self._cond:
            return [value for called, value in self.calls if called == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([c for c, _ in self.calls if c == name]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{name} ran {self.calls!r}, expected {count} call(s)")
                self._cond.wait(remaining)
            return [value for called, value in self.calls if called == name]


RECORDER = Recorder()


def record(value: Any = None, **kwargs: Any) -> str:
    RECORDER.add("record", (value, kwargs) if kwargs else value)
    return "recorded"


def record_task_info() -> None:
    RECORDER.add("task_info", current_task())


def fail_permanently() -> None:
    RECORDER.add("fail_permanently")
    raise PermanentTaskFailure("this task cannot succeed")


def fail_once_then_record(key: str) -> None:
    info = current_task()
    RECORDER.add("attempt", info.retry_count if info else None)
    if info is None or not info.retry_count:
        raise SingularTaskFailure("first attempt")
    RECORDER.add("fail_once_then_record", key)


def always_singular() -> None:
    RECORDER.add("always_singular")
    raise SingularTaskFailure("again")


def crash() -> None:
    RECORDER.add("crash")
    raise RuntimeError("boom")


def defer_another(value: Any) -> None:
    from cloudtasks_deferred import deferred

    deferred.defer(record, value)


#: Set for a server process (gunicorn) so that its canary calls are seen by the tests.
CANARY_DIR_VARIABLE = "SECURITY_TEST_CANARY_DIR"


def canary(*args: Any) -> None:
    """Called by unpickling a Canary: proves a payload was unpickled.

    Recorded in this process and, when ``SECURITY_TEST_CANARY_DIR`` is set, as a file
    there, so that a test can see a call made in another process.
    """
    RECORDER.add("canary", args)
    directory = os.environ.get(CANARY_DIR_VARIABLE)
    if directory:
        path = Path(directory) / f"canary-{os.getpid()}-{uuid.uuid4().hex}"
        path.write_text(repr(args))


class Canary:
    """Unpickling an instance calls canary(): a payload that must never be unpickled."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return canary, ("unpickled",)


class Counter:
    """A callable object, with methods of every kind."""

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def __call__(self, amount: int) -> int:
        RECORDER.add("call", self.start + amount)
        return self.start + amount

    def add(self, amount: int) -> int:
        RECORDER.add("method", self.start + amount)
        return self.start + amount

    @classmethod
    def make(cls, start: int) -> int:
        RECORDER.add("classmethod", start)
        return start

    @staticmethod
    def double(value: int) -> int:
        RECORDER.add("staticmethod", value * 2)
        return value * 2

    def __secret(self) -> str:
        RECORDER.add("private", self.start)
        return "secret"

    def secret_method(self) -> Any:
        return self.__secret


class Point:
    """A class whose construction is the task."""

    def __init__(self, x: int, y: int) -> None:
        RECORDER.add("Point", (x, y))


def fingerprint(blob: bytes) -> tuple[int, str]:
    """What a payload test compares: the size and SHA-256 of the bytes a task got."""
    import hashlib

    return len(blob), hashlib.sha256(blob).hexdigest()


def digest(blob: bytes) -> tuple[int, str]:
    RECORDER.add("digest", fingerprint(blob))
    return fingerprint(blob)


def digest_then_fail_permanently(blob: bytes) -> None:
    RECORDER.add("digest_then_fail_permanently", fingerprint(blob))
    raise PermanentTaskFailure("this task cannot succeed")


def fail_twice_then_record(key: str) -> None:
    """Raises RuntimeError (a 500) on the first two attempts, records on the third."""
    info = current_task()
    RECORDER.add("attempt", info)
    if info is None or (info.retry_count or 0) < 2:
        raise RuntimeError("this attempt fails with a 500")
    RECORDER.add("fail_twice_then_record", key)


def crash_once_then_digest(blob: bytes) -> None:
    """Raises RuntimeError (a 500) on the first attempt, records on the retry."""
    info = current_task()
    RECORDER.add("attempt", info.retry_count if info else None)
    if info is None or not info.retry_count:
        raise RuntimeError("first attempt crashes")
    RECORDER.add("digest", fingerprint(blob))


def record_trace() -> None:
    info = current_task()
    RECORDER.add("trace", (info.trace if info else None, traces.current_trace()))


def defer_record_trace() -> None:
    record_trace()
    deferred.defer(record_trace)


def log_in_task(message: str) -> None:
    """Logs with the app's own logger, as a task's code does."""
    logging.getLogger("tests.app").warning("%s", message)
