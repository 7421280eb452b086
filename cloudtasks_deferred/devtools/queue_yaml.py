"""Converts an App Engine ``queue.yaml`` into the ``queues`` map of the Terraform module.

:func:`convert` returns a :class:`Conversion`: the queues, in the shape the module's
``var.queues`` takes, and a warning for each setting Cloud Tasks cannot carry over.
An invalid value raises :class:`QueueYamlError` naming the queue, the field, the value
and what is accepted. Nothing is dropped without a warning. The rules are those of
``gcloud app deploy queue.yaml`` (Google Cloud SDK: ``api_lib/tasks/
app_deploy_migration_util.py``, ``task_queues_convertors.py``,
``command_lib/tasks/constants.py``) and of App Engine's parser (``queueinfo.py``):

- ``rate`` (``5/s``, ``100/m``, ``10/h``, ``1/d``) -> ``max_dispatches_per_second``,
  rounded to 9 decimals, at most 500; a rate of 0 (a paused queue) is refused;
- ``bucket_size`` -> nothing: the Cloud Tasks v2 API, which Terraform uses, derives the
  max burst size from the rate (a warning says so);
- ``max_concurrent_requests`` -> ``max_concurrent_dispatches`` (1 to 5000);
- ``retry_parameters``: ``task_retry_limit`` N -> ``max_attempts`` N + 1 (-1, unlimited,
  without it); ``task_age_limit`` (``2d``, ``1h``, ``30m``, ``10s``) ->
  ``max_retry_duration`` in whole seconds; ``min_backoff_seconds``,
  ``max_backoff_seconds`` -> ``min_backoff``, ``max_backoff`` (``"0.1s"``);
  ``max_doublings`` -> ``max_doublings``;
- ``target`` (``service`` or ``version.service``) -> ``app_engine_routing_override``;
- pull queues, ``acl``, ``total_storage_limit``, ``resume_paused_queues`` and
  ``application`` -> nothing, with a warning;
- no ``default`` queue -> App Engine's implicit one (5/s), with a warning.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from types import MappingProxyType
from typing import Final

import yaml

from cloudtasks_deferred import limits
from cloudtasks_deferred.errors import Error

__all__ = ["Conversion", "Queue", "QueueYamlError", "convert", "render_hcl", "render_json"]

#: One queue as the module's ``var.queues`` takes it: attribute -> value.
Queue = dict[str, object]

#: Seconds per unit of ``rate`` and ``task_age_limit`` (``queueinfo.py``).
_UNIT_SECONDS: Final = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400})
_AMOUNT: Final = r"(\d+(?:\.\d*)?|\.\d+)"
_RATE: Final = re.compile(_AMOUNT + r"/([smhd])")
_AGE: Final = re.compile(_AMOUNT + r"([smhd])")
#: ``queueinfo.py``: a target is ``service`` or ``version.service`` (gcloud's ``ConvertTarget``).
_TARGET: Final = re.compile(r"(?:((?!-)[a-z\d-]{1,100})\.)?((?!-)[a-z\d-]{1,63})")
_HCL_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: Cloud Tasks' limits (``RateLimits``), as gcloud's ``MAX_RATE`` and ``MAX_BUCKET_SIZE``.
_MAX_RATE, _MAX_CONCURRENT, _MAX_BUCKET = 500, 5000, 500
#: Cloud Tasks' backoff defaults in seconds, which apply to a bound queue.yaml leaves out.
_DEFAULT_MIN_BACKOFF: Final = 0.1
_DEFAULT_MAX_BACKOFF: Final = 3600.0

_TOP_LEVEL_NOTES: Final = MappingProxyType(
    {
        "total_storage_limit": "Cloud Tasks has no storage limit for a project's tasks",
        "resume_paused_queues": "Terraform neither pauses nor resumes queues",
        "application": "the module's project_id decides the project",
    }
)
_QUEUE_FIELDS: Final = frozenset({"name", "mode", "rate", "bucket_size", "target", "acl"}) | {
    "max_concurrent_requests",
    "retry_parameters",
}
_RETRY_FIELDS: Final = frozenset({"task_retry_limit", "task_age_limit", "max_doublings"}) | {
    "min_backoff_seconds",
    "max_backoff_seconds",
}


class QueueYamlError(Error, ValueError):
    """A queue.yaml cannot be converted; the message names the queue, field, value and fix.

    :mod:`cloudtasks_deferred.devtools.localdev`, which reads a queue.yaml's queue IDs with
    :func:`convert`, raises it again as a ``localdev.QueueFileError`` naming the file.
    """


@dataclasses.dataclass(frozen=True)
class Conversion:
    """The result of :func:`convert`.

    Attributes:
        queues: Queue ID -> attributes, in file order, as the module's ``var.queues``
            takes them; attributes left out keep the module's defaults (Cloud Tasks').
        warnings: One sentence per setting that was not carried over, and why.
        pull_queues: The names of the pull queues, left out of ``queues`` (a warning
            says so too).
    """

    queues: dict[str, Queue]
    warnings: tuple[str, ...]
    pull_queues: tuple[str, ...] = ()


def convert(text: str) -> Conversion:
    """Converts the text of a queue.yaml file.

    Args:
        text: The file's content.

    Returns:
        The queues and the warnings. App Engine's implicit ``default`` queue (5/s) is
        added, with a warning, when the file does not define it.

    Raises:
        QueueYamlError: The YAML is malformed, a field is unknown, a value is invalid,
            a queue has no name or a name is used twice.
    """
    document = _load(text)
    _reject_unknown("the top level", document, frozenset({"queue", *_TOP_LEVEL_NOTES}))
    warnings = [
        f"{key}: not converted: {note}."
        for key, note in _TOP_LEVEL_NOTES.items()
        if key in document
    ]
    entries = document.get("queue")
    if not isinstance(entries, list) or not entries:
        raise QueueYamlError("no queues: expected a `queue:` list of entries, each with a name")
    queues: dict[str, Queue] = {}
    pull: dict[str, Queue] = {}
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise QueueYamlError(f"queue entry #{number} must be a mapping with a name")
        name = _name(number, entry.get("name"), queues | pull)
        if (queue := _queue(name, entry, warnings)) is not None:
            queues[name] = queue
        else:
            pull[name] = {}
    if "default" not in queues:
        queues["default"] = {"max_dispatches_per_second": 5, "max_attempts": -1}
        warnings.append(
            "default: added at 5/s with unlimited attempts, as App Engine creates it "
            "implicitly; defer() uses it when given no _queue."
        )
    return Conversion(queues=queues, warnings=tuple(warnings), pull_queues=tuple(pull))


def render_json(conversion: Conversion) -> str:
    """Returns ``{"queues": ...}``: the text of a ``.tfvars.json`` file."""
    return json.dumps({"queues": conversion.queues}, indent=2) + "\n"


def render_hcl(conversion: Conversion) -> str:
    """Returns ``queues = {...}``: a ``.tfvars`` file's text, laid out as by ``terraform fmt``."""
    return f"queues = {_hcl(conversion.queues, 0)}\n"


def _load(text: str) -> dict[object, object]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise QueueYamlError(f"not valid YAML{_where(exc)}") from exc
    except RecursionError as exc:  # PyYAML composes nested nodes recursively
        raise QueueYamlError("not a queue.yaml: its YAML nests too deeply") from exc
    if not isinstance(document, dict):
        raise QueueYamlError("expected a mapping with a `queue:` list at the top level")
    return document


def _where(error: yaml.YAMLError) -> str:
    """``at line L, column C: problem (context)``: PyYAML's own text names no file, only
    ``<unicode string>``, and spans several lines."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return ": " + str(error).splitlines()[0].strip()
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = error.problem or error.context or "malformed"
    context = f" ({error.context})" if error.problem and error.context else ""
    return f"{where}: {problem}{context}"


def _reject_unknown(where: str, fields: dict[object, object], known: frozenset[str]) -> None:
    if unknown := sorted(str(key) for key in fields if key not in known):
        raise QueueYamlError(f"unknown field(s) {unknown} in {where}; accepted: {sorted(known)}")


def _name(number: int, name: object, seen: dict[str, Queue]) -> str:
    if name is None:
        raise QueueYamlError(f"queue entry #{number} has no name")
    if not isinstance(name, str) or not limits.QUEUE_ID.fullmatch(name):
        raise QueueYamlError(
            f"queue entry #{number}: name {name!r} is invalid; expected 1 to 100 letters, "
            "digits or hyphens (a Cloud Tasks queue ID), quoted if YAML reads it as a number"
        )
    if name in seen:
        raise QueueYamlError(f"queue {name!r} is defined twice; queue names must be unique")
    return name


def _queue(name: str, entry: dict[object, object], warnings: list[str]) -> Queue | None:
    _reject_unknown(f"queue {name!r}", entry, _QUEUE_FIELDS)
    mode = entry.get("mode", "push")
    if mode == "pull":
        warnings.append(
            f"{name}: not converted: pull queues exist only in App Engine's task queue API; "
            "the Cloud Tasks v2 API (Terraform's) and deferred tasks use push queues."
        )
        return None
    if mode != "push":
        raise _invalid(name, "mode", mode, "push or pull")
    if "acl" in entry:
        warnings.append(
            f"{name}: acl {entry['acl']!r} not converted: grant roles/cloudtasks.enqueuer on "
            "the queue instead (the module grants it to the runtime service account)."
        )
    if "bucket_size" in entry:
        size = _whole(name, "bucket_size", entry["bucket_size"], 0, _MAX_BUCKET)
        warnings.append(
            f"{name}: bucket_size {size} not converted: Cloud Tasks derives the max burst "
            "size from max_dispatches_per_second (max_burst_size is output only in the v2 "
            "API Terraform uses; gcloud app deploy sets it through the beta API)."
        )
    queue: Queue = {"max_dispatches_per_second": _rate(name, entry.get("rate"))}
    if "max_concurrent_requests" in entry:
        queue["max_concurrent_dispatches"] = _whole(
            name, "max_concurrent_requests", entry["max_concurrent_requests"], 1, _MAX_CONCURRENT
        )
    queue.update(_retry(name, entry.get("retry_parameters", {})))
    if "target" in entry:
        queue["app_engine_routing_override"] = _target(name, entry["target"])
    return queue


def _rate(name: str, value: object) -> float:
    """``rate`` (``N/s``, ``N/m``, ``N/h`` or ``N/d``) in dispatches per second, rounded
    to 9 decimals as gcloud's ``ConvertRate`` rounds it."""
    if value is None:
        raise QueueYamlError(f"queue {name!r}: rate is required for push queues, e.g. rate: 5/s")
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    per_second = round(float(match[1]) / _UNIT_SECONDS[match[2]], 9) if match else None
    if per_second == 0 or value == "0" or (type(value) in (int, float) and value == 0):
        raise QueueYamlError(
            f"queue {name!r}: rate {value!r} pauses the queue, which the module cannot "
            "express; give a positive rate and run `gcloud tasks queues pause` after apply"
        )
    if per_second is None or per_second > _MAX_RATE:
        raise _invalid(name, "rate", value, f"N/s, N/m, N/h or N/d, at most {_MAX_RATE}/s")
    return int(per_second) if per_second.is_integer() else per_second


def _retry(name: str, params: object) -> Queue:
    """``retry_parameters`` as the module's retry attributes, converted as gcloud does."""
    if not isinstance(params, dict):
        raise _invalid(name, "retry_parameters", params, f"a mapping of {sorted(_RETRY_FIELDS)}")
    _reject_unknown(f"queue {name!r} retry_parameters", params, _RETRY_FIELDS)
    # gcloud: task_retry_limit N is N + 1 attempts; without it App Engine retried forever.
    limit = params.get("task_retry_limit")
    retry: Queue = {"max_attempts": -1 if limit is None else _attempts(name, limit)}
    minimum, maximum = _backoffs(
        name, params.get("min_backoff_seconds"), params.get("max_backoff_seconds")
    )
    if minimum is not None:
        retry["min_backoff"] = _duration(minimum)
    if maximum is not None:
        retry["max_backoff"] = _duration(maximum)
    if "max_doublings" in params:
        retry["max_doublings"] = _whole(
            name, "retry_parameters.max_doublings", params["max_doublings"]
        )
    if "task_age_limit" in params:
        retry["max_retry_duration"] = _age(name, params["task_age_limit"])
    return retry


def _attempts(name: str, retry_limit: object) -> int:
    return _whole(name, "retry_parameters.task_retry_limit", retry_limit) + 1


def _backoffs(name: str, low: object, high: object) -> tuple[float | None, float | None]:
    """The backoff bounds in seconds. A bound left out that Cloud Tasks' default would
    put on the wrong side of the other one takes the other's value, as App Engine's
    ``TranslateRetryParameters`` does."""
    minimum = None if low is None else _seconds(name, "min_backoff_seconds", low)
    maximum = None if high is None else _seconds(name, "max_backoff_seconds", high)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise QueueYamlError(
            f"queue {name!r}: retry_parameters.min_backoff_seconds ({low!r}) is greater than "
            f"max_backoff_seconds ({high!r}); the minimum must not exceed the maximum"
        )
    if maximum is None and minimum is not None and minimum > _DEFAULT_MAX_BACKOFF:
        maximum = minimum
    if minimum is None and maximum is not None and maximum < _DEFAULT_MIN_BACKOFF:
        minimum = maximum
    return minimum, maximum


def _age(name: str, value: object) -> str:
    """``task_age_limit`` (``2d``, ``1.5h``, ``30m``, ``10s``) in whole seconds, truncated
    as gcloud's ``ConvertTaskAgeLimit`` truncates it; at least 1 second."""
    match = _AGE.fullmatch(value.strip()) if isinstance(value, str) else None
    seconds = int(float(match[1]) * _UNIT_SECONDS[match[2]]) if match else 0
    if seconds < 1:
        expected = "at least 1s: a number and s, m, h or d, e.g. 2d, 1.5h, 30m or 10s"
        raise _invalid(name, "retry_parameters.task_age_limit", value, expected)
    return f"{seconds}s"


def _target(name: str, value: object) -> dict[str, str]:
    match = _TARGET.fullmatch(value) if isinstance(value, str) else None
    if not match:
        expected = "an App Engine service or version.service (lowercase letters, digits, -)"
        raise _invalid(name, "target", value, expected)
    version, service = match.groups()
    return {"service": service} if version is None else {"service": service, "version": version}


def _whole(name: str, field: str, value: object, low: int = 0, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise _invalid(name, field, value, f"a whole number {bounds}")
    return value


def _seconds(name: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _invalid(name, f"retry_parameters.{field}", value, "a number of seconds >= 0")
    return float(value)


def _invalid(name: str, field: str, value: object, expected: str) -> QueueYamlError:
    return QueueYamlError(f"queue {name!r}: {field} {value!r} is invalid; expected {expected}")


def _duration(seconds: float) -> str:
    """Seconds as the module's durations: up to 9 decimals and ``s``, e.g. ``"0.1s"``."""
    return _decimal(seconds) + "s"


def _decimal(value: float) -> str:
    """``value`` with up to 9 decimals and no exponent (Cloud Tasks' precision)."""
    return f"{value:.9f}".rstrip("0").rstrip(".")


def _hcl(value: object, depth: int) -> str:
    if isinstance(value, float):
        return _decimal(value)
    if not isinstance(value, dict):
        return json.dumps(value)
    if not value:
        return "{}"
    pad = "  " * (depth + 1)
    items = [(_hcl_key(key), _hcl(item, depth + 1)) for key, item in value.items()]
    lines = []
    # terraform fmt aligns the "=" of consecutive one-line attributes.
    for multiline, group in itertools.groupby(items, key=lambda item: "\n" in item[1]):
        run = list(group)
        width = 0 if multiline else max(len(key) for key, _ in run)
        lines += [f"{pad}{key:<{width}} = {text}\n" for key, text in run]
    return "{\n" + "".join(lines) + "  " * depth + "}"


def _hcl_key(key: object) -> str:
    text = str(key)
    return text if _HCL_IDENTIFIER.fullmatch(text) else json.dumps(text)
