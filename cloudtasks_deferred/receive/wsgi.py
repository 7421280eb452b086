"""WSGI plumbing the library's apps share: the types, answering, and closing late.

The task handler, the sweeper endpoint and the middleware are plain WSGI callables
(PEP 3333); they answer with a ``(body, status, headers)`` :data:`Response`, the
legacy ``Handler.post`` triple, through :func:`respond`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

__all__ = ["ClosingIterator", "Response", "StartResponse", "WSGIApp", "respond"]

_logger = logging.getLogger(__name__)

#: The ``start_response`` callable a WSGI server passes to an app.
StartResponse = Callable[..., Any]
#: A WSGI application.
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: ``(body, status, headers)``, what ``Handler.post`` returns.
Response = tuple[str, HTTPStatus, list[tuple[str, str]]]


def respond(response: Response, start_response: StartResponse) -> list[bytes]:
    """Sends ``response`` the WSGI way: ``start_response``, then the encoded body."""
    body, status, headers = response
    start_response(f"{status.value} {status.phrase}", headers)
    return [body.encode()]


class ClosingIterator:
    """Iterates a WSGI response in its request's context, then ends that request's scope.

    The app was called inside ``context`` (a copy of the caller's context, so that
    nothing the request sets leaks out of it). A response body may be produced while
    it is iterated (a generator, Flask's ``stream_with_context``, Django's
    ``StreamingHttpResponse``), so each chunk is produced in ``context`` too, where
    whatever the call ran inside — the bound client, an NDB context — still holds.

    ``stack`` is closed once the request is over: when the response is exhausted or
    closed, whichever comes first, or, if the server does neither (Flask's test
    client leaves unread responses open), when this object is garbage-collected.
    """

    def __init__(
        self,
        iterable: Iterable[bytes],
        stack: contextlib.ExitStack,
        context: contextvars.Context,
    ) -> None:
        self._iterable = iterable
        self._context = context
        self._stack = stack
        self._iterator: Iterator[bytes] = context.run(iter, iterable)
        self._finalizer = weakref.finalize(self, _close_unreachable, context, stack)
        self._finalizer.atexit = False  # at interpreter exit, nothing is left to finish

    def __iter__(self) -> ClosingIterator:
        return self

    def __next__(self) -> bytes:
        try:
            return self._context.run(next, self._iterator)
        except StopIteration:
            self._end()
            raise

    def close(self) -> None:
        """Closes the app's response, then the contexts it ran in."""
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._end()

    def _end(self) -> None:
        # detach() returns None once the stack was closed (here, or by the finalizer).
        if self._finalizer.detach() is not None:
            self._context.run(self._stack.close)


def _close_unreachable(context: contextvars.Context, stack: contextlib.ExitStack) -> None:
    """Closes the scope of a response no one closed, when it is garbage-collected."""
    try:
        context.run(stack.close)
    except Exception:
        _logger.exception("could not end the scope of an unclosed WSGI response")
