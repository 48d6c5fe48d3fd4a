#!/usr/bin/env bash
# The dashboard in a real browser: builds the `anneal` binary, makes sure Debian's
# chromium, the Python binding (.venv) and playwright-core (npm ci) are there, then runs
# cli/tests/browser/dashboard.test.mjs: `anneal serve` on a temporary home, a training
# job started from Python, the page watched in headless Chromium (live list, growing
# curve, Cancel, Resume, models, datasets, playground, token prompt).
#
#   scripts/test-browser.sh                       run the checks
#   DASHBOARD_SCREENSHOT=docs/dashboard.png scripts/test-browser.sh
#                                                 also save the README screenshot
#
# Chromium is installed with apt-get when missing (non-interactively; root or sudo).
# Outside CI, a machine without chromium and without apt skips with a message; in CI
# (CI set) that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# One compile of candle shared by cargo test, maturin and napi (see CANDLE-NOTES.md).
CARGO_BUILD_TARGET=$(rustc -vV | sed -n 's/host: //p')
export CARGO_BUILD_TARGET

skip_or_fail() {
    if [ -n "${CI:-}" ]; then
        echo "test-browser: $1 (failing: CI is set)" >&2
        exit 1
    fi
    echo "test-browser: SKIPPED: $1" >&2
    exit 0
}

# --- the browser
CHROMIUM=${CHROMIUM:-}
if [ -z "$CHROMIUM" ]; then
    CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
fi
if [ -z "$CHROMIUM" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                SUDO="sudo -n"
            else
                skip_or_fail "chromium is not installed and apt-get needs root (apt-get install chromium)"
            fi
        fi
        echo "test-browser: installing chromium with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -q >/dev/null
        $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
        CHROMIUM=$(command -v chromium)
    else
        skip_or_fail "no chromium and no apt-get to install it (set CHROMIUM=/path/to/chromium)"
    fi
fi
command -v node >/dev/null 2>&1 || skip_or_fail "node is not installed"

# --- the binary
cargo build -q -p anneal-cli --bin anneal
ANNEAL_BIN="$ROOT/target/$CARGO_BUILD_TARGET/debug/anneal"

# --- the Python binding (scripts/test-python.sh builds it; built here when missing)
PYTHON="$ROOT/.venv/bin/python"
if ! { [ -x "$PYTHON" ] && "$PYTHON" -c "import anneal" 2>/dev/null; }; then
    echo "test-browser: building the Python binding into .venv" >&2
    [ -x "$PYTHON" ] || python3 -m venv .venv
    .venv/bin/pip install -q "maturin>=1.16,<2"
    (cd bindings-python && VIRTUAL_ENV="$ROOT/.venv" ../.venv/bin/maturin develop -q)
fi

# --- playwright-core (the lock is committed; reinstalled only when it changed)
BROWSER_DIR=cli/tests/browser
if ! cmp -s "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.installed-lock" 2>/dev/null; then
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.installed-lock)
fi

SHOT=${DASHBOARD_SCREENSHOT:-}
case "$SHOT" in
    "" | /*) ;;
    *) SHOT="$ROOT/$SHOT" ;;
esac

node --check cli/src/serve/dashboard/app.js
ANNEAL_BIN="$ANNEAL_BIN" ANNEAL_PYTHON="$PYTHON" CHROMIUM="$CHROMIUM" DASHBOARD_SCREENSHOT="$SHOT" \
    node "$BROWSER_DIR/dashboard.test.mjs"
