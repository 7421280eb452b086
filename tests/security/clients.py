"""Sending a battery request in-process (a WSGI call) or over a socket to a real server."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.security.cases import Request
from tests.wsgi import Response, call, environ

ROOT = Path(__file__).resolve().parents[2]


def send_wsgi(app: Any, request: Request) -> tuple[Response, int]:
    """Calls ``app`` with ``request``; returns the response and how often the body was read."""
    length = str(len(request.body)) if request.content_length is None else request.content_length
    env = environ(
        request.body,
        method=request.method,
        path=request.path,
        headers=request.headers,
        content_length="" if request.chunked else length,
    )
    env["QUERY_STRING"] = request.query
    if request.chunked:
        env["wsgi.input_terminated"] = True
    response = call(app, env)
    return response, env["wsgi.input"].reads


def send_socket(port: int, request: Request, timeout: float = 30.0) -> Response:
    """Sends ``request`` as raw HTTP/1.1 (lying lengths included) and reads the answer."""
    target = request.path + (f"?{request.query}" if request.query else "")
    lines = [f"{request.method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    if request.chunked:
        lines.append("Transfer-Encoding: chunked")
        step = 64 * 1024
        chunks = [request.body[i : i + step] for i in range(0, len(request.body), step)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    else:
        length = (
            str(len(request.body)) if request.content_length is None else request.content_length
        )
        if length != "":
            lines.append(f"Content-Length: {length}")
        payload = request.body
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # a body shorter than its length ends here
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered without reading everything: read that answer
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
            # ... and had already closed its side when we shut down ours.
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return _parse(received)


def _parse(raw: bytes) -> Response:
    response = Response()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        raise AssertionError("the server closed the connection without answering")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response.status = status_line.split(" ", 1)[1]
    response.headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines)
    ]
    if (response.header("Transfer-Encoding") or "").lower() == "chunked":
        body = _dechunk(body)
    response.body = body
    return response


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


class Gunicorn:
    """A gunicorn process on 127.0.0.1 (a free port it picks) serving one profile.

    Args:
        app: ``module:variable`` of the WSGI app.
        env: The whole environment of the process.
        log: Where its output goes.
    """

    def __init__(self, app: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--timeout",
                "60",
                "--graceful-timeout",
                "2",
                "--log-level",
                "info",
                # Larger than gunicorn's 8 KB default, so that the handler's own bound on
                # token length is what an oversized token meets.
                "--limit-request-field_size",
                "32768",
                app,
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(rb"Listening at: http://127\.0\.0\.1:(\d+)", self.log.read_bytes())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"gunicorn did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log_file.close()


def server_environment(profile: dict[str, str], canary_dir: Path) -> dict[str, str]:
    """The process environment for one profile: nothing of the developer's that matters."""
    from tests.tasks import CANARY_DIR_VARIABLE

    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}
    env = {name: value for name, value in os.environ.items() if name in keep}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/credentials.json",
            "NO_GCE_CHECK": "true",
            CANARY_DIR_VARIABLE: str(canary_dir),
            **profile,
        }
    )
    return env
