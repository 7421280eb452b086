"""A process that defers, for the fault tests that need many processes or one to kill.

Run as ``python -m tests.integration.deferring_child MODE [ARG]``, configured by its
environment (``CLOUDTASKS_DEFERRED_*``, ``DATASTORE_EMULATOR_HOST``), as an app is:

* ``first-defer GO_FILE``: imports everything, prints ``ready``, waits until
  ``GO_FILE`` exists, then defers ``tasks.record(pid)`` — its first ``defer``, which
  loads (or creates) the dev key — and prints ``deferred``.
* ``transactional``: in an NDB transaction, stores a ``Counter`` and defers
  ``tasks.record("swept", _transactional=True)``; prints ``committed`` only if the
  creation of the task after the commit ever returns (the tests kill it before).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from google.cloud import ndb

import cloudtasks_deferred.enqueue.tasks  # noqa: F401 - loaded before the go: only the key is left
from cloudtasks_deferred import deferred
from tests import tasks
from tests.ndb_tasks import Counter

#: How long ``first-defer`` waits for its go file, in seconds.
_GO_TIMEOUT = 120.0


def first_defer(go_file: Path) -> None:
    print("ready", flush=True)
    deadline = time.monotonic() + _GO_TIMEOUT
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go file")
        time.sleep(0.001)
    deferred.defer(tasks.record, os.getpid())
    print("deferred", flush=True)


def transactional() -> None:
    def work() -> None:
        Counter(id="swept", count=1).put()
        deferred.defer(tasks.record, "swept", _transactional=True)

    with ndb.Client().context():
        ndb.transaction(work)
    print("committed", flush=True)


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "first-defer":
        first_defer(Path(argv[1]))
    elif mode == "transactional":
        transactional()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
