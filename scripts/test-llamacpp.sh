#!/usr/bin/env bash
# llama.cpp runs anneal's GGUF exports: the tiny random GPT-2, Qwen2 and Llama fixtures
# (tests/fixtures) exported as GGUF f32 and q8_0 and registered back by the
# `llamacpp_fixtures` binary (tests/src/bin), then loaded by llama.cpp through the
# prebuilt CPU binaries of the npm package node-llama-cpp (no compiler, no download at
# run time) in tests/llamacpp/check.mjs, which fails unless llama.cpp tokenizes the
# prompt as anneal does and its logits and greedy tokens agree with anneal's (see the
# header of check.mjs for the exact rules).
#
# Installs node-llama-cpp and its linux-x64 binaries from the committed lock with
# `npm ci` (~85 MB, ~10 s; reinstalled only when the lock changed): `--omit=optional`
# leaves out the CUDA / Vulkan variants, `--ignore-scripts` its postinstall (which
# would try to download or build llama.cpp). The lock lists node-llama-cpp's mac /
# windows / riscv64 binary packages without an integrity hash: the package registry
# this was locked against does not serve them, and npm never fetches them here
# (optional, and for other platforms).
#
# Outside linux-x64, or without node, it skips with a message; in CI (CI set) that is a
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# One compile of candle shared by cargo test, maturin and napi (see CANDLE-NOTES.md).
CARGO_BUILD_TARGET=$(rustc -vV | sed -n 's/host: //p')
export CARGO_BUILD_TARGET

skip_or_fail() {
    if [ -n "${CI:-}" ]; then
        echo "test-llamacpp: $1 (failing: CI is set)" >&2
        exit 1
    fi
    echo "test-llamacpp: SKIPPED: $1" >&2
    exit 0
}
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
    skip_or_fail "the llama.cpp binaries used here are node-llama-cpp's linux-x64 ones"
command -v node >/dev/null 2>&1 || skip_or_fail "node is not installed"

# Never download or build llama.cpp: only the prebuilt binaries of the lock.
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
DIR=tests/llamacpp
if ! cmp -s "$DIR/package-lock.json" "$DIR/node_modules/.installed-lock" 2>/dev/null; then
    (cd "$DIR" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error &&
        cp package-lock.json node_modules/.installed-lock)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The binary as the workspace's `cargo test` builds it (`cargo run -p anneal-tests` would
# compile candle and anneal again with other dependency features: see built-bin.sh).
"$(scripts/built-bin.sh bin llamacpp_fixtures)" "$work" tests/fixtures
node "$DIR/check.mjs" "$work"
