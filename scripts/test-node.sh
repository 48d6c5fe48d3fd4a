#!/usr/bin/env bash
# Builds the Node binding (napi build, dev profile) and runs its node:test suite.
# Run from the repository root. Works on a fresh machine: installs the npm dev
# dependencies (@napi-rs/cli) from the lock file with `npm ci`. Tests are hermetic (temporary homes).
set -euo pipefail
cd "$(dirname "$0")/.."

# One compile of candle shared by `cargo test`, maturin and napi (see CANDLE-NOTES.md):
# napi always passes --target, so every cargo call must use the same target.
CARGO_BUILD_TARGET=$(rustc -vV | sed -n 's/host: //p')
export CARGO_BUILD_TARGET

cd bindings-node
# Exactly the committed lock (it lists every platform's optional packages; `overrides`
# in package.json keep the build tools' dependencies on versions that support Node 20).
npm ci --no-audit --no-fund
# Debug profile on purpose: it reuses the dependency build in target/.
npx napi build --platform
# The generated index.js / index.d.ts are committed: in CI, fail if the build changed
# them; locally, say so.
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- index.js index.d.ts; then
    echo "note: napi build changed bindings-node/index.js or index.d.ts; commit them" >&2
    if [ -n "${CI:-}" ]; then exit 1; fi
fi
node --test __test__/ "$@"
