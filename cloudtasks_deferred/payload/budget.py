"""What decoding one payload may cost: the budget, and what each opcode is charged.

A pickle is a program, and five bytes of it can claim gigabytes. The bounded
unpickler (:mod:`cloudtasks_deferred.payload.unpickler`) charges every opcode it runs
against a :class:`DecodeBudget` derived from the size of the body the pickle came in:
the opcodes it may run, and the bytes of objects it may create. Each opcode is charged
a fixed cost here (the stack slot, plus the object it creates, as CPython 3.11 on 64
bits sizes it); calls are charged what they return, and fills per item, by the
unpickler. A load over its budget raises :class:`DecodeLimitError`.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Final

from cloudtasks_deferred.payload.frame import InvalidPayloadError

__all__ = [
    "COSTS",
    "ITEM_COST",
    "MAX_MARK_DEPTH",
    "MEMORY_PER_BODY_BYTE",
    "MIN_MEMORY",
    "MIN_OPCODES",
    "OPCODES_PER_BODY_BYTE",
    "DecodeBudget",
    "DecodeLimitError",
]

#: Opcodes one load may run, whatever the size of its body.
MIN_OPCODES: Final = 1_000_000
#: ... and per byte of the body it came in (compressed bodies run more).
OPCODES_PER_BODY_BYTE: Final = 4
#: Deepest nesting of marks (the pickler's own recursion limit is about 1,000).
MAX_MARK_DEPTH: Final = 10_000
#: Bytes of objects one load may create (as charged, see the module docstring) ...
MIN_MEMORY: Final = 16 * 1024 * 1024
#: ... and per byte of the body it came in.
MEMORY_PER_BODY_BYTE: Final = 128


@dataclasses.dataclass(frozen=True)
class DecodeBudget:
    """What one load may spend.

    Attributes:
        opcodes: Opcodes it may run.
        memory: Bytes of objects it may create, as charged (module docstring).
    """

    opcodes: int
    memory: int

    @classmethod
    def for_body(cls, body_bytes: int) -> DecodeBudget:
        """The default budget for a pickle that arrived in ``body_bytes`` bytes.

        ``max(1,000,000, 4 x body)`` opcodes and ``max(16 MiB, 128 x body)`` bytes:
        a 1 MB task body may run 4 million opcodes (under a second) and create
        128 MiB of objects, enough for the 150,000 small records (about 90 MiB) that a
        compressed 1 MB body can hold. Only data compressed more than about a
        hundredfold, such as hundreds of thousands of empty containers, needs more.
        """
        return cls(
            opcodes=max(MIN_OPCODES, OPCODES_PER_BODY_BYTE * body_bytes),
            memory=max(MIN_MEMORY, MEMORY_PER_BODY_BYTE * body_bytes),
        )


class DecodeLimitError(InvalidPayloadError):
    """The pickle exceeds its :class:`DecodeBudget` or asks for a call the rules refuse.

    A permanent failure, as any payload that cannot be decoded. Its message holds
    numbers and type names, never the pickle's data.
    """


# Bytes charged per opcode: the stack slot, plus the object the opcode creates
# (CPython 3.11, 64-bit). Calls are charged what they return, fills per item.
_SLOT: Final = 8
#: Bytes charged per opcode, indexed by its byte.
COSTS: Final = [_SLOT] * 256
for _op, _cost in {
    pickle.EMPTY_DICT: 72,
    pickle.DICT: 72,
    pickle.EMPTY_LIST: 64,
    pickle.LIST: 64,
    pickle.EMPTY_SET: 224,
    pickle.FROZENSET: 224,
    pickle.TUPLE: 48,
    pickle.TUPLE1: 56,
    pickle.TUPLE2: 64,
    pickle.TUPLE3: 72,
    pickle.BININT: 40,
    pickle.BININT2: 40,
    pickle.INT: 40,
    pickle.LONG: 40,
    pickle.LONG1: 40,
    pickle.LONG4: 40,
    pickle.BINFLOAT: 32,
    pickle.FLOAT: 32,
    pickle.SHORT_BINUNICODE: 56,
    pickle.BINUNICODE: 56,
    pickle.BINUNICODE8: 56,
    pickle.UNICODE: 56,
    pickle.STRING: 56,
    pickle.BINSTRING: 56,
    pickle.SHORT_BINSTRING: 56,
    pickle.SHORT_BINBYTES: 48,
    pickle.BINBYTES: 48,
    pickle.BINBYTES8: 48,
    pickle.BYTEARRAY8: 64,
    pickle.PUT: 64,
    pickle.BINPUT: 64,
    pickle.LONG_BINPUT: 64,
    pickle.MEMOIZE: 64,
    pickle.POP: 0,
    pickle.POP_MARK: 0,
    pickle.PROTO: 0,
    pickle.FRAME: 0,
    pickle.STOP: 0,
}.items():
    COSTS[_op[0]] = _cost
#: One more entry in a dict or set (the table grows too).
ITEM_COST: Final = 48
