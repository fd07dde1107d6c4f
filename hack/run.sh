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
# Polled: right after the apply the CRD may have no conditions yet, and
# `kubectl wait` then fails at once instead of waiting.
for _ in $(seq 120); do
  established="$("${kubectl_bin}" get crd blogsites.blog.daedalus.dev \
    -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}')"
  [[ "${established}" == True ]] && break
  sleep 0.5
done
[[ "${established}" == True ]] || { echo "the BlogSite CRD is not Established" >&2; exit 1; }

# A local ACME server, so a certificate can be issued on a laptop: Pebble with
# real HTTP-01 validation (its DNS sends every name to 127.0.0.1), and the
# challenge server on the port Pebble validates, serving every site's answers.
pebble_state="${PEBBLE_STATE_DIR:-${TMPDIR:-/tmp}/blogsite-pebble}"
export PEBBLE_STATE_DIR="${pebble_state}" PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0
children=()
cleanup() { for pid in "${children[@]}"; do kill "${pid}" 2>/dev/null || true; done; wait; }
trap cleanup EXIT
trap 'exit 130' INT TERM
"${here}/pebble.sh" >"${pebble_state}.log" 2>&1 &
children+=($!)
for _ in $(seq 1 600); do [[ -s "${pebble_state}/root.pem" ]] && break; sleep 0.5; done
if [[ ! -s "${pebble_state}/root.pem" ]]; then
  echo "[run] Pebble did not start; see ${pebble_state}.log" >&2; exit 1
fi
# Pebble makes a new root at every start: certificates a previous run's
# Pebble issued (kept for a BlogSite of the same name, and their copies)
# chain to a root that is gone, and a site would take them up again. They are
# deleted, so the demo orders anew and `curl --cacert root.pem` works.
pebble_server="https://127.0.0.1:${PEBBLE_PORT:-14000}/dir"
while read -r namespace name; do
  [[ -n "${name}" ]] || continue
  chain="$("${kubectl_bin}" get secret "${name}" -n "${namespace}" -o jsonpath='{.data.tls\.crt}' | base64 -d)"
  if ! openssl verify -CAfile "${pebble_state}/root.pem" -untrusted <(echo "${chain}") \
       <(echo "${chain}") >/dev/null 2>&1; then
    echo "[run] deleting ${namespace}/${name}: issued by an earlier Pebble, whose root is gone" >&2
    "${kubectl_bin}" delete secret "${name}" -n "${namespace}" --wait=false >/dev/null
  fi
done < <("${kubectl_bin}" get secrets -A -l app.kubernetes.io/managed-by=blogsite-operator -o json \
  | "${root}/.venv/bin/python" -c '
import json, sys
for item in json.load(sys.stdin)["items"]:
    meta = item["metadata"]
    if (meta.get("annotations") or {}).get("blog.daedalus.dev/acme-server") == sys.argv[1]:
        print(meta["namespace"], meta["name"])' "${pebble_server}")

"${kubectl_bin}" create secret generic pebble-ca --from-file=ca.crt="${pebble_state}/pebble-ca.pem" \
  --dry-run=client -o yaml | "${kubectl_bin}" apply -f - >/dev/null

# With the local cluster's real node: the namespace blogsite-demo sends its
# pods there (deploy/examples/local/), and the operator renders the images
# built here for cert-refresh and the frontend.
node_env="$("${here}/cluster.sh" env | grep -E '^(NODE_IP|OPERATOR_IMAGE|FRONTEND_IMAGE)=' || true)"
if [[ "${KUBECONFIG}" == "$("${here}/cluster.sh" kubeconfig)" && -n "${node_env}" ]]; then
  eval "${node_env}"
  export BLOGSITE_OPERATOR_IMAGE="${OPERATOR_IMAGE}" BLOGSITE_OPERATOR_FRONTEND_IMAGE="${FRONTEND_IMAGE}"
  "${kubectl_bin}" apply -f - >/dev/null <<'NAMESPACE'
apiVersion: v1
kind: Namespace
metadata:
  name: blogsite-demo
  annotations:
    scheduler.alpha.kubernetes.io/node-selector: type=real
    scheduler.alpha.kubernetes.io/defaultTolerations: '[{"key": "blog.daedalus.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]'
NAMESPACE
  "${kubectl_bin}" create secret generic pebble-ca -n blogsite-demo \
    --from-file=ca.crt="${pebble_state}/pebble-ca.pem" \
    --dry-run=client -o yaml | "${kubectl_bin}" apply -f - >/dev/null
else
  # No real node: nothing routes the pods' test-range addresses to this
  # machine's bridge, so the served-certificate probe would send its
  # packets to the default route. KWOK's pods run no nginx anyway.
  export BLOGSITE_OPERATOR_SERVED_PROBE_SECONDS=0
fi
PYTHONPATH="${root}/operator" "${root}/.venv/bin/python" -m blogsite_operator challenge-server \
  --address 127.0.0.1 --port 5002 --selector blog.daedalus.dev/acme-http01-of &
children+=($!)

cat >&2 <<MSG

  The BlogSite CRD is installed; the operator starts below (Ctrl-C stops it).
  Pebble (a local ACME server) answers on https://127.0.0.1:14000/dir.
  In another terminal:

    export KUBECONFIG=${KUBECONFIG}
    alias kubectl=${root}/bin/kubectl
    kubectl apply -f ${root}/deploy/examples/
    kubectl get blogsites -w          # or: kubectl describe blogsite lethain

  A blog served by real pods on the real node, with a certificate issued for
  real (by Pebble, validated over HTTP-01):

    kubectl apply -f ${root}/deploy/examples/local/
    kubectl get blogsite pebble-demo -n blogsite-demo -w   # until Ready and Cert-Expiry
    curl --cacert ${pebble_state}/root.pem \\
      --resolve "blog.localhost.example:443:\$(kubectl get service pebble-demo-frontend \\
        -n blogsite-demo -o jsonpath='{.spec.clusterIP}')" https://blog.localhost.example/

MSG
# The operator's nginx -t runs the frontend image's nginx, as in its image.
nginx="$("${here}/images.sh" nginx)"
BLOGSITE_OPERATOR_NGINX="${BLOGSITE_OPERATOR_NGINX:-${nginx#NGINX=}}" \
BLOGSITE_OPERATOR_ACME_SELF_CHECK="${BLOGSITE_OPERATOR_ACME_SELF_CHECK:-127.0.0.1:5002}" \
BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER="${BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER:-127.0.0.1:8053}" \
BLOGSITE_OPERATOR_ACME_PREFLIGHT_HTTP_PORT="${BLOGSITE_OPERATOR_ACME_PREFLIGHT_HTTP_PORT:-5002}" \
  "${root}/.venv/bin/blogsite-operator" run
