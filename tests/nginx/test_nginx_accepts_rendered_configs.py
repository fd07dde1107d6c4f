"""Property: `nginx -t` accepts the configuration of every valid BlogSite."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blogsite_operator import certs, models
from blogsite_operator.render.nginx import NginxFacts, render_nginx_conf
from tests.nginx_harness import check_config

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(lambda h: len(h) <= 253)


@st.composite
def blogsite_specs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(HOSTNAME, min_size=1, max_size=100, unique=True))
    split = draw(st.integers(min_value=1, max_value=len(names)))
    tls = draw(st.booleans())
    spec: dict[str, Any] = {
        "domains": names[:split],
        "redirectDomains": names[split:],
        "daedalus": {"image": "ghcr.io/example/daedalus:1"},
        "frontend": {"http": draw(st.sampled_from(["serve", "redirect"])) if tls else "serve"},
    }
    if tls:
        spec["tls"] = draw(
            st.sampled_from([{"secretName": "mine"}, {"acme": {"email": "ops@example.com"}}])
        )
    return spec


WORKDIR = Path(tempfile.mkdtemp(prefix="nginx-property-"))
CERT, KEY = WORKDIR / "tls.crt", WORKDIR / "tls.key"
_cert_pem, _key_pem = certs.self_signed_placeholder(["placeholder.example"])
CERT.write_bytes(_cert_pem)
KEY.write_bytes(_key_pem)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blogsite_specs())
def test_nginx_accepts_every_valid_spec(raw: dict[str, Any]) -> None:
    spec = models.parse_spec(raw)
    tls = spec.tls is not None
    facts = NginxFacts(
        daedalus_upstream="127.0.0.1:9",
        challenge_upstream="127.0.0.1:9",
        tls_certificate=str(CERT) if tls else None,
        tls_certificate_key=str(KEY) if tls else None,
        temp_dir=str(WORKDIR),
        pid_file=str(WORKDIR / "nginx.pid"),
    )
    conf = render_nginx_conf(spec, facts)
    result = check_config(conf, WORKDIR)
    assert result.returncode == 0, f"{result.stderr}\n{conf}"
    for name in [*spec.domains, *spec.redirect_domains]:
        assert f" {name}" in conf


def test_the_longest_names_fit_the_server_names_hash() -> None:
    longest = [("a" * 63 + ".") * 3 + f"{i:03d}" + "b" * 58 for i in range(100)]
    assert all(len(n) == 253 and models.is_hostname(n) for n in longest)
    test_nginx_accepts_every_valid_spec.hypothesis.inner_test(  # type: ignore[attr-defined]
        {"domains": longest[:50], "redirectDomains": longest[50:], "daedalus": {"image": "d:1"}}
    )
