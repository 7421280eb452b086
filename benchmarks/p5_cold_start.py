"""P5: cold ``import cloudtasks_deferred`` plus building the WSGI handler.

Each sample is a fresh interpreter that times, inside itself, the import and
``wrap_wsgi_app(...)`` and reports whether ``google.cloud.tasks_v2`` got imported
(it must not: the request path never needs it). Reported beside a cold
``import google.cloud.tasks_v2`` measured the same way, alternating, medians.
"""

from __future__ import annotations

import subprocess
import sys

from .common import Result, median

TARGET_MS = 150.0

_OURS = """
import sys, time
started = time.perf_counter()
import cloudtasks_deferred
app = cloudtasks_deferred.wrap_wsgi_app(lambda environ, start_response: [])
elapsed = time.perf_counter() - started
print(elapsed, int("google.cloud.tasks_v2" in sys.modules))
"""
_TASKS = """
import time
started = time.perf_counter()
import google.cloud.tasks_v2
print(time.perf_counter() - started, 1)
"""


def _sample(code: str) -> tuple[float, bool]:
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(output[0]) * 1000, output[1] == "1"


def run(quick: bool = False) -> Result:
    samples = 5 if quick else 15
    ours: list[float] = []
    tasks: list[float] = []
    for _ in range(samples):
        elapsed, loaded_tasks = _sample(_OURS)
        if loaded_tasks:
            raise AssertionError("importing cloudtasks_deferred imported google.cloud.tasks_v2")
        ours.append(elapsed)
        tasks.append(_sample(_TASKS)[0])
    return Result(
        key="P5",
        title="cold import + wrap_wsgi_app (no tasks_v2)",
        value=median(ours),
        unit="ms",
        target=TARGET_MS,
        detail=f"median of {samples}; import google.cloud.tasks_v2 alone: {median(tasks):.0f} ms",
    )
