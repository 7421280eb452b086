"""Test support: an in-memory queue that runs tasks through the real handler.

::

    from cloudtasks_deferred import deferred
    from cloudtasks_deferred.testing import in_memory_queue

    def test_signup_sends_welcome_mail():
        with in_memory_queue() as queue:
            signup("ada@example.com")            # calls deferred.defer(send_welcome, ...)
            assert len(queue.tasks) == 1
            assert queue.run_pending() == [HTTPStatus.OK]

Inside the block, ``defer`` records the ``google.cloud.tasks_v2.Task`` messages it
would send to Cloud Tasks. :meth:`InMemoryQueue.run_pending` delivers them as Cloud
Tasks would: an HTTP POST through the real :class:`~cloudtasks_deferred.Handler`
(or your WSGI app), authenticated with an ID token the queue signs for the task's
``oidc_token`` (or App Engine queue headers), with the ``X-CloudTasks-*`` headers,
retrying failures like a queue would. Schedule times are not waited for.
"""

from __future__ import annotations

import collections
import contextlib
import io
from collections.abc import Iterator
from datetime import UTC
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from google.cloud import tasks_v2

from ._memo import once_per_process
from ._wsgi import WSGIApp
from .auth import authenticator_for
from .auth.certs import StaticCerts
from .auth.dev import DevKey, dev_key
from .client import Client, clear_default_client
from .deadletters import DeadLetter, InMemoryDeadLetters
from .handler import Handler
from .settings import Settings
from .transports.memory import InMemoryTransport

__all__ = ["TEST_SETTINGS", "InMemoryQueue", "in_memory_queue", "reset_default_client"]

#: Settings used when a test gives none: HTTP tasks for a service at https://tasks.test.
TEST_SETTINGS = Settings(
    project="test-project",
    location="us-central1",
    base_url="https://tasks.test",
    service_account="tasks@test-project.iam.gserviceaccount.com",
)


class InMemoryQueue:
    """Tasks deferred inside :func:`in_memory_queue`, and the means to run them.

    Args:
        settings: Settings of the code under test.
        app: WSGI app tasks are delivered to; a :class:`Handler` when ``None``.
        max_attempts: Attempts per task before :meth:`run_pending` gives it up (as a
            queue's ``max_attempts`` does); given-up tasks go to :attr:`given_up`.
    """

    def __init__(
        self, settings: Settings, *, app: WSGIApp | None = None, max_attempts: int = 5
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._key = _signing_key(None)
        self.transport = InMemoryTransport()
        self._dead_letters = InMemoryDeadLetters()
        self.client = Client(
            settings,
            transport=self.transport,
            # The queue's key stands in for Google's: the same verifier, other certs.
            authenticator=authenticator_for(
                settings, certs=StaticCerts(self._trusted_certs(settings))
            ),
            dead_letters=self._dead_letters,
        )
        self.app: WSGIApp = app or Handler(client=self.client)
        self.max_attempts = max_attempts
        self.given_up: list[tasks_v2.Task] = []
        self._dispatches: collections.Counter[str] = collections.Counter()

    @property
    def tasks(self) -> list[tasks_v2.Task]:
        """The tasks waiting to run, oldest first, as they would reach Cloud Tasks."""
        return self.transport.tasks

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Tasks the handler gave up on (permanent failures, exhausted retry options)."""
        return self._dead_letters.letters

    def run_pending(self) -> list[HTTPStatus]:
        """Delivers pending tasks, including those they defer, until none is left.

        A task answered with a non-2xx status is retried, up to ``max_attempts``.

        Returns:
            The status of every delivery, in order.
        """
        statuses: list[HTTPStatus] = []
        with self.client.bind():
            while (task := self.transport.take()) is not None:
                status = self.deliver(task)
                statuses.append(status)
                if 200 <= status < 300:
                    continue
                if self._dispatches[task.name] < self.max_attempts:
                    self.transport.put_back(task)
                else:
                    self.given_up.append(task)
        return statuses

    def deliver(self, task: tasks_v2.Task) -> HTTPStatus:
        """Sends one task to the app as Cloud Tasks would and returns the status."""
        retries = self._dispatches[task.name]
        self._dispatches[task.name] += 1
        environ = self._environ(task, retries)
        status: list[str] = []

        def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(line)
            return lambda _data: None

        body = self.app(environ, start_response)
        try:
            for _chunk in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return HTTPStatus(int(status[0].split(" ", 1)[0]))

    def _trusted_certs(self, settings: Settings) -> dict[str, str]:
        certs = dict(self._key.certs)
        if settings.dev_mode:  # tasks then carry tokens signed with the dev key
            certs.update(dev_key(settings.dev_key_file).certs)
        return certs

    def _environ(self, task: tasks_v2.Task, retries: int) -> dict[str, Any]:
        short_queue = task.name.split("/tasks/")[0].rsplit("/", 1)[-1]
        short_name = task.name.rsplit("/", 1)[-1]
        eta = f"{task.schedule_time.replace(tzinfo=UTC).timestamp():.6f}"
        task_headers = {
            "QueueName": short_queue,
            "TaskName": short_name,
            "TaskRetryCount": str(retries),
            "TaskExecutionCount": str(retries),
            "TaskETA": eta,
        }
        if retries:
            task_headers["TaskPreviousResponse"] = "500"
        if "http_request" in task:
            request: Any = task.http_request
            url = urlsplit(request.url)
            headers = dict(request.headers)
            headers.update({f"X-CloudTasks-{k}": v for k, v in task_headers.items()})
            if request.oidc_token.service_account_email:
                token = self._key.mint(
                    email=request.oidc_token.service_account_email,
                    audience=request.oidc_token.audience or request.url,
                )
                headers["Authorization"] = f"Bearer {token}"
            path, query, host = url.path or "/", url.query, url.netloc
        else:
            request = task.app_engine_http_request
            url = urlsplit(request.relative_uri)
            headers = dict(request.headers)
            headers.update({f"X-AppEngine-{k}": v for k, v in task_headers.items()})
            path, query, host = url.path, url.query, "localhost"
        body: bytes = request.body
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": host.split(":")[0],
            "SERVER_PORT": "443",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            else:
                environ[f"HTTP_{key}"] = value
        return environ


@contextlib.contextmanager
def in_memory_queue(
    settings: Settings | None = None, *, app: WSGIApp | None = None, max_attempts: int = 5
) -> Iterator[InMemoryQueue]:
    """Records deferred tasks in memory for the duration of the block.

    Args:
        settings: Settings of the code under test; :data:`TEST_SETTINGS` when ``None``.
            Use ``platform=Platform.APP_ENGINE`` (and no ``base_url``) to exercise App
            Engine tasks.
        app: WSGI app tasks are delivered to (your app wrapped with ``wrap_wsgi_app``,
            to exercise custom ``_url`` routes); a :class:`Handler` when ``None``.
        max_attempts: Attempts per task before it is given up.

    Yields:
        The queue; ``defer`` calls in the block (in this thread and context) land in it.
    """
    queue = InMemoryQueue(settings or TEST_SETTINGS, app=app, max_attempts=max_attempts)
    with queue.client.bind():
        yield queue


def reset_default_client() -> None:
    """Forgets the process's default client; the next use builds it from the environment.

    The default client (what ``defer`` and a ``Handler()`` without settings use
    outside :func:`in_memory_queue`) already follows the environment: it is rebuilt
    whenever a variable :meth:`Settings.from_env` reads has changed, so a test's
    ``monkeypatch.setenv`` takes effect without this. Call it between tests to
    start from nothing: a fresh authenticator (and verified-token cache), and the
    NDB probe of auto mode made again. A fixture::

        @pytest.fixture(autouse=True)
        def fresh_deferred_client():
            reset_default_client()
            yield
            reset_default_client()
    """
    clear_default_client()


@once_per_process
def _signing_key(_: None) -> DevKey:
    # One RSA key per process, even when queues are built on several threads at once.
    return DevKey.generate()
