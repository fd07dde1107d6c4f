#!/usr/bin/env bash
# The local cluster: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler built from source (hack/build-tools.sh), run by kwokctl's
# binary runtime, with KWOK as the kubelet of one fake node (kwok-node-0),
# and one real node running real containers (hack/node.sh, as root).
#
#   hack/cluster.sh up          start it (idempotent); prints nothing else on success
#   hack/cluster.sh down        delete it
#   hack/cluster.sh kubeconfig  print the path of its kubeconfig
#   hack/cluster.sh env         print KUBECTL=..., KUBECONFIG=... for scripts
#
# BLOGSITE_CLUSTER names the cluster (default: blogsite); KWOK_WORKDIR moves
# its state (default: ~/.kwok); BLOGSITE_AUDIT_POLICY, when set at creation,
# turns on the API server's audit log (<workdir>/clusters/<name>/logs/audit.log);
# BLOGSITE_REAL_NODE=0 leaves the real node out (one machine has at most one);
# BLOGSITE_KUBE=oldest runs the control plane of the oldest supported minor
# (KUBERNETES_OLDEST_VERSION in versions.env), KWOK only, no real node.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/versions.env"
name="${BLOGSITE_CLUSTER:-blogsite}"
workdir="${KWOK_WORKDIR:-${HOME}/.kwok}"
cluster_dir="${workdir}/clusters/${name}"
kubeconfig="${cluster_dir}/kubeconfig.yaml"
real_node="${BLOGSITE_REAL_NODE:-1}"
kube="${BLOGSITE_KUBE:-newest}"
case "${kube}" in
  newest) ;;
  oldest) real_node=0 ;;
  *) echo "[cluster] BLOGSITE_KUBE is newest or oldest, not '${kube}'" >&2; exit 2 ;;
esac
log() { echo "[cluster] $*" >&2; }

tools() {
  local paths
  paths="$("${here}/build-tools.sh")"  # fails the script if a build fails
  eval "${paths}"
  # kubectl stays the newest: it talks to both.
  control_plane="${KUBERNETES_BIN}"
  export KWOK_KUBE_VERSION="${KUBERNETES_VERSION}"
  if [[ "${kube}" == oldest ]]; then
    control_plane="${KUBERNETES_OLDEST_BIN}"
    KWOK_KUBE_VERSION="${KUBERNETES_OLDEST_VERSION}"
  fi
  export KWOK_KUBECTL_BINARY="${KUBERNETES_BIN}/kubectl"
  export KWOK_WORKDIR="${workdir}"
  kwokctl="${KWOK_BIN}/kwokctl"
  kubectl=("${KUBERNETES_BIN}/kubectl" --kubeconfig "${kubeconfig}")
}

healthy() {
  [[ -f "${kubeconfig}" ]] && "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1
}

ensure_node() {
  # No status: KWOK then gives the node 1k CPUs, 1Ti and a million pods, so
  # `make bench` never runs out of room.
  "${kubectl[@]}" apply -f - >/dev/null <<'NODE'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    type: kwok
spec:
  # KWOK hands its fake pods addresses from here (the test range).
  podCIDR: 198.18.128.0/17
NODE
  "${kubectl[@]}" wait --for=condition=Ready node/kwok-node-0 --timeout=120s >/dev/null
  # Pods need the namespace's default ServiceAccount, made by the controller-manager.
  for _ in $(seq 1 120); do
    "${kubectl[@]}" get serviceaccount default -n default >/dev/null 2>&1 && return
    sleep 0.5
  done
  log "the controller-manager did not create the default ServiceAccount"; return 1
}

node_up() {
  [[ "${real_node}" == 1 ]] || return 0
  "${here}/node.sh" up "${cluster_dir}"
}

# kwok.yaml with this machine's address and this cluster's directory filled in.
kwok_config() {
  local ip
  ip="$("${here}/node.sh" ip)"
  mkdir -p "${workdir}"
  sed -e "s#@NODE_IP@#${ip}#g" -e "s#@CLUSTER_DIR@#${cluster_dir}#g" \
    "${here}/kwok/kwok.yaml" > "${workdir}/${name}-kwok.yaml"
  echo "${workdir}/${name}-kwok.yaml"
}

up() {
  tools
  if healthy; then ensure_node; node_up; return; fi
  if [[ -d "${workdir}/clusters/${name}" ]]; then
    log "cluster ${name} exists but is not answering; starting it"
    "${kwokctl}" start cluster --name "${name}" >&2 || true
    if healthy; then ensure_node; node_up; return; fi
    log "restart failed; recreating ${name}"
    "${kwokctl}" delete cluster --name "${name}" >&2 || true
  fi
  local start=${SECONDS}
  # --kubeconfig "": leave ~/.kube/config alone (kwokctl would switch its context).
  "${kwokctl}" create cluster \
    --name "${name}" \
    --runtime binary \
    --kube-apiserver-binary "${control_plane}/kube-apiserver" \
    --kube-controller-manager-binary "${control_plane}/kube-controller-manager" \
    --kube-scheduler-binary "${control_plane}/kube-scheduler" \
    --kwok-controller-binary "${KWOK_BIN}/kwok" \
    --etcd-binary "${ETCD_BIN}/etcd" \
    --config "$(kwok_config)" \
    ${BLOGSITE_AUDIT_POLICY:+--kube-audit-policy "${BLOGSITE_AUDIT_POLICY}"} \
    --quiet-pull \
    --kubeconfig "" \
    --wait 3m >&2
  ensure_node
  log "control plane ${name} up in $((SECONDS - start))s; kubeconfig ${kubeconfig}"
  node_up

}

down() {
  tools
  # The node first: it belongs to this cluster only if node.sh says so.
  if [[ "$("${here}/node.sh" status)" == "${cluster_dir}" ]]; then
    "${here}/node.sh" down "${cluster_dir}"
  fi
  if [[ -d "${workdir}/clusters/${name}" ]]; then
    "${kwokctl}" delete cluster --name "${name}" >&2
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kubeconfig) echo "${kubeconfig}" ;;
  env)
    tools
    echo "KUBECTL=${KUBERNETES_BIN}/kubectl"
    echo "KUBECONFIG=${kubeconfig}"
    # The real node's address and images, when this cluster has it.
    if [[ "$("${here}/node.sh" status)" == "${cluster_dir}" ]]; then
      echo "NODE_IP=$("${here}/node.sh" ip)"
      cat /var/lib/blogsite-node/images.env
      cat /var/lib/blogsite-node/private-registry.env
    fi
    ;;
  *) echo "usage: $0 up|down|kubeconfig|env" >&2; exit 2 ;;
esac
