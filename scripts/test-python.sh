#!/usr/bin/env bash
# Builds the Python binding into .venv (maturin develop, dev profile) and runs its tests.
# Run from the repository root. Works on a fresh machine: creates .venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# One compile of candle shared by `cargo test`, maturin and napi (see CANDLE-NOTES.md).
CARGO_BUILD_TARGET=$(rustc -vV | sed -n 's/host: //p')
export CARGO_BUILD_TARGET

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Pillow: the image tests check the PIL images that generation and thumbnails return
# when it is installed (their PNG-bytes branch is tested by hiding it from the import).
.venv/bin/pip install -q "maturin>=1.16,<2" "pytest>=8" "mypy>=1.10" "tqdm>=4.60" "openai>=1.40" "pillow>=10"
# The readers the curve tests check our files with (about 45 s and 260 MB on a fresh
# venv): tensorboard's EventAccumulator and mlflow's MlflowClient (file store).
.venv/bin/pip install -q "tensorboard>=2.14" "mlflow-skinny>=2.10"
# The `anneal` binary: test_serve_openai.py runs `anneal serve` under the openai client.
cargo build -q -p anneal-cli --bin anneal
export ANNEAL_BIN="$PWD/target/$CARGO_BUILD_TARGET/debug/anneal"
(cd bindings-python && VIRTUAL_ENV="$PWD/../.venv" ../.venv/bin/maturin develop)
# The checked-in stub must match the module.
.venv/bin/python -m mypy.stubtest anneal --allowlist bindings-python/stubtest-allowlist.txt
.venv/bin/pytest -q bindings-python/tests "$@"
