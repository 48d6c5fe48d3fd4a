#!/usr/bin/env bash
# Runs every test suite: format + lints, Rust unit/integration tests, the quickstart,
# continual and image quickstart examples and their twins, the Python binding (pytest,
# in ./.venv) and the Node binding (node --test), the dashboard in headless Chromium,
# and the binary distributions.
# Installs what it needs itself (maturin, pytest into .venv; npm packages into
# bindings-node/node_modules and cli/tests/browser/node_modules; chromium with
# apt-get). Works on a fresh machine; no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

# One compile of candle for cargo test, maturin develop and napi build: napi always
# passes --target, so every cargo call here targets the host triple explicitly.
CARGO_BUILD_TARGET="$(rustc -vV | sed -n 's/host: //p')"
export CARGO_BUILD_TARGET
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=$(date +%s)
# Each step's header says how long the run has taken so far (where CI time goes).
step() { printf '\n==> [%ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace, all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (core, end-to-end tests, examples, benches)"
cargo test

# The examples as `cargo test` just built them (scripts/built-bin.sh: `cargo run -p
# anneal-examples` would compile candle and anneal again with other dependency features).
example_bin() { scripts/built-bin.sh example "$1"; }
step "quickstart example (dev profile, --smoke; the README runs it in full with --release)"
qs_bin="$(example_bin quickstart)"
qs_home="$(mktemp -d)"
"$qs_bin" "$qs_home/home" --smoke
rm -rf "$qs_home"
step "continual example (dev profile: drift, retrain, gate, promote, webhook, plot)"
ct_bin="$(example_bin continual)"
ct_home="$(mktemp -d)"
"$ct_bin" "$ct_home/home" --smoke
rm -rf "$ct_home"
step "image quickstart example (dev profile, --smoke: the whole loop in a few steps)"
iq_bin="$(example_bin image_quickstart)"
iq_home="$(mktemp -d)"
"$iq_bin" "$iq_home/home" --smoke
rm -rf "$iq_home"

step "Python binding"
scripts/test-python.sh
step "Python quickstart twin"
.venv/bin/python examples/python/quickstart.py "$(mktemp -d)/home" --smoke
step "Python continual twin"
.venv/bin/python examples/python/continual.py "$(mktemp -d)/home" --smoke
step "Python image quickstart twin"
.venv/bin/python examples/python/image_quickstart.py "$(mktemp -d)/home" --smoke

step "dashboard in headless Chromium (anneal serve, a job started from Python)"
scripts/test-browser.sh

step "Node binding"
scripts/test-node.sh
step "Node quickstart twin"
node examples/node/quickstart.mjs "$(mktemp -d)/home" --smoke
step "Node continual twin"
node examples/node/continual.mjs "$(mktemp -d)/home" --smoke
step "Node image quickstart twin"
node examples/node/image_quickstart.mjs "$(mktemp -d)/home" --smoke

step "GGUF exports run by llama.cpp (node-llama-cpp's prebuilt binaries)"
scripts/test-llamacpp.sh

step "binary distributions (dev build): install into a clean venv and an empty Node project"
scripts/dist.sh --dev
scripts/test-dist.sh

step "all suites passed in $(( $(date +%s) - started ))s"
