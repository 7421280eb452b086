"""The sending half of a client: where tasks go and how their bodies are framed.

A :class:`Sender` holds what ``defer`` needs beyond its arguments — the settings, the
transport to Cloud Tasks (or a double), the queue path, the payload frame's signing,
a dev-mode token minter and Datastore access for oversized and transactional
payloads — and nothing of the handler. :class:`~cloudtasks_deferred.Client` pairs one
with a :class:`~cloudtasks_deferred.receive.receiver.Receiver`. Nothing here touches
the network or imports ``google.cloud.tasks_v2`` before a task is created.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from cloudtasks_deferred.dev_key import DEV_INVOKER, DevKey, dev_key
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.payload.frame import encode
from cloudtasks_deferred.settings import Platform, Settings, queue_path
from cloudtasks_deferred.storage.datastore import Datastore

if TYPE_CHECKING:
    from cloudtasks_deferred.enqueue.transports import Transport

__all__ = ["Sender", "SendingClient"]

_logger = logging.getLogger(__name__)
_METADATA_REGION_URL = "http://metadata.google.internal/computeMetadata/v1/instance/region"


class SendingClient(Protocol):
    """What ``defer``'s machinery uses of a client: a :class:`Sender`, or a whole
    :class:`~cloudtasks_deferred.Client`."""

    settings: Settings

    @property
    def transport(self) -> Transport:
        """The transport tasks are created with."""
        ...

    def queue_path(self, queue: str | None = None) -> str:
        """``projects/P/locations/L/queues/Q`` for ``queue``."""
        ...

    def frame_payload(
        self, pickled: bytes, metadata: dict[str, Any], *, compress: bool = False
    ) -> bytes:
        """Frames a pickled call (see :meth:`Sender.frame_payload`)."""
        ...

    def mint_dev_token(self, audience: str, valid_from: datetime) -> str:
        """Signs a dev-mode ID token for a task."""
        ...

    def ndb_context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context, when one is needed and none is active."""
        ...


class Sender:
    """Everything ``defer`` needs to create a task for one configuration.

    Collaborators are built on first use, once, thread-safely.

    Args:
        settings: The configuration.
        transport: Where tasks go; the Cloud Tasks API (or the emulator named in the
            settings) when ``None``.
        datastore: NDB access for payloads that need Datastore; one for ``settings``
            when ``None``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Transport | None = None,
        datastore: Datastore | None = None,
    ) -> None:
        self.settings = settings
        self.datastore = datastore or Datastore(settings)
        self._transport = transport
        self._lock = threading.Lock()
        self._project_location: tuple[str, str] | None = None

    @property
    def transport(self) -> Transport:
        """The transport tasks are created with."""
        if self._transport is None:
            # google.cloud.tasks_v2 loads on the first task, not at import (cold starts).
            from cloudtasks_deferred.enqueue.transports.cloud_tasks import CloudTasksTransport

            with self._lock:
                if self._transport is None:
                    self._transport = CloudTasksTransport(
                        self.settings.emulator_host, timeout=self.settings.enqueue_timeout
                    )
        return self._transport

    @property
    def dev_key(self) -> DevKey:
        """The local key dev-mode tasks are signed with (shared per key file)."""
        return dev_key(self.settings.dev_key_file)

    def mint_dev_token(self, audience: str, valid_from: datetime) -> str:
        """Signs a dev-mode ID token for a task (see :mod:`cloudtasks_deferred.dev_key`)."""
        email = self.settings.service_account or DEV_INVOKER
        return self.dev_key.mint(email=email, audience=audience, valid_from=valid_from)

    def frame_payload(
        self, pickled: bytes, metadata: dict[str, Any], *, compress: bool = False
    ) -> bytes:
        """Frames a pickled call: the mirror of the receiver's ``open_payload``.

        Every task body and stored payload the library writes is framed here, signed
        with the first configured signing key if there is one. With
        ``settings.cross_compatible_payloads`` the body is the bare pickle, which a
        Python 2 handler reads (the caller passes no metadata then).

        Args:
            pickled: The pickled ``(callable, args, kwargs)``.
            metadata: What the handler enforces (JSON-serializable).
            compress: zlib-compress the pickle.

        Returns:
            The frame.
        """
        if self.settings.cross_compatible_payloads:
            return pickled
        return encode(pickled, metadata, compress=compress, signing_key=self.settings.signing_key)

    def ndb_context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context (see :meth:`~cloudtasks_deferred.storage.datastore.Datastore.context`)."""
        return self.datastore.context(required_for=required_for)

    def queue_path(self, queue: str | None = None) -> str:
        """Returns ``projects/P/locations/L/queues/Q`` for ``queue`` (default: the settings').

        Raises:
            ConfigurationError: The project or location cannot be determined.
        """
        if self._project_location is None:
            resolved = (self._project(), self._location())
            with self._lock:
                self._project_location = resolved
        project, location = self._project_location
        return queue_path(project, location, queue or self.settings.queue)

    def _project(self) -> str:
        if self.settings.project:
            return self.settings.project
        import google.auth  # google-auth loads when first needed (cold starts)
        from google.auth import exceptions

        try:
            _, project = google.auth.default()
        except exceptions.DefaultCredentialsError as exc:
            raise ConfigurationError(
                f"GOOGLE_CLOUD_PROJECT is not set and application default credentials are "
                f"unavailable ({exc}): set GOOGLE_CLOUD_PROJECT"
            ) from exc
        if not project:
            raise ConfigurationError("cannot determine the project: set GOOGLE_CLOUD_PROJECT")
        return str(project)

    def _location(self) -> str:
        if self.settings.location:
            return self.settings.location
        if self.settings.platform is Platform.APP_ENGINE:
            region = _metadata_region()
            if region:
                return region
        raise ConfigurationError(
            "CLOUDTASKS_DEFERRED_LOCATION is not set: set it to your queues' location, "
            "e.g. us-central1 (gcloud tasks queues list shows it)"
        )


def _metadata_region() -> str | None:
    import requests  # loaded only on App Engine without a configured location

    try:
        response = requests.get(
            _METADATA_REGION_URL, headers={"Metadata-Flavor": "Google"}, timeout=2
        )
        response.raise_for_status()
    except requests.RequestException:
        _logger.warning("cannot read the region from the metadata server", exc_info=True)
        return None
    # "projects/123456789/regions/us-central1"
    return response.text.rsplit("/", 1)[-1] or None
