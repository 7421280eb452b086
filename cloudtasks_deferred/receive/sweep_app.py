"""The sweeper's HTTP endpoint, authenticated exactly like the task handler.

``POST /_ah/queue/deferred/sweep`` (served by :func:`~cloudtasks_deferred.wrap_wsgi_app`)
runs :func:`cloudtasks_deferred.enqueue.sweep.sweep`, which the facade hands in: this
layer receives, it does not send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from cloudtasks_deferred.receive.handler import authenticate
from cloudtasks_deferred.receive.outcomes import Attempt, Outcome, response_for
from cloudtasks_deferred.receive.receiver import ReceivingClient
from cloudtasks_deferred.receive.wsgi import Response, StartResponse, respond

__all__ = ["SweepEndpoint", "SweepResult"]

C = TypeVar("C", bound=ReceivingClient)

_logger = logging.getLogger(__name__)


class SweepResult(Protocol):
    """What a sweep reports (:class:`cloudtasks_deferred.enqueue.sweep.SweepReport`)."""

    failed: int

    def summary(self) -> str:
        """One line for logs and HTTP answers."""
        ...


class SweepEndpoint(Generic[C]):
    """A WSGI app that sweeps on ``POST``, authenticated exactly like the task handler.

    Answers 200 with the report, 500 when a task could not be created (so that the
    scheduler shows the failure), and otherwise as the handler would: 405 for other
    methods, 403 unauthenticated, 503 when tokens cannot be verified.

    Args:
        resolve: Returns the client a request is authenticated and swept with.
        sweep: Sweeps the outbox with that client and reports.
    """

    def __init__(
        self,
        resolve: Callable[[], C],
        sweep: Callable[[C], SweepResult],
    ) -> None:
        self._resolve = resolve
        self._sweep = sweep

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serves one request (PEP 3333)."""
        return respond(self._respond(environ), start_response)

    def _respond(self, environ: dict[str, Any]) -> Response:
        if environ.get("REQUEST_METHOD") != "POST":
            return response_for(Outcome.METHOD_NOT_ALLOWED)
        client = authenticate(self._resolve, environ, what="sweep")
        if isinstance(client, Attempt):
            return response_for(client.outcome, client.detail)
        try:
            report = self._sweep(client)
        except Exception:
            _logger.exception("the outbox sweep failed")
            return response_for(Outcome.ERROR, "the sweep failed; see the logs")
        _logger.info("outbox sweep: %s", report.summary())
        # A task that could not be created answers 500, so the scheduler's job shows it.
        return response_for(Outcome.SUCCESS if report.failed == 0 else Outcome.ERROR,
                            f"swept: {report.summary()}")  # fmt: skip
