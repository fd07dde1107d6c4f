"""Operator-wide settings, from environment variables (flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from blogsite_operator.render import RenderSettings

ENV_PREFIX = "BLOGSITE_OPERATOR_"


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
    """

    namespaces: tuple[str, ...] = ()
    log_format: str = "plain"
    workers: int = 16
    nginx_binary: str | None = None
    allow_extra_config: bool = False
    render: RenderSettings = field(default_factory=RenderSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if env is None else env)

        def get(key: str) -> str | None:
            value = env.get(ENV_PREFIX + key, "").strip()
            return value or None

        defaults = cls()
        render_defaults = RenderSettings()
        namespaces = tuple(n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip())
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
            render=RenderSettings(
                frontend_image=get("FRONTEND_IMAGE") or render_defaults.frontend_image,
                operator_image=get("IMAGE") or render_defaults.operator_image,
            ),
        )
