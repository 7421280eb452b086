"""Reading what the library left in the Datastore emulator (queries are consistent there)."""

from __future__ import annotations

from google.cloud import ndb

from tests.integration.conftest import PROJECT

KINDS = (
    "_DeferredTaskEntity",
    "_DeferredTaskChunk",
    "_DeferredOutbox",
    "_DeferredOutboxRun",
)


def keys(kind: str) -> list[ndb.Key]:
    """Every key of ``kind`` in the default namespace."""
    with ndb.Client(project=PROJECT).context():
        return list(ndb.Query(kind=kind, namespace="").fetch(keys_only=True))


def counts() -> dict[str, int]:
    """How many entities of each of the library's kinds exist, zeros omitted."""
    found = {kind: len(keys(kind)) for kind in KINDS}
    return {kind: count for kind, count in found.items() if count}
