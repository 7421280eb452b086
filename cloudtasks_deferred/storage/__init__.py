"""The storage layer: the Datastore entities the library writes, and access to Datastore.

The NDB models (``_DeferredTaskEntity`` and its chunks, the transactional outbox and its
run entries) and their lifecycle (:mod:`~cloudtasks_deferred.storage.entities`), the
size limits of a stored payload (:mod:`~cloudtasks_deferred.storage.chunks`), and the
NDB context one configuration opens (:mod:`~cloudtasks_deferred.storage.datastore`).
Shared by the sending and the receiving side. It may import
:mod:`cloudtasks_deferred.settings`, :mod:`cloudtasks_deferred.payload` and the base
modules, never ``enqueue``, ``receive`` or the facade. google-cloud-ndb (the ``ndb``
extra) is imported by ``entities`` and when a context is opened, never by importing
the package.
"""

__all__: list[str] = []
