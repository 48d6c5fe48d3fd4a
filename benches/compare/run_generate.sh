#!/usr/bin/env bash
# Side-by-side decode benchmark: anneal vs transformers' generate vs llama.cpp (f32, bf16
# and q8_0 weights; DTYPES="f32 q8_0" to leave bf16 out), batch 1, a 16-token prompt, 128 new tokens, greedy, 2 threads, same random
# weights, same machine, same run; plus this machine's read bandwidth and each result's
# share of the decode roofline (weight bytes per token / bandwidth).
#
#   benches/compare/run_generate.sh [runs]
#   BATCHES="8 32" benches/compare/run_generate.sh [runs]
#   ROUNDS=3 benches/compare/run_generate.sh [runs]
#
# ROUNDS (default 1) repeats the timed part, each round alternating anneal and llama.cpp
# per dtype; the tables show medians over the rounds.
#
# BATCHES (default none) adds, per model, dtype and N in it, throughput under load: anneal's
# `generate_batch` of N prompts (generate --batch N), N threads calling `generate` on one
# shared Generator (generate --concurrent N), and llama.cpp's N parallel sequences in one
# context (llama_generate.py --batch N; the Python peer only). Row r's prompt is the
# batch-1 prompt with every id shifted by r; each row reports aggregate decode tokens/s and
# whether row 0's tokens equal the batch-1 tokens; a second table sets them against each
# implementation's batch 1 and anneal against llama.cpp.
#
# Creates benches/compare/.venv (torch, transformers) and .venv-llama (llama-cpp-python,
# which compiles llama.cpp: ~11 min on 2 cores) if missing, the two bench models under
# benches/compare/models/ and their GGUF conversions (llama-cpp-python's own converter).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${1:-3}"
rounds="${ROUNDS:-1}"
# Weight types: anneal's `--dtype` (bf16 and q8_0: weights and the layers' inputs as GGML rounds them,
# GeneratorOptions::quantize) and the llama.cpp peer's GGUF (convert_gguf.py --outtype).
dtypes="${DTYPES:-f32 bf16 q8_0}"
export CARGO_BUILD_TARGET="$(rustc -vV | sed -n 's/host: //p')"
# PYTHON: a Python with torch and transformers (default: benches/compare/.venv, created
# when missing).
py="${PYTHON:-$here/.venv/bin/python}"
if [ -z "${PYTHON:-}" ] && [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q torch transformers peft safetensors
fi
"$py" -m pip install -q sentencepiece  # the GGUF converter imports it
# The llama.cpp peer: llama-cpp-python (LLAMA_PEER=python, compiles llama.cpp: ~11 min on
# 2 cores) or node-llama-cpp's prebuilt binaries (LLAMA_PEER=node, the package
# tests/llamacpp installs; no compiler). Default: python when .venv-llama exists.
peer="${LLAMA_PEER:-$([ -x "$here/.venv-llama/bin/python" ] && echo python || echo node)}"
if [ "$peer" = python ] && [ ! -x "$here/.venv-llama/bin/python" ]; then
  python3 -m venv "$here/.venv-llama"
  CMAKE_BUILD_PARALLEL_LEVEL=2 "$here/.venv-llama/bin/pip" install -q llama-cpp-python gguf sentencepiece numpy
fi
if [ "$peer" = node ] && [ ! -d "$root/tests/llamacpp/node_modules/node-llama-cpp" ]; then
  (cd "$root/tests/llamacpp" && npm ci --no-audit --no-fund --silent)
fi
if [ ! -f "$here/llama.cpp-src/convert_hf_to_gguf.py" ]; then
  # The converter that matches llama-cpp-python's llama.cpp, from its source package
  # (downloaded, not built).
  if [ "$peer" = python ]; then
    version="$("$here/.venv-llama/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
  else
    version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
  fi
  tmp="$(mktemp -d)"
  "$py" -m pip download -q --no-binary llama-cpp-python --no-deps "llama-cpp-python==$version" -d "$tmp"
  mkdir -p "$here/llama.cpp-src"
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$here/llama.cpp-src" --strip-components=3 \
    "llama_cpp_python-$version/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$version/vendor/llama.cpp/conversion" "llama_cpp_python-$version/vendor/llama.cpp/gguf-py"
  rm -rf "$tmp"
fi
(cd "$root" && cargo build -q --release -p anneal-benches --bin membw)
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
bin="$target/$CARGO_BUILD_TARGET/release"
batches="${BATCHES:-}"
for n in $batches; do
  case "$n" in ''|*[!0-9]*) echo "BATCHES holds \`$n\`: batch sizes are whole numbers above 1" >&2; exit 2 ;; esac
  [ "$n" -ge 2 ] || { echo "BATCHES holds $n: batch sizes are whole numbers above 1" >&2; exit 2; }
done
if [ -n "$batches" ] && [ "$peer" != python ]; then
  echo "note: llama.cpp's parallel sequences need the Python peer (LLAMA_PEER=python); anneal's batch rows only." >&2
fi
has_anneal=0
if (cd "$root" && cargo run -q --release -p anneal-benches --bin generate -- --help >/dev/null 2>&1); then
  has_anneal=1
else
  echo "note: anneal's generate bench binary is not available; peers only." >&2
fi
# Models and their GGUF conversions first, so the timed runs follow each other closely.
for config in tiny small; do
  model="$here/models/$config"
  "$py" "$here/gen_model.py" --config "$config" --out "$model"
  for dtype in $dtypes; do
    gguf="$model/model-$dtype.gguf"
    if [ ! "$gguf" -nt "$model/bench.json" ]; then
      "$py" "$here/convert_gguf.py" --model "$model" --outtype "$dtype" --out "$gguf" >/dev/null 2>&1 \
        || { echo "converting $model to $dtype GGUF failed (run convert_gguf.py by hand to see why)" >&2; exit 1; }
    fi
  done
done
out="$(mktemp)"
. "$here/../load_guard.sh"
guard_start
"$bin/membw" | tee -a "$out"
for config in tiny small; do
  model="$here/models/$config"
  # Rounds alternate the two sides per dtype (anneal, llama.cpp, next dtype...): this
  # host's speed drifts by tens of percent within a minute, so only runs close together
  # compare; the tables take each row's median over the rounds.
  for round in $(seq "$rounds"); do
    for dtype in $dtypes; do
      if [ "$has_anneal" = 1 ]; then
        "$bin/generate" --model "$model" --config "$config" --dtype "$dtype" --runs "$runs" | tee -a "$out"
      fi
      if [ "$peer" = python ]; then
        "$here/.venv-llama/bin/python" "$here/llama_generate.py" --model "$model" --config "$config" --dtype "$dtype" \
          --runs "$runs" | tee -a "$out"
      else
        node "$here/llama_generate.mjs" --gguf "$model/model-$dtype.gguf" --config "$config" --dtype "$dtype" \
          --runs "$runs" | tee -a "$out"
      fi
    done
    if [ "$round" = 1 ]; then
      "$py" "$here/torch_generate.py" --model "$model" --config "$config" --runs "$runs" 2>/dev/null | tee -a "$out"
    fi
    for n in $batches; do
      for dtype in $dtypes; do
        if [ "$has_anneal" = 1 ]; then
          for mode in --batch --concurrent; do
            "$bin/generate" --model "$model" --config "$config" --dtype "$dtype" --runs "$runs" "$mode" "$n" \
              | tee -a "$out"
          done
        fi
        if [ "$peer" = python ]; then
          "$here/.venv-llama/bin/python" "$here/llama_generate.py" --model "$model" --config "$config" \
            --dtype "$dtype" --runs "$runs" --batch "$n" | tee -a "$out"
        fi
      done
    done
  done
done
guard_end
"$py" "$here/generate_table.py" "$out" "$idle"
