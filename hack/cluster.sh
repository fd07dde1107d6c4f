#!/usr/bin/env bash
# The local cluster: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler built from source (hack/build-tools.sh), run by kwokctl's
# binary runtime on 127.0.0.1, with KWOK as the kubelet of one fake node.
#
#   hack/cluster.sh up          start it (idempotent); prints nothing else on success
#   hack/cluster.sh down        delete it
#   hack/cluster.sh kubeconfig  print the path of its kubeconfig
#   hack/cluster.sh env         print KUBECTL=..., KUBECONFIG=... for scripts
#
# BLOGSITE_CLUSTER names the cluster (default: blogsite); KWOK_WORKDIR moves
# its state (default: ~/.kwok); BLOGSITE_AUDIT_POLICY, when set at creation,
# turns on the API server's audit log (<workdir>/clusters/<name>/logs/audit.log).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/versions.env"
name="${BLOGSITE_CLUSTER:-blogsite}"
workdir="${KWOK_WORKDIR:-${HOME}/.kwok}"
kubeconfig="${workdir}/clusters/${name}/kubeconfig.yaml"
log() { echo "[cluster] $*" >&2; }

tools() {
  local paths
  paths="$("${here}/build-tools.sh")"  # fails the script if a build fails
  eval "${paths}"
  export KWOK_KUBE_VERSION="${KUBERNETES_VERSION}"
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
NODE
  "${kubectl[@]}" wait --for=condition=Ready node/kwok-node-0 --timeout=120s >/dev/null
  # Pods need the namespace's default ServiceAccount, made by the controller-manager.
  for _ in $(seq 1 120); do
    "${kubectl[@]}" get serviceaccount default -n default >/dev/null 2>&1 && return
    sleep 0.5
  done
  log "the controller-manager did not create the default ServiceAccount"; return 1
}

up() {
  tools
  if healthy; then ensure_node; return; fi
  if [[ -d "${workdir}/clusters/${name}" ]]; then
    log "cluster ${name} exists but is not answering; starting it"
    "${kwokctl}" start cluster --name "${name}" >&2 || true
    if healthy; then ensure_node; return; fi
    log "restart failed; recreating ${name}"
    "${kwokctl}" delete cluster --name "${name}" >&2 || true
  fi
  local start=${SECONDS}
  # --kubeconfig "": leave ~/.kube/config alone (kwokctl would switch its context).
  "${kwokctl}" create cluster \
    --name "${name}" \
    --runtime binary \
    --kube-apiserver-binary "${KUBERNETES_BIN}/kube-apiserver" \
    --kube-controller-manager-binary "${KUBERNETES_BIN}/kube-controller-manager" \
    --kube-scheduler-binary "${KUBERNETES_BIN}/kube-scheduler" \
    --kwok-controller-binary "${KWOK_BIN}/kwok" \
    --etcd-binary "${ETCD_BIN}/etcd" \
    --config "${here}/kwok/kwok.yaml" \
    ${BLOGSITE_AUDIT_POLICY:+--kube-audit-policy "${BLOGSITE_AUDIT_POLICY}"} \
    --quiet-pull \
    --kubeconfig "" \
    --wait 3m >&2
  ensure_node
  log "cluster ${name} up in $((SECONDS - start))s; kubeconfig ${kubeconfig}"
}

down() {
  tools
  if [[ -d "${workdir}/clusters/${name}" ]]; then
    "${kwokctl}" delete cluster --name "${name}" >&2
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kubeconfig) echo "${kubeconfig}" ;;
  env) tools; echo "KUBECTL=${KUBERNETES_BIN}/kubectl"; echo "KUBECONFIG=${kubeconfig}" ;;
  *) echo "usage: $0 up|down|kubeconfig|env" >&2; exit 2 ;;
esac
