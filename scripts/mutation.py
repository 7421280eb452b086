"""Mutation testing of the security core and guard: per-module scores, or the CI slice.

Run through ``scripts/mutation`` (README, Development; SECURITY.md). It drives mutmut
(pinned in the ``dev`` extra, configured under ``[tool.mutmut]`` in pyproject.toml:
which modules, which tests) and then scores each module as

    killed / (mutants - known-equivalent survivors)

where the known-equivalent mutants are those listed, each with its reason, in
``tests/mutation-equivalents.toml``. An entry names a function and the change (the
``-``/``+`` lines ``mutmut show`` prints), not mutmut's numbering, so that it keeps
matching when code elsewhere in the function moves; an entry no surviving mutant
matches any more is reported as stale.

Usage::

    scripts/mutation                  # every mutant of every configured module
    scripts/mutation --module frame   # the modules whose path contains "frame"
    scripts/mutation --sample 6       # the CI slice: 6 mutants per module, fixed
    scripts/mutation --keep           # reuse results of the previous run (mutants/)
    scripts/mutation --keep --survivors   # re-test only what the last run did not kill

The slice picks, in each module, the mutants whose names hash lowest (SHA-256): the
same mutants for the same code on every machine. It exits 1 if a sampled mutant that
is not known-equivalent survives, naming it and the change; a full run exits 0 and
prints the scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.toml"
WORKDIR = ROOT / "mutants"
LOG = WORKDIR / "mutation-run.log"
#: mutmut statuses that count as the tests detecting the mutant.
DETECTED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
#: The modules the issue's acceptance scores apart from the security core.
SEPARATE = frozenset({"cloudtasks_deferred/receive/guard.py"})


@dataclasses.dataclass(frozen=True)
class Equivalent:
    """A known-equivalent mutant: where, what change, and why no test can see it."""

    function: str
    change: tuple[str, ...]
    reason: str


@dataclasses.dataclass
class Score:
    """One module's counts."""

    path: str
    mutants: int = 0
    detected: int = 0
    equivalent: int = 0
    survivors: list[tuple[str, tuple[str, ...]]] = dataclasses.field(default_factory=list)

    @property
    def counted(self) -> int:
        return self.mutants - self.equivalent

    @property
    def percent(self) -> float:
        return 100.0 * self.detected / self.counted if self.counted else 100.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, metavar="N", help="N mutants per module (CI)")
    parser.add_argument("--module", action="append", default=[], help="path substring")
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ from a last run")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="with --keep: re-test only the mutants the last run did not detect (after "
        "adding tests; a mutant it detected stays detected when tests are only added)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    args = parser.parse_args(argv)

    paths = [
        p for p in configured_modules() if not args.module or any(m in str(p) for m in args.module)
    ]
    if not paths:
        print(f"no configured module matches {args.module}", file=sys.stderr)
        return 2
    names_by_path = {path: mutant_names(path) for path in paths}
    if args.sample is not None:
        names_by_path = {p: sample(names, args.sample) for p, names in names_by_path.items()}
    selected = [name for names in names_by_path.values() for name in names]
    if args.survivors:
        if not args.keep:
            parser.error("--survivors re-tests the last run's survivors: add --keep")
        detected = {name for name, status in read_statuses().items() if status in DETECTED}
        selected = [name for name in selected if name not in detected]
        if not selected:
            print("the last run left no survivor to re-test")
    print(f"mutation testing: {len(selected)} mutants of {len(paths)} modules", flush=True)

    if not args.keep:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    started = time.monotonic()
    if selected and not run_mutmut(selected, args.jobs):
        return 2
    print(f"ran in {time.monotonic() - started:.0f} s (log: {LOG.relative_to(ROOT)})")

    equivalents = load_equivalents()
    statuses = read_statuses()
    scores, used = score(names_by_path, statuses, equivalents)
    report(scores)
    survivors = [s for score_ in scores for s in score_.survivors]
    stale = [e for e in equivalents if e not in used]
    if stale and args.sample is None and not args.module:
        print(f"\n{len(stale)} stale entries in {EQUIVALENTS.relative_to(ROOT)} (no survivor):")
        for entry in stale:
            print(f"  {entry.function}: {' / '.join(entry.change)}")
    if args.sample is not None and survivors:
        print(
            f"\nFAILED: {len(survivors)} sampled mutant(s) survived. Add a test that fails "
            "when only that change is made, or, if the change cannot alter behaviour, list "
            f"it with the reason in {EQUIVALENTS.relative_to(ROOT)}."
        )
        return 1
    return 0


def configured_modules() -> list[Path]:
    """The files ``[tool.mutmut] only_mutate`` selects, in a fixed order."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    files = sorted(p.relative_to(ROOT) for p in (ROOT / "cloudtasks_deferred").rglob("*.py"))
    return [p for p in files if any(fnmatch.fnmatch(str(p), g) for g in config["only_mutate"])]


def mutant_names(path: Path) -> list[str]:
    """mutmut's names for the mutants of ``path``, as ``mutmut run`` will make them."""
    # mutmut's own generator (pinned version): the names match the run's exactly.
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    mutated = mutate_file_contents(str(path), (ROOT / path).read_text())
    return [get_mutant_name(path, name) for name in mutated.mutant_names]


def sample(names: Iterable[str], count: int) -> list[str]:
    """The ``count`` names with the lowest SHA-256: fixed for fixed code, spread evenly."""
    return sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())[:count]


def run_mutmut(names: Sequence[str], jobs: int) -> bool:
    """Runs mutmut on ``names`` (its output goes to the log); False if it failed."""
    mutmut = Path(sys.executable).with_name("mutmut")
    WORKDIR.mkdir(exist_ok=True)
    with LOG.open("wb") as log:
        done = subprocess.run(
            [str(mutmut), "run", "--max-children", str(jobs), *names],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = LOG.read_text(errors="replace")[-4000:]
        print(f"{tail}\nmutmut failed (exit {done.returncode}); log: {LOG}", file=sys.stderr)
        return False
    return True


def read_statuses() -> dict[str, str]:
    """Each mutant's status from mutmut's result files."""
    from mutmut.stats import status_by_exit_code

    statuses: dict[str, str] = {}
    for meta in WORKDIR.rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses[name] = status_by_exit_code[code]
    return statuses


def change_of(name: str, path: Path) -> tuple[str, ...]:
    """The mutant's changed lines, ``-``/``+`` and trimmed, as the equivalents list them."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=path)
    return normalize(diff.splitlines())


def normalize(lines: Iterable[str]) -> tuple[str, ...]:
    changed = []
    for line in lines:
        if line.startswith(("---", "+++")) or not line.startswith(("-", "+")):
            continue
        changed.append(f"{line[0]} {' '.join(line[1:].split())}")
    return tuple(changed)


def load_equivalents() -> list[Equivalent]:
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    return [
        Equivalent(e["function"], normalize(e["change"].strip().splitlines()), e["reason"])
        for e in entries
    ]


def function_of(name: str) -> str:
    return name.rsplit("__mutmut_", 1)[0]


def score(
    names_by_path: dict[Path, list[str]],
    statuses: dict[str, str],
    equivalents: list[Equivalent],
) -> tuple[list[Score], set[Equivalent]]:
    scores, used = [], set()
    for path, names in names_by_path.items():
        module = Score(str(path))
        for name in names:
            status = statuses.get(name, "not checked")
            module.mutants += 1
            if status in DETECTED:
                module.detected += 1
                continue
            change = change_of(name, path)
            match = next(
                (e for e in equivalents if e.function == function_of(name) and e.change == change),
                None,
            )
            if match is not None:
                module.equivalent += 1
                used.add(match)
            else:
                module.survivors.append((f"{name} ({status})", change))
        scores.append(module)
    return scores, used


def report(scores: list[Score]) -> None:
    width = max(len(s.path) for s in scores)
    header = f"{'module':<{width}}  mutants  equivalent  killed  survived   score"
    print(f"\n{header}\n{'-' * len(header)}")
    core = Score("security core (all but guard)")
    for s in scores:
        print(
            f"{s.path:<{width}}  {s.mutants:7}  {s.equivalent:10}  {s.detected:6}  "
            f"{len(s.survivors):8}  {s.percent:5.1f} %"
        )
        if s.path not in SEPARATE:
            core.mutants += s.mutants
            core.equivalent += s.equivalent
            core.detected += s.detected
            core.survivors += s.survivors
    print("-" * len(header))
    print(
        f"{core.path:<{width}}  {core.mutants:7}  {core.equivalent:10}  {core.detected:6}  "
        f"{len(core.survivors):8}  {core.percent:5.1f} %"
    )
    for s in scores:
        for name, change in s.survivors:
            print(f"\nsurvived: {name}")
            for line in change:
                print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
