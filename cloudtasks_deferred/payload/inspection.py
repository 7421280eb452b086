"""What a task payload would run, read without running it (``cloudtasks-deferred inspect``).

Accepts a task body — a frame (:mod:`cloudtasks_deferred.payload.frame`) or a bare legacy
pickle — or a task as JSON from ``gcloud tasks describe TASK --queue=Q
--response-view=full --format=json`` (its base64 ``body``). The frame is opened with
``frame.decode(data, keys=None)``, which decompresses with a bound but neither
verifies the signature nor unpickles; the pickle is then read symbolically by
:mod:`cloudtasks_deferred.payload.reader`, so no module is imported and nothing the
pickle names is called. ``pickle.loads`` is never used here.

The report names the callable, shows the arguments, lists every global the pickle
references, and the frame's flags, signing key ID and metadata (retry limits).
It prints argument values: treat its output like the payload itself.

Any byte string gets an answer, never a crash: input that is not a payload at all
raises :class:`InspectError`; a frame whose pickle is malformed (truncated, garbage,
forged lengths or memo indices, too many opcodes) is reported with what could be read
— the frame, the globals referenced before the problem — and the problem. The work is
bounded by :data:`MAX_INPUT_BYTES`, the frame's decompression bound and
:data:`~cloudtasks_deferred.payload.reader.MAX_OPCODES`; the output by a budget per
value and per row.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any, Final

from cloudtasks_deferred.payload.frame import (
    FLAG_COMPRESSED,
    FLAG_SIGNED,
    InvalidPayloadError,
    UnsupportedPayloadError,
    decode,
    read_header,
)
from cloudtasks_deferred.payload.opcodes import opcodes
from cloudtasks_deferred.payload.reader import (
    Global,
    Instance,
    PickleStructure,
    SymbolicDict,
    UnreadablePickleError,
    read,
)
from cloudtasks_deferred.payload.render import printable, render
from cloudtasks_deferred.payload.retry import LIMITS_KEY, STARTED_KEY

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
_ROW_BUDGET: Final = 4000  # characters of one row of the report (arguments, keywords)
_MAX_REFERENCES: Final = 50  # globals listed; the rest are counted
_MAX_LISTED: Final = 20_000  # opcodes --disassemble lists


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
        structure: The pickle, read symbolically; ``None`` if it is malformed.
        call: The deferred call, ``None`` if the pickle is not ``(callable, args, kwargs)``.
        pickled: The pickle itself, for disassembly.
        problem: Why the pickle could not be read, ``None`` if it could.
        references: The globals the pickle references (before the problem, if any).
        protocol: The pickle's protocol (its ``PROTO`` opcode; 0 without one).
    """

    task: tuple[tuple[str, str], ...]
    frame_version: int | None
    flags: int
    key_id: str | None
    metadata: dict[str, Any]
    pickle_size: int
    structure: PickleStructure | None
    call: Call | None
    pickled: bytes = dataclasses.field(repr=False)
    problem: str | None = None
    references: tuple[Global, ...] = ()
    protocol: int = 0


def inspect_input(data: bytes) -> Inspection:
    """Reads a task body, or a task as JSON, without running anything.

    Args:
        data: A frame, a bare pickle, or ``gcloud tasks describe`` JSON.

    Returns:
        What the payload would run; for a malformed pickle, what could be read of it
        and the problem (:attr:`Inspection.problem`).

    Raises:
        InspectError: The input is too large, not JSON with a body, or not a payload.
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
    except RecursionError as exc:  # the metadata's JSON nests too deeply for json.loads
        raise InspectError("the payload metadata is not JSON: it nests too deeply") from exc
    structure: PickleStructure | None = None
    problem = None
    try:
        structure = read(frame.pickled)
        references, protocol = structure.references, structure.protocol
    except UnreadablePickleError as exc:
        problem = f"the payload is not a readable pickle: {exc}"
        references = exc.references
        protocol = exc.protocol
    return Inspection(
        task=task,
        frame_version=None if header is None else header.version,
        flags=0 if header is None else header.flags,
        key_id=None if header is None else header.key_id,
        metadata=frame.metadata,
        pickle_size=len(frame.pickled),
        structure=structure,
        call=None if structure is None else _call(structure.value),
        pickled=frame.pickled,
        problem=problem,
        references=references,
        protocol=protocol,
    )


def _body_from_task_json(data: bytes) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    try:
        task = json.loads(data)
    except ValueError as exc:
        raise InspectError(f"the input starts with '{{' but is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise InspectError(
            "the input starts with '{' but is not JSON: it nests too deeply"
        ) from exc
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
    return raw, tuple((label, printable(str(value))) for label, value in rows if value is not None)


def _call(value: Any) -> Call | None:
    if not (isinstance(value, tuple) and len(value) == 3):
        return None
    func, args, kwargs = value
    if not isinstance(args, tuple) or not isinstance(kwargs, SymbolicDict):
        return None
    pairs = tuple(kwargs.pairs)
    # Only a Global is compared: hashing a deeply nested tuple would exhaust the C stack.
    if isinstance(func, Global) and func in _INVOKE_MEMBER and len(args) >= 2:
        member = args[1]
        if isinstance(member, str):
            name = member if member.isidentifier() else render(member)
            return Call(f"{_type_name(args[0])}.{name}", args[0], args[2:], pairs)
    return Call(render(func), None, args, pairs)


def _type_name(obj: Any) -> str:
    """The class an object would be an instance of (or the class itself, for classmethods)."""
    for _ in range(_MAX_NESTING):
        if isinstance(obj, Global):
            return render(obj)
        if not isinstance(obj, Instance):
            break
        factory = obj.factory
        if isinstance(factory, Global) and factory in _RECONSTRUCTORS:
            if not (isinstance(obj.args, tuple) and obj.args):
                break
            obj = obj.args[0]
        elif isinstance(factory, Global):
            return render(factory)
        else:
            break
    return render(obj)


_MAX_NESTING: Final = 8


def format_inspection(inspection: Inspection, *, disassemble: bool = False) -> str:
    """The report ``cloudtasks-deferred inspect`` prints.

    Args:
        inspection: From :func:`inspect_input`.
        disassemble: Append a listing of the pickle's opcodes (the first 20,000).
    """
    rows: list[tuple[str, str]] = list(inspection.task)
    rows += _frame_rows(inspection)
    rows.append(("pickle", f"protocol {inspection.protocol}, {inspection.pickle_size} bytes"))
    call = inspection.call
    if inspection.problem is not None:
        rows.append(("problem", inspection.problem))
    elif call is None:
        assert inspection.structure is not None  # noqa: S101 - read, as problem is None
        rows.append(("value", render(inspection.structure.value)))
        rows.append(("problem", "not a (callable, args, kwargs) tuple: the handler refuses it"))
    else:
        rows.append(("callable", call.callable))
        if call.target is not None:
            rows.append(("on object", render(call.target)))
        rows.append(("arguments", _listed(call.args) or "(none)"))
        rows.append(("keywords", _listed(call.kwargs, keywords=True) or "(none)"))
    rows.append(("references", _references(inspection)))
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, value in rows:
        first, *rest = value.split("\n")
        lines.append(f"{label:<{width}}{first}")
        lines.extend(f"{'':<{width}}{line}" for line in rest)
    text = "\n".join(lines) + "\n"
    if disassemble:
        text += "\n" + _disassembly(inspection.pickled)
    return text


def _listed(items: Any, *, keywords: bool = False) -> str:
    """Values (or ``name=value`` pairs), comma-separated, within one row's budget."""
    shown: list[str] = []
    used = 0
    for item in items:
        if used > _ROW_BUDGET:
            shown.append(f"… ({len(items) - len(shown)} more)")
            break
        if keywords:
            key, value = item
            text = f"{_keyword(key)}={render(value)}"
        else:
            text = render(item)
        shown.append(text)
        used += len(text) + 2
    return ", ".join(shown)


def _references(inspection: Inspection) -> str:
    references = [render(ref) for ref in inspection.references[:_MAX_REFERENCES]]
    more = len(inspection.references) - len(references)
    text = ", ".join(references) + (f" … and {more} more" if more > 0 else "")
    if inspection.problem is not None:
        text = (text or "(none)") + " (read before the problem)"
    return text or "(none)"


def _disassembly(pickled: bytes) -> str:
    """The pickle's opcodes, one per line (offset, name, argument), as far as they read."""
    lines = []
    try:
        for count, (opcode, arg, offset) in enumerate(opcodes(pickled)):
            if count == _MAX_LISTED:
                lines.append(f"(the listing stops after {_MAX_LISTED:,} opcodes)")
                break
            shown = "" if arg is None else " " + render(arg, limit=100)
            lines.append(f"{offset:>8}: {opcode.name}{shown}")
    except (ValueError, OverflowError) as exc:  # as far as the pickle reads
        lines.append(f"(the listing stops here: {exc})")
    return "\n".join(lines) + "\n"


def _frame_rows(inspection: Inspection) -> list[tuple[str, str]]:
    if inspection.frame_version is None:
        return [("frame", "none: a bare pickle (what the legacy serialize() returned)")]
    flags = inspection.flags
    known = ((FLAG_COMPRESSED, "compressed"), (FLAG_SIGNED, "signed"))
    names = ", ".join(name for bit, name in known if flags & bit) or "none"
    rows = [("frame", f"version {inspection.frame_version}, flags {flags:#04x} ({names})")]
    if inspection.key_id is not None:
        key = f"key {inspection.key_id!a} (inspect does not verify signatures)"
        rows.append(("signed with", key))
    metadata = dict(inspection.metadata)
    lines = []
    retry = metadata.pop(LIMITS_KEY, None)
    if isinstance(retry, dict):
        limits = ", ".join(f"{printable(key)}={_json(value)}" for key, value in retry.items())
        lines.append(f"retry limits: {limits}")
    start = metadata.pop(STARTED_KEY, None)
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        lines.append(f"task age counted from {_timestamp(start)}")
    lines += [f"{printable(key)}: {_json(value)}" for key, value in metadata.items()]
    rows.append(("metadata", "\n".join(lines) or "(none)"))
    return rows


def _json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _ROW_BUDGET else text[: _ROW_BUDGET - 1] + "…"


def _timestamp(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{seconds!r} (not a time)"


def _keyword(key: Any) -> str:
    return key if isinstance(key, str) and key.isidentifier() else render(key)
