"""Ports on 127.0.0.1 for the local tools: whether one is free, and who holds it.

Used by :mod:`cloudtasks_deferred.devtools.emulators`, ``cloudtasks-deferred dev`` and the
repository's demo, so that a port already in use is reported as such — naming the
process that holds it when this process may see it — instead of an emulator that
seems to start while another program answers on its port.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Final

from cloudtasks_deferred.devtools.tooling import LOOPBACK

__all__ = ["port_free", "port_in_use", "port_owner"]

_PROC: Final = Path("/proc")
_LISTEN_OR_BOUND: Final = frozenset({"0A", "07"})  # TCP_LISTEN; TCP_CLOSE (bound, not listening)
_MAX_COMMAND: Final = 100  # characters of the holder's command line shown


def port_free(port: int) -> bool:
    """Whether a server could listen on ``127.0.0.1:port`` now.

    Binds with ``SO_REUSEADDR``, as servers do (a port in ``TIME_WAIT`` is free),
    and without ``SO_REUSEPORT``, so a port another server shares through
    ``SO_REUSEPORT`` (gRPC servers set it) counts as taken.

    Args:
        port: A TCP port, 1-65535.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def port_in_use(port: int) -> str:
    """``port P on 127.0.0.1 is in use`` and, when known, ``by process N (command)``."""
    owner = port_owner(port)
    return f"port {port} on {LOOPBACK} is in use" + (f" by {owner}" if owner else "")


def port_owner(port: int) -> str | None:
    """The process holding a TCP port, as ``process 1234 (python3 -m http.server)``.

    Reads Linux's ``/proc/net/tcp`` and ``tcp6`` for a socket bound to the port and
    not connected, then the ``/proc/PID/fd`` links for its inode. Processes of other
    users are out of sight unless this one runs as root.

    Args:
        port: The TCP port.

    Returns:
        The description, or ``None`` when no visible process holds the port (or this
        is not Linux).
    """
    inodes = _socket_inodes(port)
    if not inodes:
        return None
    with contextlib.suppress(OSError):
        for process in _PROC.iterdir():
            if process.name.isdigit() and _holds(process, inodes):
                return f"process {process.name} ({_command_line(process)})"
    return None


def _socket_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            unconnected = remote.rpartition(":")[2] == "0000"
            if (
                unconnected
                and state in _LISTEN_OR_BOUND
                and int(local.rpartition(":")[2], 16) == port
            ):
                inodes.add(f"socket:[{inode}]")
    inodes.discard("socket:[0]")
    return inodes


def _holds(process: Path, inodes: set[str]) -> bool:
    try:
        for fd in (process / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    except OSError:  # another user's process, or one that just exited
        return False
    return False


def _command_line(process: Path) -> str:
    try:
        raw = (process / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text) or "?"
    return text if len(text) <= _MAX_COMMAND else text[: _MAX_COMMAND - 1] + "…"
