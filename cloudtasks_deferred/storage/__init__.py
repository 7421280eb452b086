"""The storage layer: the Datastore entities the library writes, and access to Datastore.

The NDB models (``_DeferredTaskEntity`` and its chunks, the transactional outbox and its
run entries) and their lifecycle (:mod:`~cloudtasks_deferred.storage.entities`), the
size limits of a stored payload (:mod:`~cloudtasks_deferred.storage.chunks`), the
NDB context one configuration opens (:mod:`~cloudtasks_deferred.storage.datastore`), and
dead letters: the record and its rules (:mod:`~cloudtasks_deferred.storage.dead_letters`),
where they go (:mod:`~cloudtasks_deferred.storage.dead_letter_sinks`) and their
``_DeferredDeadLetter`` kind (:mod:`~cloudtasks_deferred.storage.dead_letter_entities`).
Shared by the sending and the receiving side. It may import
:mod:`cloudtasks_deferred.settings`, :mod:`cloudtasks_deferred.payload` and the base
modules, never ``enqueue``, ``receive`` or the facade. google-cloud-ndb (the ``ndb``
extra) is imported by ``entities`` and ``dead_letter_entities`` and when a context is
opened, never by importing the package.
"""

__all__: list[str] = []
