"""What a task payload would run, read without running it (``cloudtasks-deferred inspect``).

Accepts a task body — a frame (:mod:`cloudtasks_deferred.frame`) or a bare legacy
pickle — or a task as JSON from ``gcloud tasks describe TASK --queue=Q
--response-view=full --format=json`` (its base64 ``body``). The frame is opened with
``frame.decode(data, keys=None)``, which decompresses with a bound but neither
verifies the signature nor unpickles; the pickle is then read symbolically by
:mod:`cloudtasks_deferred.pickle_reader`, so no module is imported and nothing the
pickle names is called. ``pickle.loads`` is never used here.

The report names the callable, shows the arguments, lists every global the pickle
references, and the frame's flags, signing key ID and metadata (retry limits).
It prints argument values: treat its output like the payload itself.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import pickletools
from datetime import UTC, datetime
from typing import Any, Final

from .frame import (
    FLAG_COMPRESSED,
    FLAG_SIGNED,
    InvalidPayloadError,
    UnsupportedPayloadError,
    decode,
    read_header,
)
from .pickle_reader import (
    Global,
    Instance,
    PickleStructure,
    SymbolicDict,
    UnreadablePickleError,
    read,
    render,
)
from .retry import LIMITS_KEY, STARTED_KEY

__all__ = ["MAX_INPUT_BYTES", "InspectError", "Inspection", "format_inspection", "inspect_input"]

#: Largest input accepted, in bytes: a task is at most 1 MB, its JSON about 1.4 MB.
MAX_INPUT_BYTES: Final = 8 * 1024 * 1024
_INVOKE_MEMBER: Final = frozenset({
    Global("cloudtasks_deferred.payload", "invoke_member"),
    Global("google.appengine.ext.deferred.deferred", "invoke_member"),
})  # fmt: skip
_RECONSTRUCTORS: Final = frozenset({
    Global("copyreg", "_reconstructor"), Global("copy_reg", "_reconstructor")
})  # fmt: skip


class InspectError(Exception):
    """The input is not a task payload; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Call:
    """A deferred call as the payload describes it.

    Attributes:
        callable: ``module.qualname`` (``module.Class.member`` for a member call).
        target: For a member call, the object whose member is called.
        args: The positional arguments, symbolic.
        kwargs: ``(name, value)`` pairs, symbolic.
    """

    callable: str
    target: Any
    args: tuple[Any, ...]
    kwargs: tuple[tuple[Any, Any], ...]


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_input` found.

    Attributes:
        task: From task JSON: ``(label, value)`` rows such as the task's name.
        frame_version: The frame's version, ``None`` for a bare pickle.
        flags: The frame's flags.
        key_id: The key ID a signed frame names (the signature is not checked).
        metadata: The frame's metadata.
        pickle_size: Bytes of the (decompressed) pickle.
        structure: The pickle, read symbolically.
        call: The deferred call, ``None`` if the pickle is not ``(callable, args, kwargs)``.
        pickled: The pickle itself, for disassembly.
    """

    task: tuple[tuple[str, str], ...]
    frame_version: int | None
    flags: int
    key_id: str | None
    metadata: dict[str, Any]
    pickle_size: int
    structure: PickleStructure
    call: Call | None
    pickled: bytes = dataclasses.field(repr=False)


def inspect_input(data: bytes) -> Inspection:
    """Reads a task body, or a task as JSON, without running anything.

    Args:
        data: A frame, a bare pickle, or ``gcloud tasks describe`` JSON.

    Returns:
        What the payload would run.

    Raises:
        InspectError: The input is too large, not JSON with a body, not a payload,
            or not a well-formed pickle.
    """
    if len(data) > MAX_INPUT_BYTES:
        raise InspectError(f"the input has {len(data)} bytes; a task is at most 1 MB")
    task: tuple[tuple[str, str], ...] = ()
    if data.lstrip()[:1] == b"{":
        data, task = _body_from_task_json(data)
    try:
        frame = decode(data, keys=None)
        header = read_header(data)
    except (InvalidPayloadError, UnsupportedPayloadError) as exc:
        raise InspectError(str(exc)) from exc
    try:
        structure = read(frame.pickled)
    except UnreadablePickleError as exc:
        raise InspectError(f"the payload is not a readable pickle: {exc}") from exc
    return Inspection(
        task=task,
        frame_version=None if header is None else header.version,
        flags=0 if header is None else header.flags,
        key_id=None if header is None else header.key_id,
        metadata=frame.metadata,
        pickle_size=len(frame.pickled),
        structure=structure,
        call=_call(structure.value),
        pickled=frame.pickled,
    )


def _body_from_task_json(data: bytes) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    try:
        task = json.loads(data)
    except ValueError as exc:
        raise InspectError(f"the input starts with '{{' but is not JSON: {exc}") from exc
    if not isinstance(task, dict):
        raise InspectError("the task JSON is not an object")
    request = task.get("httpRequest") or task.get("appEngineHttpRequest")
    if not isinstance(request, dict):
        raise InspectError("the task JSON has neither httpRequest nor appEngineHttpRequest")
    body = request.get("body")
    if not isinstance(body, str):
        raise InspectError(
            "the task JSON has no body: gcloud includes bodies only with "
            "`gcloud tasks describe TASK --queue=QUEUE --response-view=full --format=json`"
        )
    try:
        raw = base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise InspectError(f"the task's body is not base64: {exc}") from exc
    rows = [
        ("task", task.get("name")),
        ("target", request.get("url") or request.get("relativeUri")),
        ("scheduled", task.get("scheduleTime")),
        ("dispatches", task.get("dispatchCount")),
    ]
    # Headers are not shown: in dev mode they carry a bearer token.
    return raw, tuple((label, str(value)) for label, value in rows if value is not None)


def _call(value: Any) -> Call | None:
    if not (isinstance(value, tuple) and len(value) == 3):
        return None
    func, args, kwargs = value
    if not isinstance(args, tuple) or not isinstance(kwargs, SymbolicDict):
        return None
    pairs = tuple(kwargs.pairs)
    if func in _INVOKE_MEMBER and len(args) >= 2 and isinstance(args[1], str):
        return Call(f"{_type_name(args[0])}.{args[1]}", args[0], args[2:], pairs)
    return Call(render(func), None, args, pairs)


def _type_name(obj: Any) -> str:
    """The class an object would be an instance of (or the class itself, for classmethods)."""
    if isinstance(obj, Global):
        return str(obj)
    if isinstance(obj, Instance):
        factory = obj.factory
        if factory in _RECONSTRUCTORS and isinstance(obj.args, tuple) and obj.args:
            return _type_name(obj.args[0])
        if isinstance(factory, Global):
            return str(factory)
    return render(obj)


def format_inspection(inspection: Inspection, *, disassemble: bool = False) -> str:
    """The report ``cloudtasks-deferred inspect`` prints.

    Args:
        inspection: From :func:`inspect_input`.
        disassemble: Append :func:`pickletools.dis`'s listing of the pickle.
    """
    rows: list[tuple[str, str]] = list(inspection.task)
    rows += _frame_rows(inspection)
    protocol = inspection.structure.protocol
    rows.append(("pickle", f"protocol {protocol}, {inspection.pickle_size} bytes"))
    call = inspection.call
    if call is None:
        rows.append(("value", render(inspection.structure.value)))
        rows.append(("problem", "not a (callable, args, kwargs) tuple: the handler refuses it"))
    else:
        rows.append(("callable", call.callable))
        if call.target is not None:
            rows.append(("on object", render(call.target)))
        rows.append(("arguments", ", ".join(render(arg) for arg in call.args) or "(none)"))
        keywords = [f"{_keyword(key)}={render(value)}" for key, value in call.kwargs]
        rows.append(("keywords", ", ".join(keywords) or "(none)"))
    references = ", ".join(str(ref) for ref in inspection.structure.references)
    rows.append(("references", references or "(none)"))
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, value in rows:
        first, *rest = value.split("\n")
        lines.append(f"{label:<{width}}{first}")
        lines.extend(f"{'':<{width}}{line}" for line in rest)
    text = "\n".join(lines) + "\n"
    if disassemble:
        listing = io.StringIO()
        try:
            pickletools.dis(inspection.pickled, out=listing)
        except ValueError as exc:  # a malformed memo reference, already past `read`
            listing.write(f"(disassembly stopped: {exc})\n")
        text += "\n" + listing.getvalue()
    return text


def _frame_rows(inspection: Inspection) -> list[tuple[str, str]]:
    if inspection.frame_version is None:
        return [("frame", "none: a bare pickle (what the legacy serialize() returned)")]
    flags = inspection.flags
    known = ((FLAG_COMPRESSED, "compressed"), (FLAG_SIGNED, "signed"))
    names = ", ".join(name for bit, name in known if flags & bit) or "none"
    rows = [("frame", f"version {inspection.frame_version}, flags {flags:#04x} ({names})")]
    if inspection.key_id is not None:
        key = f"key {inspection.key_id!r} (inspect does not verify signatures)"
        rows.append(("signed with", key))
    metadata = dict(inspection.metadata)
    lines = []
    retry = metadata.pop(LIMITS_KEY, None)
    if isinstance(retry, dict):
        limits = ", ".join(f"{key}={value}" for key, value in retry.items())
        lines.append(f"retry limits: {limits}")
    start = metadata.pop(STARTED_KEY, None)
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        when = datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds")
        lines.append(f"task age counted from {when}")
    lines += [f"{key}: {json.dumps(value, sort_keys=True)}" for key, value in metadata.items()]
    rows.append(("metadata", "\n".join(lines) or "(none)"))
    return rows


def _keyword(key: Any) -> str:
    return key if isinstance(key, str) else render(key)
