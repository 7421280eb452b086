"""Tasks for the demo (not part of the documentation's sample).

* ``flaky`` fails once: raising ``SingularTaskFailure`` asks Cloud Tasks to retry
  without logging an error; the second attempt succeeds.
* ``summarize`` receives a payload too large for a task, which ``defer`` stored in
  Datastore (``_DeferredTaskEntity``); the task runs ``run_from_datastore``.
* ``notify_deposit`` is deferred with ``_transactional=True`` inside the transaction
  that records a deposit: it runs if and only if that transaction commits.

Each records what happened in Datastore so the demo can show it.
"""

import hashlib

from google.cloud import ndb

from cloudtasks_deferred import deferred


class DemoAttempt(ndb.Model):
    attempts = ndb.IntegerProperty(default=0)
    succeeded = ndb.BooleanProperty(default=False)


class DemoSummary(ndb.Model):
    size = ndb.IntegerProperty()
    sha256 = ndb.StringProperty()


class DemoAccount(ndb.Model):
    balance = ndb.IntegerProperty(default=0)
    notified = ndb.IntegerProperty(repeated=True)


def flaky(name):
    record = DemoAttempt.get_or_insert(name)
    record.attempts += 1
    task = deferred.current_task()
    if task.retry_count == 0:
        record.put()
        print(f"flaky({name!r}): attempt {record.attempts} raises SingularTaskFailure")
        raise deferred.SingularTaskFailure("first attempt fails on purpose")
    record.succeeded = True
    record.put()
    print(f"flaky({name!r}): attempt {record.attempts} succeeds (retry {task.retry_count})")


def summarize(name, blob):
    digest = hashlib.sha256(blob).hexdigest()
    DemoSummary(id=name, size=len(blob), sha256=digest).put()
    print(f"summarize({name!r}): got {len(blob):,} bytes intact (sha256 {digest[:16]})")


def notify_deposit(name, amount):
    account = DemoAccount.get_by_id(name)
    account.notified.append(amount)
    account.put()
    print(
        f"notify_deposit({name!r}, {amount}): runs after its transaction committed "
        f"(balance {account.balance})"
    )
