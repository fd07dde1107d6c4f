"""The operator's `nginx -t` gate, with the real nginx binary."""

from __future__ import annotations

from typing import Any

import pytest

from blogsite_operator import models, nginx_check
from blogsite_operator.nginx_check import NginxChecker
from tests.nginx_harness import nginx_binary


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
    checker = NginxChecker(nginx_binary(), allow_extra_config=True)
    assert checker.check(spec("add_header X-Blog yes;")) is None
    assert (
        checker.check(spec("location /old { return 301 /new; }", tls={"secretName": "x"})) is None
    )


@pytest.mark.parametrize("tls", [None, {"secretName": "x"}])
def test_directives_of_the_serving_nginx_pass(tls: dict[str, str] | None) -> None:
    """The checker is the frontend image's nginx (1.26): `http2` (1.25.1+) and
    the modules the frontend has are accepted, as the frontend accepts them."""
    checker = NginxChecker(nginx_binary(), allow_extra_config=True)
    for snippet in ("http2 on;", "http2 off;", "set_real_ip_from 198.18.0.0/15;"):
        assert checker.check(spec(snippet, tls=tls)) is None, snippet


def test_invalid_extra_config_is_reported_in_nginx_words() -> None:
    error = NginxChecker(nginx_binary(), allow_extra_config=True).check(spec("frobnicate on;"))
    assert error is not None
    assert 'unknown directive "frobnicate"' in error
    assert "nginx.conf:" in error  # the line number, without the temporary path
    assert "/tmp" not in error
    # Without nginx's clock and pid, so a verdict asked again reads the same.
    assert error.startswith('[emerg] unknown directive "frobnicate" in nginx.conf:'), error


def test_no_extra_config_needs_no_check() -> None:
    assert NginxChecker("/nonexistent/nginx").check(spec(None)) is None


def test_extra_config_is_off_unless_the_operator_allows_it() -> None:
    error = NginxChecker(nginx_binary()).check(spec("add_header X 1;"))
    assert "disabled" in (error or "")


@pytest.mark.parametrize(
    ("snippet", "why"),
    [
        ("location /k/ { alias /etc/blogsite/tls/; }", "'alias'"),
        ("root /;", "'root'"),
        ("include /etc/passwd;", "'include'"),
        ("}  server { listen 9999; }", "closes a block"),
        ("location / {", "leaves a block open"),
        ("content_by_lua_block { }", "content_by_lua_block"),
    ],
)
def test_snippets_that_could_read_files_are_refused(snippet: str, why: str) -> None:
    error = NginxChecker(nginx_binary(), allow_extra_config=True).check(spec(snippet))
    assert why in (error or "")


def test_without_nginx_extra_config_fails_closed() -> None:
    checker = NginxChecker(nginx_binary(), allow_extra_config=True)
    checker.binary = None
    assert "nginx is not installed" in (checker.check(spec("add_header X 1;")) or "")


def _counting_nginx(tmp_path: Any, stderr: str) -> tuple[str, Any]:
    """A stand-in for nginx -t that fails with `stderr` and counts its runs."""
    calls = tmp_path / "calls"
    binary = tmp_path / "nginx"
    binary.write_text(f"#!/bin/sh\necho run >> {calls}\necho '{stderr}' >&2\nexit 1\n")
    binary.chmod(0o755)
    return str(binary), calls


@pytest.mark.parametrize(
    "stderr",
    [
        'nginx: [emerg] host not found in upstream "api.example.com" in nginx.conf:40',
        "nginx: [emerg] upstream timed out",
    ],
)
def test_a_verdict_that_may_pass_by_itself_is_asked_again(
    tmp_path: Any, stderr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary, calls = _counting_nginx(tmp_path, stderr)
    checker = NginxChecker(binary, allow_extra_config=True)
    snippet = spec("location /api { proxy_pass http://api.example.com; }")
    assert checker.check(snippet) is not None
    assert checker.check(snippet) is not None  # within RETRY_SECONDS: not run again
    assert calls.read_text().count("run") == 1
    monkeypatch.setattr(nginx_check, "RETRY_SECONDS", 0.0)
    checker = NginxChecker(binary, allow_extra_config=True)
    assert checker.check(snippet) is not None
    assert checker.check(snippet) is not None
    assert calls.read_text().count("run") == 3


def test_a_definite_verdict_is_remembered(tmp_path: Any) -> None:
    binary, calls = _counting_nginx(
        tmp_path, 'nginx: [emerg] unknown directive "x" in nginx.conf:3'
    )
    checker = NginxChecker(binary, allow_extra_config=True)
    assert 'unknown directive "x"' in (checker.check(spec("x on;")) or "")
    assert 'unknown directive "x"' in (checker.check(spec("x on;")) or "")
    assert calls.read_text().count("run") == 1
