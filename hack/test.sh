#!/usr/bin/env bash
# The tests as `make test` runs them, against one local test cluster:
#
#   1. every test not marked `exclusive`, on BLOGSITE_TEST_WORKERS (3)
#      pytest-xdist workers at once: each test has its own namespace, each
#      worker its own Pebble ports (tests/support.py: worker_port), and the
#      real node's chain of tests stays on one worker;
#   2. the `exclusive` ones alone, after: they stop the API server, cordon
#      the node or watch every namespace, which no other test may see.
#
# The cluster is brought up once, here, and taken down at the end if this
# run started it (BLOGSITE_TEST_KEEP_CLUSTER=1 keeps it). Arguments go to
# both pytest runs. build/test-durations.txt gets the seconds of both.
set -euo pipefail
cd "$(dirname "$0")/.."

workers="${BLOGSITE_TEST_WORKERS:-3}"
pytest=(.venv/bin/pytest tests --ignore=tests/kind)

if [[ -z "${BLOGSITE_TEST_KUBECONFIG:-}" ]]; then
  export BLOGSITE_CLUSTER="${BLOGSITE_TEST_CLUSTER:-blogsite-test}"
  # Who wrote what, from the API server's own record (the leader tests).
  export BLOGSITE_AUDIT_POLICY="${PWD}/hack/kwok/audit-policy.yaml"
  answers() {
    local env
    env="$(hack/cluster.sh env)" || return 1
    "$(sed -n 's/^KUBECTL=//p' <<<"${env}")" --kubeconfig "$(sed -n 's/^KUBECONFIG=//p' <<<"${env}")" \
      get --raw /readyz >/dev/null 2>&1
  }
  if ! answers && [[ "${BLOGSITE_TEST_KEEP_CLUSTER:-}" != 1 ]]; then
    trap 'hack/cluster.sh down' EXIT
  fi
  hack/cluster.sh up  # idempotent; pushes the images of this tree to the node
  export BLOGSITE_TEST_CLUSTER_READY=1
fi

# The frontend image's nginx, for every nginx the tests run on this machine.
nginx="$(hack/images.sh nginx)"
export BLOGSITE_OPERATOR_NGINX="${nginx#NGINX=}"

rm -f build/test-durations.txt build/test-durations.json
status=0
"${pytest[@]}" -n "${workers}" --dist loadscope -m "not exclusive" "$@" || status=$?
# 5: nothing selected (a -k that names no exclusive test) is no failure.
BLOGSITE_TEST_DURATIONS_MERGE=1 "${pytest[@]}" -m exclusive "$@" || {
  code=$?
  [[ ${code} == 5 ]] || status=${code}
}
exit "${status}"
