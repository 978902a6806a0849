#!/usr/bin/env bash
# End-to-end run of Warren on a real one-node Kubernetes cluster on this machine: no Docker, no
# image registry, no kind (scripts/kind-e2e.sh is the same run for machines with Docker).
#   1. starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler (../shared/envtest,
#      through scripts/envtest.sh), containerd with runc and a bridge CNI network, and a kubelet;
#   2. builds the release binaries and makes OCI images of them (scripts/node-e2e/oci-image.py),
#      named as the chart and manifests/workers name them, plus a pause image, and imports them;
#   3. `helm install`s charts/warren and waits for the operator's pods;
#   4. applies manifests/topology and manifests/workers, pointed at this machine's RabbitMQ (its
#      own vhost and user) and PostgreSQL (its own databases), and waits for every Warren resource
#      and both workers' pods to be Ready;
#   5. places an order through the orders worker and waits until it reaches `processing`;
#   6. deletes the Workers and waits for their pods to go, then the topology, then uninstalls;
#   7. stops everything it started, by PID, and unmounts and removes what it made.
#
# Needs root (containerd, the kubelet and the bridge), Debian's containerd, runc,
# containernetworking-plugins and socat (installed when missing), and kube-scheduler and kubelet
# beside the envtest assets; without those assets it says SKIPPED and exits 0.
#
# The node's network, fixed so that manifests can name it (one run at a time, under a lock):
#   - bridge warren-e2e0 with 10.213.0.1/24 (the node's IP and the pods' gateway), pods from
#     10.213.0.10 on;
#   - 10.214.0.1/32 on the same bridge, the `kubernetes` Service's ClusterIP: the API server
#     listens there on 443, so pods' in-cluster config reaches it without kube-proxy;
#   - RabbitMQ's AMQP port and PostgreSQL listen on 127.0.0.1 only here, so socat forwards
#     10.213.0.1:5672 and :5432 to them (RabbitMQ's management API already listens on every
#     address);
#   - no kube-proxy and no cluster DNS: the orders worker is given the inventory pod's address.
#
# Environment: NODE_E2E_TIMEOUT (seconds, default 1200) bounds the whole run; KEEP_LOGS=1 keeps
# the run's folder (logs, configs) even on success.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

BRIDGE=warren-e2e0
NODE_IP=10.213.0.1
POD_SUBNET=10.213.0.0/24
SERVICE_RANGE=10.214.0.0/24
API_IP=10.214.0.1
NODE=warren-e2e-node
VHOST=warren-node-e2e
RMQ_USER=warren-node-e2e
ORDERS_DB=warren_node_e2e_orders
INVENTORY_DB=warren_node_e2e_inventory
OPERATOR_NS=warren-system
DEMO_NS=warren-demo
TOPOLOGY_KINDS=exchanges.warren.dev,queues.warren.dev,bindings.warren.dev,policies.warren.dev
WAIT=300s
TIMEOUT=${NODE_E2E_TIMEOUT:-1200}
KEEP_LOGS=${KEEP_LOGS:-0}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/warren/Chart.yaml)

log() { printf '\n==> node-e2e: %s\n' "$*"; }
die() { printf 'node-e2e: FAILED: %s\n' "$*" >&2; exit 1; }

# --- what the run needs ------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (containerd, kubelet, a bridge interface)"
ASSETS=$(scripts/envtest.sh)
for binary in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    if [ -z "$ASSETS" ] || [ ! -x "$ASSETS/$binary" ]; then
        echo "node-e2e: SKIPPED: no $binary in the envtest assets (${ASSETS:-none}); see ../shared/envtest" >&2
        exit 0
    fi
done
missing=()
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v socat >/dev/null || missing+=(socat)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v psql >/dev/null || missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
scripts/services.sh >/dev/null
VENV=$(scripts/chart-venv.sh)
KUBECTL=$VENV/bin/kubectl
HELM=$VENV/bin/helm

# One run at a time: the bridge, the addresses and the names are the machine's.
exec 9>/tmp/warren-node-e2e.lock
flock -n 9 || die "another node-e2e run holds /tmp/warren-node-e2e.lock"

# --- stopping what a run started ---------------------------------------------------------------
# A run's folder holds `pids` (what it started, "PID NAME" per line) and `owner` (the script's PID).
# cleanup_run stops the processes, ends the containers containerd left running, unmounts what
# remains under the folder and removes the network the run made. It is called for this run on
# exit, and for an earlier run whose script died without cleaning up.
unmount_under() {
    local dir=$1
    # Deepest first; lazily, so a mount still busy for a moment does not stop the cleanup.
    awk -v dir="$dir" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r mountpoint; do
            umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" 2>/dev/null || true
        done
}

cleanup_run() {
    local dir=$1 sock=$1/containerd/containerd.sock
    # Containers first, while containerd still answers: kill every task of the k8s.io namespace.
    if [ -S "$sock" ]; then
        for task in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr -a "$sock" -n k8s.io tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1 || true
        done
    fi
    if [ -f "$dir/pids" ]; then
        # One at a time, in reverse start order: the kubelet before containerd, the API server
        # before etcd (an API server whose etcd is already gone takes long to stop).
        tac "$dir/pids" | while read -r pid name; do
            kill -TERM "$pid" 2>/dev/null || continue
            deadline=$((SECONDS + 15))
            while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
            if kill -KILL "$pid" 2>/dev/null; then
                echo "node-e2e: $name ($pid) did not stop on SIGTERM within 15 s; killed" >&2
            fi
        done
    fi
    # The shims outlive containerd, and so do their containers (the pause processes and the
    # workers) if the kill above could not reach them: end both by PID.
    for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
        for child in $(pgrep -P "$shim" || true); do kill -KILL "$child" 2>/dev/null || true; done
        kill -KILL "$shim" 2>/dev/null || true
    done
    unmount_under "$dir"
    ip link del "$BRIDGE" 2>/dev/null || true
    # runc's cgroups (cgroupfs driver, under k8s.io), once their processes are gone.
    find /sys/fs/cgroup -depth -mindepth 2 -type d -path '*/k8s.io*' -exec rmdir {} \; 2>/dev/null || true
}

# Earlier runs whose script is gone (killed before its trap ran).
for stale in /tmp/warren-node-e2e.*/; do
    [ -d "$stale" ] || continue
    stale=${stale%/}
    owner=$(cat "$stale/owner" 2>/dev/null || echo 0)
    if [ "$owner" != 0 ] && kill -0 "$owner" 2>/dev/null; then continue; fi
    echo "node-e2e: cleaning up after the ended run in $stale" >&2
    cleanup_run "$stale"
    rm -rf "$stale"
done
ip link del "$BRIDGE" 2>/dev/null || true

RUN=$(mktemp -d /tmp/warren-node-e2e.XXXXXX)
echo $$ >"$RUN/owner"
: >"$RUN/pids"
SOCK=$RUN/containerd/containerd.sock
PKI=$RUN/pki
KUBECONFIG=$RUN/admin.kubeconfig
export KUBECONFIG
kube() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
ctr_() { ctr -a "$SOCK" -n k8s.io "$@"; }
mgmt() { curl -fsS -u guest:guest -H 'content-type: application/json' "$@"; }

succeeded=0
finish() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$succeeded" != 1 ]; then
        printf '\nnode-e2e FAILED; diagnostics follow (logs in %s)\n' "$RUN" >&2
        kube get nodes -o wide >&2 2>/dev/null || true
        kube get pods -A -o wide >&2 2>/dev/null || true
        kube -n "$DEMO_NS" get warren -o wide >&2 2>/dev/null || true
        kube get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 >&2 || true
        kube -n "$OPERATOR_NS" logs -l app.kubernetes.io/name=warren --tail=60 --all-containers >&2 2>/dev/null || true
        kube -n "$DEMO_NS" logs -l app.kubernetes.io/component=worker --tail=60 --all-containers >&2 2>/dev/null || true
        for file in "$RUN"/logs/*.log; do
            [ -f "$file" ] || continue
            printf '\n--- last lines of %s\n' "$file" >&2
            tail -n 15 "$file" >&2
        done
    fi
    log "stopping everything this run started"
    if [ -n "${watchdog:-}" ]; then
        pkill -P "$watchdog" 2>/dev/null || true
        kill "$watchdog" 2>/dev/null || true
    fi
    # Pods first, so that the kubelet tears their sandboxes and networks down properly.
    if [ -S "$SOCK" ] && kube get --raw /readyz >/dev/null 2>&1; then
        kube delete pods -A --all --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 60))
        while [ -n "$(ctr_ tasks ls -q 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
    fi
    cleanup_run "$RUN"
    curl -fsS -u guest:guest -X DELETE "http://127.0.0.1:15672/api/vhosts/$VHOST" >/dev/null 2>&1 || true
    curl -fsS -u guest:guest -X DELETE "http://127.0.0.1:15672/api/users/$RMQ_USER" >/dev/null 2>&1 || true
    for db in "$ORDERS_DB" "$INVENTORY_DB"; do
        psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if [ "$succeeded" = 1 ] && [ "$KEEP_LOGS" != 1 ]; then
        rm -rf "$RUN"
    else
        echo "node-e2e: the run's folder is $RUN" >&2
    fi
    local left
    left=$(awk -v dir="$RUN" 'index($5, dir) == 1' /proc/self/mountinfo | wc -l)
    [ "$left" = 0 ] || echo "node-e2e: WARNING: $left mounts remain under $RUN" >&2
    if [ "$succeeded" = 1 ]; then
        echo "node-e2e: passed in ${SECONDS}s (order $order reached processing on node $NODE)"
    fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The whole run is bounded: a watchdog ends it (and so runs the cleanup) after TIMEOUT seconds.
( sleep "$TIMEOUT"; echo "node-e2e: $TIMEOUT s are up" >&2; kill -TERM $$ ) 2>/dev/null &
watchdog=$!

mkdir -p "$RUN/logs" "$PKI"
# Starts a long-running process in the background, its output in logs/NAME.log, its PID recorded.
start() {
    local name=$1
    shift
    "$@" >"$RUN/logs/$name.log" 2>&1 &
    echo "$! $name" >>"$RUN/pids"
    # Stopped by cleanup_run, which says so itself: no job notices from bash.
    disown $!
}
# Polls COMMAND until it succeeds or SECONDS_ pass.
wait_until() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${seconds}s"
        sleep 1
    done
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- images ------------------------------------------------------------------------------------
log "building the release binaries"
cargo build --release --locked -p warren-operator --bin warren -p warren-orders --bin orders \
    -p warren-inventory --bin inventory
gcc -static -O2 -o "$RUN/pause" scripts/node-e2e/pause.c
log "making the OCI images (warren:$VERSION, warren-orders:$VERSION, warren-inventory:$VERSION, pause)"
# As the Dockerfile's distroless base: glibc (the libraries the binaries load) and CA certificates
# (reqwest's TLS setup refuses to start without any, even for plain HTTP).
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA_BUNDLE" ] || die "no $CA_BUNDLE (Debian package ca-certificates)"
image() { python3 scripts/node-e2e/oci-image.py "$@" "$CA_BUNDLE:$CA_BUNDLE"; }
image --name "docker.io/library/warren:$VERSION" --out "$RUN/warren.tar" \
    --entrypoint /usr/local/bin/warren --cmd operator target/release/warren:/usr/local/bin/warren
image --name "docker.io/library/warren-orders:$VERSION" --out "$RUN/orders.tar" \
    --entrypoint /usr/local/bin/orders target/release/orders:/usr/local/bin/orders
image --name "docker.io/library/warren-inventory:$VERSION" --out "$RUN/inventory.tar" \
    --entrypoint /usr/local/bin/inventory target/release/inventory:/usr/local/bin/inventory
image --name localhost/pause:1 --out "$RUN/pause.tar" --user 65535:65535 \
    --entrypoint /pause "$RUN/pause:/pause"

# --- network -----------------------------------------------------------------------------------
log "bridge $BRIDGE ($NODE_IP, API $API_IP) and forwarders to RabbitMQ and PostgreSQL"
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip addr add "$API_IP/32" dev "$BRIDGE"
ip link set "$BRIDGE" up
start socat-amqp socat "TCP-LISTEN:5672,bind=$NODE_IP,reuseaddr,fork" TCP:127.0.0.1:5672
start socat-postgres socat "TCP-LISTEN:5432,bind=$NODE_IP,reuseaddr,fork" TCP:127.0.0.1:5432

# --- RabbitMQ and PostgreSQL -------------------------------------------------------------------
log "RabbitMQ vhost $VHOST and user $RMQ_USER; databases $ORDERS_DB and $INVENTORY_DB"
RMQ_PASSWORD=$(openssl rand -hex 16)
mgmt -X DELETE "http://127.0.0.1:15672/api/vhosts/$VHOST" >/dev/null 2>&1 || true
mgmt -X PUT "http://127.0.0.1:15672/api/vhosts/$VHOST" -d '{}' >/dev/null
mgmt -X PUT "http://127.0.0.1:15672/api/users/$RMQ_USER" \
    -d "{\"password\": \"$RMQ_PASSWORD\", \"tags\": \"policymaker\"}" >/dev/null
mgmt -X PUT "http://127.0.0.1:15672/api/permissions/$VHOST/$RMQ_USER" \
    -d '{"configure": ".*", "write": ".*", "read": ".*"}' >/dev/null
for db in "$ORDERS_DB" "$INVENTORY_DB"; do
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
done

# --- control plane -----------------------------------------------------------------------------
log "certificates, etcd, kube-apiserver ($API_IP:443), kube-controller-manager, kube-scheduler"
openssl_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
openssl_key "$PKI/ca.key"
openssl req -x509 -new -key "$PKI/ca.key" -subj /CN=warren-node-e2e-ca -days 2 -out "$PKI/ca.crt" 2>/dev/null
openssl_key "$PKI/apiserver.key"
openssl req -new -key "$PKI/apiserver.key" -subj /CN=kube-apiserver -out "$PKI/apiserver.csr" 2>/dev/null
printf '%s\n' \
    "subjectAltName=IP:$API_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost" \
    "extendedKeyUsage=serverAuth" "keyUsage=critical,digitalSignature" "basicConstraints=CA:FALSE" \
    >"$PKI/apiserver.ext"
openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,warren-node-e2e-admin,warren-node-e2e-admin,system:masters" >"$PKI/tokens.csv"
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: node-e2e
    cluster:
      server: https://$API_IP:443
      certificate-authority: $PKI/ca.crt
users:
  - name: admin
    user:
      token: $TOKEN
contexts:
  - name: node-e2e
    context: {cluster: node-e2e, user: admin}
current-context: node-e2e
EOF
chmod 600 "$KUBECONFIG"

etcd_client=$(free_port)
etcd_peer=$(free_port)
start etcd "$ASSETS/etcd" --data-dir "$RUN/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer"
start kube-apiserver "$ASSETS/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address "$API_IP" --advertise-address "$API_IP" --secure-port 443 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --token-auth-file "$PKI/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" --service-cluster-ip-range "$SERVICE_RANGE" \
    --endpoint-reconciler-type none --kubelet-preferred-address-types InternalIP
wait_until "kube-apiserver ready" 120 kube get --raw /readyz
start kube-controller-manager "$ASSETS/kube-controller-manager" --kubeconfig "$KUBECONFIG" \
    --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --use-service-account-credentials=false \
    --root-ca-file "$PKI/ca.crt" \
    --controllers namespace-controller,garbage-collector-controller,serviceaccount-controller,deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller
start kube-scheduler "$ASSETS/kube-scheduler" --kubeconfig "$KUBECONFIG" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0

# --- node --------------------------------------------------------------------------------------
log "containerd, the images, and the kubelet (node $NODE at $NODE_IP)"
mkdir -p "$RUN/containerd" "$RUN/cni" "$RUN/kubelet"
cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:1"
  # These machines forbid lowering oom_score_adj: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni"
EOF
cat >"$RUN/cni/10-warren-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "warren-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni-ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "10.213.0.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
start containerd containerd --config "$RUN/containerd/config.toml"
wait_until "containerd answering" 60 ctr -a "$SOCK" version
for archive in pause warren orders inventory; do
    ctr_ images import "$RUN/$archive.tar" >/dev/null
done
ctr_ images ls -q | grep -E 'pause|warren' | sed 's/^/  image: /'

cat >"$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzPort: 0
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
# These machines run cgroup v1 (hybrid); a test node without QoS cgroups or node allocatable.
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
evictionHard: {}
makeIPTablesUtilChains: false
volumePluginDir: $RUN/kubelet/volume-plugins
# A test node only: the API server's calls (logs, exec) are not authenticated.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
EOF
start kubelet "$ASSETS/kubelet" --config "$RUN/kubelet/config.yaml" --kubeconfig "$KUBECONFIG" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" --root-dir "$RUN/kubelet/root" \
    --cert-dir "$RUN/kubelet/pki"
wait_until "node $NODE Ready" 120 kube wait --for=condition=Ready "node/$NODE" --timeout=5s
kube get nodes -o wide

# --- operator ----------------------------------------------------------------------------------
# The API server of ../shared/envtest is built from OpenShift MicroShift's tree: its ServiceAccount
# admission adds the ConfigMap openshift-service-ca.crt (which OpenShift's service-ca operator
# publishes in every namespace) to each pod's token volume, and the kubelet will not start a pod
# without it. Publish it, with this cluster's CA, in the namespaces the run uses.
service_ca() {
    kube create namespace "$1"
    kube -n "$1" create configmap openshift-service-ca.crt --from-file=service-ca.crt="$PKI/ca.crt" >/dev/null
}
service_ca "$OPERATOR_NS"
service_ca "$DEMO_NS"

log "helm install warren (charts/warren) into $OPERATOR_NS"
"$HELM" install warren charts/warren --kubeconfig "$KUBECONFIG" \
    --namespace "$OPERATOR_NS" \
    --set image.pullPolicy=Never --set resyncSeconds=10 \
    --wait --timeout 5m
kube -n "$OPERATOR_NS" wait --for=condition=Ready pod -l app.kubernetes.io/name=warren --timeout="$WAIT"
kube -n "$OPERATOR_NS" get pods -o wide

# --- topology ----------------------------------------------------------------------------------
log "the ADR topology (manifests/topology) in vhost $VHOST, with a Broker at $NODE_IP"
kube -n "$DEMO_NS" create secret generic rabbitmq-credentials \
    --from-literal=username="$RMQ_USER" --from-literal=password="$RMQ_PASSWORD" >/dev/null
# manifests/topology/broker.yaml points at localhost for `warren apply`; this Broker replaces it,
# as manifests/infra/broker.yaml does on kind.
kube -n "$DEMO_NS" apply -f - <<EOF
apiVersion: warren.dev/v1alpha1
kind: Broker
metadata:
  name: local
spec:
  managementUrl: http://$NODE_IP:15672
  amqpUrl: amqp://$NODE_IP:5672
  credentialsSecretRef:
    name: rabbitmq-credentials
EOF
# The topology files as they are, each resource given this run's vhost (a kustomize overlay).
mkdir -p "$RUN/topology"
resources=()
for file in manifests/topology/*.yaml; do
    [ "$(basename "$file")" = broker.yaml ] && continue
    cp "$file" "$RUN/topology/"
    resources+=("  - $(basename "$file")")
done
{
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: $DEMO_NS"
    echo "resources:"
    printf '%s\n' "${resources[@]}"
    echo "patches:"
    for kind in Exchange Queue Binding Policy; do
        echo "  - target: {group: warren.dev, kind: $kind}"
        echo "    patch: '[{\"op\": \"add\", \"path\": \"/spec/vhost\", \"value\": \"$VHOST\"}]'"
    done
} >"$RUN/topology/kustomization.yaml"
kube apply -k "$RUN/topology"
kube -n "$DEMO_NS" wait --for=condition=Ready broker/local --timeout="$WAIT"
for kind in ${TOPOLOGY_KINDS//,/ }; do
    if [ -n "$(kube -n "$DEMO_NS" get "$kind" -o name)" ]; then
        kube -n "$DEMO_NS" wait --for=condition=Ready "$kind" --all --timeout="$WAIT"
    fi
done
kube -n "$DEMO_NS" get queues

# --- workers -----------------------------------------------------------------------------------
log "the workers (manifests/workers), with this machine's PostgreSQL"
mkdir -p "$RUN/workers"
cat >"$RUN/workers/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$RUN/workers" "$ROOT/manifests/workers")
patches:
  - target: {kind: Secret, name: orders-db}
    patch: '[{"op": "replace", "path": "/stringData/url", "value": "postgres://postgres@$NODE_IP:5432/$ORDERS_DB"}]'
  - target: {kind: Secret, name: inventory-db}
    patch: '[{"op": "replace", "path": "/stringData/url", "value": "postgres://postgres@$NODE_IP:5432/$INVENTORY_DB"}]'
  - target: {kind: Worker}
    patch: '[{"op": "replace", "path": "/spec/imagePullPolicy", "value": "Never"}]'
EOF
kube apply -k "$RUN/workers"
# No cluster DNS and no kube-proxy here: once the inventory pod has an address, the orders worker
# is pointed at it (the change rolls the orders pod, as any spec change does).
kube -n "$DEMO_NS" wait --for=condition=Ready worker/inventory --timeout="$WAIT"
# The address of a Ready, running pod of Worker $1 that is not being deleted.
pod_ip() {
    kube -n "$DEMO_NS" get pods -l "app.kubernetes.io/instance=$1" -o json | python3 -c '
import json, sys
for pod in json.load(sys.stdin)["items"]:
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    if ready and "deletionTimestamp" not in pod["metadata"] and pod["status"].get("podIP"):
        print(pod["status"]["podIP"])
        break
else:
    sys.exit(1)'
}
inventory_ip=$(pod_ip inventory) || die "no Ready inventory pod"
kube -n "$DEMO_NS" patch worker orders --type merge \
    -p "{\"spec\": {\"settings\": {\"inventoryUrl\": \"http://$inventory_ip:8080\"}}}"
orders_reconciled() {
    local observed generation
    observed=$(kube -n "$DEMO_NS" get worker orders -o jsonpath='{.status.observedGeneration}')
    generation=$(kube -n "$DEMO_NS" get worker orders -o jsonpath='{.metadata.generation}')
    [ "$observed" = "$generation" ]
}
wait_until "orders Worker reconciled at its new generation" 120 orders_reconciled
kube -n "$DEMO_NS" rollout status deployment/orders --timeout="$WAIT"
kube -n "$DEMO_NS" wait --for=condition=Ready workers.warren.dev --all --timeout="$WAIT"
kube -n "$DEMO_NS" get workers.warren.dev
# The orders pod of the new generation (the old one may still be terminating).
orders_on_inventory() {
    local ip
    ip=$(pod_ip orders) || return 1
    [ "$(kube -n "$DEMO_NS" get pods -l app.kubernetes.io/instance=orders -o name | wc -l)" = 1 ]
}
wait_until "one orders pod, of the new generation" 120 orders_on_inventory
kube -n "$DEMO_NS" get pods -o wide

# --- an order ----------------------------------------------------------------------------------
orders_ip=$(pod_ip orders) || die "no Ready orders pod"
log "placing an order through the orders worker ($orders_ip), stock from inventory ($inventory_ip)"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
product=$(curl -fsS -H 'content-type: application/json' \
    -d '{"name": "node widget", "initialStock": 10, "lowStockThreshold": 1}' \
    "http://$inventory_ip:8080/products" | json '["id"]')
order=$(curl -fsS -H 'content-type: application/json' \
    -d "{\"userId\": \"$(python3 -c 'import uuid; print(uuid.uuid4())')\", \"items\": [{\"productId\": \"$product\", \"quantity\": 2}]}" \
    "http://$orders_ip:8080/orders" | json '["id"]')
order_status() { curl -fsS "http://$orders_ip:8080/orders/$order" | json '["status"]'; }
wait_status() {
    local want=$1 deadline=$((SECONDS + 120)) status=""
    while [ "$status" != "$want" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "order $order stayed ${status:-unknown}, never $want"
        sleep 1
        status=$(order_status || true)
    done
    echo "order $order: $status"
}
wait_status reserved
curl -fsS -X POST -H 'content-type: application/json' -d '{}' \
    "http://$orders_ip:8080/orders/$order/complete" >/dev/null
wait_status processing

# --- deletion ----------------------------------------------------------------------------------
log "deleting the Workers: their Deployments and pods go with them"
kube -n "$DEMO_NS" delete workers.warren.dev --all --wait=true --timeout="$WAIT"
worker_pods_gone() {
    [ -z "$(kube -n "$DEMO_NS" get pods -l app.kubernetes.io/component=worker -o name)" ]
}
wait_until "worker pods gone" 180 worker_pods_gone
[ -z "$(kube -n "$DEMO_NS" get deployments,services -o name)" ] || die "worker Deployments or Services remain"

log "deleting the topology and the Broker; finalizers complete"
kube -n "$DEMO_NS" delete "$TOPOLOGY_KINDS" --all --wait=true --timeout="$WAIT"
kube -n "$DEMO_NS" delete broker.warren.dev/local --wait=true --timeout=60s
"$HELM" uninstall warren --kubeconfig "$KUBECONFIG" --namespace "$OPERATOR_NS" --wait --timeout 2m

succeeded=1
