"""Deferrable callables for the benchmarks (never run: the queues are paused)."""

from __future__ import annotations

from typing import Any


def process(key: str, amount: int) -> None:
    """The shape of the legacy docs' ``do_something_later(key, amount)``."""


def process_batch(records: list[dict[str, Any]]) -> None:
    """A batch task: a list of records."""


def make_batch(count: int = 100) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"]} for i in range(count)
    ]


def process_blob(blob: bytes) -> None:
    """A task whose argument is one large payload."""
