#!/usr/bin/env bash
# Builds the binary distributions into ./dist:
#   anneal-<v>-cp310-abi3-<platform>.whl   one wheel for every CPython >= 3.10 (abi3), stripped
#   anneal-<v>.tgz                          the npm package with this platform's prebuilt .node inside
#   anneal-<triple>-<v>.tgz                 the same .node as napi-rs's per-platform package
#                                           (npm/<triple>/), for publishing to a registry
# Install them anywhere without Rust:  pip install dist/anneal-*.whl
#                                      npm install ./dist/anneal-0.1.0.tgz
#
# Usage: scripts/dist.sh            release build (what users install; ~15 min from a cold
#                                   target/ on 2 cores, a few minutes when candle is built)
#        scripts/dist.sh --dev      dev-profile build (reuses the test build; the CI packaging test)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_BUILD_TARGET=$(rustc -vV | sed -n 's/host: //p')
export CARGO_BUILD_TARGET
profile=release
[ "${1:-}" = "--dev" ] && profile=dev

out="$PWD/dist"
rm -rf "$out"
mkdir -p "$out"
step() { printf '\n==> %s\n' "$*"; }

step "Python wheel ($profile, stripped, abi3)"
if [ ! -x .venv/bin/maturin ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q "maturin>=1.16,<2"
fi
(cd bindings-python && ../.venv/bin/maturin build --profile "$profile" --strip --out "$out" \
    --target "$CARGO_BUILD_TARGET")

step "npm package ($profile)"
cd bindings-node
[ -x node_modules/.bin/napi ] || npm ci --no-audit --no-fund
# No `napi build --strip`: it changes RUSTFLAGS and rebuilds every dependency; the
# .node is stripped afterwards instead.
if [ "$profile" = release ]; then
    npx napi build --platform --release
else
    npx napi build --platform
fi
node_file=$(ls anneal.*.node)
platform=${node_file#anneal.}
platform=${platform%.node}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# napi-rs's per-platform package (npm/<platform>/ with package.json + the .node), the
# one a registry release lists as an optionalDependency of the main package.
rm -rf npm
npx napi create-npm-dirs >/dev/null
mkdir -p "$stage/npm"
mv "npm/$platform" "$stage/npm/"
rm -rf npm
strip --strip-unneeded -o "$stage/npm/$platform/$node_file" "$node_file"
(cd "$stage/npm/$platform" && npm pack --silent --pack-destination "$out" >/dev/null)
# The main package, carrying this platform's .node too, so that it installs with no
# registry (index.js loads the local file first).
mkdir -p "$stage/main"
cp package.json index.js index.d.ts README.md "$stage/main/"
[ -d bin ] && cp -r bin "$stage/main/"
cp "$stage/npm/$platform/$node_file" "$stage/main/"
(cd "$stage/main" && npm pack --silent --pack-destination "$out" >/dev/null)
cd ..

step "artifacts"
ls -la "$out"
