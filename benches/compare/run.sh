#!/usr/bin/env bash
# Side-by-side training-step benchmark: anneal vs PyTorch (+ PEFT), same configs, same
# machine, same run. Installs torch/transformers/peft into benches/compare/.venv.
#
#   benches/compare/run.sh [steps]
#
# Prints one JSON line per (implementation, config, method) and a ratio table.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
steps="${1:-10}"
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q torch transformers peft safetensors
fi
out="$(mktemp)"
has_anneal=0
if (cd "$root" && cargo run -q --release -p anneal-benches --bin train_step -- --help >/dev/null 2>&1); then
  has_anneal=1
fi
for config in tiny small; do
  for method in full lora; do
    if [ "$has_anneal" = 1 ]; then
      (cd "$root" && cargo run -q --release -p anneal-benches --bin train_step -- --config "$config" --method "$method" --steps "$steps") | tee -a "$out"
    fi
    "$here/.venv/bin/python" "$here/torch_train_step.py" --config "$config" --method "$method" --steps "$steps" | tee -a "$out"
  done
done
if [ "$has_anneal" = 0 ]; then
  echo "note: anneal's train_step bench binary is not built yet (it comes with the model families); PyTorch figures only." >&2
fi
"$here/.venv/bin/python" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["config"], r["method"]): r for r in rows}
print("\n| config | method | impl | tokens/s | step s | peak RSS MiB | MFU | anneal/PyTorch tokens/s | anneal/PyTorch RSS |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for (impl, config, method), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    t = by.get(("pytorch", config, method))
    ratio = rss = ""
    if impl == "anneal" and t:
        ratio = f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}"
        rss = f"{r['peak_rss_mib'] / t['peak_rss_mib']:.2f}"
    print(f"| {config} | {method} | {impl} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | {r['peak_rss_mib']:.0f} | {r['mfu']:.3f} | {ratio} | {rss} |")
PY
