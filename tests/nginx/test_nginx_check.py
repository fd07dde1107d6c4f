"""The operator's `nginx -t` gate, with the real nginx binary."""

from __future__ import annotations

from typing import Any

from blogsite_operator import models
from blogsite_operator.nginx_check import NginxChecker
from tests.nginx.conftest import nginx_binary


def spec(extra: str | None, **changes: Any) -> models.BlogSiteSpec:
    frontend = {"extraConfig": extra} if extra is not None else {}
    return models.parse_spec(
        {
            "domains": ["a.example.com"],
            "daedalus": {"image": "d:1"},
            "frontend": frontend,
            **changes,
        }
    )


def test_valid_extra_config_passes() -> None:
    checker = NginxChecker(nginx_binary())
    assert checker.check(spec("add_header X-Blog yes;")) is None
    assert (
        checker.check(spec("location /old { return 301 /new; }", tls={"secretName": "x"})) is None
    )


def test_invalid_extra_config_is_reported_in_nginx_words() -> None:
    error = NginxChecker(nginx_binary()).check(spec("frobnicate on;"))
    assert error is not None
    assert 'unknown directive "frobnicate"' in error
    assert "nginx.conf:" in error  # the line number, without the temporary path
    assert "/tmp" not in error


def test_no_extra_config_needs_no_check() -> None:
    assert NginxChecker("/nonexistent/nginx").check(spec(None)) is None


def test_without_nginx_extra_config_fails_closed() -> None:
    checker = NginxChecker(nginx_binary())
    checker.binary = None
    assert "nginx is not installed" in (checker.check(spec("add_header X 1;")) or "")
