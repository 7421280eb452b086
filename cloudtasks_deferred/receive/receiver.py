"""The receiving half of a client: who may run tasks, and what a body must be to run.

A :class:`Receiver` holds what the handler needs beyond the request — the settings,
the authenticator, the dead-letter sink, Datastore access — and the one place task
bodies are decoded, :meth:`Receiver.open_payload`. It knows nothing of sending:
:class:`~cloudtasks_deferred.Client` pairs it with an
:class:`~cloudtasks_deferred.enqueue.sender.Sender`, and the handler asks for a
:class:`ReceivingClient`, which that pair is.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cloudtasks_deferred.payload import binding, invoke_member
from cloudtasks_deferred.payload.allowlist import INVOKE_MEMBER, Allowlist
from cloudtasks_deferred.payload.budget import DecodeBudget
from cloudtasks_deferred.payload.calls import OpenedPayload, load_call, unpickle
from cloudtasks_deferred.payload.frame import decode
from cloudtasks_deferred.receive.auth import Authenticator, authenticator_for
from cloudtasks_deferred.receive.deadletters import DeadLetterSink
from cloudtasks_deferred.settings import Settings
from cloudtasks_deferred.storage.datastore import Datastore
from cloudtasks_deferred.storage.dead_letter_sinks import sink_for

__all__ = ["Receiver", "ReceivingClient"]


class ReceivingClient(Protocol):
    """What the handler, the guard and the sweeper endpoint use of a client."""

    settings: Settings

    @property
    def authenticator(self) -> Authenticator:
        """Who may run tasks."""
        ...

    @property
    def dead_letters(self) -> DeadLetterSink:
        """Where tasks given up on are recorded."""
        ...

    def open_payload(self, body: bytes) -> OpenedPayload:
        """Decodes a task body (see :meth:`Receiver.open_payload`)."""
        ...

    def ndb_context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context, when one is needed and none is active."""
        ...

    def bind(self) -> contextlib.AbstractContextManager[Any]:
        """Makes this client the one ``defer`` uses, for the block (the task's run)."""
        ...


class Receiver:
    """Everything the handler applies to a task request, for one configuration.

    Args:
        settings: The configuration.
        authenticator: Who may run tasks; built from the settings when ``None``.
        dead_letters: Receives tasks given up on; when ``None``, the sink
            ``settings.dead_letters`` names
            (:func:`~cloudtasks_deferred.storage.dead_letter_sinks.sink_for`).
        datastore: NDB access; one for ``settings`` when ``None``.
        library: The library's own task callables by name, as the allowlist hands
            them back (:data:`~cloudtasks_deferred.payload.allowlist.LIBRARY_CALLABLES`):
            ``invoke_member`` always; the facade adds ``run_from_datastore``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        authenticator: Authenticator | None = None,
        dead_letters: DeadLetterSink | None = None,
        datastore: Datastore | None = None,
        library: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.datastore = datastore or Datastore(settings)
        self.dead_letters: DeadLetterSink = dead_letters or sink_for(settings, self.datastore)
        self._library = {INVOKE_MEMBER: invoke_member, **(library or {})}
        self._authenticator = authenticator
        self._lock = threading.Lock()

    @property
    def authenticator(self) -> Authenticator:
        """The rules the handler applies to task requests."""
        if self._authenticator is None:
            authenticator = authenticator_for(self.settings)
            with self._lock:
                if self._authenticator is None:
                    self._authenticator = authenticator
        return self._authenticator

    def open_payload(self, body: bytes) -> OpenedPayload:
        """Decodes and unpickles a task body under this receiver's rules.

        Every task body the library runs goes through here, so that what a body must
        satisfy before it is unpickled is decided in one place:

        * with ``settings.signing_keys``, the frame must be signed by one of them
          (checked in constant time before anything else is parsed), for this
          service and recently enough (:mod:`cloudtasks_deferred.payload.binding`);
        * with ``settings.allowed_modules``, the pickle may reference and run only
          allowed code, refused before its module is imported, and unpickling it
          may cost only a budget proportional to the body's size
          (:mod:`cloudtasks_deferred.payload.allowlist`).

        Args:
            body: The request body (a frame, or a bare legacy pickle).

        Raises:
            PayloadRefusedError: The body is unsigned or badly signed, bound elsewhere
                or too old, or references or runs code outside the allowlist (the
                handler answers 403, retried).
            InvalidPayloadError: The body is not a valid payload (a permanent failure).
            UnsupportedPayloadError: The frame needs a newer version of the library.
            ImportError, AttributeError: The pickle names code this deployment lacks.
        """
        settings = self.settings
        keys = settings.verification_keys
        decoded = decode(body, keys=keys, require_signature=keys is not None)
        if decoded.key_id is not None:
            binding.check(
                decoded.metadata,
                destinations=settings.payload_destinations,
                max_age=settings.payload_max_age,
                now=time.time(),
                require=settings.require_bound_payloads,
            )
        if self._allowlist is None:
            loads = unpickle
        else:
            loads = functools.partial(
                self._allowlist.loads, budget=DecodeBudget.for_body(len(body))
            )
        func, args, kwargs = load_call(decoded.pickled, loads=loads)
        return OpenedPayload(decoded.metadata, func, args, kwargs)

    def ndb_context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context (see :meth:`~cloudtasks_deferred.storage.datastore.Datastore.context`)."""
        return self.datastore.context(required_for=required_for)

    @functools.cached_property
    def _allowlist(self) -> Allowlist | None:
        if not self.settings.allowed_modules:
            return None
        return Allowlist(self.settings.allowed_modules, library=self._library)
