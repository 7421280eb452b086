"""Reading the Terraform files with python-hcl2, parsing type constraints, running terraform."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2] / "terraform"
MODULE = ROOT / "modules" / "cloudtasks_deferred"
EXAMPLES = ROOT / "examples"

_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)
_TOKEN = re.compile(
    r'\s*(?:([A-Za-z_][\w-]*)|(-?\d+(?:\.\d+)?)|("(?:[^"\\]|\\.)*")|([(){}\[\],=]))'
)


def load(directory: Path) -> dict[str, Any]:
    """Every block of the directory's ``*.tf`` files, keyed by block type, then label(s).

    ``resource`` and ``data`` map type -> name -> body; ``variable``, ``output`` and
    ``module`` map name -> body; ``locals`` is one mapping; ``terraform`` and
    ``provider`` are lists of bodies.
    """
    merged: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as file:
            document = hcl2.load(file, serialization_options=_OPTIONS)
        for kind, blocks in document.items():
            for block in blocks:
                _merge(merged, kind, block)
    return merged


def _merge(merged: dict[str, Any], kind: str, block: dict[str, Any]) -> None:
    if kind in ("resource", "data"):
        for type_, named in block.items():
            merged.setdefault(kind, {}).setdefault(type_, {}).update(named)
    elif kind in ("variable", "output", "module", "locals"):
        merged.setdefault(kind, {}).update(block)
    else:
        merged.setdefault(kind, []).append(block)


def terraform(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``terraform ARGS`` without its update check or the user's CLI configuration."""
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=os.devnull)
    return subprocess.run(
        ["terraform", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def strings(value: object) -> Iterator[str]:
    """Every string in a parsed document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@dataclasses.dataclass(frozen=True)
class Type:
    """A Terraform type constraint: ``kind`` with its element or attributes."""

    kind: str
    element: Type | None = None
    attributes: Mapping[str, Attribute] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Attribute:
    """An object attribute: its type, whether it is ``optional(...)``, its default's text."""

    type: Type
    optional: bool = False
    default: str | None = None


def parse_type(expression: str) -> Type:
    """Parses a type constraint as python-hcl2 renders it, e.g. ``${map(object({...}))}``."""
    text = expression[2:-1] if expression.startswith("${") else expression
    parser = _TypeParser(text)
    parsed = parser.type()
    assert parser.done(), f"trailing text in type constraint {expression!r}"
    return parsed


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.tokens = [next(t for t in match.groups() if t) for match in _TOKEN.finditer(text)]
        self.position = 0

    def done(self) -> bool:
        return self.position == len(self.tokens)

    def peek(self, ahead: int = 0) -> str | None:
        index = self.position + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        assert token is not None, f"type constraint ends early; expected {expected}"
        assert expected in (None, token), f"expected {expected}, found {token}"
        self.position += 1
        return token

    def type(self) -> Type:
        kind = self.take()
        if kind in ("string", "number", "bool", "any"):
            return Type(kind)
        self.take("(")
        if kind == "object":
            parsed = Type(kind, attributes=self.attributes())
        else:
            parsed = Type(kind, element=self.type())
        self.take(")")
        return parsed

    def attributes(self) -> dict[str, Attribute]:
        self.take("{")
        attributes = {}
        while self.peek() != "}":
            name = self.take()
            self.take("=")
            attributes[name] = self.attribute()
            if self.peek() == ",":
                self.take()
        self.take("}")
        return attributes

    def attribute(self) -> Attribute:
        if self.peek() != "optional" or self.peek(1) != "(":
            return Attribute(self.type())
        self.take()
        self.take("(")
        type_ = self.type()
        default = None
        if self.peek() == ",":
            self.take()
            default = self.expression()
        self.take(")")
        return Attribute(type_, optional=True, default=default)

    def expression(self) -> str:
        depth, taken = 0, []
        while not (depth == 0 and self.peek() in (",", ")")):
            token = self.take()
            depth += (token in ("(", "[", "{")) - (token in (")", "]", "}"))
            taken.append(token)
        return " ".join(taken)
