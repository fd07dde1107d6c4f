#!/usr/bin/env bash
# Debian packages the tests need, installed when missing:
#   runc, containernetworking-plugins, iptables, nftables, conntrack
#                 the real node's container runtime and pod network (hack/node.sh)
#   buildah, mmdebstrap
#                 build the images from the Dockerfile and Debian's packages (hack/images.sh)
#   prometheus    promtool checks the alert rules and the /metrics output
set -euo pipefail
wanted=(make:make runc:/usr/sbin/runc
  containernetworking-plugins:/usr/lib/cni/bridge iptables:/usr/sbin/iptables nftables:/usr/sbin/nft
  conntrack:/usr/sbin/conntrack buildah:/usr/bin/buildah mmdebstrap:/usr/bin/mmdebstrap
  curl:/usr/bin/curl openssl:/usr/bin/openssl prometheus:/usr/bin/promtool)
missing=()
for entry in "${wanted[@]}"; do
  package="${entry%%:*}" probe="${entry#*:}"
  if [[ "${probe}" == /* ]]; then [[ -x "${probe}" ]] || missing+=("${package}")
  else command -v "${probe}" >/dev/null || missing+=("${package}"); fi
done
((${#missing[@]})) || exit 0
if [[ ${EUID} -ne 0 ]]; then
  echo "[system-deps] missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "[system-deps] installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# The prometheus package starts a Prometheus (and node exporter) of its own;
# the tests run their own. (nginx is the frontend image's: hack/images.sh nginx.)
service prometheus stop >/dev/null 2>&1 || true
service prometheus-node-exporter stop >/dev/null 2>&1 || true
