"""Helpers to drive WSGI apps the way a server would."""

from __future__ import annotations

import io
from typing import Any


class SpyInput(io.BytesIO):
    """A wsgi.input that remembers whether anyone read it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def environ(
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/_ah/queue/deferred",
    headers: dict[str, str] | None = None,
    content_length: str | None = None,
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "CONTENT_TYPE": "application/octet-stream",
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": SpyInput(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


class Response:
    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    @property
    def code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def call(app: Any, env: dict[str, Any]) -> Response:
    """Calls a WSGI app and collects its response; fails if start_response is skipped."""
    response = Response()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        response.status = status
        response.headers = headers
        return lambda data: None

    chunks = app(env, start_response)
    try:
        response.body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    assert response.status, "the app did not call start_response"
    return response
