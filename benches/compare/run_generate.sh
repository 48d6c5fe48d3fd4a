#!/usr/bin/env bash
# Side-by-side decode benchmark: anneal vs transformers' generate vs llama.cpp (f32 and
# q8_0), batch 1, a 16-token prompt, 128 new tokens, greedy, 2 threads, same random
# weights, same machine, same run; plus this machine's read bandwidth and each result's
# share of the decode roofline (weight bytes per token / bandwidth).
#
#   benches/compare/run_generate.sh [runs]
#
# Creates benches/compare/.venv (torch, transformers) and .venv-llama (llama-cpp-python,
# which compiles llama.cpp: ~11 min on 2 cores) if missing, the two bench models under
# benches/compare/models/ and their GGUF conversions (llama-cpp-python's own converter).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${1:-3}"
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
bin="$root/target/$CARGO_BUILD_TARGET/release"
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
  for dtype in f32 q8_0; do
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
  if [ "$has_anneal" = 1 ]; then
    for dtype in f32 q8_0; do
      "$bin/generate" --model "$model" --config "$config" --dtype "$dtype" --runs "$runs" | tee -a "$out"
    done
  fi
  "$py" "$here/torch_generate.py" --model "$model" --config "$config" --runs "$runs" 2>/dev/null | tee -a "$out"
  for dtype in f32 q8_0; do
    if [ "$peer" = python ]; then
      "$here/.venv-llama/bin/python" "$here/llama_generate.py" --model "$model" --config "$config" --dtype "$dtype" \
        --runs "$runs" | tee -a "$out"
    else
      node "$here/llama_generate.mjs" --gguf "$model/model-$dtype.gguf" --config "$config" --dtype "$dtype" \
        --runs "$runs" | tee -a "$out"
    fi
  done
done
guard_end
"$py" - "$out" "$idle" <<'PY'
import json, sys
idle = sys.argv[2] == "1"
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
bw = max(r["read_gb_per_s"] for r in rows if r["impl"] == "membw" and r["threads"] == 2) * 1e9
# Weight bytes read per decoded token: every matmul weight incl. the LM head (GPT-2's
# tied head is the wte matrix); embedding / position lookups read one row, ignored.
shapes = {
    "tiny": [(256, 768), (256, 256), (256, 1024), (1024, 256)] * 4 + [(8192, 256)],
    "small": [(512, 512)] * 32 + [(512, 1376), (512, 1376), (1376, 512)] * 8 + [(32000, 512)],
}
per_weight = {"f32": 4.0, "q8_0": 34.0 / 32.0}
def bytes_per_token(config, dtype):
    return sum(a * b for a, b in shapes[config]) * per_weight[dtype]
def roof(config, dtype):
    return bw / bytes_per_token(config, dtype)
print(f"\nread bandwidth (membw, 2 threads): {bw / 1e9:.1f} GB/s")
for c in shapes:
    print(f"decode roofline {c}: " + ", ".join(
        f"{d} {roof(c, d):.0f} tok/s ({bytes_per_token(c, d) / 1e6:.1f} MB/token)" for d in per_weight))
print("(a model whose weights fit in the 32 MiB L3 can beat this DRAM roofline)")
by = {(r["impl"], r["config"], r["dtype"]): r for r in rows if r["impl"] != "membw"}
print("\n| config | impl | dtype | TTFT ms | decode tok/s | peak RSS MiB | share of decode roofline | anneal / peer |")
print("|---|---|---|---:|---:|---:|---:|---:|")
order = {"anneal": 0, "llama.cpp": 1, "transformers": 2}
for (impl, config, dtype), r in sorted(by.items(), key=lambda kv: (kv[0][1] != "tiny", kv[0][2], order[kv[0][0]])):
    share = r["decode_tokens_per_s"] / roof(config, dtype)
    mine = by.get(("anneal", config, dtype))
    ratio = f"{mine['decode_tokens_per_s'] / r['decode_tokens_per_s']:.2f}" if mine and impl != "anneal" else ""
    if ratio and not idle:
        ratio = "n/a (busy)"
    print(f"| {config} | {impl} | {dtype} | {r['ttft_ms']:.1f} | {r['decode_tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {share:.0%} | {ratio} |")
PY
