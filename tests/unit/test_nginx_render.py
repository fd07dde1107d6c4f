"""nginx.conf rendering as text: what reaches the file, and what never does."""

from __future__ import annotations

from typing import Any

import pytest

from blogsite_operator import models
from blogsite_operator.render.nginx import NginxFacts, render_nginx_conf

FACTS = NginxFacts(daedalus_upstream="daedalus.ns.svc:80", challenge_upstream="acme.ns.svc:80")
TLS_FACTS = NginxFacts(
    daedalus_upstream="daedalus.ns.svc:80",
    challenge_upstream="acme.ns.svc:80",
    tls_certificate="/etc/tls/tls.crt",
    tls_certificate_key="/etc/tls/tls.key",
)


def spec(**changes: Any) -> models.BlogSiteSpec:
    raw: dict[str, Any] = {"domains": ["a.example.com"], "daedalus": {"image": "d:1"}, **changes}
    return models.parse_spec(raw)


def test_deterministic() -> None:
    assert render_nginx_conf(spec(), FACTS) == render_nginx_conf(spec(), FACTS)


def test_no_tls_means_no_ssl_anywhere() -> None:
    conf = render_nginx_conf(spec(), FACTS)
    assert "ssl" not in conf
    assert "listen 8443" not in conf


def test_tls_listeners_and_certificate_paths() -> None:
    conf = render_nginx_conf(spec(tls={"secretName": "x"}), TLS_FACTS)
    assert "listen 8443 ssl default_server;" in conf
    assert "ssl_certificate /etc/tls/tls.crt;" in conf


@pytest.mark.parametrize(
    "facts",
    [
        NginxFacts(daedalus_upstream="x:80; include /etc/passwd", challenge_upstream="a:1"),
        NginxFacts(daedalus_upstream="a:1", challenge_upstream="a:1", temp_dir="/tmp; evil"),
        NginxFacts(
            daedalus_upstream="a:1",
            challenge_upstream="a:1",
            tls_certificate="/x.crt;",
            tls_certificate_key="/x.key",
        ),
    ],
)
def test_unsafe_facts_are_refused(facts: NginxFacts) -> None:
    with pytest.raises(ValueError, match="not a"):
        render_nginx_conf(spec(tls={"secretName": "x"}), facts)


def test_hostnames_are_checked_again_even_if_a_model_is_built_unvalidated() -> None:
    forged = models.BlogSiteSpec.model_construct(
        domains=["a.com; return 200 pwned"],
        redirect_domains=[],
        daedalus=models.Daedalus(image="d:1"),
        frontend=models.Frontend(),
        tls=None,
        rollout=models.Rollout(),
    )
    with pytest.raises(ValueError, match="not a hostname"):
        render_nginx_conf(forged, FACTS)


def test_extra_config_is_opt_in_and_lands_in_the_domain_servers() -> None:
    plain = render_nginx_conf(spec(), FACTS)
    assert "user-supplied" not in plain  # the marker comment of the block below
    assert "add_header" not in plain
    conf = render_nginx_conf(
        spec(frontend={"extraConfig": "add_header X-Blog yes;"}, tls={"secretName": "x"}), TLS_FACTS
    )
    assert conf.count("add_header X-Blog yes;") == 2  # plain HTTP and HTTPS server blocks
