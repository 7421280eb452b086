"""WSGI plumbing the library's apps share: the types, answering, and closing late.

The task handler, the sweeper endpoint and the middleware are plain WSGI callables
(PEP 3333); they answer with a ``(body, status, headers)`` :data:`Response`, the
legacy ``Handler.post`` triple, through :func:`respond`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

__all__ = ["ClosingIterator", "Response", "StartResponse", "WSGIApp", "respond"]

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
    """Iterates a WSGI response and keeps ``stack`` open until the server closes it.

    A response body may be produced while it is iterated (a generator, Flask's
    ``stream_with_context``, Django's ``StreamingHttpResponse``); whatever the app's
    call ran inside — the bound client, an NDB context — must still hold then.
    """

    def __init__(self, iterable: Iterable[bytes], stack: contextlib.ExitStack) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] = iter(iterable)
        self._stack = stack

    def __iter__(self) -> ClosingIterator:
        return self

    def __next__(self) -> bytes:
        return next(self._iterator)

    def close(self) -> None:
        """Closes the app's response, then the contexts it ran in."""
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._stack.close()
