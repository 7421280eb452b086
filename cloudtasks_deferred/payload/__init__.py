"""The payload layer: a call turned into bytes and back, and nothing else.

Serializing a call (the legacy callable rules), the frame around it (metadata,
compression, the signature and its binding to a destination), the unpickling
allowlist and the bounded, checked unpickler that enforces it, and the reader behind
``cloudtasks-deferred inspect``. Bytes in, bytes out: it may import only the base
modules (:mod:`cloudtasks_deferred.errors`, :mod:`cloudtasks_deferred.limits`) — no
settings, no Datastore, no network — so every rule here can be read, tested and
mutation-tested on its own.

:func:`invoke_member` is defined in :mod:`~cloudtasks_deferred.payload.calls` and
pickled as ``cloudtasks_deferred.payload.invoke_member``: the name every payload since
release 0.1 has used for member calls, which the allowlist recognises.
"""

from __future__ import annotations

from cloudtasks_deferred.payload.calls import invoke_member

# Pickled under the package's name (see above): handlers of every release resolve it.
invoke_member.__module__ = __name__

__all__ = ["invoke_member"]
