"""A real Gateway API implementation for the tests: Traefik.

Built from the Go module proxy at the version hack/versions.env pins, with
the Gateway API CRDs of the release it is built against (experimental
channel: TLSRoute), by `hack/build-tools.sh traefik`. It runs on the node as
a process, as a hostNetwork Traefik would, with its entry points on the
node's address: there is no load-balancer controller here, so that address
is the Gateway's (Traefik writes it into the Gateway's status). It routes to
the frontend pods' addresses, which it reads from the EndpointSlices.

Traefik's version check and usage statistics are off: no packet leaves.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import built_tool, wait_for

CONTROLLER = "traefik.io/gateway-controller"
GATEWAY_CLASS = "blogsite-test-traefik"
GATEWAY = "shared"
# A listener that takes one hostname only: a route naming it for others is refused.
RESTRICTED_LISTENER = "restricted"
RESTRICTED_HOSTNAME = "only.gateway.example.test"


def traefik_paths() -> tuple[Path, Path]:
    """The traefik binary and the directory of the Gateway API CRDs (built if missing)."""
    directory = built_tool("traefik", "TRAEFIK_BIN")
    return directory / "traefik", directory / "gateway-api-crds"


def install_gateway_api(kubectl: Any) -> None:
    """The Gateway API CRDs, Established; they stay (other tests may use them)."""
    _, crds = traefik_paths()
    kubectl.install_crds(
        str(crds),
        *[
            f"{plural}.gateway.networking.k8s.io"
            for plural in ("gateways", "httproutes", "tlsroutes")
        ],
    )


def gateway_manifests(namespace: str) -> list[dict[str, Any]]:
    """The GatewayClass Traefik takes and one Gateway: HTTP on 80, TLS
    passthrough on 443 for any name, and a passthrough listener for one
    name only; routes from every namespace."""
    everywhere = {"namespaces": {"from": "All"}}
    passthrough = {"mode": "Passthrough"}
    return [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": namespace},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {"name": "web", "protocol": "HTTP", "port": 80, "allowedRoutes": everywhere},
                    {
                        "name": "tls",
                        "protocol": "TLS",
                        "port": 443,
                        "tls": passthrough,
                        "allowedRoutes": everywhere,
                    },
                    {
                        "name": RESTRICTED_LISTENER,
                        "protocol": "TLS",
                        "port": 443,
                        "hostname": RESTRICTED_HOSTNAME,
                        "tls": passthrough,
                        "allowedRoutes": everywhere,
                    },
                ],
            },
        },
    ]


@dataclass
class Gateway:
    address: str
    namespace: str
    name: str
    access_log: Path
    log: Path

    def access_lines(self, needle: str) -> list[str]:
        """Lines of Traefik's access log (one per request it proxied) holding `needle`."""
        if not self.access_log.exists():
            return []
        return [line for line in self.access_log.read_text().splitlines() if needle in line]


@contextmanager
def running_gateway(
    kubectl: Any, address: str, namespace: str, watched: list[str], state_dir: Path
) -> Iterator[Gateway]:
    """The Gateway API CRDs installed, a Gateway in `namespace`, and Traefik serving it on `address`
    ports 80 and 443 for routes in `watched` namespaces, until the block ends."""
    traefik, _ = traefik_paths()
    install_gateway_api(kubectl)
    manifests = yaml.safe_dump_all(gateway_manifests(namespace))
    kubectl.run("apply", "-f", "-", stdin=manifests)
    gateway = Gateway(
        address, namespace, GATEWAY, state_dir / "access.log", state_dir / "traefik.log"
    )
    with gateway.log.open("ab") as log:
        process = subprocess.Popen(
            [
                str(traefik),
                "--global.checkNewVersion=false",
                "--global.sendAnonymousUsage=false",
                f"--entryPoints.web.address={address}:80",
                f"--entryPoints.websecure.address={address}:443",
                "--providers.kubernetesGateway=true",
                "--providers.kubernetesGateway.experimentalChannel=true",
                f"--providers.kubernetesGateway.namespaces={','.join([namespace, *watched])}",
                f"--providers.kubernetesGateway.statusAddress.ip={address}",
                "--log.level=INFO",
                "--accesslog=true",
                f"--accesslog.filepath={gateway.access_log}",
            ],
            env={**os.environ, "KUBECONFIG": kubectl.kubeconfig},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def programmed() -> bool:
            found = kubectl.json("get", "gateway", GATEWAY, "-n", namespace)
            conditions = (found.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)

        wait_for(programmed, timeout=60, what="Traefik programming the Gateway")
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        kubectl.run("delete", "gatewayclass", GATEWAY_CLASS, "--wait=false", check=False)
