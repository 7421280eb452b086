"""Task code the allowlisted deployments in the security tests allow (and nothing else).

It imports things a payload must not reach through it: ``os``, the canary, and
``invoke_member``; the allowlist refuses each even though this module is allowed. It
holds things a payload must not change: ``CONFIG``, ``NAMES``, ``TAGS``, ``Job``.
"""

from __future__ import annotations

import os  # noqa: F401 - reachable as allowed_tasks.os: the allowlist must refuse it
from random import getrandbits  # noqa: F401 - a built-in method of a Random: refused
from typing import Any

from tests import tasks  # noqa: F401 - allowed_tasks.tasks.canary must be refused
from tests.tasks import RECORDER, canary  # canary re-exported: must be refused too

__all__ = [
    "CONFIG",
    "NAMES",
    "TAGS",
    "Job",
    "canary",
    "job_class",
    "noop",
    "record",
    "record_call",
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

    @staticmethod
    def static_record(value: Any) -> None:
        RECORDER.add("static", value)


def job_class() -> type[Job]:
    """Listed code that returns a class: what it returns must not be filled in either."""
    return Job
