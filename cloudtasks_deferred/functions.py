"""Deferred tasks on Cloud Run functions: an entry point for functions-framework.

Re-export the ready entry point from your function's ``main.py``::

    from cloudtasks_deferred.functions import deferred_task  # noqa: F401

and deploy it as its own HTTP function (``--entry-point=deferred_task``, or
``functions-framework --target=deferred_task`` locally), with
``CLOUDTASKS_DEFERRED_BASE_URL`` set to that function's URL so that every
``deferred.defer(...)`` — from any of your functions — sends its task there.

:func:`deferred_task` is the WSGI :class:`~cloudtasks_deferred.Handler`'s
``post`` behind a function signature: the same authentication (from the headers,
before a byte of the body is read), the same statuses (see
:mod:`cloudtasks_deferred.receive.handler`), 405 for methods other than POST. It serves
every path, as a function does.

The body is read once, through the request's own ``stream`` (Flask's, which
applies the ``Content-Length``): functions-framework reads whatever is left after
the function returns (``request.get_data()``), which under its development server
(``functions-framework --debug``, werkzeug) would otherwise wait on the socket for
bytes already consumed, and through an in-memory ``wsgi.input`` fail the request
after its task ran. The same holds under gunicorn and
:func:`~cloudtasks_deferred.testing.in_memory_queue`.

Nothing here imports functions-framework or Flask (the ``functions`` extra): the
request only needs the ``method``, ``environ`` and ``stream`` a Flask ``Request``
has (without ``stream``, the body is read from ``environ["wsgi.input"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from cloudtasks_deferred.handler import Handler
from cloudtasks_deferred.receive.outcomes import Outcome, response_for

if TYPE_CHECKING:
    from cloudtasks_deferred.client import Client
    from cloudtasks_deferred.settings import Settings

__all__ = ["FunctionRequest", "FunctionResponse", "deferred_task", "task_function"]

#: ``(body, status, headers)``: a response functions-framework (Flask) accepts.
FunctionResponse = tuple[str, int, list[tuple[str, str]]]


class FunctionRequest(Protocol):
    """What :func:`deferred_task` reads of a request: a Flask ``Request`` qualifies."""

    @property
    def method(self) -> str:
        """The HTTP method."""
        ...

    @property
    def environ(self) -> Mapping[str, Any]:
        """The WSGI environ, its body not yet read."""
        ...


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def deferred_task(request: FunctionRequest) -> FunctionResponse:
    """Runs the deferred task a request carries: the task entry point for functions.

    Configured from the environment like the rest of the library
    (:meth:`Settings.from_env <cloudtasks_deferred.Settings.from_env>`).

    Args:
        request: The function's request (a Flask ``Request``).

    Returns:
        ``(body, status, headers)`` as the WSGI handler answers (the table in
        :mod:`cloudtasks_deferred.receive.handler`): 200 when the task ran, failed
        permanently or used up its ``_retry_options``; 408 to retry a
        ``SingularTaskFailure``; 500 when it raised; 403 for a caller that is not
        authenticated or a payload refused before unpickling; 503 while tokens
        cannot be verified (no certificates); 405 for a method other than POST;
        413 for a body over the 1 MB task limit; 400 for a malformed
        ``Content-Length`` or a truncated body.
    """
    return _answer(Handler(), request)


def task_function(
    *, settings: Settings | None = None, client: Client | None = None
) -> Callable[[FunctionRequest], FunctionResponse]:
    """Builds an entry point like :func:`deferred_task` for explicit configuration.

    Assign it to a module-level name in ``main.py`` to use it as a target::

        settings = dataclasses.replace(Settings.from_env(), location="us-central1")
        deferred_task = task_function(settings=settings)

    Args:
        settings: Configuration for the handler and for ``defer`` in its tasks.
        client: A ready client instead of ``settings``.

    Returns:
        A function of the request (a plain function, as functions-framework requires).
    """
    handler = Handler(settings, client=client)

    def entry_point(request: FunctionRequest) -> FunctionResponse:
        return _answer(handler, request)

    entry_point.__name__ = entry_point.__qualname__ = "deferred_task"
    entry_point.__doc__ = deferred_task.__doc__
    return entry_point


def _answer(handler: Handler, request: FunctionRequest) -> FunctionResponse:
    if request.method != "POST":
        body, status, headers = response_for(Outcome.METHOD_NOT_ALLOWED)
    else:
        environ: Mapping[str, Any] = request.environ
        stream = getattr(request, "stream", None)  # Flask's: see the module docstring
        if stream is not None:
            environ = {**environ, "wsgi.input": _RequestBody(stream)}
        body, status, headers = handler.post(environ)
    return body, status.value, headers


class _RequestBody:
    """``wsgi.input`` for the handler: the request's own stream, read on demand.

    Nothing is read before the handler authenticates the request. werkzeug's stream
    raises when the client sends less than its ``Content-Length``; that is answered
    as the handler answers a short body (400), not as an error.
    """

    def __init__(self, stream: _Readable) -> None:
        self._stream = stream

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._stream.read(size)
        except Exception:  # werkzeug's ClientDisconnected: a truncated body
            return b""
