"""A counter served by a bare WSGI app, in the style of App Engine bundled-services code.

What it shows, unchanged from how legacy apps wrote it apart from the imports:

* module-level task functions deferred with ``deferred.defer``, at once, with
  ``_countdown``, and to a custom ``_url``;
* a subclass of ``deferred.Handler`` (the legacy ``TaskHandler`` pattern) serving that
  URL, adding its own logic before running the task;
* NDB used in requests and tasks without opening a context: ``wrap_wsgi_app`` and the
  task handler provide one.

Run it locally with ``cloudtasks-deferred dev main:app`` (see README.md).
"""

import os

from google.cloud import ndb

from cloudtasks_deferred import deferred, wrap_wsgi_app

COUNTER_ID = os.environ.get("GAE_VERSION", "Missing")
TEXT = [("Content-Type", "text/plain; charset=utf-8")]


class Counter(ndb.Model):
    count = ndb.IntegerProperty(indexed=False)


def do_something_later(counter_id, amount):
    counter = Counter.get_or_insert(counter_id, count=0)
    counter.count += amount
    counter.put()


def increment(environ, start_response):
    deferred.defer(do_something_later, COUNTER_ID, 10)
    deferred.defer(do_something_later, COUNTER_ID, 10, _countdown=20)
    deferred.defer(do_something_later, COUNTER_ID, 10, _url="/custom/path", _countdown=40)
    start_response("200 OK", TEXT)
    return [b"Deferred counter increment."]


def show(environ, start_response):
    counter = Counter.get_or_insert(COUNTER_ID, count=0)
    start_response("200 OK", TEXT)
    return [str(counter.count).encode()]


class LoggingTaskHandler(deferred.Handler):
    """Runs tasks like the default handler, announcing each one first."""

    def post(self, environ):
        print("Executing deferred task.")
        return super().post(environ)


ROUTES = {
    "/counter/increment": increment,
    "/counter/get": show,
    "/custom/path": LoggingTaskHandler(),
}


def router(environ, start_response):
    handler = ROUTES.get(environ.get("PATH_INFO", ""))
    if handler is None:
        start_response("404 Not Found", TEXT)
        return [b"Not found"]
    return handler(environ, start_response)


app = wrap_wsgi_app(router, use_deferred=True)
