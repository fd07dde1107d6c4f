"""nginx.conf for the frontend: a pure function of the spec and a few facts.

Routing, in the order nginx picks a server block:
  * `domains` on HTTPS: TLS terminated, proxied to daedalus;
  * `domains` on plain HTTP: proxied too (`http: serve`) or 301 to HTTPS
    (`http: redirect`);
  * `redirectDomains`, both ports: 301 to the primary domain, path and query kept;
  * any other host: proxied to daedalus (default_server), never a stock page;
  * `/.well-known/acme-challenge/` on port 80, for every host: cert-refresh;
  * a health endpoint on a port of its own, for the probes.

HTTPS speaks HTTP/2 (ALPN h2) and HTTP/1.1; answers of text types are
gzipped; Strict-Transport-Security only when the spec opts in.

Nothing from the user reaches the file unchecked: host names are validated
by the models (and checked again here), everything else comes from the
operator. The one exception is the documented opt-in `frontend.extraConfig`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from blogsite_operator import models

ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
# Besides text/html: the text types a blog serves.
GZIP_TYPES = (
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "image/svg+xml",
)
_SAFE_ADDRESS = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")


@dataclass(frozen=True)
class NginxFacts:
    """Where things are, as seen from inside the frontend pod."""

    daedalus_upstream: str  # host:port
    challenge_upstream: str  # host:port
    # The canary version's Service: with it, requests are split between the
    # two by a share the frontend's weights follower writes (see
    # canary_split); without it, everything goes to daedalus_upstream.
    canary_upstream: str | None = None
    # Where each request proxied to daedalus is reported (syslog over UDP,
    # host:port): the site's traffic collector in cert-refresh.
    traffic_log: str | None = None
    tls_certificate: str | None = None  # path of tls.crt; None: no HTTPS
    tls_certificate_key: str | None = None
    temp_dir: str = "/tmp"  # noqa: S108 - an emptyDir; the root filesystem is read-only
    http_port: int = 8080
    https_port: int = 8443
    health_port: int = 8081
    pid_file: str = "/tmp/nginx.pid"  # noqa: S108


def _address(value: str) -> str:
    if not _SAFE_ADDRESS.fullmatch(value):
        raise ValueError(f"not a host:port upstream address: {value!r}")
    return value


def _path(value: str) -> str:
    if not _SAFE_PATH.fullmatch(value):
        raise ValueError(f"not a safe absolute path: {value!r}")
    return value


def _hostnames(names: list[str]) -> str:
    for name in names:
        if not models.is_hostname(name):  # the models checked already; never trust twice-removed
            raise ValueError(f"not a hostname: {name!r}")
    return " ".join(names)


def _networks(cidrs: list[str]) -> list[str]:
    """CIDRs as nginx wants them: validated again, host bits cleared."""
    return [str(ipaddress.ip_network(cidr, strict=False)) for cidr in cidrs]


def _client_and_scheme(spec: models.BlogSiteSpec) -> list[str]:
    """Who may tell nginx the client's address and the scheme it used.

    Only the peers in frontend.trustedProxies: from them the client's address
    comes from X-Forwarded-For (its last untrusted entry) or the PROXY
    protocol, and X-Forwarded-Proto is believed; from anyone else both are
    what nginx itself sees, so a client cannot forge either.
    """
    trusted = _networks(list(spec.frontend.trusted_proxies))
    lines: list[str] = []
    if trusted:
        header = "proxy_protocol" if spec.frontend.proxy_protocol else "X-Forwarded-For"
        lines += [f"set_real_ip_from {network};" for network in trusted]
        lines += [f"real_ip_header {header};", "real_ip_recursive on;"]
    lines += [
        # $realip_remote_addr: the peer itself, before realip replaced it.
        "geo $realip_remote_addr $blogsite_trusted_peer {",
        "    default 0;",
        *[f"    {network} 1;" for network in trusted],
        "}",
        "map $blogsite_trusted_peer:$http_x_forwarded_proto $blogsite_scheme {",
        "    default $scheme;",
        '    "1:https" https;',
        '    "1:http" http;',
        "}",
        "",
    ]
    return lines


def _indent(lines: list[str], depth: int) -> list[str]:
    return [("    " * depth + line) if line else "" for line in lines]


def _challenge_location() -> list[str]:
    return [
        f"location {ACME_CHALLENGE_PATH} {{",
        "    proxy_pass http://cert_refresh;",
        "}",
    ]


# The upstream a request goes to names an `upstream` block, so the variable
# needs no resolver (README, "Upstream resolution").
STABLE_POOL, CANARY_POOL = "daedalus", "daedalus_canary"
# One line per request proxied to daedalus, to the site's traffic collector:
# the pool, what the client got, and what each upstream tried said and took
# ("502, 200" when the canary refused and its backup, stable, answered).
TRAFFIC_FORMAT = "blogsite_traffic"
TRAFFIC_LOG_FIELDS = "$daedalus_pool|$status|$upstream_status|$upstream_response_time"
CANARY_BUCKETS = 100
# The frontend's weights follower writes the canary's buckets into this file
# below the temporary directory; no file means no bucket: all to stable.
CANARY_SPLIT_FILE = "blogsite/canary-split.conf"
CANARY_SPLIT_GLOB = "blogsite/canary-*.conf"


def canary_split(weight: int) -> str:
    """The included map lines that send `weight` percent of requests to the
    canary: the reference the weights follower's own output is tested against."""
    if not 0 <= weight <= CANARY_BUCKETS:
        raise ValueError(f"a canary weight is a percentage, not {weight}")
    return "".join(f"{bucket:02d} {CANARY_POOL};\n" for bucket in range(weight))


def _canary_pools(facts: NginxFacts, temp: str) -> list[str]:
    """$daedalus_pool: one of 100 buckets per request, the canary's buckets
    from the follower's file. A change of share is a file and a reload, never
    a new configuration (which would roll the frontend)."""
    if facts.canary_upstream is None:
        return []
    buckets = [f"    1% {bucket:02d};" for bucket in range(CANARY_BUCKETS - 1)]
    return [
        'split_clients "${request_id}" $daedalus_bucket {',
        *buckets,
        f"    * {CANARY_BUCKETS - 1:02d};",
        "}",
        "map $daedalus_bucket $daedalus_pool {",
        f"    default {STABLE_POOL};",
        f"    include {temp}/{CANARY_SPLIT_GLOB};",
        "}",
        "",
    ]


def _proxy_lines(facts: NginxFacts) -> list[str]:
    """What a location proxying to daedalus says."""
    if facts.canary_upstream is None:
        return [f"proxy_pass http://{STABLE_POOL};"]
    lines = ["proxy_pass http://$daedalus_pool;"]
    if facts.traffic_log is not None:
        # A location's access_log replaces the inherited one: both again.
        target = f"syslog:server={_address(facts.traffic_log)},tag=blogsite,nohostname"
        lines += ["access_log /dev/stdout;", f"access_log {target} {TRAFFIC_FORMAT};"]
    return lines


def _canary_upstream(facts: NginxFacts) -> list[str]:
    if facts.canary_upstream is None:
        return []
    return [
        f"upstream {CANARY_POOL} {{",
        # max_fails=0: tried on every request of its share, never skipped for
        # a while after a failure, so every failure is seen and counted.
        f"    server {_address(facts.canary_upstream)} max_fails=0;",
        # No canary pod (none yet, or just reverted): the connection is
        # refused at once and stable answers; the log still counts the refusal.
        f"    server {_address(facts.daedalus_upstream)} backup;",
        "    keepalive 16;",
        "}",
        "",
    ]


def _traffic_format(facts: NginxFacts) -> list[str]:
    if facts.canary_upstream is None or facts.traffic_log is None:
        return []
    return [f"log_format {TRAFFIC_FORMAT} '{TRAFFIC_LOG_FIELDS}';", ""]


def _proxy_location(proxy: list[str]) -> list[str]:
    return ["location / {", *_indent(proxy, 1), "}"]


def _server(listen: str, names: str, body: list[str]) -> list[str]:
    return [
        "server {",
        f"    listen {listen};",
        f"    server_name {names};",
        *_indent(body, 1),
        "}",
        "",
    ]


def _hsts(spec: models.BlogSiteSpec) -> list[str]:
    hsts = spec.frontend.hsts
    if hsts is None:
        return []
    value = f"max-age={int(hsts.max_age_seconds)}"
    if hsts.include_sub_domains:
        value += "; includeSubDomains"
    # always: also on the 301s and on errors, which browsers honour too.
    return [f'add_header Strict-Transport-Security "{value}" always;']


def _extra(spec: models.BlogSiteSpec) -> list[str]:
    extra = spec.frontend.extra_config
    if not extra:
        return []
    return ["# frontend.extraConfig (user-supplied, checked by nginx -t)", *extra.splitlines()]


def render_nginx_conf(spec: models.BlogSiteSpec, facts: NginxFacts) -> str:
    """The whole nginx.conf; identical input gives byte-identical output."""
    cert, key = facts.tls_certificate, facts.tls_certificate_key
    tls = cert is not None and key is not None
    primary = spec.primary_domain
    domains = _hostnames(list(spec.domains))
    redirects = _hostnames(list(spec.redirect_domains)) if spec.redirect_domains else None
    temp = _path(facts.temp_dir)
    redirect_target = f"{'https' if tls else 'http'}://{primary}$request_uri"
    # Ports 80 and 443 as the load balancer reaches them; health stays plain.
    proxied = " proxy_protocol" if spec.frontend.proxy_protocol else ""
    http_port, https_port = f"{facts.http_port}{proxied}", f"{facts.https_port} ssl{proxied}"
    proxy = _proxy_lines(facts)

    http_domains_body = [*_challenge_location()]
    if spec.frontend.http == models.HttpPolicy.REDIRECT and tls:
        # Behind a TLS-terminating proxy the request is already HTTPS: no loop.
        http_domains_body += [
            "location / {",
            '    if ($blogsite_scheme = "http") {',
            "        return 301 https://$host$request_uri;",
            "    }",
            *_indent(proxy, 1),
            "}",
        ]
    else:
        http_domains_body += _proxy_location(proxy)
    http_domains_body += _extra(spec)

    servers: list[str] = []
    servers += _server(
        f"{http_port} default_server",
        "_",
        [
            "# Hosts not named in the BlogSite still reach the blog.",
            *_challenge_location(),
            *_proxy_location(proxy),
        ],
    )
    servers += _server(http_port, domains, http_domains_body)
    if redirects:
        servers += _server(
            http_port,
            redirects,
            [*_challenge_location(), "location / {", f"    return 301 {redirect_target};", "}"],
        )
    if tls:
        servers += _server(f"{https_port} default_server", "_", _proxy_location(proxy))
        servers += _server(
            https_port,
            domains,
            [*_hsts(spec), *_proxy_location(proxy), *_extra(spec)],
        )
        if redirects:
            servers += _server(
                https_port,
                redirects,
                [*_hsts(spec), f"return 301 {redirect_target};"],
            )
    servers += _server(
        str(facts.health_port),
        "_",
        [
            "access_log off;",
            "location = /healthz {",
            "    default_type text/plain;",
            '    return 200 "ok\\n";',
            "}",
            "location / {",
            "    return 404;",
            "}",
        ],
    )

    tls_settings: list[str] = []
    if cert is not None and key is not None:
        tls_settings = [
            f"ssl_certificate {_path(cert)};",
            f"ssl_certificate_key {_path(key)};",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            "ssl_prefer_server_ciphers off;",
            "ssl_session_cache shared:TLS:10m;",
            "ssl_session_timeout 1d;",
            "",
        ]

    http_block = [
        "server_tokens off;",
        "access_log /dev/stdout;",
        "default_type application/octet-stream;",
        # Up to 100 names of up to 253 characters must fit the hash.
        "server_names_hash_bucket_size 512;",
        "server_names_hash_max_size 4096;",
        f"client_body_temp_path {temp}/client_body;",
        f"proxy_temp_path {temp}/proxy;",
        f"fastcgi_temp_path {temp}/fastcgi;",
        f"uwsgi_temp_path {temp}/uwsgi;",
        f"scgi_temp_path {temp}/scgi;",
        "",
        # text/html is always compressed once gzip is on; below 1 KiB it costs
        # more than it saves. Vary, so caches keep both forms apart.
        "gzip on;",
        "gzip_comp_level 5;",
        "gzip_min_length 1024;",
        "gzip_proxied any;",
        "gzip_vary on;",
        "gzip_types " + " ".join(GZIP_TYPES) + ";",
        "",
        *_client_and_scheme(spec),
        *_canary_pools(facts, temp),
        *_traffic_format(facts),
        # HTTP/2 where the client offers it: ALPN h2 on HTTPS (and prior
        # knowledge on plain HTTP, beside HTTP/1.x). Here, not per server, so
        # an extraConfig may still say `http2 off;` (or on) for its names.
        "http2 on;",
        *tls_settings,
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
        # The client as nginx determined it (see frontend.trustedProxies).
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $blogsite_scheme;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "",
        f"upstream {STABLE_POOL} {{",
        f"    server {_address(facts.daedalus_upstream)};",
        "    keepalive 16;",
        "}",
        "",
        *_canary_upstream(facts),
        "upstream cert_refresh {",
        f"    server {_address(facts.challenge_upstream)};",
        "}",
        "",
        *servers,
    ]
    lines = [
        "# Generated by blogsite-operator; do not edit (the operator replaces it).",
        # One worker: a blog's traffic fits one core's event loop (more replicas
        # scale it), and memory stays the same on a node of any size ("auto"
        # starts one worker per core the node has).
        "worker_processes 1;",
        f"pid {_path(facts.pid_file)};",
        "error_log stderr warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        *_indent(http_block, 1),
        "}",
    ]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"
