#!/usr/bin/env bash
# A throwaway local Kubernetes API server that trusts the dev issuer, for
# trying monoctl and kubectl end to end on one machine.
#
#   scripts/local-cluster.sh up     # start etcd + kube-apiserver on 127.0.0.1:16443
#   scripts/local-cluster.sh down   # stop them and remove .monoskope-local/
#
# `up` writes .monoskope-local/clusters/ (the example clusters plus
# local-cluster.yaml), renders the kube-apiserver flags for local-cluster
# with `monoskope render`, starts etcd and kube-apiserver with them, and
# applies the rendered RBAC. Serve the dev issuer with
# `--clusters-dir .monoskope-local/clusters` so that it registers the cluster.
#
# Needs: a dev state directory (run `monoskope serve --dev` once), the
# kube-apiserver binary of scripts/kube-apiserver/build.sh, etcd
# (Debian's etcd-server), kubectl and openssl. Listens on loopback only, on
# ports LOCAL_API_PORT (16443), LOCAL_ETCD_PORT (12379) and
# LOCAL_ETCD_PEER_PORT (12380). MONOSKOPE_DEV_STATE selects another dev state
# directory (default .monoskope-dev).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
dir=.monoskope-local
dev_state=${MONOSKOPE_DEV_STATE:-.monoskope-dev}
api_port=${LOCAL_API_PORT:-16443}
etcd_port=${LOCAL_ETCD_PORT:-12379}
etcd_peer_port=${LOCAL_ETCD_PEER_PORT:-12380}

stop() {
  for name in kube-apiserver etcd; do
    if [ -f "$dir/$name.pid" ]; then
      local pid
      pid=$(cat "$dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      rm -f "$dir/$name.pid"
    fi
  done
}

case "${1:-}" in
  down)
    stop
    rm -rf "$dir"
    echo "Stopped the local cluster and removed $dir."
    exit 0
    ;;
  up) ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

[ -f "$dev_state/config.yaml" ] || { echo "$dev_state/config.yaml not found: run 'cargo run --release --bin monoskope -- serve --dev' once first" >&2; exit 1; }
apiserver=${MONOSKOPE_KUBE_APISERVER:-$(ls -d "$HOME"/.cache/monoskope-ci/kube-apiserver-*/kube-apiserver 2>/dev/null | tail -n 1)}
[ -x "$apiserver" ] || { echo "kube-apiserver not found: run 'sudo scripts/kube-apiserver/build.sh' (about 8 minutes)" >&2; exit 1; }
etcd=${MONOSKOPE_ETCD:-/usr/bin/etcd}
[ -x "$etcd" ] || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }

stop
mkdir -p "$dir/pki" "$dir/clusters" "$dir/etcd-data"
cargo build --release --quiet --bin monoskope --bin monoctl
monoskope=target/release/monoskope
monoctl=target/release/monoctl

# Certificates: a CA, the API server's serving certificate, an admin client
# certificate (group system:masters) and the service-account key pair.
pki=$dir/pki
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=local-cluster-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
issue() {
  local name=$1 subject=$2 extensions=$3
  openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
    -extfile <(printf '%s\n' "$extensions") -out "$pki/$name.crt" 2>/dev/null
}
issue serving "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,DNS:localhost"
issue admin "/O=system:masters/CN=local-admin" "extendedKeyUsage=clientAuth"
openssl genrsa -out "$pki/service-account.key" 2048 2>/dev/null
openssl rsa -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub" 2>/dev/null

# Register the cluster next to the examples: jane@example.com may read
# namespaces, platform-admins may administer it.
cp examples/clusters/*.yaml "$dir/clusters/"
"$monoctl" create cluster local-cluster --api-server "https://127.0.0.1:$api_port" \
  --api-server-ca-file "$pki/ca.crt" | sed '/^  roles:/,$d' > "$dir/clusters/local-cluster.yaml"
cat >> "$dir/clusters/local-cluster.yaml" <<'EOF'
  roles:
    - name: default
      clusterRole: namespace-reader
      tokenLifetime: 1h
      subjects: {users: [jane@example.com], groups: [platform-admins]}
    - name: admin
      clusterRole: cluster-admin
      tokenLifetime: 5m
      subjects: {groups: [platform-admins]}
EOF

mapfile -t oidc_flags < <("$monoskope" render local-cluster --state-dir "$dev_state" \
  --clusters-dir "$dir/clusters" --output flags)

"$etcd" --data-dir "$dir/etcd-data" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  > "$dir/etcd.log" 2>&1 &
echo $! > "$dir/etcd.pid"

"$apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
  --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
  --client-ca-file "$pki/ca.crt" --authorization-mode RBAC \
  --service-account-key-file "$pki/service-account.pub" \
  --service-account-signing-key-file "$pki/service-account.key" \
  --service-account-issuer "https://127.0.0.1:$api_port" --api-audiences "https://127.0.0.1:$api_port" \
  --service-cluster-ip-range 10.96.0.0/24 --endpoint-reconciler-type none \
  "${oidc_flags[@]}" > "$dir/kube-apiserver.log" 2>&1 &
echo $! > "$dir/kube-apiserver.pid"

cat > "$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local-cluster, cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: pki/ca.crt}}]
users: [{name: local-admin, user: {client-certificate: pki/admin.crt, client-key: pki/admin.key}}]
contexts: [{name: local-admin, context: {cluster: local-cluster, user: local-admin}}]
current-context: local-admin
EOF

fail() {
  echo "$1; see $dir/$2.log:" >&2
  tail -20 "$dir/$2.log" >&2
  stop
  exit 1
}
for _ in $(seq 1 120); do
  kubectl --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1 && break
  kill -0 "$(cat "$dir/etcd.pid")" 2>/dev/null || fail "etcd exited (is port $etcd_port or $etcd_peer_port in use?)" etcd
  kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null || fail "kube-apiserver exited (is port $api_port in use?)" kube-apiserver
  sleep 0.5
done
kubectl --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1 ||
  fail "kube-apiserver did not become ready within 60 s" kube-apiserver

# The built-in view role stays empty without a controller manager, so the
# default role binds a ClusterRole of its own.
kubectl --kubeconfig "$dir/admin.kubeconfig" apply -f - > /dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: namespace-reader}
rules: [{apiGroups: [""], resources: [namespaces], verbs: [get, list, watch]}]
EOF
"$monoskope" render local-cluster --state-dir "$dev_state" --clusters-dir "$dir/clusters" --output rbac \
  | kubectl --kubeconfig "$dir/admin.kubeconfig" apply -f - > /dev/null

issuer=$(sed -n 's/^issuer: *//p' "$dev_state/config.yaml")
listen=$(sed -n 's/^listen: *//p' "$dev_state/config.yaml")
cat <<EOF
kube-apiserver is running at https://127.0.0.1:$api_port and trusts the issuer $issuer,
with these flags from monoskope render:
$(printf '  %s\n' "${oidc_flags[@]}")

Serve the dev issuer on the same address, with this clusters directory (and
your --upstream-* flags), then run monoctl create kubeconfig again:
  cargo run --release --bin monoskope -- serve --dev --listen $listen --clusters-dir $dir/clusters ...
  kubectl --context local-cluster-default get namespaces
The OIDC authenticator starts about 10 seconds after the API server. Each
'up' creates a new CA, so rerun monoctl create kubeconfig after it.
Admin access (for kubectl apply, or for monoskope run as KUBECONFIG):
  $dir/admin.kubeconfig
Stop with: $0 down
EOF
