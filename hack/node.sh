#!/usr/bin/env bash
# One real worker node beside KWOK's fake one: kubelet and kube-proxy (built
# with the control plane), containerd 2.x, Debian's runc and CNI plugins,
# CoreDNS as the cluster DNS, and a local registry the node pulls from.
# Called by hack/cluster.sh; run as root.
#
#   hack/node.sh up CLUSTER_DIR    join the node to the cluster whose kwokctl
#                                  directory (pki/, kubeconfig.yaml) is given
#   hack/node.sh down CLUSTER_DIR  stop it and put the machine back as it was
#   hack/node.sh status            print the owning cluster directory, if any
#   hack/node.sh ip                print the machine's own address (the node's)
#
# No packet leaves the machine: pods get 198.18.0.0/24 on the bridge
# blogsite0, KWOK's fake pods 198.18.128.0/17, Services 198.19.0.0/16 (all in
# 198.18.0.0/15, reserved for testing); that range is routed to the bridge
# only, and forwarded traffic from it to anywhere else is rejected. CoreDNS answers cluster.local and forwards nothing; every image
# reference, whatever its registry, is pulled from the local registry.
#
# What it changes on the machine, all undone by `down`: the processes below,
# iptables chains (KUBE-*, CNI-*, BLOGSITE-*), the bridge, the route, mounts
# and cgroups (kubepods) the kubelet and containerd make, the sysctls listed in
# SYSCTLS, and files under /var/lib/blogsite-node and /run/blogsite-node (plus
# any of FOREIGN_PATHS that did not exist before).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/versions.env"
log() { echo "[node] $*" >&2; }

NODE_NAME=blogsite-node-0
STATE=/var/lib/blogsite-node
RUN=/run/blogsite-node
BRIDGE=blogsite0
TEST_RANGE=198.18.0.0/15
POD_CIDR=198.18.0.0/24
POD_GATEWAY=198.18.0.1
BRIDGE_MAC=0a:58:c6:12:00:01  # 198.18.0.1
KWOK_POD_CIDR=198.18.128.0/17
DNS_SERVICE_IP=198.19.0.10
REGISTRY_PORT=5000
# The same registry, for repositories under private/ only with a login
# (nginx with basic auth in front of it): where a test pulls with a Secret.
PRIVATE_REGISTRY_PORT=5001
PRIVATE_REGISTRY_USER=blogsite
# The real node repels every pod without this toleration; namespaces annotated
# by `real_namespace` in the tests (and `make run`'s) get it, and a node
# selector, through the PodTolerationRestriction/PodNodeSelector plugins.
NODE_TAINT=blog.daedalus.dev/real-node=true:NoSchedule
SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Paths other programs may create by default: removed at `down` when they were
# not there before `up`.
FOREIGN_PATHS=(/run/containerd /var/log/pods /var/log/containers /var/run/netns /run/netns
  /var/lib/cni /etc/cni /opt/containerd /opt/cni /usr/libexec/kubernetes /var/lib/kubelet
  /run/nri /var/run/nri /var/lib/containerd /etc/containerd /var/run/cdi /etc/cdi)
PROCESSES=(registry registry-auth containerd kubelet kube-proxy coredns)

cache="${BLOGSITE_TOOLS_CACHE:-${HOME}/.cache/blogsite-operator}"

# The machine's own address: the one on the interface of the default route
# (or the first global one). The node and the registry use it; nothing is
# ever sent to another address of that network.
node_ip() {
  local dev
  dev="$(ip -4 route show default 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="dev") {print $(i+1); exit}}')"
  if [[ -n "${dev}" ]]; then
    ip -4 -o addr show dev "${dev}" scope global | awk '{split($4, a, "/"); print a[1]; exit}'
  else
    ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}'
  fi
}

pid_alive() {  # pid_alive NAME: the process recorded for NAME runs
  local file="${RUN}/${1}.pid" pid
  [[ -f "${file}" ]] || return 1
  pid="$(cat "${file}")"
  [[ -n "${pid}" && -d "/proc/${pid}" ]] || return 1
  # A recycled pid running something else is not ours.
  [[ "$(tr '\0' ' ' <"/proc/${pid}/cmdline")" == *"${1}"* ]]
}

start() {  # start NAME LOG COMMAND...: run in the background, record its pid
  local name="$1" logfile="$2"; shift 2
  setsid "$@" >>"${logfile}" 2>&1 < /dev/null &
  echo $! > "${RUN}/${name}.pid"
}

stop() {  # stop NAME: TERM, then KILL, the recorded process
  local file="${RUN}/${1}.pid" pid
  [[ -f "${file}" ]] || return 0
  pid="$(cat "${file}")"
  if pid_alive "$1"; then
    kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -d "/proc/${pid}" ]] || break; sleep 0.1; done
    kill -KILL "${pid}" 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -d "/proc/${pid}" ]] || break; sleep 0.1; done
  fi
  rm -f "${file}"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local seconds="$1" what="$2"; shift 2
  for _ in $(seq 1 $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "${what} did not come up within ${seconds}s"
  return 1
}

tools() {
  local paths
  paths="$("${here}/build-tools.sh")"
  eval "${paths}"
}

preflight() {
  if [[ ${EUID} -ne 0 ]]; then log "the real node needs root"; exit 1; fi
  local missing=()
  for bin in /usr/sbin/runc /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback \
             /usr/sbin/iptables /usr/sbin/nft /usr/sbin/conntrack /usr/bin/openssl /usr/bin/curl; do
    [[ -x "${bin}" ]] || missing+=("${bin}")
  done
  if ((${#missing[@]})); then
    log "missing ${missing[*]}: run hack/system-deps.sh"; exit 1
  fi
}

record_machine() {  # once per `up`..`down`: what `down` puts back
  [[ -f "${STATE}/before/done" ]] && return
  mkdir -p "${STATE}/before"
  local name
  : > "${STATE}/before/sysctls"
  for name in "${SYSCTLS[@]}"; do
    local value
    if value="$(sysctl -n "${name}" 2>/dev/null)"; then
      printf '%s=%s\n' "${name}" "${value}" >> "${STATE}/before/sysctls"
    fi
  done
  # nftables tables (iptables-nft creates ip/ip6 filter, nat, mangle on first use).
  nft list tables > "${STATE}/before/nft-tables"
  : > "${STATE}/before/absent"
  for name in "${FOREIGN_PATHS[@]}"; do
    [[ -e "${name}" || -L "${name}" ]] || echo "${name}" >> "${STATE}/before/absent"
  done
  touch "${STATE}/before/done"
}

certificate() {  # certificate NAME CN O: a client certificate signed by the cluster CA
  local pki="$1/pki" name="$2" cn="$3" org="$4" dir="${STATE}/pki"
  mkdir -p "${dir}"
  openssl req -new -newkey rsa:2048 -nodes -keyout "${dir}/${name}.key" \
    -subj "/CN=${cn}${org:+/O=${org}}" -out "${dir}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${dir}/${name}.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
    -CAcreateserial -days 365 -out "${dir}/${name}.crt" \
    -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
    2>/dev/null
  chmod 0600 "${dir}/${name}.key"
}

kubeconfig_for() {  # kubeconfig_for CLUSTER_DIR NAME: a kubeconfig using NAME's certificate
  local cluster_dir="$1" name="$2" server
  server="$(awk '/server:/ {print $2; exit}' "${cluster_dir}/kubeconfig.yaml")"
  cat > "${STATE}/${name}.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "${server}", certificate-authority: "${cluster_dir}/pki/ca.crt"}
users:
- name: ${name}
  user: {client-certificate: "${STATE}/pki/${name}.crt", client-key: "${STATE}/pki/${name}.key"}
contexts:
- name: local
  context: {cluster: local, user: ${name}}
current-context: local
YAML
}

start_registry() {
  local ip="$1" storage="${cache}/registry"
  mkdir -p "${storage}"
  cat > "${STATE}/registry.yaml" <<YAML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: "${storage}"}
  delete: {enabled: true}
http:
  addr: "${ip}:${REGISTRY_PORT}"
YAML
  # distribution v3 reads OTEL variables; with none it would try to export traces.
  start registry "${LOGS}/registry.log" env OTEL_TRACES_EXPORTER=none \
    "${REGISTRY_BIN}/registry" serve "${STATE}/registry.yaml"
  wait_for 30 "the registry" curl -fsS "http://${ip}:${REGISTRY_PORT}/v2/"
}

start_private_registry() {  # the frontend image's nginx: private/* needs a login
  local ip="$1" dir="${STATE}/private-registry" nginx password
  nginx="$("${here}/images.sh" nginx)"
  nginx="${nginx#NGINX=}"
  mkdir -p "${dir}/temp"
  chmod 0755 "${dir}" "${dir}/temp"
  password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  # nginx's {SHA} scheme (RFC 2307); its workers (nobody) read the file.
  printf '%s:{SHA}%s\n' "${PRIVATE_REGISTRY_USER}" \
    "$(printf '%s' "${password}" | openssl sha1 -binary | base64)" > "${dir}/htpasswd"
  chmod 0644 "${dir}/htpasswd"
  ( umask 077
    printf 'PRIVATE_REGISTRY=%s\nPRIVATE_REGISTRY_USER=%s\nPRIVATE_REGISTRY_PASSWORD=%s\n' \
      "${ip}:${PRIVATE_REGISTRY_PORT}" "${PRIVATE_REGISTRY_USER}" "${password}" \
      > "${STATE}/private-registry.env" )
  cat > "${dir}/nginx.conf" <<NGINX
worker_processes 1;
pid ${dir}/nginx.pid;
events {}
http {
    access_log off;
    client_body_temp_path ${dir}/temp/body;
    proxy_temp_path ${dir}/temp/proxy;
    fastcgi_temp_path ${dir}/temp/fastcgi;
    uwsgi_temp_path ${dir}/temp/uwsgi;
    scgi_temp_path ${dir}/temp/scgi;
    server {
        listen ${ip}:${PRIVATE_REGISTRY_PORT};
        client_max_body_size 0;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_set_header Host \$http_host;
        location /v2/private/ {
            auth_basic "blogsite private";
            auth_basic_user_file ${dir}/htpasswd;
            proxy_pass http://${ip}:${REGISTRY_PORT};
        }
        location / {
            proxy_pass http://${ip}:${REGISTRY_PORT};
        }
    }
}
NGINX
  start registry-auth "${LOGS}/registry-auth.log" \
    "${nginx}" -e stderr -p "${dir}" -c "${dir}/nginx.conf" -g "daemon off;"
  wait_for 30 "the private registry" curl -fsS "http://${ip}:${PRIVATE_REGISTRY_PORT}/v2/"
}

start_containerd() {
  local ip="$1" pause_image="$2"
  mkdir -p "${STATE}/containerd" "${RUN}/containerd" "${STATE}/certs.d/_default" \
    "${STATE}/cni/net.d" "${STATE}/cni/ipam" "${STATE}/opt"
  # Every registry name goes to the local registry, and only there.
  cat > "${STATE}/certs.d/_default/hosts.toml" <<TOML
server = "http://${ip}:${REGISTRY_PORT}"
TOML
  # Except the private registry's own address: a pull from it carries the
  # pod's pull secret (containerd gives a login only to the host it is for).
  mkdir -p "${STATE}/certs.d/${ip}:${PRIVATE_REGISTRY_PORT}"
  cat > "${STATE}/certs.d/${ip}:${PRIVATE_REGISTRY_PORT}/hosts.toml" <<TOML
server = "http://${ip}:${PRIVATE_REGISTRY_PORT}"
TOML
  cat > "${STATE}/cni/net.d/10-blogsite.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "blogsite",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GATEWAY}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
  cat > "${STATE}/containerd.toml" <<TOML
version = 3
root = "${STATE}/containerd"
state = "${RUN}/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${RUN}/containerd/containerd.sock"

[plugins.'io.containerd.internal.v1.opt']
  path = "${STATE}/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "${pause_image}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "${STATE}/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  # This VM's bounding set lacks CAP_SYS_RESOURCE: without this every sandbox
  # fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "/usr/sbin/runc"
      Root = "${RUN}/runc"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "${STATE}/cni/net.d"
TOML
  start containerd "${LOGS}/containerd.log" env PATH="${CONTAINERD_BIN}:${PATH}" \
    "${CONTAINERD_BIN}/containerd" --config "${STATE}/containerd.toml"
  wait_for 30 "containerd" "${CONTAINERD_BIN}/ctr" --address "${RUN}/containerd/containerd.sock" version
}

isolate_test_range() {
  # Nothing addressed to the test range leaves the machine: the whole range is
  # routed to the pods' bridge, where an address no pod holds goes unanswered
  # (a route that looks found, so kube-proxy's DNAT of Service addresses
  # still applies to the host's own packets; `unreachable` would not), and
  # pods forward nowhere else.
  ip link show "${BRIDGE}" >/dev/null 2>&1 || ip link add "${BRIDGE}" type bridge
  # A bridge whose address was never set takes the lowest of its ports' and
  # changes it as pods come and go: pods' replies to the host then go to a
  # stale address and connections stall for a SYN retry (containernetworking
  # /cni#285). The CNI bridge plugin pins only bridges it creates; this one
  # gets the address that plugin would give it (0a:58 and the gateway's IP).
  ip link set "${BRIDGE}" address "${BRIDGE_MAC}"
  ip link set "${BRIDGE}" up
  ip route replace "${TEST_RANGE}" dev "${BRIDGE}" metric 4000
  iptables -w -N BLOGSITE-ISOLATION 2>/dev/null || iptables -w -F BLOGSITE-ISOLATION
  iptables -w -A BLOGSITE-ISOLATION -s "${TEST_RANGE}" ! -d "${TEST_RANGE}" \
    -m comment --comment "blogsite real node: pods reach only the test range" -j REJECT
  iptables -w -C FORWARD -j BLOGSITE-ISOLATION 2>/dev/null || iptables -w -I FORWARD 1 -j BLOGSITE-ISOLATION
}

start_kubelet() {
  local cluster_dir="$1" ip="$2"
  mkdir -p "${STATE}/kubelet" "${STATE}/pod-logs" "${STATE}/volume-plugins"
  certificate "${cluster_dir}" kubelet "system:node:${NODE_NAME}" system:nodes
  kubeconfig_for "${cluster_dir}" kubelet
  cat > "${STATE}/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://${RUN}/containerd/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
address: ${ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${cluster_dir}/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [${DNS_SERVICE_IP}]
# No host resolv.conf: pods ask CoreDNS only, never the outer network's DNS.
resolvConf: ""
podLogsDir: ${STATE}/pod-logs
volumePluginDir: ${STATE}/volume-plugins
serializeImagePulls: false
maxPods: 60
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerWithTaints:
- {key: blog.daedalus.dev/real-node, value: "true", effect: NoSchedule}
YAML
  start kubelet "${LOGS}/kubelet.log" "${KUBERNETES_BIN}/kubelet" \
    --config "${STATE}/kubelet.yaml" \
    --kubeconfig "${STATE}/kubelet.kubeconfig" \
    --root-dir "${STATE}/kubelet" \
    --cert-dir "${STATE}/kubelet/pki" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${ip}" \
    --node-labels "type=real,blog.daedalus.dev/real-node=true"
}

start_kube_proxy() {
  local cluster_dir="$1" ip="$2"
  certificate "${cluster_dir}" kube-proxy system:kube-proxy ""
  kubeconfig_for "${cluster_dir}" kube-proxy
  cat > "${STATE}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: ${NODE_NAME}
bindAddress: ${ip}
clusterCIDR: ${TEST_RANGE}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [${ip}/32]
clientConnection: {kubeconfig: ${STATE}/kube-proxy.kubeconfig}
# 0: leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
# No NodePorts on 127.0.0.1, so route_localnet stays as it is.
iptables: {localhostNodePorts: false}
YAML
  start kube-proxy "${LOGS}/kube-proxy.log" "${KUBERNETES_BIN}/kube-proxy" \
    --config "${STATE}/kube-proxy.yaml"
}

start_coredns() {
  local cluster_dir="$1" ip="$2"
  certificate "${cluster_dir}" coredns blogsite:coredns ""
  kubeconfig_for "${cluster_dir}" coredns
  "${kubectl[@]}" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "blogsite:coredns"}
rules:
- {apiGroups: [""], resources: [services, namespaces, endpoints, pods], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "blogsite:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "blogsite:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "blogsite:coredns"}]
---
# The cluster DNS Service, served by the CoreDNS process on the node's address.
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: ${DNS_SERVICE_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: blogsite-node}
addressType: IPv4
endpoints: [{addresses: ["${ip}"], conditions: {ready: true}}]
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
YAML
  # The cluster domain only: no forward plugin, so other names fail here.
  cat > "${STATE}/Corefile" <<COREFILE
.:53 {
    bind ${ip}
    errors
    health 127.0.0.1:18080
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${STATE}/coredns.kubeconfig local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
COREFILE
  start coredns "${LOGS}/coredns.log" "${COREDNS_BIN}/coredns" -conf "${STATE}/Corefile"
  wait_for 30 "CoreDNS" curl -fsS http://127.0.0.1:18080/health
}

push_images() {  # push_images IP: build and push what changed; record and print the refs
  local images
  images="$("${here}/images.sh" push "$1:${REGISTRY_PORT}")"
  echo "${images}" > "${STATE}/images.env"
  echo "${images}"
}

node_ready() {
  [[ "$("${kubectl[@]}" get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

healthy() {  # the node runs for this cluster and is Ready
  local cluster_dir="$1" name
  [[ -f "${STATE}/owner" && "$(cat "${STATE}/owner")" == "${cluster_dir}" ]] || return 1
  # A recreated cluster has a new CA: the node's certificates are stale.
  cmp -s "${STATE}/ca.crt" "${cluster_dir}/pki/ca.crt" || return 1
  for name in "${PROCESSES[@]}"; do pid_alive "${name}" || return 1; done
  node_ready
}

up() {
  local cluster_dir="$1"
  preflight
  tools
  kubectl=("${KUBERNETES_BIN}/kubectl" --kubeconfig "${cluster_dir}/kubeconfig.yaml")
  if [[ -f "${STATE}/owner" && "$(cat "${STATE}/owner")" != "${cluster_dir}" ]] \
     && [[ -d "$(cat "${STATE}/owner")" ]]; then
    log "the real node belongs to the cluster in $(cat "${STATE}/owner"); one per machine:"
    log "run hack/cluster.sh down for that cluster first (or BLOGSITE_REAL_NODE=0)"
    exit 1
  fi
  if healthy "${cluster_dir}"; then
    # The images follow the tree (a changed operator/ is a new operator image).
    push_images "$(node_ip)" > /dev/null
    return
  fi
  if [[ -d "${STATE}" || -d "${RUN}" ]]; then
    log "restarting the node from scratch"
    down "${cluster_dir}"
  fi
  local start=${SECONDS} ip
  ip="$(node_ip)"
  if [[ -z "${ip}" ]]; then log "no global IPv4 address on this machine"; exit 1; fi
  mkdir -p "${STATE}" "${RUN}"
  record_machine
  echo "${cluster_dir}" > "${STATE}/owner"
  cp "${cluster_dir}/pki/ca.crt" "${STATE}/ca.crt"
  LOGS="${cluster_dir}/logs/node"
  mkdir -p "${LOGS}"
  start_registry "${ip}"
  start_private_registry "${ip}"
  local pause_image
  pause_image="$(push_images "${ip}" | sed -n 's/^PAUSE_IMAGE=//p')"
  isolate_test_range
  start_containerd "${ip}" "${pause_image}"
  start_kubelet "${cluster_dir}" "${ip}"
  start_kube_proxy "${cluster_dir}" "${ip}"
  # The kubelet's own health first: after a restart the Node may still show
  # the Ready of the kubelet before.
  wait_for 60 "the kubelet" curl -fsS http://127.0.0.1:10248/healthz
  wait_for 120 "node ${NODE_NAME}" node_ready
  start_coredns "${cluster_dir}" "${ip}"
  log "node ${NODE_NAME} (${ip}) Ready in $((SECONDS - start))s"
}

umount_under() {  # every mount point below the given directories, deepest first
  local prefix
  for prefix in "$@"; do
    findmnt -rn -o TARGET | awk -v p="${prefix}" 'index($0, p "/") == 1 || $0 == p' \
      | sort -r | while read -r target; do umount -l "${target}" 2>/dev/null || true; done
  done
}

clean_iptables() {  # drop our chains and every rule that jumps to them
  local cmd
  for cmd in iptables ip6tables; do
    command -v "${cmd}-save" >/dev/null || continue
    local saved
    saved="$("${cmd}-save" 2>/dev/null)" || continue
    grep -qE '(KUBE-|CNI-|BLOGSITE-)' <<<"${saved}" || continue
    awk '
      /^:(KUBE-|CNI-|BLOGSITE-)/ { next }
      /^-A (KUBE-|CNI-|BLOGSITE-)/ { next }
      / -j (KUBE-|CNI-|BLOGSITE-)/ || / -g (KUBE-|CNI-|BLOGSITE-)/ { next }
      { print }
    ' <<<"${saved}" | "${cmd}-restore" -w
  done
  # Tables that did not exist before `up` go again once they are empty.
  [[ -f "${STATE}/before/nft-tables" ]] || return 0
  local table
  nft list tables | while read -r table; do
    grep -qxF "${table}" "${STATE}/before/nft-tables" && continue
    # Empty: nothing but the table, its chains' headers and braces.
    if ! nft list ${table} | grep -qvE '^\s*(table |chain |type |policy |\}|$)'; then
      nft delete ${table}
    fi
  done
}

down() {
  local cluster_dir="${1:-}"
  if [[ ! -d "${STATE}" && ! -d "${RUN}" ]]; then return; fi
  if [[ ${EUID} -ne 0 ]]; then log "the real node needs root"; exit 1; fi
  if [[ -n "${cluster_dir}" && -f "${STATE}/owner" && "$(cat "${STATE}/owner")" != "${cluster_dir}" ]] \
     && [[ -d "$(cat "${STATE}/owner")" ]]; then
    return  # the node belongs to another cluster
  fi
  local name
  for name in coredns kube-proxy kubelet; do stop "${name}"; done
  # Containers first (runc's own records), then their shims, then containerd.
  if [[ -d "${RUN}/runc" ]]; then
    local ns id
    for ns in "${RUN}/runc"/*/; do
      [[ -d "${ns}" ]] || continue
      for id in $(runc --root "${ns}" list -q 2>/dev/null); do
        runc --root "${ns}" delete --force "${id}" >/dev/null 2>&1 || true
      done
    done
  fi
  pkill -KILL -f "containerd-shim-runc-v2 .*-address ${RUN}/containerd/containerd.sock" 2>/dev/null || true
  for name in containerd registry-auth registry; do stop "${name}"; done
  tools >/dev/null 2>&1 && "${KUBERNETES_BIN}/kube-proxy" --cleanup >/dev/null 2>&1 || true
  clean_iptables
  ip link delete "${BRIDGE}" 2>/dev/null || true  # and the route through it
  umount_under "${STATE}" "${RUN}" /run/containerd /var/run/netns /run/netns
  # cgroups the kubelet made for pods (cgroupfs driver: in every hierarchy).
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d "${hierarchy}kubepods" ]] || continue
    find "${hierarchy}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if [[ -f "${STATE}/before/sysctls" ]]; then
    while IFS='=' read -r name value; do
      [[ -n "${name}" ]] && sysctl -q -w "${name}=${value}" >/dev/null 2>&1 || true
    done < "${STATE}/before/sysctls"
  fi
  if [[ -f "${STATE}/before/absent" ]]; then
    while read -r name; do
      [[ -n "${name}" ]] && rm -rf --one-file-system "${name}"
    done < "${STATE}/before/absent"
  fi
  rm -rf --one-file-system "${STATE}" "${RUN}"
}

case "${1:-}" in
  up) up "${2:?cluster directory}" ;;
  down) down "${2:-}" ;;
  status) if [[ -f "${STATE}/owner" ]]; then cat "${STATE}/owner"; fi ;;
  ip) node_ip ;;
  *) echo "usage: $0 up|down CLUSTER_DIR | status" >&2; exit 2 ;;
esac
