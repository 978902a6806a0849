#!/usr/bin/env bash
# Warren's local quick start: RabbitMQ and PostgreSQL up, the ADR-029 topology applied by
# `warren apply`, both workers (inventory and orders) started, then a guided tour that seeds
# products, places orders through the HTTP APIs and prints each order's transitions and the stock
# as they happen. Everything keeps running until Ctrl-C. Worker logs: target/quickstart/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
echo "quickstart: building warren, the workers and the tour (release; the first build takes a few minutes)"
cargo build --release -q -p warren-operator -p warren-inventory -p warren-orders -p warren-tests \
  --bin warren --bin inventory --bin orders --bin walkthrough
echo "quickstart: applying manifests/topology"
target/release/warren apply -f manifests/topology

logs=target/quickstart
mkdir -p "$logs"
export WARREN_LOG_FORMAT=text
pids=()
stop() {
  trap - EXIT INT TERM
  echo "quickstart: stopping the workers"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM
# Each worker owns its database (created on first start).
WARREN_HTTP_ADDR=127.0.0.1:8081 \
  WARREN_DATABASE_URL="${WARREN_INVENTORY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/warren_inventory}" \
  target/release/inventory >"$logs/inventory.log" 2>&1 &
pids+=($!)
WARREN_HTTP_ADDR=127.0.0.1:8082 WARREN_INVENTORY_URL=http://127.0.0.1:8081 \
  WARREN_DATABASE_URL="${WARREN_ORDERS_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/warren_orders}" \
  target/release/orders >"$logs/orders.log" 2>&1 &
pids+=($!)
echo "quickstart: inventory on :8081, orders on :8082 (logs in $logs/)"
target/release/walkthrough
