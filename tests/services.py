"""Tests that need an outside program skip on a developer's machine without it, and fail in CI."""

from __future__ import annotations

import os

import pytest


def require(available: bool, message: str) -> None:
    """Skips the test when ``available`` is false, or fails it under ``CI=true``."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: these tests must not be skipped)")
    pytest.skip(message)
