"""BlogSites sharing one entry point: a real Gateway API implementation
(Traefik, tests/gateway.py) on the real node, in front of three sites.

Each site's frontend still terminates TLS with its own certificate: the
Gateway passes TLS through by SNI (TLSRoute) and carries port 80 by Host
(HTTPRoute), HTTP-01 validation included. Pebble's DNS sends every name to
the Gateway's address, so a certificate issued here was validated through
the Gateway. The operator runs as a process on this machine, watching the
sites' namespace; its pods run on the real node.

The tests share the Gateway, Pebble, the operator and the sites, and run in
file order.
"""

from __future__ import annotations

import base64
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509

from tests.gateway import RESTRICTED_HOSTNAME, RESTRICTED_LISTENER, Gateway, running_gateway
from tests.integration.conftest import OperatorProcess
from tests.integration.test_real_node import (
    PAGE,
    RealNode,
    create_real_namespace,
    deployment,
    frontend_replaced,
    real_node,  # noqa: F401 - a fixture
)
from tests.pebble import Pebble, running_pebble
from tests.support import FIGURES, wait_for
from tests.traffic import Response, Traffic, request, tls_context

# Ports of their own (the real node's module has its Pebble on others);
# HTTP-01 on 80, where the Gateway listens, as a real CA connects.
PEBBLE_ENV = {
    "PEBBLE_PORT": "14050",
    "PEBBLE_MANAGEMENT_PORT": "15050",
    "PEBBLE_DNS_PORT": "8103",
    "PEBBLE_CHALLTESTSRV_PORT": "8105",
    "PEBBLE_HTTP01_PORT": "80",
    "PEBBLE_AUTHZREUSE": "0",
}
ZONE = "gateway.example.test"


@dataclass(frozen=True)
class SiteShape:
    name: str
    domains: tuple[str, ...]
    redirect_domains: tuple[str, ...]
    http: str  # serve | redirect


SITES = (
    SiteShape("alpha", (f"alpha.{ZONE}", f"www.alpha.{ZONE}"), (f"old-alpha.{ZONE}",), "serve"),
    SiteShape("beta", (f"beta.{ZONE}",), (), "redirect"),
    SiteShape("gamma", (f"gamma.{ZONE}",), (f"old-gamma.{ZONE}",), "serve"),
)


@dataclass
class Shared:
    node: RealNode
    namespace: str
    gateway: Gateway
    pebble: Pebble
    operator: OperatorProcess
    kubectl: Any

    @property
    def root_pem(self) -> bytes:
        return self.pebble.root_pem()

    def status(self, site: str) -> dict[str, Any]:
        body: dict[str, Any] = self.kubectl.json("get", "blogsite", site, "-n", self.namespace)
        return body.get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == kind), {})


def site_spec(shared: Shared, shape: SiteShape, **frontend: Any) -> dict[str, Any]:
    directory = f"https://{shared.node.ip}:{PEBBLE_ENV['PEBBLE_PORT']}/dir"
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": shape.name},
        "spec": {
            "domains": list(shape.domains),
            "redirectDomains": list(shape.redirect_domains),
            "daedalus": {
                "image": shared.node.daedalus(),
                "replicas": 1,
                "healthCheck": {"path": "/healthz", "periodSeconds": 2},
            },
            "frontend": {
                "replicas": 2,
                "http": shape.http,
                "gateway": {"name": shared.gateway.name, "namespace": shared.gateway.namespace},
                **frontend,
            },
            "tls": {
                "acme": {
                    "server": directory,
                    "email": "ops@example.test",
                    "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
                }
            },
        },
    }


@pytest.fixture(scope="module")
def shared(
    kubectl: Any,
    real_node: RealNode,  # noqa: F811 - the fixture imported above
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shared]:
    suffix = uuid.uuid4().hex[:6]
    namespace, gateway_namespace = f"sites-{suffix}", f"gateways-{suffix}"
    create_real_namespace(kubectl, namespace)
    kubectl.run("create", "namespace", gateway_namespace)
    state = tmp_path_factory.mktemp("gateway")
    env = {**PEBBLE_ENV, "PEBBLE_PUBLIC_ADDRESS": real_node.ip}
    try:
        with (
            running_pebble(env, tmp_path_factory.mktemp("pebble")) as pebble,
            running_gateway(kubectl, real_node.ip, gateway_namespace, [namespace], state) as gw,
        ):
            kubectl.run(
                "create", "secret", "generic", "pebble-ca", "-n", namespace,
                f"--from-file=ca.crt={pebble.state_dir / 'pebble-ca.pem'}",
            )  # fmt: skip
            operator = OperatorProcess(
                kubectl,
                namespace,
                state / "operator.log",
                extra_env={
                    "BLOGSITE_OPERATOR_FRONTEND_IMAGE": real_node.frontend_image,
                    "BLOGSITE_OPERATOR_IMAGE": real_node.operator_image,
                    # Through the Gateway, as the CA comes (the site is behind one).
                    "BLOGSITE_OPERATOR_ACME_SELF_CHECK": "frontend",
                    "BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER": (
                        f"{real_node.ip}:{PEBBLE_ENV['PEBBLE_DNS_PORT']}"
                    ),
                    "BLOGSITE_OPERATOR_ACME_PREFLIGHT_HTTP_PORT": "80",
                    "BLOGSITE_OPERATOR_ACME_ORDER_TIMEOUT_SECONDS": "120",
                    "BLOGSITE_OPERATOR_SERVED_PROBE_SECONDS": "20",
                },
            )
            operator.start()
            try:
                yield Shared(real_node, namespace, gw, pebble, operator, kubectl)
            finally:
                code = operator.stop()
                logs = operator.logs()
                assert code == 0, f"operator exited with {code}:\n{logs[-5000:]}"
                assert "Traceback" not in logs, logs[-5000:]
    finally:
        for name in (namespace, gateway_namespace):
            kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def frontend_settled(shared: Shared, site: str) -> bool:
    """The frontend rolled out and no older pod is left: while one drains
    (5 s) it still answers connections the Gateway sent before it learned."""
    template = deployment(shared.kubectl, shared.namespace, "frontend", site)["spec"]["template"]
    return frontend_replaced(shared.kubectl, shared.namespace, template, site)


def served_and_accepted(shared: Shared, site: str) -> dict[str, Any] | None:
    status = shared.status(site)
    wanted = ("Ready", "CertificateReady", "CertificateServed", "GatewayAccepted")
    if all(condition(status, kind).get("status") == "True" for kind in wanted) and (
        frontend_settled(shared, site)
    ):
        return status
    return None


@pytest.fixture(scope="module")
def sites(shared: Shared) -> dict[str, dict[str, Any]]:
    """The three sites applied behind the Gateway, each certified, Ready,
    its certificate served and its routes accepted."""
    for shape in SITES:
        for name in (*shape.domains, *shape.redirect_domains):
            shared.pebble.resolve(name, shared.gateway.address)
    started = time.monotonic()
    for shape in SITES:
        shared.kubectl.apply(site_spec(shared, shape), shared.namespace)
    statuses = {
        shape.name: wait_for(
            lambda shape=shape: served_and_accepted(shared, shape.name),  # type: ignore[misc]
            timeout=420,
            interval=1,
            what=f"{shape.name} certified, Ready, served and accepted by the Gateway",
        )
        for shape in SITES
    }
    FIGURES.append(
        f"gateway: three ACME sites behind one Gateway, applied -> all certified, served and "
        f"accepted in {time.monotonic() - started:.1f}s"
    )
    return statuses


def issued_certificate(shared: Shared, site: str) -> x509.Certificate:
    secret = shared.kubectl.json("get", "secret", f"{site}-tls", "-n", shared.namespace)
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def through_gateway(shared: Shared, name: str, path: str = "/", *, https: bool = True) -> Response:
    tls = tls_context(shared.root_pem) if https else None
    return request(shared.gateway.address, 443 if https else 80, name, path, tls=tls)


def test_three_sites_share_one_gateway_address_each_with_its_own_certificate(
    shared: Shared, sites: dict[str, dict[str, Any]]
) -> None:
    address = shared.gateway.address
    for shape in SITES:
        status = sites[shape.name]
        assert status["externalAddresses"] == [address]
        accepted = condition(status, "GatewayAccepted")
        assert accepted["reason"] == "Accepted"
        assert (
            f"accepted by Gateway {shared.gateway.namespace}/shared at {address}"
            in (accepted["message"])
        )
        assert [
            (r["kind"], r["accepted"], r["resolvedRefs"]) for r in status["gateway"]["routes"]
        ] == [
            ("HTTPRoute", "True", "True"),
            ("TLSRoute", "True", "True"),
        ]
        issued = issued_certificate(shared, shape.name)
        names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        all_names = (*shape.domains, *shape.redirect_domains)
        assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(all_names)
        for name in all_names:
            # SNI through the Gateway reaches this site's nginx, which
            # presents this site's certificate (checked against Pebble's root).
            response = through_gateway(shared, name)
            assert response.peer_certificate is not None
            presented = x509.load_der_x509_certificate(response.peer_certificate)
            assert presented.serial_number == issued.serial_number, name
            if name in shape.domains:
                assert_page(response)
                assert name in response.body  # daedalus saw the Host nginx passed on
            else:
                assert response.status == 301, response
                assert response.headers["Location"] == f"https://{shape.domains[0]}/"
            plain = through_gateway(shared, name, "/x", https=False)
            if shape.http == "redirect" or name in shape.redirect_domains:
                assert plain.status == 301, plain
            else:
                assert_page(plain)
        # HTTP-01 was validated through the Gateway: its access log has the
        # CA's (and the preflight's and self-check's) fetches, by this
        # site's HTTPRoute (Traefik names the router after it).
        fetched = shared.gateway.access_lines("/.well-known/acme-challenge/")
        assert any(f"-{shape.name}-frontend-" in line for line in fetched), fetched[-5:]


def assert_page(response: Response) -> None:
    assert response.status == 200, response
    assert PAGE in response.body, response


def none_failed(what: str, clients: tuple[Traffic, ...], at_least: int) -> None:
    """Each client sent more than `at_least` requests and none failed; the counts go to FIGURES."""
    for client in clients:
        assert client.sent > at_least, client.summary()
        assert not client.failures, client.summary()
    FIGURES.append(f"gateway: {what}: " + "; ".join(c.summary() for c in clients))


def latencies(address: str, port: int, name: str, tls: Any, count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.monotonic()
        response = request(address, port, name, tls=tls)
        taken.append(time.monotonic() - started)
        assert response.status == 200, response
    return taken


def test_what_the_gateway_adds_to_latency_and_what_it_carries(
    shared: Shared, sites: dict[str, dict[str, Any]]
) -> None:
    tls = tls_context(shared.root_pem)
    name = SITES[0].domains[0]
    service = shared.kubectl.json("get", "service", "alpha-frontend", "-n", shared.namespace)
    direct = latencies(service["spec"]["clusterIP"], 443, name, tls, 200)
    gateway = latencies(shared.gateway.address, 443, name, tls, 200)

    def quantiles(values: list[float]) -> str:
        cuts = statistics.quantiles(values, n=20)
        return f"median {statistics.median(values) * 1000:.1f} ms, p95 {cuts[18] * 1000:.1f} ms"

    FIGURES.append(
        "gateway: one HTTPS request (new connection, TLS passthrough) through the Gateway: "
        f"{quantiles(gateway)}; straight to the frontend Service: {quantiles(direct)}; "
        f"added: {(statistics.median(gateway) - statistics.median(direct)) * 1000:.1f} ms median"
    )
    clients = [
        Traffic(shared.gateway.address, 443, shape.domains[0], tls, PAGE, interval=0.0)
        for shape in SITES
        for _ in range(2)
    ]
    began = time.monotonic()
    for client in clients:
        client.__enter__()
    time.sleep(10)  # a measurement window, not a wait for an event
    for client in clients:
        client.stop()
    took = time.monotonic() - began
    sent = sum(c.sent for c in clients)
    failed = sum(len(c.failures) for c in clients)
    FIGURES.append(
        f"gateway: three sites through one Gateway, 6 clients without pause (new TLS "
        f"connection each): {sent / took:.0f} requests/s over {took:.1f}s, {failed} failed"
    )
    assert failed == 0, [c.summary() for c in clients if c.failures]


def gateway_condition(shared: Shared, site: str, *, pending_ok: bool = False) -> dict[str, Any]:
    found = condition(shared.status(site), "GatewayAccepted")
    if not found or (found["reason"] == "RoutePending" and not pending_ok):
        return {}
    return found


@pytest.mark.parametrize(
    ("site", "listeners", "reason", "words"),
    [
        # Traefik's own verdict (with no message) on a TLSRoute whose names
        # the listener does not allow.
        (
            "delta",
            {"tlsListener": RESTRICTED_LISTENER},
            "NoMatchingListenerHostname",
            "TLSRoute delta-frontend: Accepted False by",
        ),
        # The operator's finding, from the Gateway's spec: no route could attach.
        (
            "epsilon",
            {"httpListener": "tls"},
            "NoHTTPListener",
            "listener 'tls' is not protocol HTTP",
        ),
    ],
    ids=["refused-by-the-gateway", "no-listener-for-the-protocol"],
)
def test_a_route_the_gateway_cannot_take_is_shown_with_its_reason_until_fixed(
    shared: Shared, site: str, listeners: dict[str, str], reason: str, words: str
) -> None:
    shape = SiteShape(site, (f"{site}.{ZONE}",), (), "serve")
    assert RESTRICTED_HOSTNAME not in shape.domains
    shared.pebble.resolve(shape.domains[0], shared.gateway.address)
    spec = site_spec(shared, shape)
    spec["spec"]["frontend"]["gateway"].update(listeners)
    shared.kubectl.apply(spec, shared.namespace)
    refused = wait_for(
        lambda: found if (found := gateway_condition(shared, site)) else None,
        timeout=120,
        what=f"GatewayAccepted decided for {site}",
    )
    assert (refused["status"], refused["reason"]) == ("False", reason), refused
    assert words in refused["message"], refused
    assert f"Gateway {shared.gateway.namespace}/shared" in refused["message"], refused
    # Once its pods are available, Ready says why no one is served.
    ready = wait_for(
        lambda: (
            found
            if (found := condition(shared.status(site), "Ready")).get("reason")
            != ("ComponentsNotAvailable")
            else None
        ),
        timeout=180,
        what=f"{site}'s pods available",
    )
    assert (ready["status"], ready["reason"]) == ("False", reason), ready
    # Fixed: the same site on the Gateway's open listeners is accepted.
    shared.kubectl.apply(site_spec(shared, shape), shared.namespace)
    wait_for(
        lambda: gateway_condition(shared, site).get("status") == "True",
        timeout=120,
        what=f"{site} accepted once it names no listener",
    )
    shared.kubectl.run("delete", "blogsite", site, "-n", shared.namespace)


def test_a_frontend_rollout_behind_the_gateway_fails_no_request(
    shared: Shared, sites: dict[str, dict[str, Any]]
) -> None:
    alpha, gamma = SITES[0], SITES[2]
    tls = tls_context(shared.root_pem)
    address = shared.gateway.address
    before = shared.kubectl.json("get", "deployment", "alpha-frontend", "-n", shared.namespace)
    with (
        Traffic(address, 443, alpha.domains[0], tls, PAGE) as secure,
        Traffic(address, 80, alpha.domains[1], None, PAGE) as plain,
        Traffic(address, 443, gamma.domains[0], tls, PAGE) as neighbour,
    ):
        # A new nginx configuration: the frontend rolls, pod by pod.
        shared.kubectl.apply(site_spec(shared, alpha, hsts={"maxAgeSeconds": 60}), shared.namespace)
        wait_for(
            lambda: (
                shared.kubectl.json("get", "deployment", "alpha-frontend", "-n", shared.namespace)[
                    "metadata"
                ]["generation"]
                > before["metadata"]["generation"]
            ),
            timeout=60,
            what="the frontend Deployment changed",
        )
        wait_for(
            lambda: frontend_settled(shared, "alpha"),
            timeout=180,
            what="the frontend rolled out, no old pod left",
        )
    none_failed("a frontend rollout behind the Gateway", (secure, plain, neighbour), 100)
    response = through_gateway(shared, alpha.domains[0])
    assert response.headers.get("Strict-Transport-Security") == "max-age=60"


def answers(address: str, port: int, name: str, tls: Any) -> bool:
    """One request to the site at address:port comes back with the page."""
    try:
        response = request(address, port, name, tls=tls)
    except OSError:
        return False
    return response.status == 200 and PAGE in response.body


def routes_of(shared: Shared, site: str) -> list[str]:
    found = shared.kubectl.run(
        "get", "httproutes,tlsroutes", "-n", shared.namespace,
        "-l", f"app.kubernetes.io/instance={site}", "-o", "name",
    )  # fmt: skip
    return sorted(found.stdout.split())


def frontend_service(shared: Shared, site: str) -> dict[str, Any]:
    found: dict[str, Any] = shared.kubectl.json(
        "get", "service", f"{site}-frontend", "-n", shared.namespace
    )
    return found


def test_a_site_leaves_the_gateway_and_comes_back_under_traffic_without_a_failed_request(
    shared: Shared, sites: dict[str, dict[str, Any]]
) -> None:
    gamma = SITES[2]
    name = gamma.domains[0]
    tls = tls_context(shared.root_pem)
    address = shared.gateway.address
    services = f"app.kubernetes.io/instance={gamma.name}"
    without_gateway = site_spec(shared, gamma, service={"type": "NodePort"})
    del without_gateway["spec"]["frontend"]["gateway"]

    def node_port() -> int:
        ports = frontend_service(shared, gamma.name)["spec"]["ports"]
        return int(next(p["nodePort"] for p in ports if p["port"] == 443))

    # Leaving: first the site's own Service (a NodePort) beside the routes,
    # clients move to it, then the Gateway goes.
    with Traffic(address, 443, name, tls, PAGE) as on_gateway:
        shared.kubectl.apply(
            site_spec(shared, gamma, service={"type": "NodePort"}), shared.namespace
        )
        wait_for(
            lambda: frontend_service(shared, gamma.name)["spec"]["type"] == "NodePort",
            what="gamma's own NodePort Service",
        )
        # As a user would before moving DNS: the new path answers (kube-proxy
        # opens a new NodePort a moment after the Service has it).
        port = node_port()
        wait_for(lambda: answers(shared.node.ip, port, name, tls), what="the NodePort answering")
        with Traffic(shared.node.ip, port, name, tls, PAGE) as on_node_port:
            wait_for(lambda: len(on_node_port.completed) > 20, what="clients on the NodePort")
            on_gateway.stop()
            shared.kubectl.apply(without_gateway, shared.namespace)
            wait_for(lambda: not routes_of(shared, gamma.name), what="gamma's routes deleted")
            wait_for(
                lambda: (
                    "gateway" not in shared.status(gamma.name)
                    and not condition(shared.status(gamma.name), "GatewayAccepted")
                ),
                what="status without the Gateway",
            )
            # Coming back: routes beside the NodePort, clients move, then
            # the type is left to the default behind a gateway, ClusterIP.
            shared.kubectl.apply(
                site_spec(shared, gamma, service={"type": "NodePort"}), shared.namespace
            )
            wait_for(
                lambda: gateway_condition(shared, gamma.name).get("status") == "True",
                timeout=120,
                what="gamma's routes accepted again",
            )
            wait_for(lambda: answers(address, 443, name, tls), what="the Gateway answering")
            with Traffic(address, 443, name, tls, PAGE) as back_on_gateway:
                wait_for(lambda: len(back_on_gateway.completed) > 20, what="clients on the Gateway")
                on_node_port.stop()
                shared.kubectl.apply(site_spec(shared, gamma), shared.namespace)
                wait_for(
                    lambda: frontend_service(shared, gamma.name)["spec"]["type"] == "ClusterIP",
                    what="gamma's Service back to ClusterIP",
                )
                closed_at = len(back_on_gateway.completed)
                wait_for(
                    lambda: len(back_on_gateway.completed) > closed_at + 50,
                    what="requests through the Gateway after the NodePort closed",
                )
    none_failed(
        "gamma off the Gateway onto its NodePort and back",
        (on_gateway, on_node_port, back_on_gateway),
        20,
    )
    assert routes_of(shared, gamma.name) == [
        "httproute.gateway.networking.k8s.io/gamma-frontend",
        "tlsroute.gateway.networking.k8s.io/gamma-frontend",
    ]
    frontend_services = shared.kubectl.run(
        "get", "services", "-n", shared.namespace, "-l",
        f"{services},app.kubernetes.io/component=frontend", "-o", "name",
    )  # fmt: skip
    assert frontend_services.stdout.split() == ["service/gamma-frontend"]
    assert "nodePort" not in str(frontend_service(shared, gamma.name)["spec"]["ports"])
