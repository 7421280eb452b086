"""The task handler, as the legacy API offers it: bound to the library's current client.

:class:`Handler` is :class:`~cloudtasks_deferred.receive.handler.TaskHandler` (which
holds the whole request path: authenticate, read, decode, run, map; see its module
for the status table) with the legacy constructor: ``Handler()`` runs tasks with the
current client (:mod:`cloudtasks_deferred.client`) at request time,
``Handler(settings)`` with a client of its own. Subclass it, as legacy apps subclassed
``deferred.Handler``: ``post`` calls ``run_from_request``, which an override may wrap.
"""

from __future__ import annotations

from cloudtasks_deferred import limits
from cloudtasks_deferred.client import Client, current_client
from cloudtasks_deferred.receive.handler import TaskHandler
from cloudtasks_deferred.receive.receiver import ReceivingClient
from cloudtasks_deferred.settings import Settings

__all__ = ["Handler"]


class Handler(TaskHandler):
    """Runs deferred tasks: a WSGI app, plus the legacy ``post`` and ``run_from_request``.

    Building one is cheap and does no I/O, so ``Handler().post(environ)`` inside a
    view is fine.

    Args:
        settings: Configuration for this handler (and for ``defer`` calls its tasks
            make). ``None`` uses the current client (see :mod:`cloudtasks_deferred.client`)
            at request time.
        client: A client to use instead of building one from ``settings``.
        header_log_level: Level for logging task headers; ``None`` follows
            :func:`cloudtasks_deferred.set_log_level`.
        max_body_bytes: Larger bodies get 413 without being read.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: Client | None = None,
        header_log_level: int | None = None,
        max_body_bytes: int = limits.MAX_TASK_BYTES,
    ) -> None:
        if settings is not None and client is None:
            client = Client(settings)
        super().__init__(client, header_log_level=header_log_level, max_body_bytes=max_body_bytes)

    def current_client(self) -> ReceivingClient:
        """The library's current client (:func:`cloudtasks_deferred.client.current_client`)."""
        return current_client()
