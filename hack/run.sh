#!/usr/bin/env bash
# `make run`: the operator in the foreground against a cluster.
# Uses $KUBECONFIG (or ~/.kube/config) when it points at a reachable cluster;
# otherwise starts the local one (hack/cluster.sh up). Installs the CRD first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "${here}")"

configured="${KUBECONFIG:-}"
if [[ -z "${configured}" && -f "${HOME}/.kube/config" ]]; then configured="${HOME}/.kube/config"; fi
# The kubectl built with the local control plane (built now if missing).
kubectl_bin="$("${here}/cluster.sh" env | sed -n 's/^KUBECTL=//p')"
mkdir -p "${root}/bin" && ln -sf "${kubectl_bin}" "${root}/bin/kubectl"

if [[ -n "${configured}" ]] && "${kubectl_bin}" --kubeconfig "${configured}" get --raw /readyz >/dev/null 2>&1; then
  export KUBECONFIG="${configured}"
  echo "[run] using the cluster of ${KUBECONFIG}" >&2
else
  [[ -n "${configured}" ]] && echo "[run] ${configured} does not reach a cluster; using the local one" >&2
  "${here}/cluster.sh" up
  KUBECONFIG="$("${here}/cluster.sh" kubeconfig)"
  export KUBECONFIG
fi

"${kubectl_bin}" apply --server-side --force-conflicts -f "${root}/crds/blogsite.yaml" >/dev/null
"${kubectl_bin}" wait --for=condition=Established crd/blogsites.blog.daedalus.dev --timeout=60s >/dev/null

cat >&2 <<MSG

  The BlogSite CRD is installed; the operator starts below (Ctrl-C stops it).
  In another terminal:

    export KUBECONFIG=${KUBECONFIG}
    alias kubectl=${root}/bin/kubectl
    kubectl apply -f ${root}/deploy/examples/
    kubectl get blogsites -w          # or: kubectl describe blogsite lethain

MSG
exec "${root}/.venv/bin/blogsite-operator" run
