"""Runs gcloud-tasks-emulator bound to 127.0.0.1 (its own CLI binds every interface).

Started by :class:`cloudtasks_deferred.devtools.emulators.CloudTasksEmulator` as
``python -m cloudtasks_deferred.devtools.tasks_emulator --port P [--queue NAME]...``; stops
on SIGTERM or SIGINT. Needs ``pip install --no-deps gcloud-tasks-emulator==0.6.2``
(it pins protobuf<5, which the rest of the stack has outgrown; its code runs fine
beside newer versions).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Any

from cloudtasks_deferred.devtools.tooling import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, LOOPBACK

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Starts the emulator and blocks until SIGTERM/SIGINT.

    Returns:
        ``EXIT_UNAVAILABLE`` (3) if gcloud-tasks-emulator is not installed,
        ``EXIT_FAILURE`` (1) if the port is in use; once started, it ends the
        process itself with status 0 when stopped.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", action="append", default=[], help="full queue name")
    parser.add_argument("--max-retries", type=int, default=-1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:  # the emulator's own packages: installed beside the library, checked here
        import grpc
        from gcloud_tasks_emulator import server
        from google.api_core.exceptions import NotFound
    except ImportError as exc:
        print(
            f"cannot start the Cloud Tasks emulator ({exc}): "
            "pip install --no-deps gcloud-tasks-emulator==0.6.2",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE

    class LoopbackAPIThread(server.APIThread):  # type: ignore[misc]
        """Serves on 127.0.0.1 only, on a port it binds before the emulator starts."""

        def bind(self) -> bool:
            # Without SO_REUSEPORT (gRPC's default sets it), a port another server
            # holds is refused here rather than shared with it.
            self._httpd = grpc.server(
                futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
            )
            server.add_CloudTasksServicer_to_server(server.Greeter(self._state), self._httpd)
            try:
                return bool(self._httpd.add_insecure_port(f"{LOOPBACK}:{self._port}"))
            except RuntimeError:  # grpcio raises it when the port cannot be bound
                return False

        def run(self) -> None:
            self._httpd.start()

    class SteadyQueueState(server.QueueState):  # type: ignore[misc]
        """Its dispatch loop works on a snapshot of the queue: a task purged, run with
        RunTask or deleted with its queue meanwhile raised there and silently ended
        the queue's dispatch thread. Such a task is now skipped."""

        def submit_task(self, task_name: str, force_run: bool = False) -> Any:
            try:
                return super().submit_task(task_name, force_run)
            except (NotFound, ValueError):
                if force_run:  # RunTask: the caller gets the error, as before
                    raise
                logging.info("task %s is gone; not dispatching it", task_name)
                return None

    server.QueueState = SteadyQueueState
    emulator: Any = server.create_server(
        LOOPBACK, args.port, default_queue_names=args.queue, max_retries=args.max_retries
    )
    emulator._api = LoopbackAPIThread(emulator._state, LOOPBACK, args.port, daemon=True)
    if not emulator._api.bind():
        print(
            f"port {args.port} on {LOOPBACK} is in use: the Cloud Tasks emulator cannot "
            "listen there",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    emulator.start()
    print(f"Cloud Tasks emulator listening on {LOOPBACK}:{args.port}", flush=True)
    stop.wait()
    emulator.stop()
    # Its dispatch threads are not daemons and may sit in urlopen without a timeout.
    sys.stdout.flush()
    os._exit(EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
