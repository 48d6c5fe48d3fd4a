#!/usr/bin/env bash
# Consumer checks of anneal's exports. Not part of CI.
#
#   benches/consumers/run.sh        HF and PEFT exports, loaded by transformers and PEFT
#                                   (check.py; PYTHON must have torch, transformers, peft)
#   benches/consumers/run.sh gguf   GGUF exports, read by the `gguf` package (check_gguf.py;
#                                   PYTHON must have gguf and numpy) and run by llama.cpp
#                                   through node-llama-cpp's prebuilt binaries; the same
#                                   files registered back (register_file) and run by anneal
#                                   are compared with llama.cpp too
#                                   (llama_cpp_check.mjs; installed into $LLAMA_CPP_DIR,
#                                   default /tmp/llcpp, if missing: ~85 MB, ~10 s, no compile)
#   benches/consumers/run.sh ppl    perplexity on held-out text of a trained `mini`'s GGUF
#                                   exports (f32, q8_0, q4_0, q4_k_m), by llama.cpp
#                                   (llama_cpp_perplexity.mjs) and by anneal on each file
#                                   registered back (gguf_perplexity; trains ~100 steps
#                                   first). Not a timing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
CARGO_BUILD_TARGET="$(rustc -vV | sed -n 's/host: //p')"
export CARGO_BUILD_TARGET
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ "${1:-}" = "gguf" ] || [ "${1:-}" = "ppl" ]; then
  dir="${LLAMA_CPP_DIR:-/tmp/llcpp}"
  if [ ! -d "$dir/node_modules/@node-llama-cpp/linux-x64" ]; then
    # The prebuilt CPU binaries only: no CUDA/Vulkan variants (--omit=optional), and no
    # postinstall download or build from source.
    NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$dir" --omit=optional --no-audit --no-fund \
      node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
  fi
fi
if [ "${1:-}" = "ppl" ]; then
  cargo run -q -p anneal-benches --bin gguf_perplexity -- "$work" ${PPL_STEPS:-}
  NODE_PATH="$dir/node_modules" NODE_LLAMA_CPP_SKIP_DOWNLOAD=true node benches/consumers/llama_cpp_perplexity.mjs "$work"
  exit 0
fi
if [ "${1:-}" = "gguf" ]; then
  cargo run -q -p anneal-benches --bin gguf_check -- "$work" tests/fixtures
  "$PYTHON" benches/consumers/check_gguf.py "$work"
  NODE_PATH="$dir/node_modules" NODE_LLAMA_CPP_SKIP_DOWNLOAD=true node benches/consumers/llama_cpp_check.mjs "$work"
  exit 0
fi
read -r data gpt2 llama < <("$PYTHON" benches/consumers/check.py make "$work")
cargo run -q -p anneal-benches --bin export_check -- "$work" "$data" "$gpt2" "$llama"
"$PYTHON" benches/consumers/check.py compare "$work"
