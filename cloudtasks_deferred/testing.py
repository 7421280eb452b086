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
would send to Cloud Tasks — from any thread of the process, including the threads
of a ``ThreadPoolExecutor`` the code under test starts. :meth:`InMemoryQueue.run_pending`
delivers them as Cloud Tasks would: an HTTP POST through the real
:class:`~cloudtasks_deferred.Handler` (or your WSGI app), authenticated with an ID
token the queue signs for the task's ``oidc_token`` (or App Engine queue headers),
with the task headers, retrying failures like a queue would. Schedule times are not
waited for.

The task headers are those Cloud Tasks sends (``X-CloudTasks-*`` to HTTP targets,
``X-AppEngine-*`` to App Engine targets), with the values the service sends on
each attempt:

==========================  ====================================================
header (``X-CloudTasks-``)  value in the in-memory queue
==========================  ====================================================
``QueueName``               the queue's short ID
``TaskName``                the task's short ID
``TaskETA``                 the task's ``schedule_time``, in seconds since the epoch
``TaskRetryCount``          attempts before this one (0 on the first)
``TaskExecutionCount``      attempts before this one that got a response; for HTTP
                            targets, not counting 5xx responses ("does not include
                            failures due to 5XX error codes", Cloud Tasks' handler
                            documentation)
``TaskPreviousResponse``    the previous attempt's status; absent on the first
``TaskRetryReason``         on a retry: empty for HTTP targets, ``App Error`` for
                            App Engine targets; absent on the first
==========================  ====================================================

Google documents the retry reason only as "the reason for retrying the task"; the
values above are what the service was observed to send after a handler answered
with an error status (it sends ``Instance Unavailable`` to App Engine targets when
no response came, which never happens here). Read them through
:func:`~cloudtasks_deferred.current_task`, where an empty header is ``None``.

Blocks may nest or run at the same time on several threads: ``defer`` in the thread
that entered a block goes to that block's queue; in any other thread (a pool's
worker) it goes to the queue of the block entered last and not yet left.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from google.cloud import tasks_v2

from cloudtasks_deferred._memo import once_per_process
from cloudtasks_deferred.client import Client, as_process_default, clear_default_client
from cloudtasks_deferred.dev_key import DevKey, dev_key
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.handler import Handler
from cloudtasks_deferred.receive.auth import authenticator_for
from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.deadletters import DeadLetter, InMemoryDeadLetters
from cloudtasks_deferred.receive.wsgi import WSGIApp
from cloudtasks_deferred.settings import Settings

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
        # Task name -> the status of each delivery so far, for the retry headers.
        self._responses: dict[str, list[int]] = {}

    @property
    def tasks(self) -> list[tasks_v2.Task]:
        """The tasks waiting to run, oldest first, as they would reach Cloud Tasks."""
        return self.transport.tasks

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Tasks the handler gave up on (permanent failures, exhausted retry options) and
        payloads the allowlist refused, oldest first; ``DeadLetters(queue.client)``
        (:mod:`cloudtasks_deferred.dead_letters`) replays them into this queue."""
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
                if len(self._responses[task.name]) < self.max_attempts:
                    self.transport.put_back(task)
                else:
                    self.given_up.append(task)
        return statuses

    def deliver(self, task: tasks_v2.Task) -> HTTPStatus:
        """Sends one task to the app as Cloud Tasks would and returns the status.

        The task headers describe this attempt after the earlier deliveries of the
        same task (see the module docstring).
        """
        previous = self._responses.setdefault(task.name, [])
        environ = self._environ(task, previous)
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
        answered = HTTPStatus(int(status[0].split(" ", 1)[0]))
        previous.append(answered.value)
        return answered

    def _trusted_certs(self, settings: Settings) -> dict[str, str]:
        certs = dict(self._key.certs)
        if settings.dev_mode:  # tasks then carry tokens signed with the dev key
            certs.update(dev_key(settings.dev_key_file).certs)
        return certs

    def _environ(self, task: tasks_v2.Task, previous: list[int]) -> dict[str, Any]:
        app_engine = "http_request" not in task
        task_headers = _task_headers(task, previous, app_engine=app_engine)
        if not app_engine:
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


def _task_headers(task: tasks_v2.Task, previous: list[int], *, app_engine: bool) -> dict[str, str]:
    """The task headers of the attempt after ``previous`` (statuses), unprefixed."""
    # App Engine counts every answered attempt; HTTP targets leave 5xx answers out.
    executions = sum(1 for status in previous if app_engine or status < 500)
    headers = {
        "QueueName": task.name.split("/tasks/")[0].rsplit("/", 1)[-1],
        "TaskName": task.name.rsplit("/", 1)[-1],
        "TaskRetryCount": str(len(previous)),
        "TaskExecutionCount": str(executions),
        "TaskETA": f"{task.schedule_time.replace(tzinfo=UTC).timestamp():.6f}",
    }
    if previous:
        headers["TaskPreviousResponse"] = str(previous[-1])
        headers["TaskRetryReason"] = "App Error" if app_engine else ""
    return headers


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
        The queue. ``defer`` calls in the block land in it, from this thread and from
        threads that have no client of their own (a ``ThreadPoolExecutor``'s workers):
        for the whole process while the block is open. A client a request binds
        (``wrap_wsgi_app(settings=...)``) still wins inside that request. See the
        module docstring for nested and concurrent blocks.
    """
    queue = InMemoryQueue(settings or TEST_SETTINGS, app=app, max_attempts=max_attempts)
    with as_process_default(queue.client), queue.client.bind():
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
