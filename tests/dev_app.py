"""A WSGI app for ``cloudtasks-deferred dev`` tests: GET /defer?path=P defers a file write."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from cloudtasks_deferred import deferred, wrap_wsgi_app
from tests.file_tasks import write_report


def _defer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    [path] = parse_qs(environ.get("QUERY_STRING", ""))["path"]
    deferred.defer(write_report, path, "from dev")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"deferred"]


app = wrap_wsgi_app(_defer)
