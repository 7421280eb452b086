"""Deferrable callables for the dead-letter tests, in a module of their own (so that an
allowlist can leave them out): the "bug" is a flag file that does not exist yet."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cloudtasks_deferred import PermanentTaskFailure


def append_once_fixed(flag: str, report: str, value: str) -> None:
    """Fails permanently until ``flag`` exists (the fix); then appends ``value`` to ``report``."""
    if not Path(flag).exists():
        raise PermanentTaskFailure(f"not fixed yet: {flag} does not exist")
    append(report, value)


def append(report: str, value: str) -> None:
    """Appends a line to ``report``: one line per run."""
    with open(report, "a", encoding="utf-8") as file:
        file.write(value + "\n")


def runs(report: str) -> list[str]:
    """The lines ``report`` holds: the runs so far."""
    path = Path(report)
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def digest_once_fixed(flag: str, report: str, blob: bytes) -> None:
    """Like :func:`append_once_fixed`, for a payload too large for a task: appends the
    blob's size and SHA-256."""
    if not Path(flag).exists():
        raise PermanentTaskFailure(f"not fixed yet: {flag} does not exist")
    append(report, f"{len(blob)} {hashlib.sha256(blob).hexdigest()}")
