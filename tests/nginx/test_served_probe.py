"""The served-certificate probe against real nginx running a rendered
configuration: it reads, for each name, the certificate nginx presents, on
a plain TLS listener and on one that expects a load balancer's PROXY line."""

from __future__ import annotations

import datetime
import socket
import threading
from typing import Any

import pytest

from blogsite_operator import certs
from blogsite_operator.policies.served import ProbeResult, ProbeTarget, served_verdict
from blogsite_operator.served_probe import ServedProbe
from tests.nginx_harness import RunningNginx

SITE: dict[str, Any] = {
    "domains": ["lethain.com", "www.lethain.com"],
    "redirectDomains": ["lethain.org"],
    "daedalus": {"image": "ghcr.io/example/daedalus:1"},
    "tls": {"secretName": "tls"},
}
NAMES = ("lethain.com", "www.lethain.com", "lethain.org")
KEY = ("blogs", "lethain")


def probe_once(port: int, targets: frozenset[ProbeTarget], timeout: float = 3) -> ProbeResult:
    """Ask, wait for the probe's callback (a pass's trigger), take the result."""
    done = threading.Event()
    probe = ServedProbe(3600, lambda *_: done.set(), port=port, timeout=timeout)
    try:
        result, _ = probe.look(KEY, targets, NAMES)
        assert result is None  # the first look only starts the probe
        assert done.wait(30), "the probe never finished"
        result, next_due = probe.look(KEY, targets, NAMES)
    finally:
        probe.shutdown()
    assert result is not None
    assert next_due is not None
    assert 0 < next_due <= probe.interval
    return result


@pytest.mark.parametrize("proxy_protocol", [False, True], ids=["direct", "behind-proxy-protocol"])
def test_the_probe_reads_what_nginx_presents_for_every_name(
    start_nginx: Any, proxy_protocol: bool
) -> None:
    frontend: dict[str, Any] = (
        {"proxyProtocol": True, "trustedProxies": ["127.0.0.0/8"]} if proxy_protocol else {}
    )
    nginx: RunningNginx = start_nginx({**SITE, "frontend": frontend})
    presented = certs.certificate_info(nginx.ca_file.read_bytes())
    target = ProbeTarget("frontend-a", "127.0.0.1", proxy_protocol)
    result = probe_once(nginx.facts.https_port, frozenset({target}))
    assert [(p.pod, p.name) for p in result.presented] == [("frontend-a", n) for n in NAMES]
    assert all(p.info == presented for p in result.presented), result.presented
    now = datetime.datetime.now(tz=datetime.UTC)
    verdict = served_verdict(result, known_serials={presented.serial: "Secret tls"}, now=now)
    assert verdict.status == "True", verdict.message
    renewed = served_verdict(result, known_serials={"abc": "Secret tls"}, now=now)
    assert (renewed.status, renewed.reason) == ("False", "ServesOther")


def test_a_pod_that_does_not_answer_tls_is_reported_unreachable(start_nginx: Any) -> None:
    nginx: RunningNginx = start_nginx(SITE)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once this is closed
    result = probe_once(port, frozenset({ProbeTarget("frontend-a", "127.0.0.1")}), timeout=2)
    assert all(p.info is None and p.error for p in result.presented), result.presented
    known = {certs.certificate_info(nginx.ca_file.read_bytes()).serial: "Secret tls"}
    verdict = served_verdict(result, known_serials=known, now=datetime.datetime.now(datetime.UTC))
    assert (verdict.status, verdict.reason) == ("Unknown", "Unreachable")
    assert "refused" in verdict.message.lower()
