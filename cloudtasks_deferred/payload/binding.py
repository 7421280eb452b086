"""Signed payloads bound to where they go and when they were made, so they cannot be replayed.

A signature alone says "some service holding this key wrote these bytes": a payload
captured from one queue or service would be accepted by every other service sharing
the key, for ever. So every payload ``defer`` signs carries, inside the signed
metadata (the MAC covers it, :mod:`cloudtasks_deferred.payload.frame`):

* ``dst``, its **destination**: for an HTTP task the OIDC audience of its URL (the
  origin of ``CLOUDTASKS_DEFERRED_BASE_URL``, or the first of
  ``CLOUDTASKS_DEFERRED_AUDIENCE``); for an App Engine task
  ``app-engine:PROJECT/SERVICE`` (the service ``_target`` names, else the one that
  deferred it). The destination is the service, not the queue: one service's
  queues share its handler, and the sweeper or a replay may use another queue.
* ``iat``, its **issue time**, in whole seconds since the epoch.

The handler (:meth:`Client.open_payload <cloudtasks_deferred.client.Client.open_payload>`)
refuses, with 403, a signed payload whose destination is not one of its own
(``Settings.payload_destinations``),
that was issued more than ``CLOUDTASKS_DEFERRED_PAYLOAD_MAX_AGE`` seconds ago
(default :data:`DEFAULT_MAX_AGE`, 32 days: Cloud Tasks deletes a task 31 days after
it is created, plus a day for an outbox entry to be swept), or more than
:data:`CLOCK_SKEW_SECONDS` in the future. Lower the maximum age to the longest time
a task of yours can spend in a queue (its ``_countdown``/``_eta`` plus the queue's
retry window) to narrow the window further.

Transition: release 0.1 signed payloads without ``dst``/``iat``. They are accepted,
with a warning, through the 0.2 releases, so that tasks queued before an upgrade
still run; set ``CLOUDTASKS_DEFERRED_REQUIRE_BOUND_PAYLOADS=true`` to refuse them now
(0.3 will refuse them always).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Final

from cloudtasks_deferred.payload.frame import PayloadSignatureError

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "DEFAULT_MAX_AGE",
    "DESTINATION",
    "ISSUED_AT",
    "app_engine_destination",
    "bind",
    "check",
]

#: Metadata key of the destination.
DESTINATION: Final = "dst"
#: Metadata key of the issue time.
ISSUED_AT: Final = "iat"
#: Default maximum age of a signed payload, in seconds: 32 days.
DEFAULT_MAX_AGE: Final = 32 * 24 * 3600
#: Seconds an issue time may lie in the future (clocks of two machines differ).
CLOCK_SKEW_SECONDS: Final = 300

_logger = logging.getLogger(__name__)


def app_engine_destination(project: str, service: str | None) -> str:
    """The destination of an App Engine task: ``app-engine:PROJECT/SERVICE``.

    Args:
        project: The project ID.
        service: The App Engine service; ``None`` means ``default``.
    """
    return f"app-engine:{project}/{service or 'default'}"


def bind(metadata: Mapping[str, Any], destination: str, now: float) -> dict[str, Any]:
    """Returns ``metadata`` with the destination and the issue time added.

    Args:
        metadata: The frame's metadata.
        destination: Where the task goes (module docstring).
        now: Seconds since the epoch.
    """
    return {**metadata, DESTINATION: destination, ISSUED_AT: int(now)}


def check(
    metadata: Mapping[str, Any],
    *,
    destinations: Collection[str],
    max_age: float,
    now: float,
    require: bool,
) -> None:
    """Refuses a verified signed payload meant for another service, or too old.

    Args:
        metadata: The verified frame's metadata.
        destinations: The destinations this service accepts.
        max_age: Oldest issue time accepted, in seconds before ``now``.
        now: Seconds since the epoch.
        require: Refuse payloads that carry no destination (signed by release 0.1).

    Raises:
        PayloadSignatureError: The payload is bound elsewhere, expired, issued in the
            future, or unbound while ``require`` is set. The message names the
            destination (a URL or App Engine service, never a secret).
    """
    destination = metadata.get(DESTINATION)
    issued_at = metadata.get(ISSUED_AT)
    if destination is None and issued_at is None:
        if require:
            raise PayloadSignatureError(
                "the payload is signed without a destination (by release 0.1); "
                "CLOUDTASKS_DEFERRED_REQUIRE_BOUND_PAYLOADS refuses such payloads"
            )
        _logger.warning(
            "accepted a payload signed without a destination (by release 0.1); "
            "0.3 will refuse them (CLOUDTASKS_DEFERRED_REQUIRE_BOUND_PAYLOADS=true now)"
        )
        return
    if not isinstance(destination, str) or destination not in destinations:
        shown = destination if isinstance(destination, str) else "nowhere"
        raise PayloadSignatureError(
            f"the payload is signed for {shown[:200]!r}, not for this service "
            "(CLOUDTASKS_DEFERRED_AUDIENCE, or the App Engine service)"
        )
    if isinstance(issued_at, bool) or not isinstance(issued_at, int):
        raise PayloadSignatureError("the payload's signed issue time is not a number")
    if issued_at > now + CLOCK_SKEW_SECONDS:
        raise PayloadSignatureError("the payload's signed issue time is in the future")
    if issued_at < now - max_age:
        raise PayloadSignatureError(
            f"the payload was signed more than {max_age:.0f} s ago "
            "(CLOUDTASKS_DEFERRED_PAYLOAD_MAX_AGE)"
        )
