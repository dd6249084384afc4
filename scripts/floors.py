#!/usr/bin/env python3
"""Fail when a module of pipeline/src imports from a floor above its own, or when two
top-level modules import each other (directly or around a circle).

The floors are those of docs/architecture.md ("Floors"); a module is a top-level file or
folder of pipeline/src. An import is any `crate::<module>` path outside `#[cfg(test)]`
code (a `use` line or a path in an expression). Run by `make lint`.
"""
import pathlib
import re
import sys

FLOORS = {
    "main": 9,
    "run": 8, "verify": 8,
    "load": 7, "lookup": 7, "maintain": 7, "html": 7,
    "generate": 6, "ingest": 6, "aggregate": 6, "profiles": 6, "sql": 6, "cql": 6,
    "delta": 5, "lock": 5, "lib": 5,
    "layout": 4,
    "store": 3, "kafka": 3,
    "config": 2, "rules": 2, "report": 2, "tables": 2,
    "schema": 1, "error": 1, "dates": 1, "progress": 1, "process": 1, "failpoints": 1,
}

SRC = pathlib.Path(__file__).resolve().parent.parent / "pipeline" / "src"
PATH = re.compile(r"\b(?:crate|pipeline)::(\w+)")
USE_GROUP = re.compile(r"\buse (?:crate|pipeline)::\{([^;]*)\}", re.S)


def module_of(path):
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def imports(text):
    text = text.split("#[cfg(test)]")[0]
    found = set(PATH.findall(text))
    for group in USE_GROUP.findall(text):
        found.update(re.findall(r"(?:^|[,{]\s*)(\w+)", group))
    return found


def main():
    edges = {}
    problems = []
    for path in sorted(SRC.rglob("*.rs")):
        me = module_of(path)
        if me not in FLOORS:
            problems.append(f"{path}: module `{me}` has no floor in scripts/floors.py")
            continue
        for other in imports(path.read_text()):
            if other == me or other not in FLOORS:
                continue
            edges.setdefault(me, set()).add(other)
            if me != "main" and FLOORS[other] > FLOORS[me]:
                problems.append(
                    f"{path.relative_to(SRC.parent.parent)}: `{me}` (floor {FLOORS[me]}) "
                    f"imports `{other}` (floor {FLOORS[other]}), a floor above it"
                )
    # Circles between modules: a depth-first search for a back edge.
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                circle = stack[stack.index(n):] + [n]
                problems.append("modules import each other: " + " -> ".join(circle))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("floors: see docs/architecture.md (Floors)", file=sys.stderr)
        sys.exit(1)
    print(f"floors: {sum(len(v) for v in edges.values())} imports between "
          f"{len(edges)} modules, none upward, no circle")


if __name__ == "__main__":
    main()
