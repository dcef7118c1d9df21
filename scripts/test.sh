#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
# Installs what the tests need when it is missing. Used as-is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse one build directory outside the clone, so repeated runs build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# The Redis tests start real redis-server processes (a standalone server and a 3-node
# cluster built with redis-cli) on loopback ports: install Debian's package if missing.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "==> installing redis-server (Debian package)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi
# Debian's package may start a system-wide server; the tests use their own ports and
# never touch it.

# The Kafka tests start a real Kafka-compatible broker: tansu (crates.io), built once
# into a cache outside the clone and reused afterwards. Only its in-memory storage is
# used (`dynostore`), built at opt-level 1: about 12.5 minutes on 2 cores, against 16
# with the SQLite engine too at the release profile's opt-level 3.
TOOLS="$HOME/.cache/quiver/tools"
if [ -z "${QUIVER_KAFKA_BROKERS:-}" ] && [ ! -x "$TOOLS/bin/tansu" ]; then
  echo "==> installing tansu 0.6.0 (Kafka-compatible broker for the tests)"
  CARGO_TARGET_DIR="$HOME/.cache/quiver/tansu-build" CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install tansu --version 0.6.0 --locked --features dynostore --root "$TOOLS"
  rm -rf "$HOME/.cache/quiver/tansu-build"
fi

# The Python SDK (python/) builds into a venv outside the clone, with pinned packages
# from PyPI; the cargo build below compiles it for that interpreter.
VENV="$HOME/.cache/quiver/venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating the Python venv $VENV"
  python3 -m venv "$VENV"
fi
if ! cmp -s python/requirements-test.txt "$VENV/.requirements"; then
  echo "==> installing the Python test packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r python/requirements-test.txt
  cp python/requirements-test.txt "$VENV/.requirements"
fi
export PYO3_PYTHON="$VENV/bin/python"
export PYO3_BUILD_EXTENSION_MODULE=1

echo "==> cargo fmt --check"
cargo fmt --all -- --check

# One build serves lints and tests: the workspace's crates compile through clippy-driver
# (clippy's lints, then code generation as rustc would), dependencies compile once. This
# is what `cargo clippy --all-targets -- -D warnings` checks, without a second build.
CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
if [ ! -x "$CLIPPY_DRIVER" ]; then
  CLIPPY_DRIVER="$(rustup which clippy-driver)"
fi
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

echo "==> build (clippy -D warnings) and tests"
cargo build --workspace --all-targets --locked
# The Python tests run even when a Rust test failed; the script fails if either did.
status=0
cargo nextest run --workspace --locked --no-fail-fast || status=$?

# The build above linked the extension module (python/, for the venv's interpreter);
# it is installed into the venv as `maturin develop` would, editable: the module next
# to the package's sources, a .pth file naming them. (maturin itself would build the
# crate alone, with other features of shared dependencies: minutes more on a fresh
# machine.) pytest then runs the package's tests and executes the quickstart notebook.
echo "==> Python SDK: install into $VENV, pytest"
cp "$CARGO_TARGET_DIR/debug/lib_quiver.so" python/quiver/_quiver.abi3.so
"$VENV/bin/python" -c 'import pathlib, site, sys
pathlib.Path(site.getsitepackages()[0], "quiver-dev.pth").write_text(sys.argv[1] + "\n")' "$PWD/python"
"$VENV/bin/python" -m pytest python/tests -q -p no:cacheprovider || status=$?
exit "$status"
