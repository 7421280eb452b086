"""The receiving layer: a task request authenticated, decoded, run and answered.

Authentication (:mod:`~cloudtasks_deferred.receive.auth`), the handler's request path
(:mod:`~cloudtasks_deferred.receive.handler`) and its outcomes, reports and dead letters
(:mod:`~cloudtasks_deferred.receive.outcomes`, :mod:`~cloudtasks_deferred.receive.reporting`,
:mod:`~cloudtasks_deferred.receive.deadletters`), the running task's context and retry
accounting (:mod:`~cloudtasks_deferred.receive.context`,
:mod:`~cloudtasks_deferred.receive.retry`), transactional and stored payloads
(:mod:`~cloudtasks_deferred.receive.guard`, :mod:`~cloudtasks_deferred.receive.stored`),
the sweeper's endpoint, and the receiving half of a client
(:mod:`~cloudtasks_deferred.receive.receiver`). It may import ``storage``, ``settings``,
``payload`` and the base modules, never ``enqueue`` (its sibling: what it needs of
sending, the facade hands in) or the facade. It never imports google-cloud-tasks.
"""

__all__: list[str] = []
