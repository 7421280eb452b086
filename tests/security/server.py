"""What the real-server battery serves with gunicorn: a user's app, wrapped as the README says.

Configured only by the environment the fixture gives the gunicorn process (one
deployment profile per process, see :mod:`tests.security.profiles`), exactly as a
deployed service is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cloudtasks_deferred import wrap_wsgi_app


def site(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The user's own app: every path but the task handler's."""
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"not found"]


application = wrap_wsgi_app(site)
