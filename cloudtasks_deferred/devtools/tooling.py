"""What the command-line tools share: their exit codes and the address they serve on.

Used by ``cloudtasks-deferred`` (:mod:`cloudtasks_deferred.devtools.cli` and the modules of its
commands), :mod:`cloudtasks_deferred.devtools.devserver`,
:mod:`cloudtasks_deferred.devtools.emulators`
and the emulator's runner; it imports nothing, so any of them may import it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "LOOPBACK"]

#: Success; also a server stopped by Ctrl-C or SIGTERM.
EXIT_OK: Final = 0
#: Bad input, a failed operation, or an app that exited with an error.
EXIT_FAILURE: Final = 1
#: A usage error: argparse's own exit code.
EXIT_USAGE: Final = 2
#: An emulator, a server or a tool is not installed or did not start.
EXIT_UNAVAILABLE: Final = 3

#: Local servers listen on IPv4 loopback only: nothing else on the network reaches them.
LOOPBACK: Final = "127.0.0.1"
