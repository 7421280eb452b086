"""The outbox sweeper: creates transactional tasks whose creation after commit never happened.

A transactional ``defer`` creates its task right after the transaction commits
(:mod:`cloudtasks_deferred.enqueue.outbox`). If the process dies in between, the task's
``_DeferredOutbox`` entry stays behind; :func:`sweep` creates the task of every
entry older than a threshold and deletes the entry. Run it periodically, either:

* ``cloudtasks-deferred sweep`` (the command line, with the app's environment), or
* ``POST /_ah/queue/deferred/sweep``, which :func:`~cloudtasks_deferred.wrap_wsgi_app`
  serves with :class:`~cloudtasks_deferred.middleware.SweepApp`: a Cloud Scheduler job
  with an OIDC token for the
  service account tasks use (``--oidc-service-account-email`` =
  ``CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT``, ``--oidc-token-audience`` = the service
  URL). The request is authenticated exactly like a task, before anything else.

Sweeping is safe at any time and from several places at once: a task that exists
already is refused by Cloud Tasks (``ALREADY_EXISTS``, counted as created), and a
duplicate delivery does nothing (:mod:`cloudtasks_deferred.receive.guard`). Entries are
swept oldest first, at most ``limit`` per call.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from cloudtasks_deferred.enqueue.sender import SendingClient

if TYPE_CHECKING:
    from google.cloud import tasks_v2

__all__ = ["DEFAULT_LIMIT", "DEFAULT_OLDER_THAN", "SWEEP_PATH", "SweepReport", "sweep"]

_logger = logging.getLogger(__name__)

#: Where :func:`~cloudtasks_deferred.wrap_wsgi_app` serves the sweeper.
SWEEP_PATH: Final = "/_ah/queue/deferred/sweep"
#: Entries younger than this are left alone: their process may still create the task.
DEFAULT_OLDER_THAN: Final = timedelta(minutes=5)
#: Entries handled per sweep.
DEFAULT_LIMIT: Final = 200


@dataclasses.dataclass
class SweepReport:
    """What one sweep did.

    Attributes:
        created: Tasks this sweep created.
        existing: Tasks Cloud Tasks already had (``ALREADY_EXISTS``).
        finished: Entries whose task had already run; removed without creating it.
        failed: Tasks that could not be created; their entries wait for the next sweep.
    """

    created: int = 0
    existing: int = 0
    finished: int = 0
    failed: int = 0

    def summary(self) -> str:
        """One line for logs and HTTP answers."""
        return (
            f"created {self.created}, already existing {self.existing}, "
            f"already run {self.finished}, failed {self.failed}"
        )


def sweep(
    client: SendingClient,
    *,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    limit: int = DEFAULT_LIMIT,
) -> SweepReport:
    """Creates the tasks of outbox entries older than ``older_than``.

    Args:
        client: Its NDB context and transport are used (a context is opened if none
            is active).
        older_than: Minimum age of an entry; younger ones may still be created by the
            process that committed them.
        limit: Entries to handle in this call, oldest first.

    Returns:
        What was done.

    Raises:
        ConfigurationError: No NDB context can be opened; says what to configure.
        ValueError: ``older_than`` is negative or ``limit`` is below 1.
    """
    if older_than < timedelta(0) or limit < 1:
        raise ValueError(f"need older_than >= 0 and limit >= 1, got {older_than}, {limit}")
    # google-cloud-ndb (the ndb extra) and the outbox, which needs it, load on use.
    from google.cloud import ndb, tasks_v2  # type: ignore[attr-defined]

    from cloudtasks_deferred.enqueue.outbox import create_once  # imports google-cloud-ndb
    from cloudtasks_deferred.storage import entities as storage  # likewise

    report = SweepReport()
    with client.ndb_context(required_for="the outbox sweeper"):
        cutoff = datetime.now(UTC) - older_than
        model = storage.DeferredOutbox
        query = model.query(model.created < cutoff, namespace=storage.NAMESPACE)
        for key in query.order(model.created).fetch(limit, keys_only=True, **storage.NO_CACHE):
            entry = key.get(**storage.NO_CACHE)
            if entry is None:
                continue  # created and deleted meanwhile
            run_key = ndb.Key(storage.DeferredOutboxRun, key.id(), namespace=storage.NAMESPACE)
            if run_key.get(**storage.NO_CACHE) is None:
                report.finished += 1  # it ran: the entry's deletion was all that failed
            else:
                task = _fresh_dev_token(client, tasks_v2.Task.deserialize(entry.task))
                try:
                    created = create_once(client, task)
                except Exception:
                    _logger.exception("the sweeper could not create task %s", task.name)
                    report.failed += 1
                    continue
                if created:
                    report.created += 1
                    _logger.info("the sweeper created transactional task %s", task.name)
                else:
                    report.existing += 1
            storage.delete([key])
    return report


def _fresh_dev_token(client: SendingClient, task: tasks_v2.Task) -> tasks_v2.Task:
    # A dev-mode token lasts an hour; a swept task may be older. Re-sign it for the
    # same audience. (Production tasks carry oidc_token: Cloud Tasks signs at dispatch.)
    if not client.settings.dev_mode or "http_request" not in task:
        return task
    headers: Any = task.http_request.headers
    authorization = headers.get("Authorization", "")
    if not authorization.startswith("Bearer "):
        return task
    from google.auth import jwt  # google-auth loads when a dev-mode task is swept

    claims = jwt.decode(authorization.removeprefix("Bearer "), verify=False)
    token = client.mint_dev_token(str(claims["aud"]), datetime.now(UTC))
    headers["Authorization"] = f"Bearer {token}"
    return task
