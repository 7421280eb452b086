"""A public submodule: a prefix entry allows it."""

from __future__ import annotations

from tests.security.allowed_tasks import witness

__all__ = ["witness"]
