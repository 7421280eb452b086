"""Limits of Cloud Tasks and App Engine that the library enforces, with their sources.

Every number here comes from the Cloud Tasks documentation ("Quotas and limits",
the ``Task``, ``HttpRequest`` and ``AppEngineHttpRequest`` reference pages); code
that checks a limit imports it from this module so that the rule has one home.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

__all__ = [
    "APP_ENGINE_DISPATCH_DEADLINE",
    "DEFAULT_DISPATCH_DEADLINE",
    "HTTP_DISPATCH_DEADLINE",
    "MAX_ENTITY_BYTES",
    "MAX_HEADERS_BYTES",
    "MAX_SCHEDULE_AHEAD",
    "MAX_TASK_BYTES",
    "MAX_TRANSACTION_BYTES",
    "MAX_UNINDEXED_PROPERTY_BYTES",
    "QUEUE_ID",
    "RESERVED_HEADERS",
    "RESERVED_HEADER_PREFIXES",
    "TASK_ID",
]

#: Cloud Tasks rejects tasks over 1 MB (payload, URL and headers together). The
#: handler refuses bodies above this with 413: Cloud Tasks never sends one.
MAX_TASK_BYTES: Final = 1024 * 1024

#: Cloud Tasks: "The size of the headers must be less than 80KB."
MAX_HEADERS_BYTES: Final = 80 * 1024

#: Cloud Tasks: ``schedule_time`` can be at most 30 days in the future.
MAX_SCHEDULE_AHEAD: Final = timedelta(days=30)

#: Cloud Tasks ``dispatch_deadline``: HTTP targets accept 15 seconds to 30 minutes.
HTTP_DISPATCH_DEADLINE: Final = (timedelta(seconds=15), timedelta(minutes=30))

#: Cloud Tasks ``dispatch_deadline``: App Engine targets accept 15 seconds to 24 hours.
APP_ENGINE_DISPATCH_DEADLINE: Final = (timedelta(seconds=15), timedelta(hours=24))

#: Cloud Tasks ``dispatch_deadline`` when a task sets none: 10 minutes for HTTP targets
#: (and for App Engine targets on automatic scaling).
DEFAULT_DISPATCH_DEADLINE: Final = timedelta(minutes=10)

#: Cloud Tasks task IDs: letters, digits, hyphens and underscores, at most 500.
TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,500}")

#: Cloud Tasks queue IDs: letters, digits and hyphens, at most 100.
QUEUE_ID: Final = re.compile(r"[A-Za-z0-9-]{1,100}")

#: Headers Cloud Tasks computes, replaces or reserves for Google (``HttpRequest.headers``),
#: plus ``Authorization``, which the task's OIDC token sets.
RESERVED_HEADERS: Final = frozenset({"host", "content-length", "authorization"})
RESERVED_HEADER_PREFIXES: Final = ("x-google-", "x-googleapps-", "x-appengine-", "x-cloudtasks-")

#: Datastore ("Firestore in Datastore mode" limits page): an entity is at most
#: 1,048,572 bytes (1 MiB - 4 bytes) ...
MAX_ENTITY_BYTES: Final = 1_048_572

#: ... an unindexed property at most 1,048,487 bytes (1 MiB - 89 bytes) ...
MAX_UNINDEXED_PROPERTY_BYTES: Final = 1_048_487

#: ... and a transaction (its commit request) at most 10 MiB.
MAX_TRANSACTION_BYTES: Final = 10 * 1024 * 1024
