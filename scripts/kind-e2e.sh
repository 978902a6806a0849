#!/usr/bin/env bash
# End-to-end run of Warren's operator on a kind cluster (machines with Docker only):
#   1. create the cluster (kind-config.yaml), build the three images (Dockerfile targets warren,
#      orders, inventory) and load them into kind;
#   2. install the chart, RabbitMQ and PostgreSQL (manifests/infra) and the ADR topology;
#   3. wait for Ready on the Broker and on every topology resource, check RabbitMQ has the queues;
#   4. deploy both workers (manifests/workers), wait for them, place an order through the orders
#      Service and wait until it reaches `processing`;
#   5. delete a queue behind Warren's back and wait for the operator to restore it (drift);
#   6. delete the Workers (their pods go), then the topology; check every finalizer completed and
#      RabbitMQ is empty again.
#
# Needs: docker, kind, kubectl, helm, curl, python3. Environment:
#   CLUSTER=warren-e2e     kind cluster name (reused when it exists)
#   KEEP_CLUSTER=1         leave the cluster running afterwards (default: delete it on success)
#   KIND_NODE_IMAGE=...    node image (default: the one in kind-config.yaml)
#   SKIP_BUILD=1           use already loaded images
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-warren-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/warren/Chart.yaml)
IMAGE=warren:$VERSION
# Named as manifests/workers names them.
ORDERS_IMAGE=warren-orders:$VERSION
INVENTORY_IMAGE=warren-inventory:$VERSION
OPERATOR_NS=warren-system
DEMO_NS=warren-demo
TOPOLOGY_KINDS=exchanges.warren.dev,queues.warren.dev,bindings.warren.dev,policies.warren.dev
WAIT=180s

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (this script needs Docker and kind)"
done

kube() { kubectl --context "kind-$CLUSTER" "$@"; }
rabbitmqctl() { kube -n "$DEMO_NS" exec rabbitmq-0 -c rabbitmq -- rabbitmqctl -q "$@"; }

succeeded=0
diagnose() {
    if [ "$succeeded" = 1 ]; then
        if [ "$KEEP_CLUSTER" != 1 ]; then
            log "deleting cluster $CLUSTER"
            kind delete cluster --name "$CLUSTER" || true
        fi
        return
    fi
    printf '\nkind-e2e FAILED; diagnostics follow (cluster %s kept)\n' "$CLUSTER" >&2
    kube -n "$DEMO_NS" get warren -o wide >&2 || true
    kube -n "$DEMO_NS" get events --sort-by=.lastTimestamp >&2 || true
    kube -n "$OPERATOR_NS" logs -l app.kubernetes.io/name=warren --tail=200 --all-containers >&2 || true
}
trap diagnose EXIT

# --- cluster and image -------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "reusing kind cluster $CLUSTER"
else
    log "creating kind cluster $CLUSTER"
    create=(kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s)
    if [ -n "${KIND_NODE_IMAGE:-}" ]; then
        create+=(--image "$KIND_NODE_IMAGE")
    fi
    "${create[@]}"
fi

if [ "$SKIP_BUILD" != 1 ]; then
    log "building $IMAGE, $ORDERS_IMAGE and $INVENTORY_IMAGE"
    docker build --target warren -t "$IMAGE" .
    docker build --target orders -t "$ORDERS_IMAGE" .
    docker build --target inventory -t "$INVENTORY_IMAGE" .
fi
log "loading the images into kind"
kind load docker-image "$IMAGE" "$ORDERS_IMAGE" "$INVENTORY_IMAGE" --name "$CLUSTER"

# --- operator, infrastructure, topology --------------------------------------------------------
log "installing the chart (CRDs, RBAC, operator)"
helm upgrade --install warren charts/warren \
    --kube-context "kind-$CLUSTER" \
    --namespace "$OPERATOR_NS" --create-namespace \
    --set image.pullPolicy=Never \
    --set resyncSeconds=10 \
    --wait --timeout 5m

log "RabbitMQ and PostgreSQL (manifests/infra)"
kube apply -k manifests/infra
kube -n "$DEMO_NS" rollout status statefulset/rabbitmq --timeout=300s
kube -n "$DEMO_NS" rollout status statefulset/postgres --timeout=300s

log "the ADR topology (manifests/topology, with the in-cluster Broker from manifests/infra)"
for file in manifests/topology/*.yaml; do
    # broker.yaml points at localhost for `warren apply`; manifests/infra/broker.yaml replaces it.
    [ "$(basename "$file")" = broker.yaml ] && continue
    kube -n "$DEMO_NS" apply -f "$file"
done

# --- convergence -------------------------------------------------------------------------------
log "waiting for the Broker"
kube -n "$DEMO_NS" wait --for=condition=Ready broker/local --timeout="$WAIT"

count() { kube -n "$DEMO_NS" get "$1" -o name | wc -l | tr -d ' '; }
wait_ready() {
    local kind=$1
    if [ "$(count "$kind")" -gt 0 ]; then
        kube -n "$DEMO_NS" wait --for=condition=Ready "$kind" --all --timeout="$WAIT"
    fi
}
log "waiting for Ready on every topology resource"
for kind in exchanges.warren.dev queues.warren.dev bindings.warren.dev policies.warren.dev; do
    wait_ready "$kind"
done
kube -n "$DEMO_NS" get queues
kube -n "$DEMO_NS" get warren

log "RabbitMQ has every declared queue"
declared=$(kube -n "$DEMO_NS" get queues.warren.dev -o jsonpath='{range .items[*]}{.spec.name}{"\n"}{end}' | sort)
present=$(rabbitmqctl list_queues name --no-table-headers | sort)
missing=$(comm -23 <(printf '%s\n' "$declared") <(printf '%s\n' "$present"))
[ -z "$missing" ] || die "queues missing in RabbitMQ: $missing"

log "the leader Lease is held"
holder=$(kube -n "$OPERATOR_NS" get lease warren-operator -o jsonpath='{.spec.holderIdentity}')
[ -n "$holder" ] || die "nobody holds the leader Lease"
echo "leader: $holder"

log "the leader serves metrics"
# Through the API server's pod proxy: the standby replica has reconciled nothing.
kube get --raw "/api/v1/namespaces/$OPERATOR_NS/pods/$holder:8080/proxy/metrics" \
    | grep -q '^warren_reconciliations_total{' || die "/metrics lacks warren_reconciliations_total"

# --- workers -----------------------------------------------------------------------------------
log "the workers (manifests/workers)"
kube apply -k manifests/workers
kube -n "$DEMO_NS" wait --for=condition=Ready workers.warren.dev --all --timeout="$WAIT"
kube -n "$DEMO_NS" get workers.warren.dev

log "placing an order through the orders Service"
kube -n "$DEMO_NS" port-forward svc/inventory 18081:8080 >/dev/null 2>&1 &
inventory_pf=$!
kube -n "$DEMO_NS" port-forward svc/orders 18080:8080 >/dev/null 2>&1 &
orders_pf=$!
trap 'kill $inventory_pf $orders_pf 2>/dev/null || true; diagnose' EXIT
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null http://127.0.0.1:18080/readyz && curl -fsS -o /dev/null http://127.0.0.1:18081/readyz; do
    [ "$SECONDS" -lt "$deadline" ] || die "the workers' Services did not answer"
    sleep 1
done
product=$(curl -fsS -H 'content-type: application/json' \
    -d '{"name": "kind widget", "initialStock": 10, "lowStockThreshold": 1}' \
    http://127.0.0.1:18081/products | json '["id"]')
order=$(curl -fsS -H 'content-type: application/json' \
    -d "{\"userId\": \"$(python3 -c 'import uuid; print(uuid.uuid4())')\", \"items\": [{\"productId\": \"$product\", \"quantity\": 2}]}" \
    http://127.0.0.1:18080/orders | json '["id"]')
wait_status() {
    local want=$1 deadline=$((SECONDS + 120)) status=""
    while [ "$status" != "$want" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "order $order stayed $status, never $want"
        sleep 1
        status=$(curl -fsS "http://127.0.0.1:18080/orders/$order" | json '["status"]')
    done
    echo "order $order: $status"
}
wait_status reserved
curl -fsS -X POST -H 'content-type: application/json' -d '{}' "http://127.0.0.1:18080/orders/$order/complete" >/dev/null
wait_status processing

# --- drift -------------------------------------------------------------------------------------
victim=$(printf '%s\n' "$declared" | head -n 1)
log "deleting queue $victim behind Warren's back; the operator must declare it again"
rabbitmqctl delete_queue "$victim" >/dev/null
deadline=$((SECONDS + 90))
until rabbitmqctl list_queues name --no-table-headers | grep -qx "$victim"; do
    [ "$SECONDS" -lt "$deadline" ] || die "queue $victim was not restored within 90s"
    sleep 3
done
echo "restored: $victim"

# --- deletion ----------------------------------------------------------------------------------
log "deleting the Workers: their Deployments and pods go with them"
kube -n "$DEMO_NS" delete workers.warren.dev --all --wait=true --timeout="$WAIT"
kube -n "$DEMO_NS" wait --for=delete pod -l app.kubernetes.io/component=worker --timeout="$WAIT" || true
[ -z "$(kube -n "$DEMO_NS" get pods -l app.kubernetes.io/component=worker -o name)" ] || die "worker pods remain"

log "deleting the topology: finalizers must complete and RabbitMQ must be emptied"
retained=$(kube -n "$DEMO_NS" get queues.warren.dev \
    -o jsonpath='{range .items[?(@.spec.deletionPolicy=="retain")]}{.spec.name}{"\n"}{end}' | sort)
kube -n "$DEMO_NS" delete "$TOPOLOGY_KINDS" --all --wait=true --timeout="$WAIT"
leftover=$(kube -n "$DEMO_NS" get "$TOPOLOGY_KINDS" -o name)
[ -z "$leftover" ] || die "resources still present (finalizers stuck?): $leftover"
# Queues with deletionPolicy: retain stay in RabbitMQ on purpose.
deletable=$(comm -23 <(printf '%s\n' "$declared") <(printf '%s\n' "$retained"))
remaining=$(comm -12 <(printf '%s\n' "$deletable") <(rabbitmqctl list_queues name --no-table-headers | sort))
[ -z "$remaining" ] || die "queues left in RabbitMQ after deletion: $remaining"

log "deleting the Broker last leaves nothing behind"
kube -n "$DEMO_NS" delete broker.warren.dev/local --wait=true --timeout=60s

succeeded=1
log "kind e2e passed"
