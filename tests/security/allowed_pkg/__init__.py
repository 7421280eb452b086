"""A package the allowlisted profiles list by prefix; its underscore modules stay closed."""

from __future__ import annotations

from tests.security.allowed_tasks import witness

__all__ = ["witness"]
