#!/usr/bin/env bash
# Installs the binary distributions from ./dist (scripts/dist.sh) into a clean venv and an
# empty Node project outside the source tree, and runs the quickstart twins from there.
# Usage: scripts/test-dist.sh [--build-dev]   (--build-dev runs `scripts/dist.sh --dev` first)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "${1:-}" = "--build-dev" ] && scripts/dist.sh --dev

wheel=$(ls dist/anneal-*.whl)
tgz=$(ls dist/anneal-[0-9]*.tgz)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The examples are copied out of the checkout so nothing can import from the source tree.
mkdir -p "$work/examples/python" "$work/examples/node"
cp -r examples/data "$work/examples/"
cp examples/python/quickstart.py "$work/examples/python/"
cp examples/node/quickstart.mjs "$work/examples/node/"

printf '\n==> pip install %s into a clean venv\n' "$(basename "$wheel")"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repo/$wheel"
cd "$work"
where=$("$work/venv/bin/python" -c 'import anneal, os; print(os.path.dirname(anneal.__file__))')
case "$where" in
    "$work/venv/"*) echo "anneal imported from $where" ;;
    *) echo "anneal was imported from $where, not from the venv" >&2; exit 1 ;;
esac
"$work/venv/bin/python" examples/python/quickstart.py "$work/home-py" --smoke

printf '\n==> npm install %s into an empty project\n' "$(basename "$tgz")"
# The Node quickstart resolves `anneal` from node_modules next to it.
(cd "$work/examples/node" && npm init -y >/dev/null && npm install --no-audit --no-fund "$repo/$tgz" >/dev/null)
where=$(cd "$work/examples/node" && node -p 'require.resolve("anneal")')
case "$where" in
    "$work/examples/node/node_modules/anneal/"*) echo "anneal resolved to $where" ;;
    *) echo "anneal resolved to $where, not to the installed package" >&2; exit 1 ;;
esac
node examples/node/quickstart.mjs "$work/home-node" --smoke
printf '\n==> installed packages ran both quickstarts\n'
