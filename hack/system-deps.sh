#!/usr/bin/env bash
# Debian packages the tests need: nginx (nginx-light) runs the rendered
# configurations in tests/nginx and checks them with `nginx -t`.
set -euo pipefail
missing=()
command -v make >/dev/null || missing+=(make)
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx-light)
((${#missing[@]})) || exit 0
if [[ ${EUID} -ne 0 ]]; then
  echo "[system-deps] missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "[system-deps] installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# The package starts a system nginx on port 80; the tests run their own.
service nginx stop >/dev/null 2>&1 || true
