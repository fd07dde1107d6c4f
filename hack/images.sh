#!/usr/bin/env bash
# Builds the project's OCI images on this machine, with no registry to pull
# from, and pushes them to a local plain-HTTP registry (hack/node.sh's).
#
#   hack/images.sh build           builds what is missing
#   hack/images.sh push HOST:PORT  builds what is missing, then pushes each image
#                                  to http://HOST:PORT/<repository>:<tag> (no TLS)
#
# Either prints one NAME=REFERENCE line per image on stdout (logs go to stderr):
#
#   OPERATOR_IMAGE=registry.blogsite.test/blogsite-operator:<tag>  the Dockerfile, with buildah bud
#   FRONTEND_IMAGE=registry.blogsite.test/nginx:<tag>              Debian's nginx-light, user 65532
#   DAEDALUS_IMAGE=registry.blogsite.test/daedalus-standin:<tag>   tests/images/daedalus, FROM scratch
#   PAUSE_IMAGE=registry.blogsite.test/pause:<tag>                 the real node's pod sandbox
#                                                                  (tests/images/pause, FROM scratch)
#   DAEDALUS_CRASH_IMAGE=...daedalus-standin:<tag>-crash (and _CRASH_ONCE_, _NEVER_READY_):
#                                                                  the stand-in misbehaving by default
#
# `push` also names the stand-in daedalus-standin:local in the registry, for
# deploy/examples/local/.
#
# registry.blogsite.test resolves nowhere (.test is reserved): the real node's
# containerd sends every registry name to the local registry, so only the
# repository and tag matter. Each <tag> is a hash of everything that goes into
# its image (this script, the Debian suite and mirrors, and the image's own
# sources: for the operator the Dockerfile, pyproject.toml, uv.lock, README.md
# and operator/**), so an unchanged tree builds nothing and prints the same
# references; a tag already in the registry is not pushed again.
#
# The Dockerfile's base, python:3.11-slim-bookworm, cannot be pulled here: a
# stand-in is bootstrapped from Debian's packages with mmdebstrap (python3 with
# a venv at /usr/local, so python3 and pip live in /usr/local/bin as in the
# official image) and tagged docker.io/library/python:3.11-slim-bookworm in
# buildah's own storage, which `buildah bud --pull=never` then uses. The
# Dockerfile's RUN steps reach PyPI and Debian's mirror; they see the host's CA
# bundle (BLOGSITE_BUILD_CA, default /etc/ssl/certs/ca-certificates.crt; empty
# for none) in place of the image's, for TLS-intercepting proxies. It is
# mounted for the build only and never ends up in an image (nor can a RUN step
# replace it: one that runs update-ca-certificates needs BLOGSITE_BUILD_CA=).
#
# Everything is kept under ${BLOGSITE_TOOLS_CACHE:-~/.cache/blogsite-operator}/images:
# buildah's storage (vfs driver, chroot isolation, so no daemon and no
# overlayfs) and its temporary files. The newest BLOGSITE_IMAGES_KEEP (default
# 3) tags of each repository stay, the current ones always. DEBIAN_MIRROR and
# DEBIAN_SECURITY_MIRROR change the mirrors (and the tags).
#
# Needs root and the Debian packages buildah, mmdebstrap (with
# debian-archive-keyring), curl, and Go (tests/images/*).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
self="${here}/$(basename "${BASH_SOURCE[0]}")"
store="${BLOGSITE_TOOLS_CACHE:-${HOME}/.cache/blogsite-operator}/images"

SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
REGISTRY_NAME=registry.blogsite.test
PYTHON_BASE=docker.io/library/python:3.11-slim-bookworm
NONROOT=65532
KEEP="${BLOGSITE_IMAGES_KEEP:-3}"
if [[ -z "${BLOGSITE_BUILD_CA+set}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
  BLOGSITE_BUILD_CA=/etc/ssl/certs/ca-certificates.crt
fi
BUILD_CA="${BLOGSITE_BUILD_CA:-}"

log() { echo "[images] $*" >&2; }
die() { echo "[images] error: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${self}" >&2
  exit 2
}

bah() {  # buildah on this script's own storage, never /var/lib/containers
  # buildah (containers/image) would also keep a blob-info cache in
  # /var/lib/containers/cache: it runs with /var/lib read-only, in a mount
  # namespace of its own, and keeps that cache in memory instead.
  # shellcheck disable=SC2016  # expanded by that sh
  STORE="${store}" unshare --mount --propagation private -- sh -ec '
    mount --bind /var/lib /var/lib
    mount -o remount,bind,ro /var/lib
    case "${STORE}/" in /var/lib/*) mount --bind "${STORE}" "${STORE}" ;; esac
    exec "$@"' sh \
    buildah --root "${store}/storage" --runroot "${store}/run" --storage-driver vfs "$@"
}

logged() {  # logged NAME COMMAND...: output to ${store}/logs/NAME.log, its end on failure
  local log_file="${store}/logs/$1.log"
  shift
  if "$@" > "${log_file}" 2>&1; then return 0; fi
  tail -n 40 "${log_file}" | sed 's/^/  | /' >&2
  log "the whole output: ${log_file}"
  return 1
}

have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# --- content tags ---------------------------------------------------------

files_of() {  # files_of PATH...: the regular files under the paths, sorted, minus bytecode
  (cd "${repo}" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort)
}

content_tag() {  # content_tag LABEL FILE...: 16 hex digits of the inputs' hash
  local label="$1"
  shift
  {
    printf 'image %s\nsuite %s\nmirrors %s %s\n' "${label}" "${SUITE}" \
      "${DEBIAN_MIRROR}" "${DEBIAN_SECURITY_MIRROR}"
    sha256sum < "${self}"
    if (($#)); then
      cd "${repo}"
      sha256sum -- "$@"
      stat -c '%a %n' -- "$@"
    fi
  } | sha256sum | cut -c1-16
}

# --- Debian root filesystems ----------------------------------------------

debian_rootfs() {  # debian_rootfs LOG OUT.tar VARIANT PACKAGES [mmdebstrap options...]
  local log_name="$1" out="$2" variant="$3" packages="$4"
  shift 4
  # Merged /usr as Debian's own images have it (debootstrap's symlinks), not
  # the usrmerge package, which would pull perl in. Documentation, man pages
  # and translations are left out, also of what apt installs later.
  logged "${log_name}" mmdebstrap --mode=root --format=tar --variant="${variant}" \
    --include="${packages}" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "$@" "${SUITE}" "${out}" \
    "deb ${DEBIAN_MIRROR} ${SUITE} main" \
    "deb ${DEBIAN_MIRROR} ${SUITE}-updates main" \
    "deb ${DEBIAN_SECURITY_MIRROR} ${SUITE}-security main" \
    || die "mmdebstrap failed for ${packages} (is ${DEBIAN_MIRROR} reachable?)"
  # The runtime provides /dev; device nodes in a layer are only trouble.
  tar --delete --wildcards -f "${out}" './dev/?*'
}

import_rootfs() {  # import_rootfs ROOTFS.tar REF [buildah config options...]
  local rootfs="$1" ref="$2" ctr
  shift 2
  ctr="$(bah from --quiet scratch)"
  bah add --quiet "${ctr}" "${rootfs}" / >/dev/null
  bah config "$@" "${ctr}"
  bah commit --quiet --rm "${ctr}" "${ref}" >/dev/null
}

build_python_base() {  # build_python_base REF: the stand-in for python:3.11-slim-bookworm
  local ref="$1" dir="${tmp}/python-base" start=${SECONDS}
  mkdir -p "${dir}"
  # As in Debian's official images (debuerreotype): no service starts during
  # an `apt-get install`, and apt keeps no .debs or package caches.
  printf '#!/bin/sh\nexit 101\n' > "${dir}/policy-rc.d"
  chmod 0755 "${dir}/policy-rc.d"
  cat > "${dir}/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  # shellcheck disable=SC2016  # "$1", the chroot, is mmdebstrap's to expand
  local in_chroot='env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$1"'
  log "python base: bootstrapping Debian ${SUITE} with python3 (about a minute)"
  # A venv at /usr/local puts python3, pip (and what pip installs) in
  # /usr/local/bin, where the official image has them.
  debian_rootfs python-base "${dir}/rootfs.tar" minbase \
    python3,python3-venv,ca-certificates,netbase,tzdata \
    --skip=chroot/policy-rc.d \
    --extract-hook="copy-in ${dir}/policy-rc.d /usr/sbin" \
    --customize-hook="copy-in ${dir}/docker-clean /etc/apt/apt.conf.d" \
    --customize-hook="${in_chroot} /usr/bin/python3 -m venv /usr/local" \
    --customize-hook="${in_chroot} /usr/local/bin/pip --version" \
    --customize-hook="${in_chroot} sh -c 'rm -f /var/cache/apt/*.bin'" \
    --customize-hook="${in_chroot} /usr/local/bin/python3 -c 'import platform; print(platform.python_version())' > ${dir}/python-version"
  local version
  version="$(cat "${dir}/python-version")"
  [[ "${version}" == 3.11.* ]] || die "the python base has Python '${version}', not 3.11"
  import_rootfs "${dir}/rootfs.tar" "${ref}" \
    --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env "PYTHON_VERSION=${version}" --cmd '["python3"]'
  log "python base: Python ${version} from Debian ${SUITE}, in $((SECONDS - start))s"
}

build_frontend() {  # build_frontend REF
  local ref="$1" dir="${tmp}/frontend"
  mkdir -p "${dir}"
  log "frontend: bootstrapping Debian ${SUITE} with nginx-light (about a minute)"
  # Only Essential packages and nginx-light: no apt, no perl. /etc/blogsite
  # holds the mount points of the rendered pod (nginx/ and tls/).
  # shellcheck disable=SC2016  # "$1", the chroot, is mmdebstrap's to expand
  debian_rootfs frontend "${dir}/rootfs.tar" essential nginx-light \
    --customize-hook='env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$1" sh -ec "
      echo nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin >> /etc/passwd
      echo nonroot:x:65532: >> /etc/group
      mkdir -p /etc/blogsite/nginx /etc/blogsite/tls
      rm -rf /var/lib/apt /var/cache/apt /var/cache/debconf/*-old /var/log/*.log /var/log/apt
      nginx -v"'
  import_rootfs "${dir}/rootfs.tar" "${ref}" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --user "${NONROOT}:${NONROOT}" --port 8080 --port 8081 --port 8443 \
    --cmd '["nginx", "-e", "stderr", "-c", "/etc/blogsite/nginx/nginx.conf", "-g", "daemon off;"]' \
    --stop-signal SIGQUIT
}

build_operator() {  # build_operator REF FILE...: buildah bud of the Dockerfile on exactly FILE...
  local ref="$1" context="${tmp}/operator-context"
  shift
  local base_ref
  base_ref="localhost/blogsite-base/python:$(content_tag python-base)"
  if ! have_image "${base_ref}"; then build_python_base "${base_ref}"; fi
  bah tag "${base_ref}" "${PYTHON_BASE}"
  # The build context is what the tag hashes, nothing else (no __pycache__).
  mkdir -p "${context}"
  (cd "${repo}" && cp -p --parents -t "${context}" -- "$@")
  local args=(--isolation chroot --pull=never --layers=false --format oci
    --file "${context}/Dockerfile" --tag "${ref}")
  if [[ -n "${BUILD_CA}" ]]; then
    [[ -f "${BUILD_CA}" ]] || die "BLOGSITE_BUILD_CA=${BUILD_CA} is no file"
    args+=(--volume "${BUILD_CA}:/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  log "operator: buildah bud of the Dockerfile (a few minutes)"
  logged operator bah bud "${args[@]}" "${context}" || die "buildah bud of the Dockerfile failed"
}

build_go_image() {  # build_go_image REF DIR BINARY USER LDFLAGS [buildah config options...]
  local ref="$1" dir="$2" binary="$3" user="$4" ldflags="$5" ctr
  shift 5
  log "${binary}: go build (static) and an image FROM scratch"
  (cd "${repo}/${dir}" && CGO_ENABLED=0 GOFLAGS='' GOTOOLCHAIN=local \
    go build -trimpath -ldflags "-s -w ${ldflags}" -o "${tmp}/${binary}" .) \
    || die "go build in ${dir} failed"
  ctr="$(bah from --quiet scratch)"
  bah copy --quiet --chown 0:0 --chmod 0755 "${ctr}" "${tmp}/${binary}" "/${binary}" >/dev/null
  bah config --user "${user}" --entrypoint "[\"/${binary}\"]" "$@" "${ctr}"
  bah commit --quiet --rm "${ctr}" "${ref}" >/dev/null
}

# --- housekeeping -----------------------------------------------------------

remove_tree() {  # rm -rf that never follows a mount left by an interrupted chroot
  local dir="$1" target
  [[ -e "${dir}" ]] || return 0
  awk -v p="${dir}/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r \
    | while read -r target; do umount -l "${target}" 2>/dev/null || true; done
  if awk -v p="${dir}/" 'index($5, p) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
    log "warning: ${dir} still has mounts; leaving it"
    return 0
  fi
  rm -rf --one-file-system -- "${dir}"
}

prune() {  # prune REF...: keep REF... and the newest others up to KEEP per repository
  local ref repository line kept wanted=" $* "
  for ref in "$@"; do
    repository="${ref%:*}"
    kept=1
    while read -r line; do
      [[ -n "${line}" && "${wanted}" != *" ${line} "* ]] || continue
      if ((kept < KEEP)); then kept=$((kept + 1)); continue; fi
      log "removing ${line} (BLOGSITE_IMAGES_KEEP=${KEEP})"
      bah rmi "${line}" >/dev/null 2>&1 || log "warning: could not remove ${line}"
    done < <(bah images --noheading --format '{{.CreatedAtRaw}}|{{.Name}}:{{.Tag}}' \
               --filter "reference=${repository}" | sort -r | cut -d'|' -f2)
  done
  bah rmi --prune >/dev/null 2>&1 || true
}

# --- main -------------------------------------------------------------------

command="${1:-}"
host=""
case "${command}" in
  build) (($# == 1)) || usage ;;
  push)
    (($# == 2)) || usage
    host="$2"
    [[ "${host}" =~ ^[A-Za-z0-9.-]+:[0-9]+$|^\[[0-9A-Fa-f:.]+\]:[0-9]+$ ]] \
      || die "push wants HOST:PORT, got '${host}'"
    ;;
  *) usage ;;
esac

((EUID == 0)) || die "run as root (buildah and mmdebstrap build root filesystems)"
for tool in buildah mmdebstrap go curl sha256sum flock; do
  command -v "${tool}" >/dev/null || die "${tool} is missing (hack/system-deps.sh installs the Debian packages)"
done
[[ -d /usr/share/mmdebstrap/hooks/merged-usr ]] || die "mmdebstrap has no merged-usr hook (mmdebstrap >= 1.0 wanted)"
[[ "${KEEP}" =~ ^[1-9][0-9]*$ ]] || die "BLOGSITE_IMAGES_KEEP must be a positive number"

mkdir -p "${store}/storage" "${store}/run" "${store}/tmp" "${store}/logs" "${store}/cni"
# buildah reads these as well as its flags: keep the host's own settings out.
cat > "${store}/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "${store}/storage"
runroot = "${store}/run"
CONF
cat > "${store}/registries.conf" <<'CONF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
# Chroot isolation uses the host's network; the backend is only initialised,
# and CNI's (unlike netavark's /run/containers) keeps its files here.
cat > "${store}/containers.conf" <<CONF
[network]
network_backend = "cni"
network_config_dir = "${store}/cni"
CONF
export CONTAINERS_CONF="${store}/containers.conf"
export CONTAINERS_STORAGE_CONF="${store}/storage.conf"
export CONTAINERS_REGISTRIES_CONF="${store}/registries.conf"
export BUILDAH_ISOLATION=chroot

exec 9>"${store}/lock"
if ! flock -n 9; then
  log "waiting for another hack/images.sh to finish"
  flock 9
fi
# Whatever an interrupted run left: working containers and temporary files.
bah rm --all >/dev/null 2>&1 || true
for stale in "${store}"/tmp/*; do remove_tree "${stale}"; done
tmp="$(mktemp -d "${store}/tmp/run.XXXXXX")"
trap 'bah rm --all >/dev/null 2>&1 || true; remove_tree "${tmp}"' EXIT
# buildah and Go put big temporary files in TMPDIR (default /var/tmp).
export TMPDIR="${tmp}"

mapfile -t operator_files < <(echo Dockerfile; echo pyproject.toml; echo uv.lock; echo README.md; files_of operator)
mapfile -t daedalus_files < <(files_of tests/images/daedalus)
mapfile -t pause_files < <(files_of tests/images/pause)
go_version="$(GOTOOLCHAIN=local go env GOVERSION)"

operator_tag="$(content_tag operator "${operator_files[@]}")"
frontend_tag="$(content_tag frontend)"
daedalus_tag="$(content_tag "daedalus ${go_version}" "${daedalus_files[@]}")"
pause_tag="$(content_tag "pause ${go_version}" "${pause_files[@]}")"

# The stand-in also comes as variants that misbehave by default (its BEHAVIOR
# baked into the image), so a test rolls out a bad version by changing only
# the image: <tag>-crash, <tag>-crash-once, <tag>-never-ready.
variants=(crash crash-once never-ready)
names=(OPERATOR_IMAGE FRONTEND_IMAGE DAEDALUS_IMAGE PAUSE_IMAGE)
repositories=(blogsite-operator nginx daedalus-standin pause)
tags=("${operator_tag}" "${frontend_tag}" "${daedalus_tag}" "${pause_tag}")
for variant in "${variants[@]}"; do
  names+=("DAEDALUS_${variant^^}_IMAGE"); names[-1]="${names[-1]//-/_}"
  repositories+=(daedalus-standin)
  tags+=("${daedalus_tag}-${variant}")
done
refs=()
for i in "${!names[@]}"; do refs+=("${REGISTRY_NAME}/${repositories[i]}:${tags[i]}"); done

if [[ -n "${host}" ]]; then
  curl -fsS -o /dev/null --max-time 10 "http://${host}/v2/" \
    || die "no registry answers at http://${host}/v2/"
fi

built=()
for i in "${!names[@]}"; do
  ref="${refs[i]}"
  if have_image "${ref}"; then continue; fi
  start=${SECONDS}
  case "${names[i]}" in
    OPERATOR_IMAGE) build_operator "${ref}" "${operator_files[@]}" ;;
    FRONTEND_IMAGE) build_frontend "${ref}" ;;
    DAEDALUS_IMAGE)
      build_go_image "${ref}" tests/images/daedalus daedalus-standin "${NONROOT}:${NONROOT}" \
        "-X main.version=${tags[i]}" --port 8080 --stop-signal SIGTERM ;;
    PAUSE_IMAGE)
      build_go_image "${ref}" tests/images/pause pause 65535:65535 "" --stop-signal SIGTERM ;;
    DAEDALUS_*_IMAGE)  # after DAEDALUS_IMAGE in the list, so that one exists
      variant="${tags[i]#"${daedalus_tag}-"}"
      ctr="$(bah from --quiet --pull=never "${refs[2]}")"
      bah config --env "BEHAVIOR=${variant}" "${ctr}"
      bah commit --quiet --rm "${ctr}" "${ref}" >/dev/null ;;
  esac
  have_image "${ref}" || die "building ${ref} left no image"
  log "built ${ref} in $((SECONDS - start))s"
  built+=("${ref}")
done
if ((${#built[@]})); then
  prune "${refs[@]}" "localhost/blogsite-base/python:$(content_tag python-base)"
fi

if [[ -n "${host}" ]]; then
  accept='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'
  for i in "${!names[@]}"; do
    destination="${host}/${repositories[i]}:${tags[i]}"
    # The tag is a content hash: a tag already there holds these inputs.
    if curl -fsS -o /dev/null --max-time 10 -I -H "Accept: ${accept}" \
         "http://${host}/v2/${repositories[i]}/manifests/${tags[i]}" 2>/dev/null; then
      log "${destination} is already there"
      continue
    fi
    start=${SECONDS}
    bah push --quiet --tls-verify=false --retry 3 "${refs[i]}" "docker://${destination}" >&2 \
      || die "pushing ${refs[i]} to http://${destination} failed"
    log "pushed ${destination} in $((SECONDS - start))s"
  done
  # A stable name for the stand-in, for deploy/examples/local/ (`make run`).
  bah push --quiet --tls-verify=false --retry 3 "${refs[2]}" \
    "docker://${host}/daedalus-standin:local" >&2 \
    || die "pushing ${refs[2]} as daedalus-standin:local failed"
fi

for i in "${!names[@]}"; do echo "${names[i]}=${refs[i]}"; done
