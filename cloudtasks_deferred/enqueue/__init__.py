"""The sending layer: a ``defer`` call turned into a Cloud Tasks task.

Options to a task request (:mod:`~cloudtasks_deferred.enqueue.options`,
:mod:`~cloudtasks_deferred.enqueue.tasks`), where the payload goes — inline, compressed
or stored in Datastore (:mod:`~cloudtasks_deferred.enqueue.oversized`) — the
transactional outbox and its sweeper (:mod:`~cloudtasks_deferred.enqueue.outbox`,
:mod:`~cloudtasks_deferred.enqueue.sweep`), the transports (the Cloud Tasks API and an
in-memory one, :mod:`~cloudtasks_deferred.enqueue.transports`), and the sending half of
a client (:mod:`~cloudtasks_deferred.enqueue.sender`); :mod:`~cloudtasks_deferred.enqueue.defer`
ties them together. It may import ``storage``, ``settings``, ``payload`` and the base
modules, never ``receive`` (its sibling) or the facade. google-cloud-tasks is imported
when the first task is built, never by importing the package.
"""

__all__: list[str] = []
