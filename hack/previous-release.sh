#!/usr/bin/env bash
# The previous release (PREVIOUS_RELEASE in hack/versions.env), for the test
# that upgrades from it: its tree from this clone's history, its images built
# by its own hack/images.sh (its Dockerfile, its Debian suite, its stand-ins).
#
#   hack/previous-release.sh build           builds what is missing
#   hack/previous-release.sh push HOST:PORT  builds, then pushes to the local registry
#
# Prints PREVIOUS_CHART=<its chart's directory> and its images.sh's lines
# with PREVIOUS_ in front (PREVIOUS_OPERATOR_IMAGE=..., PREVIOUS_FRONTEND_IMAGE=...).
#
# Kept under ${BLOGSITE_TOOLS_CACHE:-~/.cache/blogsite-operator}/previous-release/<commit>/:
# src/ (the tree) and images/ (its images.sh's buildah storage, apart from
# today's so neither prunes the other's images). Needs the commit in this
# clone: a shallow clone has to `git fetch --unshallow` first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
log() { echo "[previous-release] $*" >&2; }
die() { echo "[previous-release] error: $*" >&2; exit 1; }

case "${1:-}" in
  build) (($# == 1)) || die "usage: $0 build | push HOST:PORT" ;;
  push) (($# == 2)) || die "usage: $0 build | push HOST:PORT" ;;
  *) die "usage: $0 build | push HOST:PORT" ;;
esac

cache="${BLOGSITE_TOOLS_CACHE:-${HOME}/.cache/blogsite-operator}/previous-release/${PREVIOUS_RELEASE}"
src="${cache}/src"
if [[ ! -f "${src}/.complete" ]]; then
  git -C "${repo}" cat-file -e "${PREVIOUS_RELEASE}^{commit}" 2>/dev/null \
    || die "commit ${PREVIOUS_RELEASE} is not in ${repo} (a shallow clone? git fetch --unshallow)"
  rm -rf "${src}"
  mkdir -p "${src}"
  git -C "${repo}" archive "${PREVIOUS_RELEASE}" | tar -x -C "${src}"
  touch "${src}/.complete"
  log "the tree of ${PREVIOUS_RELEASE} is in ${src}"
fi
echo "PREVIOUS_CHART=${src}/deploy/helm/blogsite-operator"
BLOGSITE_TOOLS_CACHE="${cache}" "${src}/hack/images.sh" "$@" | sed 's/^/PREVIOUS_/'
