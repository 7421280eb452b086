"""Tasks that leave a file behind: proof they ran when they run in another process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cloudtasks_deferred import current_task


def write_report(path: str, text: str) -> None:
    """Writes ``text``, the task's queue and retry count, and this process's ID as JSON."""
    task = current_task()
    report = {
        "text": text,
        "pid": os.getpid(),
        "queue": task.queue_name if task else None,
        "retry_count": task.retry_count if task else None,
    }
    partial = Path(f"{path}.partial")
    partial.write_text(json.dumps(report))
    partial.replace(path)  # appears whole, or not at all


class Tripwire:
    """Unpickling an instance writes a file: a payload that must never be unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return write_report, (self.path, "unpickled")
