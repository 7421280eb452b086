"""Served by gunicorn in test_worker_crash.py: a user's app, wrapped as the README says.

Configured by the environment the test gives the gunicorn process; the task reports
each attempt as a file in ``WORKER_CRASH_DIR``, which the test watches from outside.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cloudtasks_deferred import current_task, wrap_wsgi_app
from tests.tasks import fingerprint

#: The variable naming the directory attempts are reported in.
REPORT_DIR = "WORKER_CRASH_DIR"


def digest_slowly_the_first_time(blob: bytes) -> None:
    """Reports ``attempt-RETRY-PID``; the first attempt then sleeps (to be killed),
    a retry reports ``done-RETRY-PID`` holding the payload's fingerprint."""
    info = current_task()
    retry = info.retry_count if info is not None else None
    directory = Path(os.environ[REPORT_DIR])
    (directory / f"attempt-{retry}-{os.getpid()}").touch()
    if not retry:
        time.sleep(60)  # the test kills this worker meanwhile
    (directory / f"done-{retry}-{os.getpid()}").write_text(repr(fingerprint(blob)))


def site(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The user's own app: every path but the task handler's."""
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok"]


application = wrap_wsgi_app(site)
