#!/usr/bin/env bash
# Consumer check of anneal's HF and PEFT exports (see check.py). Not part of CI: it
# needs torch, transformers and peft. PYTHON (default python3) must have them.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
CARGO_BUILD_TARGET="$(rustc -vV | sed -n 's/host: //p')"
export CARGO_BUILD_TARGET
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
read -r data gpt2 llama < <("$PYTHON" benches/consumers/check.py make "$work")
cargo run -q -p anneal-benches --bin export_check -- "$work" "$data" "$gpt2" "$llama"
"$PYTHON" benches/consumers/check.py compare "$work"
