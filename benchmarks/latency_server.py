"""A stand-in for Cloud Tasks' ``CreateTask`` with a fixed latency, for P6.

``python -m benchmarks.latency_server MILLISECONDS`` serves
``google.cloud.tasks.v2.CloudTasks/CreateTask`` over gRPC on 127.0.0.1 (a free
port), answers every call with its task (named, if it was not) after sleeping
MILLISECONDS, prints ``127.0.0.1:PORT`` once it listens, and stops when its stdin
closes. It runs in a process of its own, as the real service does: its work never
takes the benchmarked process's CPU or GIL. The messages are google-cloud-tasks'
own; no generated gRPC stubs are needed.
"""

from __future__ import annotations

import itertools
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.cloud import tasks_v2

#: Server threads: more than the callers' threads, so no call waits for one.
THREADS = 256


def serve(latency: float) -> tuple[grpc.Server, int]:
    """Starts the server; returns it and its port."""
    ids = itertools.count(1)

    def create_task(request: tasks_v2.CreateTaskRequest, context: Any) -> tasks_v2.Task:
        time.sleep(latency)
        task = request.task
        if not task.name:
            task.name = f"{request.parent}/tasks/{next(ids)}"
        return task

    handler = grpc.method_handlers_generic_handler(
        "google.cloud.tasks.v2.CloudTasks",
        {
            "CreateTask": grpc.unary_unary_rpc_method_handler(
                create_task,
                request_deserializer=tasks_v2.CreateTaskRequest.deserialize,
                response_serializer=tasks_v2.Task.serialize,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def main() -> int:
    server, port = serve(float(sys.argv[1]) / 1000)
    print(f"127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin (or exits)
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
