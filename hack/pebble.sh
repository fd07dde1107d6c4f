#!/usr/bin/env bash
# A local Pebble (Let's Encrypt's test ACME server) for the tests and
# `make run`, in the foreground until killed. pebble-challtestsrv is its DNS
# server and answers 127.0.0.1 for every name, so HTTP-01 validation of any
# domain connects to 127.0.0.1:${PEBBLE_HTTP01_PORT}.
#
#   ACME directory   https://127.0.0.1:${PEBBLE_PORT:-14000}/dir
#   management       https://127.0.0.1:${PEBBLE_MANAGEMENT_PORT:-15000} (/roots/0, /set-renewal-info/)
#   DNS              127.0.0.1 (or PEBBLE_PUBLIC_ADDRESS):${PEBBLE_DNS_PORT:-8053} (management on ${PEBBLE_CHALLTESTSRV_PORT:-8055})
#
# Once the directory answers, <state>/pebble-ca.pem is the CA of Pebble's own
# HTTPS certificate and <state>/root.pem the root it issues under; Pebble makes
# a new root on every start. State: ${PEBBLE_STATE_DIR:-${TMPDIR:-/tmp}/blogsite-pebble}.
# PEBBLE_HTTP01_PORT (default 5002) is where Pebble connects for HTTP-01;
# PEBBLE_SHORTLIVED_SECONDS sets the validity of the `shortlived` profile;
# PEBBLE_EAB_KID with PEBBLE_EAB_HMAC turns on External Account Binding.
# PEBBLE_PUBLIC_ADDRESS (an address of this machine, e.g. the real node's)
# makes the directory answer there too, under a certificate for that address
# signed by the same minica, so pods can reach it; PEBBLE_DEFAULT_IPV4
# changes the address challtestsrv answers (its management API can also
# answer per name: /add-a). PEBBLE_RETRY_AFTER_AUTHZ and
# PEBBLE_RETRY_AFTER_ORDER (seconds, default 0: no header) are the
# Retry-After Pebble sends while it validates a challenge and while it
# issues. The operator never polls before one (tests/unit/test_acme_protocol.py);
# Pebble's own test configuration asks 3 and 5, which would add those seconds
# to every order of every test.
# Pebble's own variables (PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0, ...)
# pass through the environment.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${PEBBLE_STATE_DIR:-${TMPDIR:-/tmp}/blogsite-pebble}"
port="${PEBBLE_PORT:-14000}"
management_port="${PEBBLE_MANAGEMENT_PORT:-15000}"
dns_port="${PEBBLE_DNS_PORT:-8053}"
log() { echo "[pebble] $*" >&2; }

bin="$("${here}/build-tools.sh" pebble | sed -n 's/^PEBBLE_BIN=//p')"
if [[ -z "${bin}" ]]; then log "hack/build-tools.sh did not print PEBBLE_BIN"; exit 1; fi
mkdir -p "${state}"
# A root.pem left from an earlier run would not match this Pebble's root.
rm -f "${state}/root.pem"
cp "${bin}/pebble.minica.pem" "${state}/pebble-ca.pem"

fetch() {  # fetch URL FILE: GET over HTTPS trusting only Pebble's minica
  if command -v curl >/dev/null; then
    curl -fsS --max-time 5 --cacert "${bin}/pebble.minica.pem" -o "$2" "$1"
  else
    python3 - "$1" "$2" "${bin}/pebble.minica.pem" <<'PY'
import ssl, sys, urllib.request
url, out, ca = sys.argv[1:]
with urllib.request.urlopen(url, context=ssl.create_default_context(cafile=ca), timeout=5) as r:
    data = r.read()
with open(out, "wb") as f:
    f.write(data)
PY
  fi
}

eab_required=false eab_keys="{}"
if [[ -n "${PEBBLE_EAB_KID:-}" && -n "${PEBBLE_EAB_HMAC:-}" ]]; then
  eab_required=true eab_keys="{\"${PEBBLE_EAB_KID}\": \"${PEBBLE_EAB_HMAC}\"}"
fi
listen=127.0.0.1 certificate="${bin}/localhost-cert.pem" private_key="${bin}/localhost-key.pem"
if [[ -n "${PEBBLE_PUBLIC_ADDRESS:-}" ]]; then
  listen=0.0.0.0 certificate="${state}/https-cert.pem" private_key="${state}/https-key.pem"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "${private_key}" -subj "/CN=pebble" -out "${state}/https.csr" 2>/dev/null
  openssl x509 -req -in "${state}/https.csr" -CA "${bin}/pebble.minica.pem" \
    -CAkey "${bin}/pebble.minica.key.pem" -CAcreateserial -CAserial "${state}/minica.srl" \
    -days 30 -out "${certificate}" 2>/dev/null -extfile <(printf '%s\n' \
      "subjectAltName=IP:${PEBBLE_PUBLIC_ADDRESS},IP:127.0.0.1,DNS:localhost,DNS:pebble" \
      "extendedKeyUsage=serverAuth")
fi
cat > "${state}/pebble-config.json" <<JSON
{
  "pebble": {
    "listenAddress": "${listen}:${port}",
    "managementListenAddress": "127.0.0.1:${management_port}",
    "certificate": "${certificate}",
    "privateKey": "${private_key}",
    "httpPort": ${PEBBLE_HTTP01_PORT:-5002},
    "tlsPort": 5001,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": ${eab_required},
    "externalAccountMACKeys": ${eab_keys},
    "retryAfter": {"authz": ${PEBBLE_RETRY_AFTER_AUTHZ:-0}, "order": ${PEBBLE_RETRY_AFTER_ORDER:-0}},
    "keyAlgorithm": "ecdsa",
    "profiles": {
      "default": {"description": "90 days", "validityPeriod": 7776000},
      "shortlived": {
        "description": "short-lived, for renewal tests",
        "validityPeriod": ${PEBBLE_SHORTLIVED_SECONDS:-518400}
      }
    }
  }
}
JSON

pids=()
cleanup() {
  trap - EXIT TERM INT
  if ((${#pids[@]})); then kill "${pids[@]}" 2>/dev/null || true; fi
  wait || true
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# Only DNS: the operator's own challenge server answers HTTP-01, and an empty
# -defaultIPv6 keeps Pebble from trying ::1 where nothing listens.
# With a public address, its DNS answers there too: the operator's preflight
# asks it from a pod.
dns_address="${PEBBLE_PUBLIC_ADDRESS:-127.0.0.1}"
"${bin}/pebble-challtestsrv" \
  -dnsserver "${dns_address}:${dns_port}" \
  -management "127.0.0.1:${PEBBLE_CHALLTESTSRV_PORT:-8055}" \
  -defaultIPv4 "${PEBBLE_DEFAULT_IPV4:-127.0.0.1}" -defaultIPv6 "" \
  -http01 "" -https01 "" -tlsalpn01 "" -doh "" &
pids+=($!)
"${bin}/pebble" -config "${state}/pebble-config.json" -dnsserver "${dns_address}:${dns_port}" &
pids+=($!)

for _ in $(seq 1 100); do
  for pid in "${pids[@]}"; do
    if ! kill -0 "${pid}" 2>/dev/null; then log "pebble or its DNS server exited early"; exit 1; fi
  done
  if fetch "https://127.0.0.1:${port}/dir" /dev/null 2>/dev/null; then break; fi
  sleep 0.2
done
fetch "https://127.0.0.1:${port}/dir" /dev/null
# Written under another name and moved, so root.pem only ever appears whole.
fetch "https://127.0.0.1:${management_port}/roots/0" "${state}/root.pem.tmp"
mv "${state}/root.pem.tmp" "${state}/root.pem"
log "ready: directory https://127.0.0.1:${port}/dir; CA of its HTTPS ${state}/pebble-ca.pem; issuing root ${state}/root.pem"

# Either exiting is a failure; the EXIT trap takes the other one down.
status=0
wait -n || status=$?
log "pebble or its DNS server exited (${status})"
exit $((status ? status : 1))
