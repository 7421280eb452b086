"""P5: cold ``import cloudtasks_deferred`` plus building the WSGI handler.

Each sample is a fresh interpreter that times, inside itself, the import and
``wrap_wsgi_app(...)`` and reports whether ``google.cloud.tasks_v2`` got imported
(it must not: the request path never needs it). Reported beside a cold
``import google.cloud.tasks_v2`` measured the same way, alternating, medians.

Both sides import from bytecode, as they do once pip has installed them (pip
byte-compiles). A source checkout run with ``PYTHONDONTWRITEBYTECODE`` compiles
each of its modules on every start; that figure is printed beside, for
information.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

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


def _sample(code: str, env: dict[str, str]) -> tuple[float, bool]:
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return float(output[0]) * 1000, output[1] == "1"


def _ours(env: dict[str, str]) -> float:
    elapsed, loaded_tasks = _sample(_OURS, env)
    if loaded_tasks:
        raise AssertionError("importing cloudtasks_deferred imported google.cloud.tasks_v2")
    return elapsed


def _package_dir() -> str:
    spec = importlib.util.find_spec("cloudtasks_deferred")
    if spec is None or spec.origin is None:
        raise RuntimeError("cloudtasks_deferred is not installed: run scripts/bootstrap")
    return os.path.dirname(os.path.abspath(spec.origin))


def run(quick: bool = False) -> Result:
    samples = 5 if quick else 15
    ours: list[float] = []
    tasks: list[float] = []
    from_source: list[float] = []
    with tempfile.TemporaryDirectory(prefix="p5-bytecode-") as cache:
        # A private bytecode cache: nothing is written beside the sources.
        compiled = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        compiled["PYTHONPYCACHEPREFIX"] = cache
        _ours(compiled)
        _sample(_TASKS, compiled)
        for _ in range(samples):
            ours.append(_ours(compiled))
            tasks.append(_sample(_TASKS, compiled)[0])
        # The same, but our own modules compiled at every start, as in a source
        # checkout run with PYTHONDONTWRITEBYTECODE.
        shutil.rmtree(os.path.join(cache, _package_dir().lstrip(os.sep)))
        uncompiled = {**compiled, "PYTHONDONTWRITEBYTECODE": "1"}
        from_source = [_ours(uncompiled) for _ in range(max(3, samples // 3))]
    return Result(
        key="P5",
        title="cold import + wrap_wsgi_app (no tasks_v2)",
        value=median(ours),
        unit="ms",
        target=TARGET_MS,
        detail=(
            f"median of {samples}, from bytecode; import google.cloud.tasks_v2 alone: "
            f"{median(tasks):.0f} ms; our modules compiled at every start "
            f"(informational): {median(from_source):.0f} ms"
        ),
    )
