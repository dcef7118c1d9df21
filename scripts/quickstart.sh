#!/usr/bin/env bash
# Builds quiver and runs the whole demo on the embedded defaults:
# init -> apply -> ingest -> historical -> materialize -> online.
# Usage: scripts/quickstart.sh [DEMO_DIR]   (default: ./quickstart-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver/target}"
DEMO="${1:-$PWD/quickstart-demo}"

cargo build --release --locked -p quiver-cli --bin quiver
Q="$CARGO_TARGET_DIR/release/quiver"
step() { printf '\n\033[1m$ quiver %s\033[0m\n' "$*"; "$Q" "$@"; }

rm -rf "$DEMO"
step init "$DEMO"
cd "$DEMO"
step plan
step apply
step list feature-views
step ingest
step historical --entities data/entities.parquet --service ride_ranking_v3 \
  --output data/training_set.parquet
step materialize-incremental
step online --service ride_ranking_v1 \
  --entity driver_id=1001,customer_id=5001 --entity driver_id=1002,customer_id=5002
step online --features driver_hourly_stats:conv_rate,customer_profile:current_balance \
  --entity driver_id=1003,customer_id=999999 --json
step online --service ride_ranking_v2 \
  --entity driver_id=1001,customer_id=5001 --request distance_km=12.5
step online --service ride_ranking_v3 \
  --entity driver_id=1001,customer_id=5001 --entity driver_id=1002,customer_id=5002
