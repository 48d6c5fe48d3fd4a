#!/usr/bin/env bash
# Side-by-side diffusion UNet benchmark: anneal vs diffusers (+ PEFT) on PyTorch, CPU, f32,
# same UNet configs (configs.json), same batch and resolution, same machine, same run.
#
#   benches/diffusion/run.sh [steps] [rounds]
#
# Measures per (config, mode): train-full (UNet forward + backward + AdamW), train-lora
# (LoRA r 8 on the attention projections), denoise (one UNet forward, CFG batch 2), and
# each side's peak RSS. The rounds interleave anneal and PyTorch (round 1: every case,
# then round 2...) and the table shows medians over rounds. Ratios are printed only on
# an idle machine (benches/load_guard.sh: load at the start, other processes' CPU during).
#
# Python: $PYTHON, else benches/diffusion/.venv (created with torch diffusers peft when
# missing; nothing is installed anywhere else). anneal: the release build of
# anneal-benches' diffusion_step (PROFILE=dev uses the dev profile instead, for a quick
# check that the scripts run). WARMUP (default 2) untimed steps precede the timed ones.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
steps="${1:-10}"
rounds="${2:-2}"
warmup="${WARMUP:-2}"
profile="${PROFILE:-release}"

. "$(dirname "$0")/../load_guard.sh"
guard_start

py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q torch diffusers transformers peft safetensors
  fi
  py="$here/.venv/bin/python"
fi

if [ "$profile" = release ]; then
  (cd "$root" && cargo build -q --release -p anneal-benches --bin diffusion_step)
  bin="$root/target/release/diffusion_step"
  [ -x "$bin" ] || bin="$(ls "$root"/target/*/release/diffusion_step 2>/dev/null | head -1)"
else
  (cd "$root" && cargo build -q -p anneal-benches --bin diffusion_step)
  bin="$root/target/debug/diffusion_step"
  [ -x "$bin" ] || bin="$(ls "$root"/target/*/debug/diffusion_step 2>/dev/null | head -1)"
fi

out="$(mktemp)"
for round in $(seq 1 "$rounds"); do
  for config in tiny small; do
    for mode in train-full train-lora denoise; do
      "$bin" --config "$config" --mode "$mode" --steps "$steps" --warmup "$warmup" | sed "s/^{/{\"round\": $round, /" | tee -a "$out"
      "$py" "$here/torch_diffusion_step.py" --config "$config" --mode "$mode" --steps "$steps" --warmup "$warmup" \
        | sed "s/^{/{\"round\": $round, /" | tee -a "$out"
    done
  done
done
guard_end

"$py" - "$out" "$idle" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
idle = sys.argv[2] == "1"
groups = {}
for r in rows:
    groups.setdefault((r["config"], r["mode"], r["impl"]), []).append(r)
med = {k: (statistics.median(x["step_s"] for x in v), statistics.median(x["peak_rss_mib"] for x in v), len(v))
       for k, v in groups.items()}
print("\n| config | mode | impl | step s (median) | peak RSS MiB | rounds | anneal/PyTorch time | anneal/PyTorch RSS |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for (config, mode, impl), (s, rss, n) in sorted(med.items()):
    ratio = mem = ""
    t = med.get((config, mode, "pytorch"))
    if impl == "anneal" and t:
        if idle:
            ratio = f"{s / t[0]:.2f}"
        else:
            ratio = "n/a (busy)"
        mem = f"{rss / t[1]:.2f}"
    print(f"| {config} | {mode} | {impl} | {s:.4f} | {rss:.0f} | {n} | {ratio} | {mem} |")
PY
rm -f "$out"
