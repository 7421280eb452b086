"""A Cloud Run functions sample: an HTTP function that defers work, and the task entry point.

``counter`` is an HTTP function: ``/increment`` defers ``do_something_later`` with
``deferred.defer``, exactly as App Engine code does, and any other path shows the
counter. ``deferred_task`` is cloudtasks_deferred's task entry point, re-exported so
that this same source can be deployed as a second function that runs the tasks;
``CLOUDTASKS_DEFERRED_BASE_URL`` (that function's URL) tells ``defer`` where to send
them. See README.md.
"""

import functools
import logging

import functions_framework
from google.cloud import ndb

from cloudtasks_deferred import deferred
from cloudtasks_deferred.functions import deferred_task  # noqa: F401 - the task entry point

COUNTER_KEY = "functions-sample"

# Each task's outcome is logged at INFO ("... ran main.do_something_later in 12 ms"), as
# App Engine logged deferred tasks; functions-framework leaves Python's logging at WARNING.
# The queue headers of each task are logged only at DEBUG.
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
deferred.set_log_level(logging.DEBUG)


class Counter(ndb.Model):
    count = ndb.IntegerProperty(indexed=False)


def do_something_later(key, amount):
    # Runs in the deferred_task function, inside the NDB context the handler opens.
    entity = Counter.get_or_insert(key, count=0)
    entity.count += amount
    entity.put()


@functools.cache
def ndb_client():
    # One client per instance, created on first use (it opens gRPC channels).
    return ndb.Client()


@functions_framework.http
def counter(request):
    if request.path == "/increment":
        deferred.defer(do_something_later, COUNTER_KEY, 10)
        return "Deferred counter increment."
    with ndb_client().context():
        return str(Counter.get_or_insert(COUNTER_KEY, count=0).count)
