"""The development tools: the ``cloudtasks-deferred`` command and what it drives.

The CLI (:mod:`~cloudtasks_deferred.devtools.cli`), the local emulators and the dev
runner and server, the queue.yaml converter and the payload inspector's front end. The
top layer: it may import anything of the library, and nothing of the library imports
it (the runtime path never loads it).
"""

__all__: list[str] = []
