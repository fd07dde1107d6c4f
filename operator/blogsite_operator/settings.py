"""Operator-wide settings, from environment variables (flags override them)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from blogsite_operator.policies.ledger import Limits
from blogsite_operator.render import RenderSettings

ENV_PREFIX = "BLOGSITE_OPERATOR_"


@dataclass(frozen=True)
class AcmeSettings:
    self_check: str | None = "frontend"  # None (off) | "frontend" | "host:port"
    preflight: bool = True
    preflight_resolver: str | None = None  # None: the system's; else a DNS server host:port
    preflight_http_port: int = 80
    backoff_seconds: float = 300.0
    max_backoff_seconds: float = 6 * 3600.0
    renewal_info_seconds: float = 6 * 3600.0
    order_timeout_seconds: float = 180.0
    # Per ACME directory URL, the CA's limits the ledger holds orders to;
    # Let's Encrypt's for every other server.
    rate_limits: tuple[tuple[str, Limits], ...] = ()

    def limits_for(self, server: str) -> Limits:
        return dict(self.rate_limits).get(server, Limits())


@dataclass(frozen=True)
class OperatorSettings:
    """Everything `blogsite-operator run` needs beyond the BlogSites themselves.

    Environment variables (all optional):
      BLOGSITE_OPERATOR_NAMESPACES      comma-separated namespaces; empty: all
      BLOGSITE_OPERATOR_LOG_FORMAT      plain | full | json
      BLOGSITE_OPERATOR_FRONTEND_IMAGE  default nginx image for frontends
      BLOGSITE_OPERATOR_IMAGE           image of this operator (runs cert-refresh)
      BLOGSITE_OPERATOR_WORKERS         threads for API calls (default 16)
      BLOGSITE_OPERATOR_NGINX           nginx binary for `nginx -t` (default: from PATH)
      BLOGSITE_OPERATOR_ALLOW_EXTRA_CONFIG  true: honour frontend.extraConfig (default false)
      BLOGSITE_OPERATOR_ACME_SELF_CHECK  before answering a challenge, fetch the answer
          through `frontend` (the site's frontend Service, in-cluster) or a host:port
          (sent the domain as Host), or off; default: frontend
      BLOGSITE_OPERATOR_ACME_PREFLIGHT  before any order, check that each name resolves
          (to the frontend Service's external addresses, if it has any) and that
          http://NAME/.well-known/acme-challenge/ reaches the site: on (default) or off
      BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER  the DNS server (host:port) the preflight
          asks; default: the system's resolver
      BLOGSITE_OPERATOR_ACME_PREFLIGHT_HTTP_PORT  the port the preflight fetches from (80)
      BLOGSITE_OPERATOR_ACME_RATE_LIMITS  JSON: per ACME directory URL, the CA's limits
          ({"certificatesPerNames": 5, "orders": 300, "failedAuthorizations": 5});
          Let's Encrypt's for any server not named
      BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS      first wait after a failed order (300)
      BLOGSITE_OPERATOR_ACME_MAX_BACKOFF_SECONDS  longest wait between orders (21600)
      BLOGSITE_OPERATOR_ACME_RENEWAL_INFO_SECONDS ask the CA's renewal info at least
          this often (21600, the ARI default; the CA's Retry-After may say sooner)
      BLOGSITE_OPERATOR_ACME_ORDER_TIMEOUT_SECONDS give up on one order after (180)
      BLOGSITE_OPERATOR_METRICS         true (default): serve /metrics on the health address
      BLOGSITE_OPERATOR_WATCH_DEAD_SECONDS  /healthz fails once a watch has been dead this
          long (60): kopf does not restart a watch that died, the kubelet restarts us
      BLOGSITE_OPERATOR_WATCH_TIMEOUT_SECONDS  how long one watch request lasts before it
          is made again (300)
      BLOGSITE_OPERATOR_RESYNC_SECONDS  every site gets a pass at least this often, with
          no event (600)
      BLOGSITE_OPERATOR_SERVED_PROBE_SECONDS  probe the certificate each Ready frontend
          pod presents this often, and after every change of the Ready pods (300);
          0: never (CertificateServed is not reported)
      BLOGSITE_OPERATOR_LEADER_LEASE    NAMESPACE/NAME of a coordination.k8s.io Lease:
          run only while holding it, so several replicas never write at once;
          default: no leader election (one replica only)
      BLOGSITE_OPERATOR_LEADER_LEASE_SECONDS  how long a silent leader keeps the
          Lease (15); it stops itself after 2/3 of that without renewing
    """

    namespaces: tuple[str, ...] = ()
    log_format: str = "plain"
    workers: int = 16
    nginx_binary: str | None = None
    allow_extra_config: bool = False
    metrics: bool = True
    watch_dead_seconds: float = 60.0
    watch_timeout_seconds: float = 300.0
    resync_seconds: float = 600.0
    served_probe_seconds: float = 300.0  # 0: off
    leader_lease: tuple[str, str] | None = None
    leader_lease_seconds: float = 15.0
    render: RenderSettings = field(default_factory=RenderSettings)
    acme: AcmeSettings = field(default_factory=AcmeSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if env is None else env)

        def get(key: str) -> str | None:
            value = env.get(ENV_PREFIX + key, "").strip()
            return value or None

        defaults = cls()
        render_defaults = RenderSettings()
        namespaces = namespace_names(
            n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip()
        )
        log_format = get("LOG_FORMAT") or defaults.log_format
        if log_format not in ("plain", "full", "json"):
            raise ValueError(
                f"{ENV_PREFIX}LOG_FORMAT must be plain, full or json, not {log_format!r}"
            )
        return cls(
            namespaces=namespaces,
            log_format=log_format,
            workers=int(get("WORKERS") or defaults.workers),
            nginx_binary=get("NGINX"),
            allow_extra_config=(get("ALLOW_EXTRA_CONFIG") or "false").lower()
            in ("1", "true", "yes"),
            metrics=_flag(get, "METRICS", default=True),
            watch_dead_seconds=_seconds(get, "WATCH_DEAD_SECONDS", 60),
            watch_timeout_seconds=_seconds(get, "WATCH_TIMEOUT_SECONDS", 300),
            resync_seconds=_seconds(get, "RESYNC_SECONDS", 600),
            served_probe_seconds=_seconds(get, "SERVED_PROBE_SECONDS", 300, allow_zero=True),
            leader_lease=_lease(get("LEADER_LEASE")),
            leader_lease_seconds=_seconds(get, "LEADER_LEASE_SECONDS", 15),
            acme=AcmeSettings(
                self_check=_self_check(get("ACME_SELF_CHECK")),
                preflight=_flag(get, "ACME_PREFLIGHT", default=True),
                preflight_resolver=_host_port(get, "ACME_PREFLIGHT_RESOLVER"),
                preflight_http_port=_port(get, "ACME_PREFLIGHT_HTTP_PORT", 80),
                backoff_seconds=_seconds(get, "ACME_BACKOFF_SECONDS", 300),
                max_backoff_seconds=_seconds(get, "ACME_MAX_BACKOFF_SECONDS", 6 * 3600),
                renewal_info_seconds=_seconds(get, "ACME_RENEWAL_INFO_SECONDS", 6 * 3600),
                order_timeout_seconds=_seconds(get, "ACME_ORDER_TIMEOUT_SECONDS", 180),
                rate_limits=_rate_limits(get("ACME_RATE_LIMITS")),
            ),
            render=RenderSettings(
                frontend_image=get("FRONTEND_IMAGE") or render_defaults.frontend_image,
                operator_image=get("IMAGE") or render_defaults.operator_image,
            ),
        )


def _seconds(
    get: Callable[[str], str | None], key: str, default: float, *, allow_zero: bool = False
) -> float:
    raw = get(key)
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{key} must be a number of seconds, not {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        least = "zero or more" if allow_zero else "positive"
        raise ValueError(f"{ENV_PREFIX}{key} must be {least}, not {raw!r}")
    return value


def _rate_limits(raw: str | None) -> tuple[tuple[str, Limits], ...]:
    if not raw:
        return ()
    problem = f"{ENV_PREFIX}ACME_RATE_LIMITS"
    try:
        servers = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{problem}: not JSON ({error})") from None
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        raise ValueError(f"{problem}: an object of ACME directory URLs to objects of limits")
    try:
        return tuple((str(server), Limits.from_json(limits)) for server, limits in servers.items())
    except ValueError as error:
        raise ValueError(f"{problem}: {error}") from None


def _self_check(raw: str | None) -> str | None:
    """Each challenge answer fetched through the site's frontend before the CA
    is asked to validate, unless "off": a CA that finds no answer spends one
    of the few failed authorizations it allows per name and hour."""
    if raw is None:
        return "frontend"
    if raw.lower() == "off":
        return None
    if raw == "frontend" or re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", raw):
        return raw
    raise ValueError(f"{ENV_PREFIX}ACME_SELF_CHECK must be off, frontend or host:port, not {raw!r}")


DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"


def namespace_names(names: Iterable[str]) -> tuple[str, ...]:
    """Exact namespace names (no patterns: the operator does not list namespaces)."""
    result = tuple(names)
    for name in result:
        if not re.fullmatch(DNS_LABEL, name):
            raise ValueError(f"{name!r} is not a namespace name (lowercase DNS label)")
    return result


def _lease(raw: str | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    namespace, _, name = raw.partition("/")
    if not re.fullmatch(DNS_LABEL, namespace) or not re.fullmatch(
        rf"{DNS_LABEL}(\.{DNS_LABEL})*", name
    ):
        raise ValueError(f"{ENV_PREFIX}LEADER_LEASE must be NAMESPACE/NAME, not {raw!r}")
    return namespace, name


def _flag(get: Callable[[str], str | None], key: str, *, default: bool) -> bool:
    raw = get(key)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_PREFIX}{key} must be true or false, not {raw!r}")


def _host_port(get: Callable[[str], str | None], key: str) -> str | None:
    raw = get(key)
    if raw is None or re.fullmatch(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}", raw):
        return raw.replace("[", "").replace("]", "") if raw else None
    raise ValueError(f"{ENV_PREFIX}{key} must be host:port, not {raw!r}")


def _port(get: Callable[[str], str | None], key: str, default: int) -> int:
    raw = get(key)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{ENV_PREFIX}{key} must be a port (1-65535), not {raw!r}")
    return int(raw)
