"""A task for the demo (not part of the documentation's sample): it fails once.

Raising ``SingularTaskFailure`` asks Cloud Tasks to retry without logging an
error; the second attempt succeeds. Each attempt is recorded in Datastore so the
demo can show it.
"""

from google.cloud import ndb

from cloudtasks_deferred import deferred


class DemoAttempt(ndb.Model):
    attempts = ndb.IntegerProperty(default=0)
    succeeded = ndb.BooleanProperty(default=False)


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
