"""The public surface is pinned: nothing leaks or vanishes by accident."""

from __future__ import annotations

import subprocess
import sys

import cloudtasks_deferred
from cloudtasks_deferred import deferred

LEGACY = {
    "Error",
    "Handler",
    "PermanentTaskFailure",
    "SingularTaskFailure",
    "TaskAlreadyExistsError",
    "TaskRetryOptions",
    "TombstonedTaskError",
    "application",
    "current_task",
    "defer",
    "invoke_member",
    "run",
    "run_from_datastore",
    "serialize",
    "set_log_level",
    "wrap_wsgi_app",
}
#: Bulk enqueue, beside the legacy names in both places.
BULK = {"Call", "defer_many"}


def test_package_all_is_pinned() -> None:
    assert set(cloudtasks_deferred.__all__) == LEGACY | BULK | {
        "deferred",
        "ConfigurationError",
        "Client",
        "Settings",
        "TaskInfo",
        "PayloadTooLargeError",
        "BadTransactionStateError",
        "DeadLetterError",
        "DeadLetters",
    }
    assert len(cloudtasks_deferred.__all__) == len(set(cloudtasks_deferred.__all__))


def test_deferred_module_is_the_legacy_surface_and_bulk_enqueue() -> None:
    assert set(deferred.__all__) == LEGACY | BULK


def test_package_and_module_expose_the_same_objects() -> None:
    for name in LEGACY | BULK:
        assert getattr(cloudtasks_deferred, name) is getattr(deferred, name), name


def test_every_exported_name_exists() -> None:
    for module in (cloudtasks_deferred, deferred):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_importing_and_building_the_handler_loads_no_heavy_google_modules() -> None:
    code = (
        "import sys, cloudtasks_deferred as d\n"
        "app = d.wrap_wsgi_app(lambda e, s: [])\n"
        "h = d.Handler()\n"
        "heavy = [m for m in ('google.cloud.tasks_v2', 'google.auth', 'grpc', 'requests')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
