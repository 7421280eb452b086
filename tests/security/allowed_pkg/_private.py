"""A private submodule: listed by prefix only, so a payload must never import it."""

from __future__ import annotations

from tests.tasks import canary

canary("imported tests.security.allowed_pkg._private")


def harmless() -> None:
    """Something a payload can name in this module."""
