#!/usr/bin/env bash
# Side-by-side training-step benchmark: anneal vs PyTorch (+ PEFT), same configs, same
# machine, same run. Installs torch/transformers/peft into benches/compare/.venv.
#
#   benches/compare/run.sh [steps] [rounds]
#   PRECISIONS="no bf16" benches/compare/run.sh ...   also mixed precision bf16 (anneal's
#                                                     mixed_precision, PyTorch's CPU autocast)
#
# Rounds (default 2) interleave anneal and PyTorch (round 1: every case, then round
# 2...); the table shows medians over rounds. PYTHON: a Python with torch, transformers
# and peft (default: benches/compare/.venv, created when missing).
#
# Prints one JSON line per (implementation, config, method) and a table; the ratio
# columns only on an idle machine (benches/load_guard.sh: `uptime` before and after, the
# load at the start, other processes' CPU during the run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
. "$here/../load_guard.sh"
steps="${1:-10}"
rounds="${2:-2}"
precisions="${PRECISIONS:-no}"
py="${PYTHON:-$here/.venv/bin/python}"
if [ -z "${PYTHON:-}" ] && [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q torch transformers peft safetensors
fi
out="$(mktemp)"
has_anneal=0
if (cd "$root" && cargo build -q --release -p anneal-benches --bin train_step 2>/dev/null); then
  has_anneal=1
fi
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/host: //p')}"
bin="${CARGO_TARGET_DIR:-$root/target}/$CARGO_BUILD_TARGET/release/train_step"
guard_start
for round in $(seq "$rounds"); do
  for config in tiny small; do
    for method in full lora; do
      for mp in $precisions; do
        if [ "$has_anneal" = 1 ]; then
          "$bin" --config "$config" --method "$method" --steps "$steps" --mixed-precision "$mp" | tee -a "$out"
        fi
        "$py" "$here/torch_train_step.py" --config "$config" --method "$method" --steps "$steps" \
          --mixed-precision "$mp" | tee -a "$out"
      done
    done
  done
done
if [ "$has_anneal" = 0 ]; then
  echo "note: anneal's train_step bench binary is not built yet (it comes with the model families); PyTorch figures only." >&2
fi
guard_end
"$py" - "$out" "$idle" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
idle = sys.argv[2] == "1"
groups = {}
for r in rows:
    groups.setdefault((r["impl"], r["config"], r["method"], r.get("mixed_precision", "no")), []).append(r)
# Medians over rounds, key by key.
by = {k: {f: statistics.median(x[f] for x in v) for f in ("tokens_per_s", "step_s", "peak_rss_mib", "mfu", "loss")}
      for k, v in groups.items()}
print("\n| config | method | precision | impl | tokens/s | step s | peak RSS MiB | MFU | loss | anneal/PyTorch tokens/s | anneal/PyTorch RSS |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for (impl, config, method, mp), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
    t = by.get(("pytorch", config, method, mp))
    ratio = rss = ""
    if impl == "anneal" and t and not idle:
        ratio = rss = "n/a (busy)"
    elif impl == "anneal" and t:
        ratio = f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}"
        rss = f"{r['peak_rss_mib'] / t['peak_rss_mib']:.2f}"
    print(f"| {config} | {method} | {mp} | {impl} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | {r['peak_rss_mib']:.0f} | {r['mfu']:.3f} | {r['loss']:.4f} | {ratio} | {rss} |")
PY
