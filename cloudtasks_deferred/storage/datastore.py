"""Access to Datastore through google-cloud-ndb: one NDB context per request or task.

:class:`Datastore` opens an NDB context for the settings it was built with when one
is needed and none is active: for legacy code run in tasks and requests (when
``CLOUDTASKS_DEFERRED_NDB`` allows it) and, whatever that setting says, for what
cannot work without Datastore (an oversized payload, a transactional task). The
``google.cloud.ndb`` client is one per process and project. google-cloud-ndb is the
``ndb`` extra: it is imported only when a context is opened.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
from typing import Any

from cloudtasks_deferred._memo import once_per_process
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.settings import Settings

__all__ = ["Datastore", "ndb_installed", "shared_ndb_client"]

_logger = logging.getLogger(__name__)


class Datastore:
    """Opens NDB contexts for one configuration.

    Args:
        settings: Its ``ndb`` and ``project`` decide when and for which project.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._unavailable = False

    def context(
        self, *, required_for: str | None = None
    ) -> contextlib.AbstractContextManager[object]:
        """An NDB context, when NDB is enabled and none is active.

        With ``settings.ndb`` unset (auto), a missing or unconfigured google-cloud-ndb
        gives no context (and a warning once); with ``settings.ndb=True`` it is an error.

        Args:
            required_for: What needs Datastore (e.g. ``"an oversized payload"``): a
                context is then opened whatever ``settings.ndb`` says, and failing to
                is an error that starts with this.

        Raises:
            ConfigurationError: ``settings.ndb`` is true, or ``required_for`` is given,
                and no NDB client can be made; the message says what to configure.
        """
        mode = True if required_for else self.settings.ndb
        if mode is False or (mode is None and (self._unavailable or not ndb_installed())):
            return contextlib.nullcontext()
        try:
            ndb = importlib.import_module("google.cloud.ndb")
            if ndb.get_context(raise_context_error=False) is not None:
                return contextlib.nullcontext()
            context: contextlib.AbstractContextManager[object]
            context = shared_ndb_client(self.settings.project).context()
            return context
        except Exception as exc:
            fix = (
                "install the ndb extra (pip install 'cloudtasks-deferred[ndb]')"
                if isinstance(exc, ModuleNotFoundError)
                else "configure Datastore access (GOOGLE_CLOUD_PROJECT and credentials, or "
                "DATASTORE_EMULATOR_HOST locally)"
            )
            message = (
                f"{required_for} needs Datastore, but " if required_for else ""
            ) + f"cannot open an NDB context ({exc}): {fix}"
            if mode:
                raise ConfigurationError(message) from exc
            # Auto mode: say it once, then stop trying (each attempt probes credentials).
            self._unavailable = True
            _logger.warning(
                "%s; running without one (CLOUDTASKS_DEFERRED_NDB=false silences this)", message
            )
            return contextlib.nullcontext()


@once_per_process
def shared_ndb_client(project: str | None) -> Any:
    """Returns the process's ``google.cloud.ndb.Client`` for ``project``."""
    return importlib.import_module("google.cloud.ndb").Client(project=project)


@functools.cache
def ndb_installed() -> bool:
    """Whether google-cloud-ndb (the ``ndb`` extra) is installed; found, not imported."""
    return importlib.util.find_spec("google.cloud.ndb") is not None
