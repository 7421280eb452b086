"""How a stored payload is cut into Datastore entities: the size limits, without NDB.

Kept apart from :mod:`cloudtasks_deferred.storage.entities` (which imports
google-cloud-ndb) so that ``defer`` can decide where a payload goes without loading
NDB for payloads that stay inline.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CHUNK_BYTES", "MAX_CHUNKS", "MAX_STORED_BYTES"]

#: Payload bytes per entity: well below the 1,048,487-byte unindexed-property limit
#: (:data:`~cloudtasks_deferred.limits.MAX_UNINDEXED_PROPERTY_BYTES`), leaving room
#: for the key and the entity's encoding.
CHUNK_BYTES: Final = 1_000_000
#: Entities one stored payload may span. They are written in one commit, which must
#: stay under the Datastore emulator's 4 MiB gRPC message limit, so that what works
#: locally works in production (whose 10 MiB a transactional defer shares with the
#: caller's own writes).
MAX_CHUNKS: Final = 4
#: The largest payload the Datastore fallback stores, in bytes (after compression).
MAX_STORED_BYTES: Final = CHUNK_BYTES * MAX_CHUNKS
