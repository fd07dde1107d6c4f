"""A real cluster for the integration tests, one namespace per test.

By default the session starts (or reuses) the local control plane of
`hack/cluster.sh`: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler built from source, KWOK as the kubelet. BLOGSITE_TEST_KUBECONFIG
points the tests at another cluster instead; `pytest --cluster=kind` creates a
kind cluster through pytest-kind and installs KWOK into it (needs Docker).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.acme_faults import AcmeFaultProxy
from tests.nginx_harness import nginx_binary
from tests.pebble import DEFAULT_ENV as PEBBLE_DEFAULT_ENV
from tests.pebble import ChallengeServer
from tests.support import serving, wait_for

ROOT = Path(__file__).resolve().parents[2]
PEBBLE_HTTP01_PORT = int(PEBBLE_DEFAULT_ENV["PEBBLE_HTTP01_PORT"])
PEBBLE_DNS_PORT = int(PEBBLE_DEFAULT_ENV["PEBBLE_DNS_PORT"])
HACK = ROOT / "hack"
# Tests get their own cluster, apart from the one `make run` uses, so an
# operator running there never reconciles the tests' BlogSites.
TEST_CLUSTER_ENV = {
    **os.environ,
    "BLOGSITE_CLUSTER": os.environ.get("BLOGSITE_TEST_CLUSTER", "blogsite-test"),
    # Who wrote what, from the API server's own record (leader election tests).
    "BLOGSITE_AUDIT_POLICY": str(ROOT / "hack" / "kwok" / "audit-policy.yaml"),
}


# The real node's module is one chain of tests (one operator release, one
# site; tests/conftest.py keeps it on one worker): it goes first, as the
# longest.
REAL_NODE_MODULE = "test_real_node.py"
# The oldest Kubernetes' module, also one worker's (its own cluster): next.
OLDEST_MODULE = "test_oldest_kubernetes.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.cluster)
    items.sort(
        key=lambda item: (
            Path(str(item.fspath)).name != REAL_NODE_MODULE,
            Path(str(item.fspath)).name != OLDEST_MODULE,
        )
    )


@dataclass
class Kubectl:
    """Real kubectl against the test cluster."""

    binary: str
    kubeconfig: str
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, manifest: str | dict[str, Any], namespace: str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self.run("apply", "-n", namespace, "-f", "-", stdin=text)

    def install_crds(self, path: str, *names: str) -> None:
        """Server-side apply the CRDs at `path` and wait until `names` are
        Established. Polled, not `kubectl wait`: right after the apply a CRD
        can have no conditions yet, and `kubectl wait` then fails at once
        (".status.conditions accessor error") instead of waiting."""
        self.run("apply", "--server-side", "--force-conflicts", "-f", path)

        def established() -> bool:
            for name in names:
                found = self.run(
                    "get", "crd", name, "-o",
                    'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                    check=False,
                )  # fmt: skip
                if found.stdout.strip() != "True":
                    return False
            return True

        wait_for(established, timeout=60, what=f"{', '.join(names)} Established")

    def exists(self, kind: str, name: str, namespace: str) -> bool:
        result = self.run("get", kind, name, "-n", namespace, "-o", "name", check=False)
        return result.returncode == 0


def cluster_env(*, check: bool = True, env: dict[str, str] | None = None) -> dict[str, str]:
    """`hack/cluster.sh env`: kubectl, kubeconfig, and the real node's address and
    images, of the test cluster (or the one `env` names)."""
    result = subprocess.run(
        [str(HACK / "cluster.sh"), "env"],
        check=check,
        capture_output=True,
        text=True,
        env=env or TEST_CLUSTER_ENV,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def cluster_answers() -> bool:
    """Is the test cluster up already (then this session leaves it up)?"""
    path = subprocess.run(
        [str(HACK / "cluster.sh"), "kubeconfig"],
        capture_output=True,
        text=True,
        check=True,
        env=TEST_CLUSTER_ENV,
    ).stdout.strip()
    if not Path(path).exists():
        return False
    kubectl = cluster_env(check=False)
    if "KUBECTL" not in kubectl:
        return False
    ready = subprocess.run(
        [kubectl["KUBECTL"], "--kubeconfig", path, "get", "--raw", "/readyz"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return ready.returncode == 0


def _kwok_cluster(request: pytest.FixtureRequest) -> Kubectl:
    if os.environ.get("BLOGSITE_TEST_CLUSTER_READY") == "1":
        # hack/test.sh brought it up, and takes it down: parallel workers
        # only use it (each bringing it up would build and push images at once).
        env = cluster_env()
        return Kubectl(binary=env["KUBECTL"], kubeconfig=env["KUBECONFIG"])
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("parallel workers share one cluster: run them through hack/test.sh (make test)")
    # A run stops what it started: the cluster (and its real node, which
    # changes the machine) goes down at the end unless it was up before, or
    # unless BLOGSITE_TEST_KEEP_CLUSTER is 1.
    if not cluster_answers() and os.environ.get("BLOGSITE_TEST_KEEP_CLUSTER") != "1":
        request.addfinalizer(
            lambda: subprocess.run(
                [str(HACK / "cluster.sh"), "down"], check=True, timeout=600, env=TEST_CLUSTER_ENV
            )
        )
    subprocess.run([str(HACK / "cluster.sh"), "up"], check=True, timeout=1800, env=TEST_CLUSTER_ENV)
    env = cluster_env()
    return Kubectl(binary=env["KUBECTL"], kubeconfig=env["KUBECONFIG"])


def _kind_cluster(request: pytest.FixtureRequest) -> Kubectl:
    """kind + KWOK installed in-cluster, so the same KWOK stages apply.

    Untested on machines without Docker (ours): written to run where it exists.
    """
    from pytest_kind import KindCluster  # noqa: PLC0415 - only with --cluster=kind

    kind = KindCluster("blogsite-operator-tests")
    kind.create()
    request.addfinalizer(kind.delete)
    kubectl = Kubectl(
        binary=shutil.which("kubectl") or "kubectl", kubeconfig=str(kind.kubeconfig_path)
    )
    kwok_version = (HACK / "versions.env").read_text(encoding="utf-8")
    version = re.search(r"KWOK_VERSION=(\S+)", kwok_version)
    assert version is not None
    release = f"https://github.com/kubernetes-sigs/kwok/releases/download/{version.group(1)}"
    kubectl.run("apply", "-f", f"{release}/kwok.yaml")
    stages = [
        doc
        for doc in yaml.safe_load_all((HACK / "kwok" / "kwok.yaml").read_text(encoding="utf-8"))
        if doc and doc.get("kind") == "Stage"
    ]
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(stages))
    kubectl.run(
        "wait",
        "--for=condition=Available",
        "-n",
        "kube-system",
        "deployment/kwok-controller",
        "--timeout=300s",
    )
    # Real nodes take no test pods: they all go to the KWOK node.
    for node in kubectl.json("get", "nodes")["items"]:
        kubectl.run("cordon", node["metadata"]["name"])
    kubectl.run(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": "kwok-node-0",
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": "kwok-node-0"},
                },
            }
        ),
    )
    kubectl.run("wait", "--for=condition=Ready", "node/kwok-node-0", "--timeout=120s")
    return kubectl


@pytest.fixture(scope="session")
def kubectl(request: pytest.FixtureRequest) -> Kubectl:
    """The session's cluster, with the BlogSite CRD installed from crds/."""
    external = os.environ.get("BLOGSITE_TEST_KUBECONFIG")
    if external:
        client = Kubectl(binary=shutil.which("kubectl") or "kubectl", kubeconfig=external)
    elif request.config.getoption("--cluster") == "kind":
        client = _kind_cluster(request)
    else:
        client = _kwok_cluster(request)
    client.install_crds(str(ROOT / "crds" / "blogsite.yaml"), "blogsites.blog.daedalus.dev")
    return client


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", name)
    wait_for(
        lambda: kubectl.exists("serviceaccount", "default", name),
        what=f"default ServiceAccount in {name}",
    )
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


# ACME timings scaled from hours to seconds, so backoff and renewal-info
# polling happen within a test; the self-check fetches each answer from the
# local challenge server (where Pebble's validator connects) before answering,
# and the preflight resolves each name with Pebble's DNS and fetches from
# that port, as Pebble's validator will.
ACME_TEST_ENV = {
    "BLOGSITE_OPERATOR_ACME_SELF_CHECK": f"127.0.0.1:{PEBBLE_HTTP01_PORT}",
    "BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER": f"127.0.0.1:{PEBBLE_DNS_PORT}",
    "BLOGSITE_OPERATOR_ACME_PREFLIGHT_HTTP_PORT": str(PEBBLE_HTTP01_PORT),
    "BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS": "2",
    "BLOGSITE_OPERATOR_ACME_MAX_BACKOFF_SECONDS": "8",
    "BLOGSITE_OPERATOR_ACME_RENEWAL_INFO_SECONDS": "3",
    "BLOGSITE_OPERATOR_ACME_ORDER_TIMEOUT_SECONDS": "30",
}


@dataclass
class OperatorProcess:
    """`blogsite-operator run` as a real process, watching one namespace."""

    kubectl: Kubectl
    namespace: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    # Watch every namespace (no -n), as an operator with the default setting.
    cluster_wide: bool = False
    started_at: int = 0  # where the current process's log begins

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubectl.kubeconfig,
            "PYTHONUNBUFFERED": "1",
            # The checker runs the frontend image's nginx, as in the operator image.
            "BLOGSITE_OPERATOR_NGINX": nginx_binary(),
            # KWOK's pods run no nginx to ask: the probe is tested against
            # real nginx (tests/nginx) and on the real node.
            "BLOGSITE_OPERATOR_SERVED_PROBE_SECONDS": "0",
            **ACME_TEST_ENV,
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.started_at = self.log_size()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blogsite_operator",
                "run",
                *([] if self.cluster_wide else ["-n", self.namespace]),
                "--verbose",
                *self.extra_args,
            ],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT / "operator")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> int:
        """SIGTERM, as Kubernetes would; returns the exit code."""
        assert self.process is not None

        # A process still importing has no handler yet and dies of the signal.
        def started() -> bool:
            log = self.logs()[self.started_at :]
            return bool(
                "Initial authentication has finished" in log  # kopf runs: handlers set
                or "waiting to lead" in log  # a candidate: its own handlers set
                or (self.process is not None and self.process.poll() is not None)
            )

        wait_for(started, timeout=60, what="the operator started")
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the operator did not stop within 30s of SIGTERM") from None
        self.process = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_size(self) -> int:
        """A mark in the log (which restarts append to): `wait_for_pass` looks after it."""
        return len(self.logs())

    def wait_for_pass(self, name: str, after: int, timeout: float = 60) -> None:
        """Until a whole pass over the BlogSite `name` began and ended after
        the mark `after`: evidence that the operator looked at the state of
        then, instead of a sleep."""
        site = re.escape(f"[{self.namespace}/{name}]")

        def passed() -> bool:
            return bool(
                re.search(rf"{site} pass begins.*{site} pass ends", self.logs()[after:], re.S)
            )

        wait_for(passed, timeout=timeout, interval=0.2, what=f"a pass over {name} after the mark")

    def looked_again(self, name: str) -> None:
        """Poke the BlogSite `name` and wait for a whole pass after the poke."""
        mark = self.log_size()
        self.poke(name)
        self.wait_for_pass(name, after=mark)

    def poke(self, name: str) -> None:
        """Make the operator look at the BlogSite again (an annotation it ignores)."""
        self.kubectl.run(
            "annotate",
            "blogsite",
            name,
            "-n",
            self.namespace,
            "--overwrite",
            f"test.blog.daedalus.dev/poke={uuid.uuid4().hex}",
        )


@pytest.fixture
def operator_process(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """A running operator; asserts at the end that it exited cleanly."""
    handle = OperatorProcess(kubectl, namespace, tmp_path / "operator.log")
    handle.start()
    yield handle
    if handle.process is not None:
        code = handle.stop()
        logs = handle.logs()
        assert code == 0, f"operator exited with {code}:\n{logs[-5000:]}"
        assert "Traceback" not in logs, logs[-5000:]


@pytest.fixture
def challenge_server(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[ChallengeServer]:
    server = ChallengeServer(kubectl.kubeconfig, namespace, tmp_path / "challenge-server.log")
    server.start()
    yield server
    server.stop()


class _HTTP01(BaseHTTPRequestHandler):
    """Answers /.well-known/acme-challenge/<token> from `answers`."""

    answers: dict[str, str] = {}  # noqa: RUF012 - the fixture's, one test at a time

    def do_GET(self) -> None:
        body = self.answers.get(self.path.rsplit("/", 1)[-1], "").encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture
def http01_server() -> Iterator[dict[str, str]]:
    """Where Pebble validates HTTP-01; yields token -> key authorization."""
    _HTTP01.answers = {}
    with serving(ThreadingHTTPServer(("127.0.0.1", PEBBLE_HTTP01_PORT), _HTTP01)):
        yield _HTTP01.answers


class Watch:
    """Every value a jsonpath takes on one object, from a watch (each write is
    one event, so no dip falls between two samples)."""

    def __init__(self, kubectl: Kubectl, namespace: str, target: str, jsonpath: str) -> None:
        self.samples: list[str] = []
        self.received: list[datetime.datetime] = []  # when each sample arrived
        self._process = subprocess.Popen(
            [
                kubectl.binary,
                "--kubeconfig",
                kubectl.kubeconfig,
                "get",
                target,
                "-n",
                namespace,
                "--watch",
                f"--output=jsonpath={jsonpath}{{'\\n'}}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.received.append(datetime.datetime.now(tz=datetime.UTC))
            self.samples.append(line.rstrip("\n"))

    def __enter__(self) -> Watch:
        self._reader.start()
        wait_for(lambda: self.samples, timeout=30, interval=0.1, what="the watch's first event")
        return self

    def __exit__(self, *_: object) -> None:
        code = self._process.poll()
        self._process.terminate()
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self._process.stderr is not None
        # The watch must have run all along: a watch that died saw nothing.
        assert code is None, f"the watch ended early: {self._process.stderr.read()}"


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def planned_renewal(
    kubectl: Kubectl, namespace: str, site: str, serial: str
) -> datetime.datetime | None:
    """When the operator plans to renew certificate `serial`, once the CA's
    renewal information about it is in; None when another certificate took
    its place first (a CA's window may start at issuance)."""

    def plan() -> tuple[str | None] | None:
        body = kubectl.json("get", "blogsite", site, "-n", namespace)
        certificate: dict[str, Any] = (body.get("status") or {}).get("certificate") or {}
        if certificate.get("serialNumber") != serial:
            return (None,)
        known = (certificate.get("renewalInfo") or {}).get("serialNumber") == serial
        planned: str | None = certificate.get("renewalTime")
        return (planned,) if known and planned else None

    (planned,) = wait_for(plan, timeout=60, interval=0.5, what=f"the renewal of serial {serial}")
    return parse_time(planned) if planned else None


def renewals_through_an_outage(
    kubectl: Kubectl,
    namespace: str,
    site: str,
    ca: AcmeFaultProxy,
    *,
    serial: str,
    renewed_from: Callable[[str], str],
    renewals: int,
    planned_ahead: float,
    down_at_most: float,
) -> tuple[list[str], float]:
    """At least `renewals` renewals in a row from certificate `serial`
    (`renewed_from` waits for the one after a serial), with the CA down across
    one: from when its renewal is planned until an order failed against it (at
    most `down_at_most` seconds). Only from the third certificate on, and only
    a renewal planned at least `planned_ahead` seconds ahead: a CA's window may
    let one come right after issuance. The serials in the order served, and
    how long the CA was down when an order met it."""
    serials = [serial]
    outage = 0.0
    while len(serials) <= renewals or not outage:
        assert len(serials) <= 2 * renewals + 2, "no outage met a renewal"
        if not outage and len(serials) >= 3:
            outage = outage_across_a_renewal(
                kubectl, namespace, site, ca, serials[-1], planned_ahead, down_at_most
            )
        serials.append(renewed_from(serials[-1]))
    return serials, outage


def outage_across_a_renewal(  # noqa: PLR0917 - one scenario's settings
    kubectl: Kubectl,
    namespace: str,
    site: str,
    ca: AcmeFaultProxy,
    serial: str,
    planned_ahead: float,
    down_at_most: float,
) -> float:
    """Seconds the CA was down until an order for certificate `serial`'s
    renewal failed against it; 0 when none did (planned too soon, or renewed
    before the CA went down).

    Down as soon as the renewal is planned, not just before the planned
    moment: an operator picks a new moment in the CA's window each time it
    asks for renewal information again, and the new one can be already past
    (a renewal at once). With the CA down that question fails, and the
    moment planned stands."""
    planned = planned_renewal(kubectl, namespace, site, serial)
    now = datetime.datetime.now(tz=datetime.UTC)
    ahead = (planned - now).total_seconds() if planned else 0.0
    if ahead <= planned_ahead:
        return 0.0

    def met_or_missed() -> tuple[bool] | None:
        body = kubectl.json("get", "blogsite", site, "-n", namespace)
        certificate = (body.get("status") or {}).get("certificate") or {}
        if certificate.get("serialNumber") != serial:
            return (False,)  # renewed meanwhile: the outage met nothing
        return (True,) if certificate.get("failedAttempts") else None

    ca.down()
    started = time.monotonic()
    try:
        (met,) = wait_for(
            met_or_missed, timeout=down_at_most, interval=0.2, what="an order failing"
        )
    finally:
        ca.up()
    return time.monotonic() - started if met else 0.0
