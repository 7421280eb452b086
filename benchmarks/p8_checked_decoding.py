"""P8: what checking a payload costs, and what the worst hostile body can still cost.

* **P8**: decoding a typical 4 KB payload (P2's 100 records) under an allowlist —
  the bounded, checked pure-Python unpickler behind ``Client.open_payload`` —
  against a bare ``pickle.loads`` of the same pickle, interleaved.
* **P8-cpu** and **P8-mem**: the CPU time and the peak memory of the worst hostile
  1 MiB body we know, each decoded in a fresh interpreter through
  ``Client.open_payload`` with an allowlist (peak resident memory above the
  interpreter's own after imports). The candidates: 1 MiB of empty sets (the most
  memory per opcode), of memoized empty lists, and a compressed body of no-op pairs
  as long as its opcode budget allows (the most time).
"""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import tempfile
import timeit

from cloudtasks_deferred.payload.allowlist import Allowlist
from cloudtasks_deferred.payload.budget import DecodeBudget
from cloudtasks_deferred.payload.frame import encode

from .common import Result
from .tasks import make_batch, process_batch

TARGET = 3.0
HOSTILE_CPU_GOAL_S = 0.5
HOSTILE_MEMORY_GOAL_MIB = 16.0
MIB = 1024 * 1024

_PROBE = """
import sys, time
from cloudtasks_deferred import Client, Settings
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport

def status(field):  # kB, from Linux's /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

body = open(sys.argv[1], "rb").read()
client = Client(
    Settings(project="p", location="us-central1", base_url="https://b.test",
             allowed_modules=("benchmarks.tasks",), ndb=False),
    transport=InMemoryTransport(),
)
with open("/proc/self/clear_refs", "w") as clear:  # the peak so far: forget it
    clear.write("5")
before = status("VmRSS")
started = time.process_time()
try:
    client.open_payload(body)
    outcome = "accepted"
except Exception as exc:
    outcome = type(exc).__name__
cpu = time.process_time() - started
print(cpu, (status("VmHWM") - before) / 1024, outcome)
"""


def _no_op_stream(opcodes: int) -> bytes:
    # Varied pairs so that the stream compresses no better than a real attacker's would.
    rng = random.Random(8)  # noqa: S311 - a fixed input, not a secret
    pairs = [b"N0", b")0", b"]0", b"}0", b"\x880", b"\x890", b"(1"]
    return b"\x80\x04" + b"".join(rng.choice(pairs) for _ in range(opcodes // 2)) + b"N."


def _hostile_bodies() -> dict[str, bytes]:
    room = MIB - 64  # the frame's header and the request's own limit
    sets = encode(b"\x80\x04" + b"\x8f" * (room - 3) + b".")
    lists = encode(b"\x80\x04" + b"]\x94" * ((room - 3) // 2) + b".")
    opcodes = DecodeBudget.for_body(room).opcodes + 1000
    no_ops = encode(_no_op_stream(opcodes), compress=True)
    return {
        "1 MiB of empty sets": sets,
        "1 MiB of memoized empty lists": lists,
        f"compressed no-op pairs ({len(no_ops) // 1024} KB)": no_ops,
    }


def _probe(body: bytes, path: str) -> tuple[float, float, str]:
    with open(path, "wb") as file:
        file.write(body)
    output = subprocess.run(
        [sys.executable, "-c", _PROBE, path], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(output[0]), float(output[1]), output[2]


def run(quick: bool = False) -> list[Result]:
    pickled = pickle.dumps((process_batch, (make_batch(),), {}), protocol=pickle.HIGHEST_PROTOCOL)
    allowlist = Allowlist(["benchmarks.tasks"])
    budget = DecodeBudget.for_body(len(pickled))
    number = 200 if quick else 2000
    checked = min(
        timeit.repeat(lambda: allowlist.loads(pickled, budget=budget), number=number, repeat=5)
    )
    plain = min(timeit.repeat(lambda: pickle.loads(pickled), number=number, repeat=5))
    results = [
        Result(
            key="P8",
            title=f"checked decoding / pickle.loads, {len(pickled)} B payload",
            value=checked / plain,
            unit="x",
            target=TARGET,
            detail=f"{checked / number * 1e6:.0f} us vs {plain / number * 1e6:.1f} us per payload",
        )
    ]
    worst_cpu = (0.0, "", "")
    worst_memory = (0.0, "", "")
    with tempfile.TemporaryDirectory() as directory:
        for name, body in _hostile_bodies().items():
            cpu, memory, outcome = _probe(body, f"{directory}/body")
            if cpu > worst_cpu[0]:
                worst_cpu = (cpu, name, outcome)
            if memory > worst_memory[0]:
                worst_memory = (memory, name, outcome)
    results += [
        Result(
            key="P8-cpu",
            title="CPU time of the worst hostile 1 MiB body (goal)",
            value=worst_cpu[0] * 1000,
            unit="ms",
            target=HOSTILE_CPU_GOAL_S * 1000,
            detail=f"{worst_cpu[1]}: {worst_cpu[0] * 1000:.0f} ms of CPU, refused ({worst_cpu[2]})",
        ),
        Result(
            key="P8-mem",
            title="peak memory of the worst hostile 1 MiB body (goal)",
            value=worst_memory[0],
            unit="MiB",
            target=HOSTILE_MEMORY_GOAL_MIB,
            detail=(
                f"{worst_memory[1]}: {worst_memory[0]:.0f} MiB above the interpreter's own, "
                f"refused ({worst_memory[2]})"
            ),
        ),
    ]
    return results
