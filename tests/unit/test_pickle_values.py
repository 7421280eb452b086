"""Values pickled as constructor calls on raw state read as their repr (issue 15, item 4).

Python 3's pickles come from :mod:`pickle` at every protocol. Python 2's are written
here byte for byte as Python 2's ``pickle`` writes them (protocol 0's ``STRING`` is
Python 2's ``repr`` of a ``str``, protocol 2's ``SHORT_BINSTRING`` its raw bytes), and
checked against :func:`pickle.loads` with ``encoding="latin1"`` where the class exists
here, so the test's bytes are real pickles.
"""

from __future__ import annotations

import datetime
import decimal
import pickle
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudtasks_deferred.payload.reader import read
from cloudtasks_deferred.payload.render import render

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
zones = (
    st.none()
    | st.just(datetime.UTC)
    | st.builds(
        datetime.timezone,
        st.timedeltas(
            min_value=datetime.timedelta(hours=-23), max_value=datetime.timedelta(hours=23)
        ),
    )
)


def shown(value: Any, protocol: int) -> tuple[str, Any]:
    """The rendering of ``value``'s pickle, and what unpickling it makes (protocols before
    4 drop a datetime's ``fold``)."""
    data = pickle.dumps(value, protocol=protocol)
    return render(read(data).value, limit=100_000), pickle.loads(data)


@given(
    when=st.datetimes(timezones=zones, allow_imaginary=True),
    protocol=st.sampled_from(PROTOCOLS),
)
def test_datetimes_read_as_their_repr(when: datetime.datetime, protocol: int) -> None:
    text, made = shown(when, protocol)
    assert text == repr(made)


@given(
    value=st.dates() | st.times(timezones=zones) | st.timedeltas(),
    protocol=st.sampled_from(PROTOCOLS),
)
def test_dates_times_and_durations_read_as_their_repr(value: Any, protocol: int) -> None:
    text, made = shown(value, protocol)
    assert text == repr(made)


@given(value=st.uuids(), protocol=st.sampled_from(PROTOCOLS))
def test_uuids_read_as_their_repr(value: uuid.UUID, protocol: int) -> None:
    assert shown(value, protocol) == (f"uuid.{value!r}", value)


@given(value=st.decimals(), protocol=st.sampled_from(PROTOCOLS))
def test_decimals_read_as_their_repr(value: decimal.Decimal, protocol: int) -> None:
    text, _ = shown(value, protocol)
    assert text == f"decimal.{value!r}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_of_old_protocols_read_as_bytes(protocol: int) -> None:
    assert shown([b"\x00\xe8raw", b""], protocol)[0] == "[b'\\x00\\xe8raw', b'']"


# Python 2's pickles, as its pickle module writes them.


def string0(data: bytes) -> bytes:
    """Protocol 0's STRING: Python 2's repr of a str (its escapes are Python 3's bytes')."""
    return b"S" + repr(data)[1:].encode() + b"\n"


def string2(data: bytes) -> bytes:
    """Protocol 2's SHORT_BINSTRING."""
    return b"U" + bytes([len(data)]) + data


def call0(module: str, name: str, *args: bytes) -> bytes:
    return f"c{module}\n{name}\n".encode() + b"(" + b"".join(args) + b"tR"


def call2(module: str, name: str, *args: bytes) -> bytes:
    tuple_op = {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(args)]
    return f"c{module}\n{name}\n".encode() + b"".join(args) + tuple_op + b"R"


WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)
PACKED = {  # what Python 2's datetime.__reduce__ packs, the same as Python 3's
    "datetime": WHEN.__reduce__()[1][0],
    "date": WHEN.date().__reduce__()[1][0],
    "time": WHEN.time().__reduce__()[1][0],
}


@pytest.mark.parametrize("kind", ["datetime", "date", "time"])
@pytest.mark.parametrize(
    ("call", "string"), [(call0, string0), (call2, string2)], ids=["protocol-0", "protocol-2"]
)
def test_python_2_datetimes(kind: str, call: Any, string: Any) -> None:
    data = (
        (b"\x80\x02" if call is call2 else b"")
        + call("datetime", kind, string(PACKED[kind]))
        + b"."
    )
    expected = pickle.loads(data, encoding="latin1")  # what the handler's unpickler makes
    assert render(read(data).value) == repr(expected)
    assert repr(expected).startswith(f"datetime.{kind}(")


def test_a_python_2_datetime_with_a_pytz_zone_shows_the_zone() -> None:
    utc = b"cpytz\n_UTC\n)R"
    data = b"\x80\x02cdatetime\ndatetime\n" + string2(PACKED["datetime"]) + utc + b"\x86R."
    assert (
        render(read(data).value)
        == "datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=pytz._UTC())"
    )


@pytest.mark.parametrize(
    ("call", "string"), [(call0, string0), (call2, string2)], ids=["protocol-0", "protocol-2"]
)
def test_python_2_decimals(call: Any, string: Any) -> None:
    data = (
        (b"\x80\x02" if call is call2 else b"") + call("decimal", "Decimal", string(b"1.50")) + b"."
    )
    assert pickle.loads(data, encoding="latin1") == decimal.Decimal("1.50")
    assert render(read(data).value) == "decimal.Decimal('1.50')"


NUMBER = 0x12345678_1234_5678_1234_567812345678


def test_a_python_2_uuid_of_protocol_0() -> None:
    data = (
        b"ccopy_reg\n_reconstructor\n(cuuid\nUUID\nc__builtin__\nobject\nNtR"
        b"(dS'int'\nL" + str(NUMBER).encode() + b"L\nsb."
    )
    assert pickle.loads(data, encoding="latin1") == uuid.UUID(int=NUMBER)
    assert render(read(data).value) == "uuid.UUID('12345678-1234-5678-1234-567812345678')"


def test_a_python_2_uuid_of_protocol_2() -> None:
    number = NUMBER.to_bytes(17, "little", signed=True)
    data = b"\x80\x02cuuid\nUUID\n)\x81}" + string2(b"int") + b"\x8a\x11" + number + b"sb."
    assert pickle.loads(data, encoding="latin1") == uuid.UUID(int=NUMBER)
    assert render(read(data).value) == "uuid.UUID('12345678-1234-5678-1234-567812345678')"


def ndb_key_state(
    string: Any, pairs: list[tuple[bytes, bytes | int]], app: bytes, namespace: bytes
) -> bytes:
    """``{'pairs': ((kind, id), ...), 'app': ..., 'namespace': ...}`` then TUPLE1, as the
    legacy ``ndb.Key.__getnewargs__``/``__getstate__`` return it."""
    items = b"".join(
        string(kind)
        + (string(ident) if isinstance(ident, bytes) else b"J" + ident.to_bytes(4, "little"))
        + b"\x86"
        for kind, ident in pairs
    )
    tuple_of_pairs = b"(" + items + b"t"
    return (
        b"}(" + string(b"pairs") + tuple_of_pairs + string(b"app") + string(app)
        + string(b"namespace") + string(namespace) + b"u\x85"
    )  # fmt: skip


def test_a_legacy_python_2_ndb_key() -> None:
    state = ndb_key_state(string2, [(b"Counter", b"abc"), (b"Child", 5)], b"s~my-app", b"")
    data = b"\x80\x02cgoogle.appengine.ext.ndb.key\nKey\n" + state + b"\x81" + state + b"b."
    assert render(read(data).value) == (
        "google.appengine.ext.ndb.key.Key('Counter', 'abc', 'Child', 5, app='s~my-app')"
    )


def test_a_google_cloud_ndb_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import ndb

    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", "127.0.0.1:9")  # never reached
    client = ndb.Client(project="p", credentials=AnonymousCredentials())
    with client.context():
        key = ndb.Key("Counter", "abc", "Child", 5, namespace="ns")
        data = pickle.dumps(key, protocol=2)
    assert render(read(data).value) == (
        "google.cloud.ndb.key.Key('Counter', 'abc', 'Child', 5, app='p', namespace='ns')"
    )


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\x80\x02cdatetime\ndatetime\nU\x03abc\x85R.", "datetime.datetime('abc')"),
        (
            b"\x80\x02cdatetime\ndate\nU\x04\x07\xe8\x0d\x01\x85R.",  # month 13
            "datetime.date('\\x07è\\r\\x01')",
        ),
        (b"\x80\x02cdatetime\ntimedelta\nK\x01\x85R.", "datetime.timedelta(1)"),
        (
            b"\x80\x02cuuid\nUUID\n)\x81}U\x03intJ\xff\xff\xff\xffsb.",  # a negative int
            "<uuid.UUID object, state {'int': -1}>",
        ),
        (
            b"\x80\x02cgoogle.cloud.ndb.key\nKey\nK\x01\x85\x81.",
            "<google.cloud.ndb.key.Key object from __new__(1)>",
        ),
    ],
    ids=["short", "month-13", "timedelta-args", "negative-uuid", "key-without-pairs"],
)
def test_state_that_does_not_decode_is_shown_as_the_call(data: bytes, text: str) -> None:
    assert render(read(data).value) == text
