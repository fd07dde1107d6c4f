#!/usr/bin/env bash
# Builds the project's OCI images on this machine, with no registry to pull
# from, and pushes them to a local plain-HTTP registry (hack/node.sh's).
#
#   hack/images.sh build           builds what is missing
#   hack/images.sh push HOST:PORT  builds what is missing, then pushes each image
#                                  to http://HOST:PORT/<repository>:<tag> (no TLS)
#   hack/images.sh nginx           builds the frontend image if missing and prints
#                                  NGINX=<path> of a command that runs its nginx
#                                  here, with the image's own libraries
#
# The tests run nginx outside the cluster too (`nginx -t` of rendered
# configurations, the operator's checker when it runs on this machine): that
# is the frontend image's nginx binary, run by the image's own dynamic loader
# on the image's libraries (glibc, OpenSSL, PCRE), from a copy of its root
# filesystem kept beside the image. Nothing is installed on the host.
#
# Either prints one NAME=REFERENCE line per image on stdout (logs go to stderr):
#
#   FRONTEND_IMAGE=registry.blogsite.test/blogsite-frontend:<tag>  the Dockerfile's `frontend` target
#   OPERATOR_IMAGE=registry.blogsite.test/blogsite-operator:<tag>  the Dockerfile, on that frontend image
#   DAEDALUS_IMAGE=registry.blogsite.test/daedalus-standin:<tag>   tests/images/daedalus, FROM scratch
#   PAUSE_IMAGE=registry.blogsite.test/pause:<tag>                 the real node's pod sandbox
#                                                                  (tests/images/pause, FROM scratch)
#   DAEDALUS_CRASH_IMAGE=...daedalus-standin:<tag>-crash (and _CRASH_ONCE_, _NEVER_READY_):
#                                                                  the stand-in misbehaving by default
#   DAEDALUS_BLOG_IMAGE=...private/daedalus-blog:<tag>             the stand-in as a real blog image:
#                                                                  uid 10001, writes to /tmp and
#                                                                  /var/cache/blog
#
# `push` also names the stand-in daedalus-standin:local in the registry, for
# deploy/examples/local/.
#
# registry.blogsite.test resolves nowhere (.test is reserved): the real node's
# containerd sends every registry name to the local registry, so only the
# repository and tag matter. Each <tag> is a hash of everything that goes into
# its image (this script, the Debian suite and mirrors, and the image's own
# sources: the Dockerfile and deploy/frontend/canary-weights for the frontend;
# for the operator also the frontend's tag, pyproject.toml, uv.lock, README.md
# and operator/**), so an unchanged tree builds nothing and prints the same references; a tag already in the registry
# is not pushed again. The operator is built FROM the frontend image just built
# (--build-arg FRONTEND_IMAGE), so both carry the same nginx.
#
# The Dockerfile's base, debian:trixie-slim, cannot be pulled here: a stand-in
# is bootstrapped from Debian's packages with mmdebstrap (minbase, apt's
# sources as in the official image, no documentation, plus ca-certificates) and tagged
# docker.io/library/debian:trixie-slim in buildah's own storage, which
# `buildah bud --pull=never` then uses. The
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

SUITE=trixie
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
REGISTRY_NAME=registry.blogsite.test
DEBIAN_BASE=docker.io/library/debian:${SUITE}-slim
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
    ${packages:+--include="${packages}"} \
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

build_debian_base() {  # build_debian_base REF: the stand-in for debian:trixie-slim
  local ref="$1" dir="${tmp}/debian-base" start=${SECONDS}
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
  # The official image's dpkg filters: what apt installs later leaves out
  # documentation too.
  cat > "${dir}/docker-excludes" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
  # shellcheck disable=SC2016  # "$1", the chroot, is mmdebstrap's to expand
  local in_chroot='env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$1"'
  log "debian base: bootstrapping Debian ${SUITE} (about a minute)"
  # ca-certificates, which the official image lacks and the Dockerfile
  # installs: installed here, its postinst never runs under the build's
  # mounted CA bundle, which it cannot replace.
  debian_rootfs debian-base "${dir}/rootfs.tar" minbase ca-certificates \
    --skip=chroot/policy-rc.d \
    --extract-hook="copy-in ${dir}/policy-rc.d /usr/sbin" \
    --customize-hook="copy-in ${dir}/docker-clean /etc/apt/apt.conf.d" \
    --customize-hook="copy-in ${dir}/docker-excludes /etc/dpkg/dpkg.cfg.d" \
    --customize-hook="${in_chroot} sh -c 'rm -rf /var/cache/apt/*.bin /var/lib/apt/lists/*'"
  import_rootfs "${dir}/rootfs.tar" "${ref}" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["bash"]'
  log "debian base: Debian ${SUITE} in $((SECONDS - start))s"
}

bud() {  # bud LOG REF FILE... -- BUD-OPTION...: buildah bud of the Dockerfile on exactly FILE...
  local log_name="$1" ref="$2" files=()
  shift 2
  while (($#)) && [[ "$1" != -- ]]; do files+=("$1"); shift; done
  shift
  local base_ref
  base_ref="localhost/blogsite-base/debian:$(content_tag debian-base)"
  if ! have_image "${base_ref}"; then build_debian_base "${base_ref}"; fi
  bah tag "${base_ref}" "${DEBIAN_BASE}"
  # The build context is what the tag hashes, nothing else (no __pycache__).
  local context="${tmp}/${log_name}-context"
  mkdir -p "${context}"
  (cd "${repo}" && cp -p --parents -t "${context}" -- "${files[@]}")
  local args=(--isolation chroot --pull=never --layers=false --format oci
    --file "${context}/Dockerfile" --tag "${ref}" "$@")
  if [[ -n "${BUILD_CA}" ]]; then
    [[ -f "${BUILD_CA}" ]] || die "BLOGSITE_BUILD_CA=${BUILD_CA} is no file"
    args+=(--volume "${BUILD_CA}:/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  logged "${log_name}" bah bud "${args[@]}" "${context}" || die "buildah bud of the Dockerfile failed (${log_name})"
}

build_frontend() {  # build_frontend REF
  log "frontend: buildah bud --target frontend (about a minute)"
  bud frontend "$1" "${frontend_files[@]}" -- --target frontend
}

build_operator() {  # build_operator REF FRONTEND_REF FILE...: the Dockerfile, FROM that frontend
  local ref="$1" frontend="$2"
  shift 2
  log "operator: buildah bud of the Dockerfile on ${frontend} (a few minutes)"
  bud operator "${ref}" "$@" -- --build-arg "FRONTEND_IMAGE=${frontend}"
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

export_nginx() {  # export_nginx REF TAG: the path of a command running REF's nginx here
  local ref="$1" tag="$2" dir="${store}/nginx/$2" ctr mnt
  if [[ ! -x "${dir}/nginx" ]]; then
    log "nginx: copying the root filesystem of ${ref}"
    remove_tree "${dir}.tmp"
    mkdir -p "${dir}.tmp"
    ctr="$(bah from --quiet --pull=never "${ref}")"
    mnt="$(bah mount "${ctr}")"
    # cp -a copies symlinks as symlinks: nothing is written through one.
    cp -a "${mnt}/." "${dir}.tmp/root/"
    bah umount "${ctr}" >/dev/null
    bah rm "${ctr}" >/dev/null
    cat > "${dir}.tmp/nginx" <<WRAPPER
#!/bin/sh
# nginx of ${ref}, on that image's own loader and libraries.
root='${dir}/root'
exec "\${root}/usr/lib64/ld-linux-x86-64.so.2" --library-path "\${root}/usr/lib/x86_64-linux-gnu" \\
  "\${root}/usr/sbin/nginx" "\$@"
WRAPPER
    chmod 0755 "${dir}.tmp/nginx"
    remove_tree "${dir}"
    mv "${dir}.tmp" "${dir}"
    # The newest BLOGSITE_IMAGES_KEEP copies stay.
    find "${store}/nginx" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp' -printf '%T@ %p\n' \
      | sort -rn | tail -n +"$((KEEP + 1))" | cut -d' ' -f2- \
      | while read -r old; do remove_tree "${old}"; done
  fi
  "${dir}/nginx" -v 2>/dev/null || die "the frontend's nginx does not run here (${dir}/nginx -v)"
  echo "${dir}/nginx"
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
  build | nginx) (($# == 1)) || usage ;;
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

frontend_files=(Dockerfile deploy/frontend/canary-weights)
mapfile -t operator_files < <(printf '%s\n' "${frontend_files[@]}"; echo pyproject.toml; echo uv.lock; echo README.md; files_of operator)
mapfile -t daedalus_files < <(files_of tests/images/daedalus)
mapfile -t pause_files < <(files_of tests/images/pause)
go_version="$(GOTOOLCHAIN=local go env GOVERSION)"

frontend_tag="$(content_tag frontend "${frontend_files[@]}")"
operator_tag="$(content_tag "operator ${frontend_tag}" "${operator_files[@]}")"
daedalus_tag="$(content_tag "daedalus ${go_version}" "${daedalus_files[@]}")"
pause_tag="$(content_tag "pause ${go_version}" "${pause_files[@]}")"

# The stand-in also comes as variants that misbehave by default (its BEHAVIOR
# baked into the image), so a test rolls out a bad version by changing only
# the image: <tag>-crash, <tag>-crash-once, <tag>-never-ready.
variants=(crash crash-once never-ready)
# The frontend before the operator, which is built FROM it.
names=(FRONTEND_IMAGE OPERATOR_IMAGE DAEDALUS_IMAGE PAUSE_IMAGE)
repositories=(blogsite-frontend blogsite-operator daedalus-standin pause)
tags=("${frontend_tag}" "${operator_tag}" "${daedalus_tag}" "${pause_tag}")
for variant in "${variants[@]}"; do
  names+=("DAEDALUS_${variant^^}_IMAGE"); names[-1]="${names[-1]//-/_}"
  repositories+=(daedalus-standin)
  tags+=("${daedalus_tag}-${variant}")
done
# A blog image as real ones are: it runs as its own uid (10001) and writes to
# /tmp and a cache directory at start, or exits. In a repository of its own,
# which the real node's registry serves only with credentials.
names+=(DAEDALUS_BLOG_IMAGE)
repositories+=(private/daedalus-blog)
tags+=("${daedalus_tag}")
refs=()
for i in "${!names[@]}"; do refs+=("${REGISTRY_NAME}/${repositories[i]}:${tags[i]}"); done

if [[ -n "${host}" ]]; then
  curl -fsS -o /dev/null --max-time 10 "http://${host}/v2/" \
    || die "no registry answers at http://${host}/v2/"
fi

if [[ "${command}" == nginx ]]; then
  names=("${names[0]}") refs=("${refs[0]}")  # only the frontend
fi

built=()
for i in "${!names[@]}"; do
  ref="${refs[i]}"
  if have_image "${ref}"; then continue; fi
  start=${SECONDS}
  case "${names[i]}" in
    OPERATOR_IMAGE) build_operator "${ref}" "${refs[0]}" "${operator_files[@]}" ;;
    FRONTEND_IMAGE) build_frontend "${ref}" ;;
    DAEDALUS_IMAGE)
      build_go_image "${ref}" tests/images/daedalus daedalus-standin "${NONROOT}:${NONROOT}" \
        "-X main.version=${tags[i]}" --port 8080 --stop-signal SIGTERM ;;
    PAUSE_IMAGE)
      build_go_image "${ref}" tests/images/pause pause 65535:65535 "" --stop-signal SIGTERM ;;
    DAEDALUS_BLOG_IMAGE)  # after DAEDALUS_IMAGE in the list, so that one exists
      ctr="$(bah from --quiet --pull=never "${refs[2]}")"
      bah config --user 10001:10001 --env REQUIRE_UID=10001 \
        --env REQUIRE_WRITABLE=/tmp,/var/cache/blog "${ctr}"
      bah commit --quiet --rm "${ctr}" "${ref}" >/dev/null ;;
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
  prune "${refs[@]}" "localhost/blogsite-base/debian:$(content_tag debian-base)"
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

if [[ "${command}" == nginx ]]; then
  echo "NGINX=$(export_nginx "${refs[0]}" "${frontend_tag}")"
  exit 0
fi

for i in "${!names[@]}"; do echo "${names[i]}=${refs[i]}"; done
