"""Importing it runs it: a payload naming ``allowed_pkg.__main__`` must never import it."""

from __future__ import annotations

from tests.tasks import canary

canary("imported tests.security.allowed_pkg.__main__")


def harmless() -> None:
    """Something a payload can name in this module."""
