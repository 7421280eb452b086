"""A module whose import is a canary: refused references must never import it."""

from __future__ import annotations

from tests.tasks import canary

canary("imported tests.security.import_canary")


def harmless() -> None:
    """Something a payload can name in this module."""
