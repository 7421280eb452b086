"""A pytest plugin: every log record of the test battery, scanned for the tests' secrets.

No log line may hold a payload's bytes, an ID token or a signing key (the guide's
"no secrets in logs"; SECURITY.md). While the session runs, this plugin remembers
every secret the tests use, where the library and the tests make them:

* ID tokens: each ``google.auth.jwt.encode`` result (the tests' issuer, dev keys);
* signing keys: each ``SigningKey`` secret, each RSA private key PEM (dev keys, the
  tests' issuer);
* payload bytes: each body ``Sender.frame_payload`` writes (and the pickle in it) and
  each body ``Receiver.open_payload`` is given, hostile ones included.

It sees every log record the process makes (a log record factory; the library's
logger is set to ``DEBUG`` for the session, so none of its records goes unmade) and
looks in the text a handler would write — the message, the traceback, the stack and
any ``extra`` — for each secret as ``repr`` shows bytes (for payloads, stretches with
an escaped byte of 0x80 or more: a pickle's text, such as the callable's name the
handler logs, is no dump), as base64
(standard and URL-safe), as hex, and tokens and keys as text. A secret is found when a
line holds any 24 characters of one of these forms starting at a multiple of 32 in its
first 512 characters, or its last 24: so any slice of 56 characters or more of that
stretch is caught.

A test during which a record held a secret fails, naming the logger and the kind of
secret (never the secret); records made outside any test fail the session.
Records made in other processes (a gunicorn server's) are not seen here.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import threading
from collections.abc import Callable, Generator
from typing import Any, Final

import pytest

WINDOW: Final = 24
STRIDE: Final = 32
SPAN: Final = 512
_STANDARD = frozenset({*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime"})
_PRIVATE_KEY: Final = "-----BEGIN PRIVATE KEY-----"
PAYLOAD: Final = "payload bytes"
_HIGH_BYTE: Final = re.compile(r"\\x[89a-f][0-9a-f]")


class LogScan:
    """The secrets seen so far, and the log records found holding one."""

    def __init__(self) -> None:
        self._windows: dict[str, str] = {_PRIVATE_KEY[:WINDOW]: "a private key"}
        self._lock = threading.Lock()
        self._found: list[str] = []

    def remember(self, kind: str, secret: bytes | str, *, text_is_secret: bool = True) -> None:
        """Remembers a secret of ``kind`` ("an ID token", "payload bytes"...).

        Args:
            kind: What the secret is, for the findings.
            secret: The secret.
            text_is_secret: ``False`` for payloads: a stretch of their bytes that reads
                as text (a callable's name the handler logs, a name an allowlist refusal
                quotes, even with control characters, an argument the task logs itself)
                is no dump of them; only stretches where ``repr`` escapes a byte of 0x80
                or more (pickle opcodes, lengths, the frame's header; never a name's
                character, which UTF-8 encodes as two) are.
        """
        for form, escaped in _forms(secret):
            starts = [*range(0, min(len(form), SPAN), STRIDE), len(form) - WINDOW]
            for start in starts:
                window = form[start : start + WINDOW]
                if len(window) < WINDOW or start < 0:
                    continue
                if text_is_secret or not escaped or _HIGH_BYTE.search(window):
                    self._windows.setdefault(window, kind)

    def scan(self, record: logging.LogRecord) -> None:
        """Looks for remembered secrets in what a handler would write of ``record``."""
        try:
            text = _text(record)
        except Exception:  # a record logging itself cannot format: logging reports it
            return
        windows = self._windows
        for start in range(len(text) - WINDOW + 1):
            kind = windows.get(text[start : start + WINDOW])
            if kind is not None:
                with self._lock:
                    self._found.append(f"{record.name} {record.levelname}: {kind}")
                return

    def take(self) -> list[str]:
        """The findings since the last call."""
        with self._lock:
            found, self._found = self._found, []
        return found


def _forms(secret: bytes | str) -> list[tuple[str, bool]]:
    """The forms a log line could show ``secret`` in, each with whether it is ``repr``'s."""
    if isinstance(secret, str):  # a JWT's signature alone is a leak too
        return [(form, False) for form in (secret, *secret.split("."))]
    return [
        (repr(secret)[2:-1], True),
        (base64.b64encode(secret).decode(), False),
        (base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), False),
        (secret.hex(), False),
    ]


def _text(record: logging.LogRecord) -> str:
    text = logging.Formatter("%(message)s").format(record)
    extras = [f"{key}={value!r}" for key, value in vars(record).items() if key not in _STANDARD]
    return " ".join([text, *extras])


SCAN: Final = LogScan()
# What the plugin replaced, to put back at the end: (owner, name, original).
_PATCHED: list[tuple[Any, str, Any]] = []


def _wrap(
    owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    original = getattr(owner, name)
    _PATCHED.append((owner, name, original))
    setattr(owner, name, functools.wraps(original)(wrapper(original)))


def _remembering_result(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if kind == PAYLOAD:
                SCAN.remember(kind, result, text_is_secret=False)
            else:  # a JWT, as bytes: logged as text
                SCAN.remember(kind, result.decode() if isinstance(result, bytes) else result)
            return result

        return call

    return wrapper


def _remembering_argument(
    kind: str, index: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > index and isinstance(args[index], (bytes, str)):
                SCAN.remember(kind, args[index], text_is_secret=kind != PAYLOAD)
            return original(*args, **kwargs)

        return call

    return wrapper


def pytest_configure(config: pytest.Config) -> None:
    from google.auth import jwt

    from cloudtasks_deferred import dev_key
    from cloudtasks_deferred.enqueue.sender import Sender
    from cloudtasks_deferred.payload import frame
    from cloudtasks_deferred.receive.receiver import Receiver
    from tests import oidc

    _wrap(jwt, "encode", _remembering_result("an ID token"))
    _wrap(Sender, "frame_payload", _remembering_result(PAYLOAD))
    _wrap(Sender, "frame_payload", _remembering_argument(PAYLOAD, 1))
    _wrap(Receiver, "open_payload", _remembering_argument(PAYLOAD, 1))

    def remember_pem(original: Callable[..., Any]) -> Callable[..., Any]:
        def init(self: Any, private_pem: bytes) -> None:
            original(self, private_pem)
            SCAN.remember("a private key", private_pem.decode())

        return init

    _wrap(dev_key.DevKey, "__init__", remember_pem)

    def remember_secret(original: Callable[..., Any]) -> Callable[..., Any]:
        def post_init(self: Any) -> None:
            original(self)
            SCAN.remember("a signing key", self.secret)

        return post_init

    _wrap(frame.SigningKey, "__post_init__", remember_secret)

    def remember_issuer(original: Callable[..., Any]) -> Callable[..., Any]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            SCAN.remember("a private key", self.private_pem.decode())

        return init

    _wrap(oidc.Issuer, "__init__", remember_issuer)

    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        SCAN.scan(record)
        return record

    _PATCHED.append((logging, "_logRecordFactory", previous))
    logging.setLogRecordFactory(factory)
    library = logging.getLogger("cloudtasks_deferred")
    _PATCHED.append((library, "level", library.level))
    library.setLevel(logging.DEBUG)  # every record the library could make is made


def pytest_unconfigure(config: pytest.Config) -> None:
    while _PATCHED:
        owner, name, original = _PATCHED.pop()
        if name == "_logRecordFactory":
            logging.setLogRecordFactory(original)
        elif name == "level":
            owner.setLevel(original)
        else:
            setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    found = SCAN.take()
    if not found:
        return
    report = outcome.get_result()
    report.outcome = "failed"
    leaks = "\n".join(f"  {each}" for each in sorted(set(found)))
    report.longrepr = f"log records during {call.when} held secrets of the tests:\n{leaks}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = SCAN.take()
    if found:
        leaks = "\n".join(f"  {each}" for each in sorted(set(found)))
        session.config.get_terminal_writer().line(
            f"log records outside any test held secrets of the tests:\n{leaks}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
