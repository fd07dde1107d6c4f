#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, kwokctl), the control plane of the
# oldest supported Kubernetes minor (kubernetes-oldest), the test ACME server
# (pebble, pebble-challtestsrv), the real node's parts, helm and a Gateway API
# implementation (traefik, with the Gateway API CRDs) from the Go module proxy at the
# versions pinned in hack/versions.env. Binaries are stripped, built with
# -trimpath, and cached outside the repository under
#   ${BLOGSITE_TOOLS_CACHE:-~/.cache/blogsite-operator}/bin/<tool>-<version>/
# so a second run only checks that they exist. Prints the bin directory of
# each tool, one per line, in the form NAME=PATH (for `make` and tests).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

cache="${BLOGSITE_TOOLS_CACHE:-${HOME}/.cache/blogsite-operator}"
jobs="${BUILD_JOBS:-2}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
log() { echo "[build-tools] $*" >&2; }

built() {  # built NAME START: logs how long a fresh build took
  log "$1 built in $((SECONDS - $2))s"
}

build_kubernetes() {  # build_kubernetes VERSION STAGING_VERSION GOTOOLCHAIN COMMAND...
  local version="$1" staging="$2" toolchain="$3"
  shift 3
  local commands=("$@") out="${cache}/bin/kubernetes-${version}" command missing=0
  for command in "${commands[@]}"; do [[ -x "${out}/${command}" ]] || missing=1; done
  ((missing)) || return 0
  local start=${SECONDS} src="${cache}/src/kubernetes-${version}"
  log "building kubernetes ${version} (several minutes)"
  mkdir -p "${src}" "${out}.tmp"
  (
    cd "${src}"
    # An older Kubernetes is built with the Go it was released with, which
    # the module proxy serves as golang.org/toolchain.
    export GOTOOLCHAIN="${toolchain}"
    # k8s.io/kubernetes replaces its staging modules with ./staging/...; a
    # dependency's replaces are ignored, so pin each to its published tag.
    go mod download -json "k8s.io/kubernetes@${version}" >/dev/null
    local upstream
    upstream="$(go env GOMODCACHE)/k8s.io/kubernetes@${version}/go.mod"
    {
      echo "module blogsite-operator.local/kubernetes-build"
      echo
      grep -E '^go ' "${upstream}"
      echo
      echo "require k8s.io/kubernetes ${version}"
      echo
      echo "replace ("
      sed -nE "s#^\s*(k8s.io/[a-z0-9-]+) => ./staging/src/.*#\t\1 => \1 ${staging}#p" "${upstream}"
      echo ")"
    } > go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for command in "${commands[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "${command}"; done
      printf ')\n'
    } > tools.go
    go mod tidy >/dev/null
    local major minor
    major="${version#v}"; major="${major%%.*}"
    minor="${version#v*.}"; minor="${minor%%.*}"
    local ld="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      ld+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=${major}"
      ld+=" -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
      ld+=" -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
    done
    go build -p "${jobs}" -trimpath -ldflags "${ld}" -o "${out}.tmp/" \
      "${commands[@]/#/k8s.io/kubernetes/cmd/}"
  )
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "kubernetes ${version}" "${start}"
}

build_etcd() {
  local out="${cache}/bin/etcd-${ETCD_VERSION}"
  if [[ -x "${out}/etcd" ]]; then return; fi
  local start=${SECONDS} src="${cache}/src/etcd-${ETCD_VERSION}"
  log "building etcd ${ETCD_VERSION}"
  mkdir -p "${src}" "${out}.tmp"
  (
    cd "${src}"
    # go.etcd.io/etcd/server/v3 is a main package but has replace directives,
    # so `go install` refuses it; a wrapper module builds it as a dependency.
    printf 'module blogsite-operator.local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "${ETCD_VERSION}" > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy >/dev/null
    go build -p "${jobs}" -trimpath -ldflags "-s -w" -o "${out}.tmp/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "etcd ${ETCD_VERSION}" "${start}"
}

build_kwok() {
  local out="${cache}/bin/kwok-${KWOK_VERSION}"
  if [[ -x "${out}/kwok" && -x "${out}/kwokctl" ]]; then return; fi
  local start=${SECONDS}
  log "building kwok ${KWOK_VERSION}"
  mkdir -p "${out}.tmp"
  local ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  ld+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION}"
  GOBIN="${out}.tmp" go install -p "${jobs}" -trimpath -ldflags "${ld}" \
    "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" \
    "sigs.k8s.io/kwok/cmd/kwokctl@${KWOK_VERSION}"
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "kwok ${KWOK_VERSION}" "${start}"
}

build_pebble() {
  local out="${cache}/bin/pebble-${PEBBLE_VERSION}"
  if [[ -x "${out}/pebble" && -x "${out}/pebble-challtestsrv" \
     && -f "${out}/pebble.minica.key.pem" ]]; then return; fi
  local start=${SECONDS}
  log "building pebble ${PEBBLE_VERSION}"
  mkdir -p "${out}.tmp"
  GOBIN="${out}.tmp" go install -p "${jobs}" -trimpath -ldflags "-s -w" \
    "github.com/letsencrypt/pebble/v2/cmd/pebble@${PEBBLE_VERSION}" \
    "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@${PEBBLE_VERSION}"
  # Pebble's own test CA and config live in the module, not the binary.
  local mod
  mod="$(go env GOMODCACHE)/github.com/letsencrypt/pebble/v2@${PEBBLE_VERSION}"
  cp "${mod}/test/certs/pebble.minica.pem" "${mod}/test/certs/pebble.minica.key.pem" "${out}.tmp/"
  cp "${mod}/test/certs/localhost/cert.pem" "${out}.tmp/localhost-cert.pem"
  cp "${mod}/test/certs/localhost/key.pem" "${out}.tmp/localhost-key.pem"
  chmod 0644 "${out}.tmp/"*.pem
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "pebble ${PEBBLE_VERSION}" "${start}"
}

# The real node's container runtime: containerd 2.x (kubelet 1.36 refuses
# 1.x, all Debian has), its runc shim and ctr.
build_containerd() {
  local out="${cache}/bin/containerd-${CONTAINERD_VERSION}"
  if [[ -x "${out}/containerd" && -x "${out}/containerd-shim-runc-v2" && -x "${out}/ctr" ]]; then return; fi
  local start=${SECONDS}
  log "building containerd ${CONTAINERD_VERSION}"
  mkdir -p "${out}.tmp"
  local ld="-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
  GOBIN="${out}.tmp" go install -p "${jobs}" -trimpath -ldflags "${ld}" \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "containerd ${CONTAINERD_VERSION}" "${start}"
}

go_install() {  # go_install NAME VERSION PACKAGE...: one `go install`, cached by version
  local name="$1" version="$2"
  shift 2
  local out="${cache}/bin/${name}-${version}" start=${SECONDS}
  if [[ -x "${out}/${name}" ]]; then return; fi
  log "building ${name} ${version}"
  mkdir -p "${out}.tmp"
  GOBIN="${out}.tmp" go install -p "${jobs}" -trimpath -ldflags "-s -w" "$@"
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "${name} ${version}" "${start}"
}

# The real node's cluster DNS, and the registry its images are pulled from.
build_coredns() { go_install coredns "${COREDNS_VERSION}" "github.com/coredns/coredns@${COREDNS_VERSION}"; }
build_registry() {
  go_install registry "${REGISTRY_VERSION}" \
    "github.com/distribution/distribution/v3/cmd/registry@${REGISTRY_VERSION}"
}

# The operator's installer, for the chart's tests and a user's first install.
build_helm() {
  local out="${cache}/bin/helm-${HELM_VERSION}" start=${SECONDS}
  if [[ -x "${out}/helm" ]]; then return; fi
  log "building helm ${HELM_VERSION}"
  mkdir -p "${out}.tmp"
  GOBIN="${out}.tmp" go install -p "${jobs}" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"
  rm -rf "${out}"; mv "${out}.tmp" "${out}"
  built "helm ${HELM_VERSION}" "${start}"
}

# A Gateway API implementation for the shared entry point's tests. Traefik's
# go.mod replaces modules (its forks, a local one), so `go install` refuses
# it and a wrapper module would drop those replaces: it is built inside a
# writable copy of its own module. Its web UI is left out (the module holds
# only a placeholder of it). The Gateway API CRDs come from the release
# Traefik is built against, as its experimental channel.
build_traefik() {
  local out="${cache}/bin/traefik-${TRAEFIK_VERSION}" start=${SECONDS}
  if [[ -x "${out}/traefik" && -d "${out}/gateway-api-crds" ]]; then return; fi
  local src="${cache}/src/traefik-${TRAEFIK_VERSION}"
  log "building traefik ${TRAEFIK_VERSION} (several minutes)"
  mkdir -p "${out}.tmp/gateway-api-crds"
  (
    local mod
    mod="$(cd /tmp && go mod download -json "github.com/traefik/traefik/v3@${TRAEFIK_VERSION}" \
      | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    rm -rf "${src}"; mkdir -p "$(dirname "${src}")"
    cp -r "${mod}" "${src}"; chmod -R u+w "${src}"
    cd "${src}"
    grep -q "sigs.k8s.io/gateway-api ${GATEWAY_API_VERSION}\$" go.mod \
      || { log "traefik ${TRAEFIK_VERSION} is not built against gateway-api ${GATEWAY_API_VERSION}"; exit 1; }
    go build -p "${jobs}" -trimpath -o "${out}.tmp/traefik" \
      -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=${TRAEFIK_VERSION}" \
      ./cmd/traefik
    local crds
    crds="$(go env GOMODCACHE)/sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}/config/crd/experimental"
    cp "${crds}"/gateway.networking.k8s.io_*.yaml "${out}.tmp/gateway-api-crds/"
    chmod 0644 "${out}.tmp/gateway-api-crds/"*
  )
  rm -rf "${out}" "${src}"; mv "${out}.tmp" "${out}"
  built "traefik ${TRAEFIK_VERSION}" "${start}"
}

if ! command -v go >/dev/null; then
  log "Go is needed to build the control plane (Go >= 1.26 with the module proxy reachable)"
  exit 1
fi

want="${*:-kubernetes kubernetes-oldest etcd kwok pebble containerd coredns registry helm traefik}"
for tool in ${want}; do
  case "${tool}" in
    kubernetes)
      build_kubernetes "${KUBERNETES_VERSION}" "${KUBE_STAGING_VERSION}" local \
        kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy ;;
    # The oldest supported minor: a control plane for KWOK only.
    kubernetes-oldest)
      build_kubernetes "${KUBERNETES_OLDEST_VERSION}" "${KUBE_OLDEST_STAGING_VERSION}" \
        "${KUBERNETES_OLDEST_GO}" kube-apiserver kube-controller-manager kube-scheduler ;;
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    pebble) build_pebble ;;
    containerd) build_containerd ;;
    coredns) build_coredns ;;
    registry) build_registry ;;
    helm) build_helm ;;
    traefik) build_traefik ;;
    *) log "unknown tool ${tool}"; exit 2 ;;
  esac
done
echo "KUBERNETES_BIN=${cache}/bin/kubernetes-${KUBERNETES_VERSION}"
echo "KUBERNETES_OLDEST_BIN=${cache}/bin/kubernetes-${KUBERNETES_OLDEST_VERSION}"
echo "ETCD_BIN=${cache}/bin/etcd-${ETCD_VERSION}"
echo "KWOK_BIN=${cache}/bin/kwok-${KWOK_VERSION}"
echo "PEBBLE_BIN=${cache}/bin/pebble-${PEBBLE_VERSION}"
echo "HELM_BIN=${cache}/bin/helm-${HELM_VERSION}"
echo "CONTAINERD_BIN=${cache}/bin/containerd-${CONTAINERD_VERSION}"
echo "COREDNS_BIN=${cache}/bin/coredns-${COREDNS_VERSION}"
echo "REGISTRY_BIN=${cache}/bin/registry-${REGISTRY_VERSION}"
echo "TRAEFIK_BIN=${cache}/bin/traefik-${TRAEFIK_VERSION}"
