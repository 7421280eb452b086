"""Tasks a Python 2 app queued before the migration: they drain with their arguments.

Each vector is written opcode by opcode as Python 2's ``pickle``/``cPickle`` wrote it
(protocols 0, 1 and 2: no Python 2 needed), and each test asserts the migrated
callable receives exactly what the Python 2 app passed, under the rules the
migration guide states: a Python 2 ``str`` arrives as ``str`` when it is valid UTF-8
and as ``bytes`` otherwise; ``unicode`` as ``str``; dates with their exact value.
Every vector runs through ``deferred.run`` and through the real handler, with and
without an allowlist.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import struct
from typing import Any

import pytest

from cloudtasks_deferred import Client, Handler, deferred
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.receive.auth import authenticator_for
from cloudtasks_deferred.receive.auth.certs import StaticCerts
from cloudtasks_deferred.receive.deadletters import InMemoryDeadLetters
from tests.conftest import SIGNED_SETTINGS
from tests.legacy import Point
from tests.oidc import Issuer
from tests.tasks import RECORDER
from tests.wsgi import call, environ

RECEIVE = ("tests.legacy", "receive")


# --- protocol 2 (cPickle.dumps(obj, 2), what the legacy serialize wrote) -------------
def g(module: str, name: str) -> bytes:
    """GLOBAL, as every Python 2 protocol writes it."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def U(data: bytes) -> bytes:
    """SHORT_BINSTRING: a Python 2 ``str``."""
    return b"U" + bytes([len(data)]) + data


def X(text: str) -> bytes:
    """BINUNICODE: a Python 2 ``unicode``."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def K(value: int) -> bytes:
    """BININT1."""
    return b"K" + bytes([value])


def reduce(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def task2(*args: bytes, kwargs: bytes = b"}", func: bytes = g(*RECEIVE)) -> bytes:
    return b"\x80\x02" + func + b"(" + b"".join(args) + b"t" + kwargs + b"\x87."


DATETIME_STATE = b"\x07\xe5\x0c\x1f\x17;:\x0f\x12\x06"  # not valid UTF-8
DATETIME_UTF8_STATE = b"\x07l\x01\x02\x03\x04\x05\n\xc3\xa9"  # valid UTF-8 by chance
POINT_STATE = b"}(" + U(b"x") + K(3) + U(b"y") + K(4) + b"ub"

PROTOCOL_2: dict[str, tuple[bytes, tuple[Any, ...], dict[str, Any]]] = {
    "datetime": (
        task2(reduce(g("datetime", "datetime"), U(DATETIME_STATE))),
        (datetime.datetime(2021, 12, 31, 23, 59, 58, 987654),),
        {},
    ),
    "datetime whose state is valid UTF-8": (
        task2(reduce(g("datetime", "datetime"), U(DATETIME_UTF8_STATE))),
        (datetime.datetime(1900, 1, 2, 3, 4, 5, 705449),),
        {},
    ),
    "date": (
        task2(reduce(g("datetime", "date"), U(b"\x07\xe5\x03\x04"))),
        (datetime.date(2021, 3, 4),),
        {},
    ),
    "time": (
        task2(reduce(g("datetime", "time"), U(b"\r\x0e\x0f\x0f\x12\x06"))),
        (datetime.time(13, 14, 15, 987654),),
        {},
    ),
    "ascii str": (task2(U(b"hello")), ("hello",), {}),
    "utf-8 str": (task2(U("café".encode())), ("café",), {}),
    "binary str": (task2(U(b"\x89PNG\xff\x00")), (b"\x89PNG\xff\x00",), {}),
    "unicode": (task2(X("naïve ☃")), ("naïve ☃",), {}),
    "long": (task2(b"\x8a\x09" + (2**70).to_bytes(9, "little")), (2**70,), {}),
    "set": (
        task2(reduce(g("__builtin__", "set"), b"]q\x01(" + K(1) + K(2) + b"e")),
        ({1, 2},),
        {},
    ),
    "frozenset": (
        task2(reduce(g("__builtin__", "frozenset"), b"](" + U(b"a") + b"e")),
        (frozenset({"a"}),),
        {},
    ),
    "decimal": (
        task2(reduce(g("decimal", "Decimal"), U(b"1.50"))),
        (decimal.Decimal("1.50"),),
        {},
    ),
    "str keyword arguments": (
        task2(K(1), kwargs=b"}(" + U(b"key") + U(b"value") + U(b"n") + b"Nu"),
        (1,),
        {"key": "value", "n": None},
    ),
    "old-style instance (OBJ)": (
        task2(b"(" + g("tests.legacy", "Point") + b"o" + POINT_STATE),
        (Point(3, 4),),
        {},
    ),
    "new-style instance (NEWOBJ)": (
        task2(g("tests.legacy", "Point") + b")\x81" + POINT_STATE),
        (Point(3, 4),),
        {},
    ),
    "booleans, None and a float": (
        task2(b"\x88", b"\x89", b"N", b"G" + struct.pack(">d", 2.5)),
        (True, False, None, 2.5),
        {},
    ),
    "nested list and dict": (
        task2(b"](" + K(1) + b"}(" + U(b"k") + X("v") + b"ue"),
        ([1, {"k": "v"}],),
        {},
    ),
}

# --- protocol 0 (pickle.dumps(obj): Python 2's default) ------------------------------
PROTOCOL_0: dict[str, tuple[bytes, tuple[Any, ...], dict[str, Any]]] = {
    "datetime": (
        b"(ctests.legacy\nreceive\np0\n(cdatetime\ndatetime\np1\n"
        b"(S'\\x07\\xe5\\x0c\\x1f\\x17;:\\x0f\\x12\\x06'\np2\ntp3\nRp4\ntp5\n(dp6\ntp7\n.",
        (datetime.datetime(2021, 12, 31, 23, 59, 58, 987654),),
        {},
    ),
    "str, unicode, int, long, float, bool": (
        b"(ctests.legacy\nreceive\np0\n(S'caf\\xc3\\xa9'\np1\nVna\\u00efve\np2\n"
        b"I42\nL12345678901234567890L\nF1.5\nI01\ntp3\n(dp4\nS'flag'\np5\nI00\nstp6\n.",
        ("café", "naïve", 42, 12345678901234567890, 1.5, True),
        {"flag": False},
    ),
    "old-style instance (INST)": (
        b"(ctests.legacy\nreceive\np0\n((itests.legacy\nPoint\np1\n(dp2\nS'x'\np3\nI3\n"
        b"sS'y'\np4\nI4\nsbtp5\n(dp6\ntp7\n.",
        (Point(3, 4),),
        {},
    ),
    "list and dict": (
        b"(ctests.legacy\nreceive\np0\n((lp1\nI1\naI2\na(dp2\nS'k'\np3\nS'v'\np4\nstp5\n"
        b"(dp6\ntp7\n.",
        ([1, 2], {"k": "v"}),
        {},
    ),
}

# --- protocol 1 (binary opcodes, no PROTO) ----------------------------------------------
PROTOCOL_1: dict[str, tuple[bytes, tuple[Any, ...], dict[str, Any]]] = {
    "date and binary str": (
        b"("
        + g(*RECEIVE)
        + b"q\x00("
        + g("datetime", "date")
        + b"q\x01("
        + U(b"\x07\xe5\x03\x04")
        + b"tRq\x02T"
        + struct.pack("<i", 3)
        + b"\xff\xfe\x00tq\x03}q\x04tq\x05.",
        (datetime.date(2021, 3, 4), b"\xff\xfe\x00"),
        {},
    ),
}

VECTORS = {
    **{f"protocol 2: {name}": vector for name, vector in PROTOCOL_2.items()},
    **{f"protocol 0: {name}": vector for name, vector in PROTOCOL_0.items()},
    **{f"protocol 1: {name}": vector for name, vector in PROTOCOL_1.items()},
}
CASES = pytest.mark.parametrize(("body", "args", "kwargs"), VECTORS.values(), ids=VECTORS.keys())


def exactly(received: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    """Equal, and of the same types (a str is not bytes, a date not a datetime)."""
    assert received == expected
    assert [type(value) for value in received] == [type(value) for value in expected]


@CASES
def test_deferred_run_passes_exactly_what_python_2_passed(
    body: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert deferred.run(body) == "received"
    [(received_args, received_kwargs)] = RECORDER.named("py2")
    exactly(received_args, args)
    assert received_kwargs == kwargs


def handler_for(issuer: Issuer, *allowed: str) -> Handler:
    settings = dataclasses.replace(SIGNED_SETTINGS, allowed_modules=allowed)
    client = Client(
        settings,
        transport=InMemoryTransport(),
        authenticator=authenticator_for(settings, certs=StaticCerts(issuer.certs)),
        dead_letters=InMemoryDeadLetters(),
    )
    return Handler(client=client)


@CASES
@pytest.mark.parametrize("allowed", [(), ("tests.legacy",)], ids=["no allowlist", "allowlist"])
def test_the_handler_runs_python_2_tasks(
    body: bytes,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    allowed: tuple[str, ...],
    issuer: Issuer,
) -> None:
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(handler_for(issuer, *allowed), environ(body, headers=auth))
    assert (response.code, response.body) == (200, b"Success")
    [(received_args, received_kwargs)] = RECORDER.named("py2")
    exactly(received_args, args)
    assert received_kwargs == kwargs


def test_a_legacy_member_call_on_an_old_style_instance_runs(issuer: Issuer) -> None:
    body = task2(
        b"(" + g("tests.legacy", "Point") + b"o" + POINT_STATE,
        U(b"norm"),
        func=g("google.appengine.ext.deferred.deferred", "invoke_member"),
    )
    assert deferred.run(body) == 7
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    response = call(handler_for(issuer, "tests.legacy"), environ(body, headers=auth))
    assert response.code == 200
    assert RECORDER.named("py2") == [((3, 4), {}), ((3, 4), {})]


def test_python_2_builtins_are_read_under_their_python_3_names(issuer: Issuer) -> None:
    body = task2(U(b"abcd"), func=g("__builtin__", "len"))
    assert deferred.run(body) == 4
    auth = {"Authorization": f"Bearer {issuer.token()}"}
    # Under an allowlist, __builtin__.len is builtins.len, which must be listed.
    refused = call(handler_for(issuer, "tests.legacy"), environ(body, headers=auth))
    assert refused.code == 403
    assert b"builtins.len" in refused.body
    listed = call(handler_for(issuer, "tests.legacy", "builtins.len"), environ(body, headers=auth))
    assert listed.code == 200
