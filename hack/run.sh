#!/usr/bin/env bash
# `make run`: the operator in the foreground against a cluster.
# Uses $KUBECONFIG (or ~/.kube/config) when it points at a cluster; otherwise
# starts the local one (hack/cluster.sh up). Installs the CRD first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "${here}")"

eval "$("${here}/cluster.sh" env 2>/dev/null || true)" || true
configured="${KUBECONFIG:-}"
if [[ -z "${configured}" && -f "${HOME}/.kube/config" ]]; then configured="${HOME}/.kube/config"; fi
kubectl_bin="$(command -v kubectl || true)"

if [[ -n "${configured}" ]] && ${kubectl_bin:-false} --kubeconfig "${configured}" get --raw /readyz >/dev/null 2>&1; then
  export KUBECONFIG="${configured}"
  echo "[run] using the cluster of ${KUBECONFIG}" >&2
else
  "${here}/cluster.sh" up
  eval "$("${here}/cluster.sh" env)"
  export KUBECONFIG
  kubectl_bin="${KUBECTL}"
  mkdir -p "${root}/bin" && ln -sf "${KUBECTL}" "${root}/bin/kubectl"
fi

"${kubectl_bin}" apply --server-side --force-conflicts -f "${root}/crds/blogsite.yaml" >/dev/null
"${kubectl_bin}" wait --for=condition=Established crd/blogsites.blog.daedalus.dev --timeout=60s >/dev/null

cat >&2 <<MSG

  The BlogSite CRD is installed; the operator starts below (Ctrl-C stops it).
  In another terminal:

    export KUBECONFIG=${KUBECONFIG}
    alias kubectl=${kubectl_bin}
    kubectl apply -f ${root}/deploy/examples/
    kubectl get blogsites -w          # or: kubectl describe blogsite lethain

MSG
exec "${root}/.venv/bin/blogsite-operator" run
