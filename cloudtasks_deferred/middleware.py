"""``wrap_wsgi_app``: the App Engine bundled-services middleware, for deferred tasks.

Requests to ``/_ah/queue/deferred`` (and any extra ``paths``) go to the task
:class:`~cloudtasks_deferred.Handler`, ``POST /_ah/queue/deferred/sweep`` to the
outbox sweeper (:mod:`cloudtasks_deferred.enqueue.sweep`, authenticated like tasks);
every other request goes to the wrapped app.
Works with any WSGI app: Flask's ``app.wsgi_app``, Django's ``get_wsgi_application()``,
a bare WSGI callable.

With ``use_legacy_context_mode`` (the default, as in the bundled services) and NDB
enabled (see ``CLOUDTASKS_DEFERRED_NDB``), requests to the app also run inside an
NDB context, as legacy code that calls ``Model.get_or_insert`` in a view expects.

With explicit ``settings`` (or ``client``), every request — to the app, to the task
handler, to the sweeper — runs with that client bound, until the response ends: a
custom ``handler`` without a client of its own, and a streamed response, use those
settings too.

Each request's trace (W3C ``traceparent``, else ``X-Cloud-Trace-Context``) is read into
:func:`cloudtasks_deferred.traces.current_trace` for the request: a task it defers
carries a child span of it, and structured log lines name it.

Each request runs in a copy of the caller's :mod:`contextvars` context: its NDB
context and bound client end with it (when the response is exhausted, closed, or
garbage-collected unclosed) and never leak into the caller, or into the next
request served on the thread. A request made from inside another one (a test
delivering tasks from a view) shares that request's NDB context, as nested calls do.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from cloudtasks_deferred import traces
from cloudtasks_deferred.client import Client, current_client
from cloudtasks_deferred.enqueue import sweep as sweeping
from cloudtasks_deferred.enqueue.options import DEFAULT_URL
from cloudtasks_deferred.handler import Handler
from cloudtasks_deferred.receive.sweep_app import SweepEndpoint
from cloudtasks_deferred.receive.wsgi import ClosingIterator, StartResponse, WSGIApp
from cloudtasks_deferred.settings import Settings

__all__ = ["DeferredMiddleware", "SweepApp", "WSGIApp", "wrap_wsgi_app"]


class DeferredMiddleware:
    """Routes task paths to a handler and everything else to the app.

    Args:
        app: The wrapped WSGI app.
        handler: The WSGI app for task requests.
        paths: Exact ``PATH_INFO`` values routed to ``handler``.
        client: Bound for every request when given, so ``defer`` in the app and in
            the tasks uses it; ``None`` follows the current client.
        ndb_context: Run app requests inside the client's NDB context.
        routes: More exact ``PATH_INFO`` values, each with its own WSGI app.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        handler: WSGIApp,
        paths: Iterable[str],
        client: Client | None = None,
        ndb_context: bool = True,
        routes: Mapping[str, WSGIApp] | None = None,
    ) -> None:
        self.app = app
        self.handler = handler
        self.paths = frozenset(paths)
        self.client = client
        self.ndb_context = ndb_context
        self.routes = dict(routes or {})

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serves one request (PEP 3333).

        The request runs in a copy of the caller's :mod:`contextvars` context, so
        the client it binds and the NDB context it opens are never visible outside
        it, whether or not the server closes the response (Flask's test client
        does not): each request starts from the caller's context, never from what
        an earlier request left. Both are closed when the response is exhausted or
        closed, or else when it is garbage-collected.
        """
        context = contextvars.copy_context()
        response, stack = context.run(self._serve, environ, start_response)
        return ClosingIterator(response, stack, context)

    def _serve(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> tuple[Iterable[bytes], contextlib.ExitStack]:
        path = environ.get("PATH_INFO", "")
        target = self.handler if path in self.paths else self.routes.get(path)
        stack = contextlib.ExitStack()
        try:
            # defer() in the request hands its trace on to the task (traces.task_headers).
            stack.enter_context(traces.tracing(traces.from_environ(environ)))
            if self.client is not None:
                stack.enter_context(self.client.bind())
            if target is None:
                target = self.app
                if self.ndb_context:
                    stack.enter_context((self.client or current_client()).ndb_context())
            response = target(environ, start_response)
        except BaseException:
            stack.close()
            raise
        return response, stack


def wrap_wsgi_app(
    app: WSGIApp,
    use_deferred: bool = True,
    *,
    use_legacy_context_mode: bool = True,
    paths: Iterable[str] = (),
    handler: Handler | None = None,
    settings: Settings | None = None,
    client: Client | None = None,
    sweep_path: str | None = sweeping.SWEEP_PATH,
) -> WSGIApp:
    """Wraps a WSGI app so that it also serves deferred tasks.

    Replaces ``google.appengine.api.wrap_wsgi_app``::

        app.wsgi_app = wrap_wsgi_app(app.wsgi_app, use_deferred=True)   # Flask
        application = wrap_wsgi_app(get_wsgi_application())            # Django

    Args:
        app: The WSGI app.
        use_deferred: Route ``/_ah/queue/deferred`` (and ``paths``) to the task
            handler. ``False`` leaves task routing to you.
        use_legacy_context_mode: Run the app's requests in an NDB context when NDB
            is enabled, as bundled-services NDB code expects.
        paths: More exact paths to route to the task handler, e.g. the ``_url``
            values your code passes to ``defer``.
        handler: The task handler; a :class:`Handler` for ``client`` when ``None``.
        settings: Configuration for the handler and for ``defer`` in the app's
            requests; the environment's when ``None`` (and ``client`` is ``None``).
        client: A ready client instead of ``settings``.
        sweep_path: Where the outbox sweeper is served (with ``use_deferred``);
            ``None`` serves none.

    Returns:
        The wrapped WSGI app.

    Raises:
        TypeError: ``app`` is not callable, or a path does not start with ``/``.
    """
    if not callable(app):
        raise TypeError(f"wrap_wsgi_app needs a WSGI callable, got {type(app).__name__}")
    extra = tuple(paths)
    for path in extra:
        if not isinstance(path, str) or not path.startswith("/"):
            raise TypeError(f"wrap_wsgi_app paths must be strings starting with '/', got {path!r}")
    if client is None and settings is not None:
        client = Client(settings)
    routes = (DEFAULT_URL, *extra) if use_deferred else ()
    sweeper: dict[str, WSGIApp] = (
        {sweep_path: SweepApp(client)} if use_deferred and sweep_path else {}
    )
    return DeferredMiddleware(
        app,
        handler=handler or Handler(client=client),
        paths=routes,
        client=client,
        ndb_context=use_legacy_context_mode,
        routes=sweeper,
    )


class SweepApp(SweepEndpoint[Client]):
    """The outbox sweeper's endpoint (``POST /_ah/queue/deferred/sweep``) for a client.

    Authenticated exactly like the task handler; see
    :class:`~cloudtasks_deferred.receive.sweep_app.SweepEndpoint` for its answers.

    Args:
        client: The client whose rules authenticate the request and whose sending half
            sweeps; the current client when ``None``.
        older_than: Passed to :func:`~cloudtasks_deferred.enqueue.sweep.sweep`.
        limit: Passed to :func:`~cloudtasks_deferred.enqueue.sweep.sweep`.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        older_than: timedelta = sweeping.DEFAULT_OLDER_THAN,
        limit: int = sweeping.DEFAULT_LIMIT,
    ) -> None:
        self.older_than = older_than
        self.limit = limit

        def resolve() -> Client:
            return client or current_client()

        def run(resolved: Client) -> sweeping.SweepReport:
            return sweeping.sweep(resolved, older_than=self.older_than, limit=self.limit)

        super().__init__(resolve, run)
