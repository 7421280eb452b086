"""Task code the allowlisted deployments in the security tests allow (and nothing else).

It imports things a payload must not reach through it: ``os``, the canary, and
``invoke_member``; the allowlist refuses each even though this module is allowed. It
holds things a payload must not change: ``CONFIG``, ``NAMES``, ``TAGS``, ``Job``.
"""

from __future__ import annotations

import os  # reachable as allowed_tasks.os: the allowlist must refuse it
from random import getrandbits  # noqa: F401 - a built-in method of a Random: refused
from typing import Any

from tests import tasks
from tests.tasks import CANARY_DIR_VARIABLE, RECORDER, canary  # canary: refused too

__all__ = [
    "CONFIG",
    "NAMES",
    "TAGS",
    "Dynamic",
    "Job",
    "Relay",
    "call",
    "canary",
    "job_class",
    "lookup",
    "noop",
    "record",
    "record_call",
    "witness",
]

CONFIG: dict[str, str] = {"mode": "test"}
NAMES: list[str] = ["default"]
TAGS: set[str] = {"test"}
#: A built-in bound method (its ``__module__`` is None); calling it with
#: ``("canary", ...)`` would show as a canary call, so the allowlist must refuse it.
record_call = RECORDER.calls.append


def noop(*args: Any, **kwargs: Any) -> str:
    """A task that does nothing (for health checks across processes)."""
    return "ok"


def record(value: Any = None) -> None:
    """A task whose run the in-process tests can see."""
    RECORDER.add("allowed_record", value)


class Job:
    """A class whose methods are deferred; ``fire`` would call the canary."""

    def __init__(self, name: str = "job") -> None:
        self.name = name

    def run(self) -> str:
        RECORDER.add("job", self.name)
        return self.name

    def fire(self) -> None:
        canary("Job.fire ran")

    def _unlisted(self) -> None:
        canary("Job._unlisted ran")

    def witness(self) -> str:
        return witness(f"job-{self.name}")

    @staticmethod
    def static_record(value: Any) -> None:
        RECORDER.add("static", value)


def job_class() -> type[Job]:
    """Listed code that returns a class: what it returns must not be filled in either."""
    return Job


def witness(label: str) -> str:
    """An innocent task that leaves proof it ran, in this process and across processes.

    The battery runs it after each hostile request: what runs must still be this.
    """
    RECORDER.add("witness", label)
    directory = os.environ.get(CANARY_DIR_VARIABLE)
    if directory:
        path = os.path.join(directory, "..", "witnesses")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f"{label}-{os.getpid()}-{os.urandom(4).hex()}"), "w"):
            pass
    return label


def call(func: Any, *args: Any) -> Any:
    """Listed code that calls what it is given (a payload may hand it a marker)."""
    return func(*args)


def lookup(name: str) -> Any:
    """Listed code that returns whatever tests.tasks holds: a gadget, not a task."""
    return getattr(tasks, name)


class Relay:
    """A class whose attribute is a function defined elsewhere: calling it is refused."""

    relay = canary

    def __init__(self) -> None:
        self.label = "relay"


class Dynamic:
    """A class that answers any attribute: a member call on it is refused."""

    def __getattr__(self, name: str) -> Any:
        return canary
