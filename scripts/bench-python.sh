#!/usr/bin/env bash
# quiver's Python API next to Feast 0.67 (DuckDB offline, SQLite online) on the same
# data: builds the package in release mode into a venv holding Feast, then runs
# crates/quiver-bench/python/feast_side_by_side.py with the arguments given.
# Usage: scripts/bench-python.sh [--entities 100000] [--big 5000000] [--reads 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver/target}"
VENV="$HOME/.cache/quiver/feast-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import feast, maturin" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "feast[duckdb]==0.67.0" maturin==1.16.0
fi
# A wheel installed as such (not `maturin develop`, whose editable install would load
# whatever extension module the test suite last built in python/quiver).
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
PYO3_PYTHON="$VENV/bin/python" PYO3_BUILD_EXTENSION_MODULE=1 \
  "$VENV/bin/maturin" build --release --locked -m python/Cargo.toml -o "$WHEELS" -q
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEELS"/*.whl
"$VENV/bin/python" crates/quiver-bench/python/feast_side_by_side.py "$@"
