#!/usr/bin/env bash
# Prints the path of a binary or example as the workspace's `cargo test` builds it
# (building whatever is missing first):
#
#   scripts/built-bin.sh bin|example NAME
#
# `cargo run -p <package>` would resolve dependency features for that package alone,
# without the dev-dependencies `cargo test` unified them with, and compile candle and
# anneal a second time (minutes of CI); the test build already holds every binary.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="$1" name="$2"
CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/host: //p')}"
export CARGO_BUILD_TARGET
path="$(cargo test --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
kind, name = sys.argv[1:3]
found = []
for line in sys.stdin:  # all of it: stopping early would fail cargo with SIGPIPE
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and kind in t.get("kind", []) and t.get("name") == name \
            and not m["profile"]["test"] and m.get("executable"):
        found.append(m["executable"])
print(found[0] if found else "")' "$kind" "$name")"
[ -x "$path" ] || { echo "built-bin: no $kind \`$name\` in the cargo test build" >&2; exit 1; }
echo "$path"
