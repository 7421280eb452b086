"""P2: in-process cost of ``defer()`` into the in-memory transport vs a bare ``pickle.dumps``.

The same call, ``defer(process_batch, records)`` with 100 records (about 4 KB
pickled), against ``pickle.dumps((process_batch, (records,), {}))``: the difference
is what the library adds (option parsing, framing, building the Task message,
recording it). The minimal call ``defer(process, "user-42", 20)`` is reported too,
where that fixed cost dominates, and P2-signed: the 4 KB call with a signing key, whose
frame is signed and bound to its destination and issue time (what the security checks
add on the enqueuing side).
"""

from __future__ import annotations

import dataclasses
import pickle
import timeit
from collections.abc import Callable
from typing import Any

from cloudtasks_deferred import Client
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.frame import SigningKey
from cloudtasks_deferred.testing import TEST_SETTINGS

from .common import Result
from .tasks import make_batch, process, process_batch

TARGET = 3.0
BATCH = 1000


def run(quick: bool = False) -> list[Result]:
    rounds = 5 if quick else 25
    transport = InMemoryTransport()
    client = Client(dataclasses.replace(TEST_SETTINGS, ndb=False), transport=transport)
    signed = Client(
        dataclasses.replace(
            TEST_SETTINGS, ndb=False, signing_keys=(SigningKey("bench", bytes(range(32))),)
        ),
        transport=transport,
    )

    def best_microseconds(func: Callable[[], Any]) -> float:
        times = []
        for _ in range(rounds):
            transport.clear()  # recorded tasks would otherwise pile up
            times.append(timeit.timeit(func, number=BATCH) / BATCH * 1e6)
        return min(times)

    results = []
    cases: list[tuple[str, Client, Callable[..., Any], tuple[Any, ...], float | None]] = [
        ("P2", client, process_batch, (make_batch(),), TARGET),
        ("P2-min", client, process, ("user-42", 20), None),
        ("P2-signed", signed, process_batch, (make_batch(),), None),
    ]
    for key, deferring, func, args, target in cases:
        size = len(pickle.dumps((func, args, {}), protocol=pickle.HIGHEST_PROTOCOL))
        deferred = best_microseconds(lambda c=deferring, f=func, a=args: c.defer(f, *a))
        pickled = best_microseconds(
            lambda f=func, a=args: pickle.dumps((f, a, {}), protocol=pickle.HIGHEST_PROTOCOL)
        )
        results.append(
            Result(
                key=key,
                title=f"in-memory defer() / pickle.dumps, {size} B payload",
                value=deferred / pickled,
                unit="x",
                target=target,
                detail=f"{deferred:.1f} us vs {pickled:.1f} us per call"
                + {
                    "P2-min": " (informational: fixed cost dominates)",
                    "P2-signed": " (informational: signed and bound)",
                }.get(key, ""),
            )
        )
    return results
