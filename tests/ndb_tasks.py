"""Deferrable callables that use NDB the way legacy App Engine code does."""

from __future__ import annotations

from google.cloud import ndb

from tests.tasks import RECORDER


class Counter(ndb.Model):  # type: ignore[misc]
    count = ndb.IntegerProperty(indexed=False)


def increment(key: str, amount: int) -> None:
    # Legacy code calls NDB without opening a context: the handler provides one.
    entity = Counter.get_or_insert(key, count=0)
    entity.count += amount
    entity.put()
    RECORDER.add("increment", (key, entity.count))
