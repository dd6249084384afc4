#!/usr/bin/env python3
"""Fail when a dev-dependency changes the features of a crate the main build also compiles.

Cargo's resolver 2 unifies features separately for `cargo build` and for `cargo test`; a
test-only crate that turns on one more feature of a shared dependency makes `cargo test`
recompile it and every crate above it (for us: DataFusion and delta-rs). Compares each
package's features in `cargo tree --workspace -e normal,build` with those in the same tree
plus dev-dependencies. Fix a difference by pinning the feature in pipeline/Cargo.toml.
"""
import subprocess
import sys


def features(edges):
    out = subprocess.run(
        ["cargo", "tree", "--workspace", "--locked", "-e", edges, "--prefix", "none",
         "-f", "{p}|{f}"],
        check=True, capture_output=True, text=True,
    ).stdout
    seen = {}
    for line in out.splitlines():
        line = line.replace(" (*)", "").strip()
        if "|" not in line:
            continue
        package, feats = line.rsplit("|", 1)
        seen.setdefault(package.split(" (")[0], set()).add(feats)
    return seen


build = features("normal,build")
test = features("normal,build,dev")
changed = sorted(p for p in build if p in test and build[p] != test[p])
for p in changed:
    print(f"{p}: build features {sorted(build[p])}, test build {sorted(test[p])}")
if changed:
    print(f"dev-features: {len(changed)} crate(s) compiled with other features for tests: "
          "`cargo test` would rebuild them and everything above them; pin the features in "
          "pipeline/Cargo.toml [dependencies]", file=sys.stderr)
    sys.exit(1)
print(f"dev-features: the {len(build)} crates of the main build keep their features in the test build")
