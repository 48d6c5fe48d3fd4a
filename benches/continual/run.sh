#!/usr/bin/env bash
# Continual-learning figures of issue 12: anneal's tabular classifiers against scikit-learn,
# same data, same machine, same run.
#
#   benches/continual/run.sh [accuracy|latency|drift|all]      (default: all)
#
#   accuracy : test accuracy, macro F1 and log-loss of logistic regression and an MLP
#              (hidden 100) on scikit-learn's bundled iris, wine, breast_cancer and digits,
#              the same stratified 75/25 split and hyperparameters on both sides
#              (sklearn_accuracy.py exports the split; the continual_accuracy bin imports it)
#   latency  : single-row predict latency (median, p95 over N requests after WARMUP):
#              a FastAPI + uvicorn + scikit-learn predict_proba service over a keep-alive
#              HTTP connection, the same handler in process, and anneal's predictor from
#              Rust, Python and Node (in process; every prediction logged in the catalog)
#   drift    : a drift check of a classifier on a ROWS-row window of 20 columns (16 numeric,
#              4 categorical) against its ROWS-row reference (drift_time bin), and the
#              scipy peer (scipy_drift.py) on the same files
#
# Environment (defaults in brackets):
#   ROWS [100000] drift rows (reference and window each)    REPS [3] drift repetitions
#   N [2000] latency requests   WARMUP [200] untimed requests first
#   LAT_ROWS [5000] training rows of the latency model       MODELS ["logistic mlp"]
#   SEEDS [0,1,2,3,4] accuracy: the MLP's seeds (logistic regression is deterministic)
#   PROFILE [release]: release builds of the bins and of both bindings; PROFILE=dev uses
#     the dev profile and the bindings as installed (a quick check that the scripts run)
#   BINDINGS [build when PROFILE=release, else asis]: build = `maturin develop --release`
#     into ./.venv and `npx napi build --platform --release` in bindings-node first; asis = use them as
#     they are; skip = no Python/Node anneal clients
#   PYTHON: the peers' Python (numpy scipy scikit-learn fastapi uvicorn); default
#     benches/continual/.venv, created with those packages when missing (nothing is
#     installed anywhere else)
#   ANNEAL_PYTHON [./.venv/bin/python]: a Python with the anneal binding
#   ANNEAL_NODE [bindings-node]: the Node binding's package directory
#   OUT [a temporary directory]: where data, homes and the JSON lines go
#
# `uptime` is printed before and after. Timings are printed in any case, but the ratios
# (anneal / peer) only on an idle machine (benches/load_guard.sh: the load at the start,
# other processes' CPU during the run). Accuracy does not depend on the load.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
what="${1:-all}"
case "$what" in accuracy|latency|drift|all) ;; *) echo "usage: $0 [accuracy|latency|drift|all]" >&2; exit 2 ;; esac
rows="${ROWS:-100000}"
reps="${REPS:-3}"
n="${N:-2000}"
warmup="${WARMUP:-200}"
lat_rows="${LAT_ROWS:-5000}"
models="${MODELS:-logistic mlp}"
seeds="${SEEDS:-0,1,2,3,4}"
profile="${PROFILE:-release}"
if [ "$profile" = release ]; then bindings="${BINDINGS:-build}"; else bindings="${BINDINGS:-asis}"; fi
anneal_py="${ANNEAL_PYTHON:-$root/.venv/bin/python}"
export ANNEAL_NODE="${ANNEAL_NODE:-$root/bindings-node}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/host: //p')}"

. "$(dirname "$0")/../load_guard.sh"
guard_start

py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q numpy scipy scikit-learn fastapi "uvicorn[standard]"
  fi
  py="$here/.venv/bin/python"
fi

bins="--bin continual_accuracy --bin predict_latency --bin drift_time"
if [ "$profile" = release ]; then
  # shellcheck disable=SC2086
  (cd "$root" && cargo build -q --release -p anneal-benches $bins)
  bindir="$root/target/$CARGO_BUILD_TARGET/release"
  [ -x "$bindir/drift_time" ] || bindir="$root/target/release"
else
  # shellcheck disable=SC2086
  (cd "$root" && cargo build -q -p anneal-benches $bins)
  bindir="$root/target/$CARGO_BUILD_TARGET/debug"
  [ -x "$bindir/drift_time" ] || bindir="$root/target/debug"
fi

out="${OUT:-}"
if [ -z "$out" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

if [ "$what" = accuracy ] || [ "$what" = all ]; then
  "$py" "$here/sklearn_accuracy.py" --out "$out/accuracy" --seeds "$seeds" | sed 's/^{/{"bench": "accuracy", /' | tee -a "$results"
  "$bindir/continual_accuracy" --data "$out/accuracy" --seeds "$seeds" | sed 's/^{/{"bench": "accuracy", /' | tee -a "$results"
fi

if [ "$what" = latency ] || [ "$what" = all ]; then
  if [ "$bindings" = build ]; then
    [ -x "$root/.venv/bin/python" ] || python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install -q "maturin>=1.16,<2"
    (cd "$root/bindings-python" && VIRTUAL_ENV="$root/.venv" "$root/.venv/bin/maturin" develop --release)
    (cd "$root/bindings-node" && { [ -d node_modules/@napi-rs/cli ] || npm ci --no-audit --no-fund; } \
      && npx napi build --platform --release)
  fi
  "$py" "$here/latency_data.py" --out "$out/latency" --rows "$lat_rows" --queries 1000
  for model in $models; do
    "$bindir/predict_latency" --data "$out/latency" --home "$out/latency/home" --model "$model" --prepare
  done
  for model in $models; do
    "$py" "$here/fastapi_peer.py" --data "$out/latency" --model "$model" --requests "$n" --warmup "$warmup" \
      | sed 's/^{/{"bench": "latency", /' | tee -a "$results"
    "$bindir/predict_latency" --data "$out/latency" --home "$out/latency/home" --model "$model" \
      --requests "$n" --warmup "$warmup" | sed 's/^{/{"bench": "latency", /' | tee -a "$results"
    if [ "$bindings" != skip ]; then
      "$anneal_py" "$here/anneal_predict.py" --home "$out/latency/home" --model "bench-$model" --data "$out/latency" \
        --requests "$n" --warmup "$warmup" | sed 's/^{/{"bench": "latency", /' | tee -a "$results" \
        || echo "warning: the Python binding's predictor did not run (ANNEAL_PYTHON=$anneal_py)" >&2
      node "$here/anneal_predict.mjs" --home "$out/latency/home" --model "bench-$model" --data "$out/latency" \
        --requests "$n" --warmup "$warmup" | sed 's/^{/{"bench": "latency", /' | tee -a "$results" \
        || echo "warning: the Node binding's predictor did not run (ANNEAL_NODE=$ANNEAL_NODE)" >&2
    fi
  done
fi

if [ "$what" = drift ] || [ "$what" = all ]; then
  "$bindir/drift_time" --data "$out/drift" --rows "$rows" --reps "$reps" | sed 's/^{/{"bench": "drift", /' | tee -a "$results"
  "$py" "$here/scipy_drift.py" --data "$out/drift" --reps "$reps" | sed 's/^{/{"bench": "drift", /' | tee -a "$results"
fi
guard_end

"$py" "$here/report.py" "$results" "$idle"
