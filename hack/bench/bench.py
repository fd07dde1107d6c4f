"""`make bench`: N BlogSites at once against the local control plane.

Reports, per site, the time from `kubectl apply` until every child exists and
until the BlogSite is Ready (median, p99, total); the operator's peak RSS; and
the API write requests the operator made, counted from the API server's audit
log (not from the operator's own counters): during convergence, and during an
idle period after it (which must be 0).

Then ACME against a real Pebble (hack/pebble.sh on ports of the bench's own,
validation sleep off, no bad-nonce rejections) with HTTP-01 answered by the
real `challenge-server` process: the time from `kubectl apply` of ACME
BlogSites (--acme-sites at once, then --acme-sequential one at a time) until
`<site>-tls` holds a real certificate and until CertificateReady=True; and
what one issuance costs in ACME requests (the operator's own count, from its
`issued a certificate ...` log line, cross-checked against Pebble's request
log). Every certificate is verified against Pebble's root for every name.
Then the sites applied one at a time are renewed on request: what a renewal
costs (its order names the certificate it replaces, ARI). Last, a site with
60-second certificates and a second Pebble as its fallback CA: the first
Pebble stops, and the time until a certificate from the second is measured.

Runs on its own cluster (blogsite-bench, created fresh with auditing on) so
nothing else competes with the figures.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(
    0, str(ROOT)
)  # tests.pebble: Pebble and the challenge server, as the tests run them

from tests.pebble import ChallengeServer, Pebble, running_pebble  # noqa: E402
from tests.support import AuditMark, audit_lines, audit_mark, free_port  # noqa: E402

from blogsite_operator import certs, kube, models  # noqa: E402
from blogsite_operator.render import RenderSettings, SiteRef, render_site  # noqa: E402
from blogsite_operator.render.site import site_of  # noqa: E402

NAMESPACE = "bench"
PLAIN_NAMESPACE = "bench-plain"
# The operator's reconcile threads (BLOGSITE_OPERATOR_WORKERS): the plain
# client applies with as many.
WORKERS = 16
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
OPERATOR_AGENTS = ("blogsite-operator/", "kopf/")
REVERT_BEHAVIOURS = ("crash-loop", "image-pull-fail")
ARTIFACTS = ROOT / ".artifacts"

ACME_NAMESPACE = "bench-acme"
# Ports of the bench's own, so neither a `make run` Pebble (14000, 5002) nor
# the integration tests' (tests/pebble.py) is in the way.
PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # Pebble otherwise sleeps up to 15 s before each validation
    "PEBBLE_WFE_NONCEREJECT": "0",  # and rejects 5% of good nonces (a retried request)
    "PEBBLE_PORT": "14020",
    "PEBBLE_MANAGEMENT_PORT": "15020",
    "PEBBLE_DNS_PORT": "8073",
    "PEBBLE_CHALLTESTSRV_PORT": "8075",
    "PEBBLE_HTTP01_PORT": "5022",
    # The `shortlived` profile (only the fallback site asks for it).
    "PEBBLE_SHORTLIVED_SECONDS": "60",
}
# The fallback CA: its own ports, the same HTTP-01 port (one challenge server).
SECOND_PEBBLE_ENV = {
    **PEBBLE_ENV,
    "PEBBLE_PORT": "14025",
    "PEBBLE_MANAGEMENT_PORT": "15025",
    "PEBBLE_DNS_PORT": "8078",
    "PEBBLE_CHALLTESTSRV_PORT": "8079",
}
PEBBLE_DIRECTORY = f"https://127.0.0.1:{PEBBLE_ENV['PEBBLE_PORT']}/dir"
HTTP01_PORT = int(PEBBLE_ENV["PEBBLE_HTTP01_PORT"])
# blogsite_operator.issuance.issuer logs one such line per certificate issued.
ISSUED_LINE = re.compile(
    r"\[(?P<namespace>[^/\s]+)/(?P<site>[^\]\s]+)\] issued a certificate: (?P<names>\d+) names, "
    r"serial (?P<serial>[0-9a-fA-F]+), valid until \S+; (?P<requests>\d+) ACME requests"
)
# The CertificateIssued Event adds how long the order itself took.
ISSUED_EVENT = re.compile(r"\((?P<requests>\d+) ACME requests, (?P<seconds>[0-9.]+)s\)")
# Pebble logs every request it serves: `Pebble 2026/01/02 03:04:05 POST /order-plz -> ...`.
PEBBLE_REQUEST = re.compile(r"^Pebble \S+ \S+ (?P<method>[A-Z]+) /(?P<path>\S*) -> calling handler")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def site_manifest(index: int, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {"name": f"site-{index:04d}", "namespace": namespace},
        "spec": {
            "domains": [f"site-{index:04d}.example.com", f"www.site-{index:04d}.example.com"],
            "redirectDomains": [f"site-{index:04d}.example.net"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1.0.0"},
        },
    }


def expected_children(manifest: dict[str, Any]) -> set[tuple[str, str]]:
    spec = models.parse_spec(manifest["spec"])
    metadata = manifest["metadata"]
    # The namespace is in the nginx configuration, so in its ConfigMap's name.
    objects = render_site(
        SiteRef(metadata["name"], metadata["namespace"], "x"), spec, RenderSettings()
    )
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def cluster(command: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), command],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def operator_writes(audit_log: Path, start: AuditMark) -> tuple[int, int, dict[str, int]]:
    """(writes by the operator, writes by anyone, operator writes per verb) after `start`."""
    mine, everyone = 0, 0
    per_verb: dict[str, int] = {}
    for line in audit_lines(audit_log, start):
        event = json.loads(line)
        if event.get("verb") not in WRITE_VERBS or event.get("stage") != "ResponseComplete":
            continue
        everyone += 1
        if str(event.get("userAgent", "")).startswith(OPERATOR_AGENTS):
            mine += 1
            key = f"{event['verb']} {event['objectRef'].get('resource', '?')}"
            per_verb[key] = per_verb.get(key, 0) + 1
    return mine, everyone, per_verb


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for_convergence(
    api: kube.Api,
    expected: dict[str, set[tuple[str, str]]],
    t0: float,
    timeout: float,
    *,
    namespace: str = NAMESPACE,
    ready: bool = True,
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds after t0 at which each site had all its children, and (when
    `ready`) was Ready."""
    children_at: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    kinds = sorted({kind for wanted in expected.values() for kind, _ in wanted})
    while (ready and len(ready_at) < len(expected)) or len(children_at) < len(expected):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(
                f"timed out: {len(ready_at)}/{len(expected)} Ready, "
                f"{len(children_at)}/{len(expected)} with all their children"
            )
        now = time.monotonic() - t0
        for site in api.list_objects(models.KIND, namespace, "") if ready else []:
            name = site["metadata"]["name"]
            conditions = (site.get("status") or {}).get("conditions") or []
            if name not in ready_at and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            ):
                ready_at[name] = now
        present: dict[str, set[tuple[str, str]]] = {}
        # Once every child exists, only the BlogSites are listed: the polling
        # runs on the cores it measures.
        for kind in kinds if len(children_at) < len(expected) else []:
            for obj in api.list_objects(kind, namespace, "app.kubernetes.io/name=blogsite"):
                instance = site_of(obj["metadata"].get("labels") or {}) or ""
                present.setdefault(instance, set()).add((kind, obj["metadata"]["name"]))
        for name, wanted in expected.items():
            if name not in children_at and wanted <= present.get(name, set()):
                children_at[name] = now
        # A quarter of a second at 200 sites, a second at 1000.
        time.sleep(max(0.25, len(expected) / 1000))
    return children_at, ready_at


def apply(kubectl: list[str], objects: list[dict[str, Any]]) -> None:
    subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input=yaml.safe_dump_all(objects),
        text=True,
        check=True,
        capture_output=True,
    )


def measure_revert(
    api: kube.Api, kubectl: list[str], behaviour: str, timeout: float
) -> tuple[float, int]:
    """Seconds from applying a bad daedalus image (default rollout thresholds)
    until the Deployment's template is the good one again; and the
    Deployment's progress deadline, which is when Kubernetes alone would
    first report the failure (it never reverts)."""
    good = site_manifest(9999)
    good["metadata"]["name"] = f"revert-{behaviour}"
    # The health gate's time to revert, on the Deployment itself (a canary's
    # revert never touches it: `make bench-canary` measures those).
    good["spec"]["rollout"] = {"strategy": "RollingUpdate"}
    apply(kubectl, [good])
    name = good["metadata"]["name"]

    def deployment() -> dict[str, Any] | None:
        return api.get("Deployment", NAMESPACE, f"{name}-daedalus")

    def image() -> str:
        found = deployment()
        return str(found["spec"]["template"]["spec"]["containers"][0]["image"]) if found else ""

    def last_good_known() -> bool:
        site = api.get(models.KIND, NAMESPACE, name) or {}
        entry = (site.get("status") or {}).get("components", {}).get("daedalus", {})
        return bool(entry.get("lastGoodVersion")) and entry.get("lastGoodVersion") == entry.get(
            "version"
        )

    deadline = time.monotonic() + timeout
    while not last_good_known():
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} never became healthy")
        time.sleep(0.2)
    good_image = image()
    bad = {
        **good,
        "spec": {**good["spec"], "daedalus": {"image": f"{good_image}-kwok-{behaviour}"}},
    }
    started = time.monotonic()
    apply(kubectl, [bad])

    def failure_recorded() -> bool:
        site = api.get(models.KIND, NAMESPACE, name) or {}
        entry = (site.get("status") or {}).get("components", {}).get("daedalus", {})
        return bool(entry.get("failedVersion"))

    # The bad template may come and go between two polls (an unpullable image
    # is reverted in well under a second): its recorded failure counts too.
    while image() != bad["spec"]["daedalus"]["image"] and not failure_recorded():
        if time.monotonic() > deadline + timeout:
            raise SystemExit(f"{name}: the bad image never rolled out")
        time.sleep(0.05)
    while image() != good_image:
        if time.monotonic() > deadline + timeout:
            raise SystemExit(f"{name}: no revert within {timeout}s")
        time.sleep(0.2)
    found = deployment() or {}
    return time.monotonic() - started, int(found["spec"].get("progressDeadlineSeconds", 600))


# --- convergence, idle writes, reverts ---------------------------------------


@dataclass
class Convergence:
    sites: int
    idle_seconds: float
    plain_children: list[float]  # the plain client's, on the same cluster
    children: list[float]
    ready: list[float]
    converged: float
    converge_writes: int
    converge_by_verb: dict[str, int]
    idle_writes: int
    idle_all: int
    idle_by_verb: dict[str, int]
    rss_converged: float
    rss_peak: float
    cpu_seconds: float  # the operator's, from the apply to convergence
    one_more: float  # apply to Ready of one more site, the others idle
    # CPU seconds each process spent from the apply to convergence, for the
    # operator's and the plain client's phases: who held the cores ("bench"
    # is this process: its polling, and in the plain phase the client too).
    cpu_by_process: dict[str, float]
    plain_cpu_by_process: dict[str, float]
    passes: int  # reconcile passes in that time
    reverts: dict[str, tuple[float, int]]


def start_operator(
    env: dict[str, str],
    kubeconfig: str,
    namespace: str,
    log_path: Path,
    *args: str,
    **extra_env: str,
) -> subprocess.Popen[bytes]:
    """`blogsite-operator run -n namespace`, once it has logged in."""
    log_path.parent.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "blogsite_operator", "run", "-n", namespace, *args],
        env={
            **env,
            "KUBECONFIG": kubeconfig,
            "PYTHONPATH": str(ROOT / "operator"),
            "PYTHONUNBUFFERED": "1",
            "MALLOC_ARENA_MAX": "2",  # as the image (Dockerfile) runs it
            # KWOK's pods run no nginx, and with no real node nothing routes
            # their test-range addresses to this machine's bridge: a probe
            # would send packets to the default route.
            "BLOGSITE_OPERATOR_SERVED_PROBE_SECONDS": "0",
            **extra_env,
        },
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    while "Initial authentication has finished" not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise SystemExit(f"the operator exited with {process.returncode}; see {log_path}")
        time.sleep(0.2)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_cpu(cluster_dir: Path) -> dict[str, float]:
    """CPU seconds so far of each control plane process (kwokctl's pid files)
    and of this one ("bench")."""
    found = {"bench": cpu_seconds(os.getpid())}
    for pid_file in sorted((cluster_dir / "pids").glob("*.pid")):
        try:
            found[pid_file.stem] = cpu_seconds(int(pid_file.read_text().strip()))
        except (FileNotFoundError, ValueError):
            continue
    return found


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def passes_so_far(metrics_port: int) -> int:
    """Reconcile passes ended, from the operator's own /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts = re.findall(r"^blogsite_reconcile_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(sum(float(count) for count in counts))


def measure_one_more_site(api: kube.Api, kubectl: list[str], index: int, timeout: float) -> float:
    """Seconds from the apply of one more site until it is Ready, while the
    others sit idle: the latency a user feels on a busy operator."""
    manifest = site_manifest(index)
    name = manifest["metadata"]["name"]
    t0 = time.monotonic()
    apply(kubectl, [manifest])
    while time.monotonic() - t0 < timeout:
        site = api.get(models.KIND, NAMESPACE, name) or {}
        conditions = (site.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise SystemExit(f"timed out: {name} not Ready after {timeout}s")


def measure_plain_client(
    args: argparse.Namespace, *, kubectl: list[str], api: kube.Api, cluster_dir: Path
) -> tuple[list[float], dict[str, float]]:
    """The floor the operator is measured against, on the same fresh cluster:
    no operator, a plain client that applies exactly the children the operator
    would (the project's renderer, the operator's own server-side apply), with
    the operator's parallelism, as soon as the BlogSites exist. Seconds from
    the apply of the BlogSites until each site has all its children."""
    subprocess.run(
        [*kubectl, "create", "namespace", PLAIN_NAMESPACE], check=True, capture_output=True
    )
    manifests = [site_manifest(i, PLAIN_NAMESPACE) for i in range(args.sites)]
    expected = {m["metadata"]["name"]: expected_children(m) for m in manifests}

    def create_children(site: dict[str, Any]) -> None:
        metadata = site["metadata"]
        ref = SiteRef(metadata["name"], PLAIN_NAMESPACE, metadata["uid"])
        for obj in render_site(ref, models.parse_spec(site["spec"]), RenderSettings()):
            api.apply(obj)

    cpu_before = processes_cpu(cluster_dir)
    t0 = time.monotonic()
    apply(kubectl, manifests)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(create_children, api.list_objects(models.KIND, PLAIN_NAMESPACE, "")))
    children_at, _ = wait_for_convergence(
        api, expected, t0, args.timeout, namespace=PLAIN_NAMESPACE, ready=False
    )
    cpu_after = processes_cpu(cluster_dir)
    # Gone again before the operator's turn, so it starts on an empty cluster.
    subprocess.run(
        [*kubectl, "delete", "namespace", PLAIN_NAMESPACE, "--wait=true", "--timeout=900s"],
        check=True,
        capture_output=True,
    )
    return list(children_at.values()), cpu_spent(cpu_before, cpu_after)


def measure_convergence(
    args: argparse.Namespace,
    *,
    env: dict[str, str],
    kubeconfig: str,
    kubectl: list[str],
    api: kube.Api,
    audit_log: Path,
) -> Convergence:
    cluster_dir = audit_log.parent.parent
    plain_children, plain_cpu = measure_plain_client(
        args, kubectl=kubectl, api=api, cluster_dir=cluster_dir
    )
    subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True, capture_output=True)
    metrics_port = free_port()
    operator = start_operator(
        env,
        kubeconfig,
        NAMESPACE,
        ARTIFACTS / "bench-operator.log",
        "--health-address",
        f"127.0.0.1:{metrics_port}",
    )
    try:
        manifests = [site_manifest(i) for i in range(args.sites)]
        expected = {m["metadata"]["name"]: expected_children(m) for m in manifests}
        audit_start = audit_mark(audit_log)
        cpu_before, passes_before = cpu_seconds(operator.pid), passes_so_far(metrics_port)
        plane_before = processes_cpu(cluster_dir)

        t0 = time.monotonic()
        apply(kubectl, manifests)
        children_at, ready_at = wait_for_convergence(api, expected, t0, args.timeout)
        converged = time.monotonic() - t0
        cpu = cpu_seconds(operator.pid) - cpu_before
        cpu_by_process = {
            **cpu_spent(plane_before, processes_cpu(cluster_dir)),
            "operator": cpu,
        }
        passes = passes_so_far(metrics_port) - passes_before
        time.sleep(5)  # let the last status writes and events land
        converge_writes, _, converge_by_verb = operator_writes(audit_log, audit_start)
        rss_converged = peak_rss_mib(operator.pid)

        idle_start = audit_mark(audit_log)
        time.sleep(args.idle)
        idle_writes, idle_all, idle_by_verb = operator_writes(audit_log, idle_start)
        rss_peak = peak_rss_mib(operator.pid)
        one_more = measure_one_more_site(api, kubectl, args.sites, args.timeout)

        reverts = {b: measure_revert(api, kubectl, b, args.timeout) for b in REVERT_BEHAVIOURS}
    finally:
        stop(operator)
    return Convergence(
        sites=args.sites,
        idle_seconds=args.idle,
        plain_children=plain_children,
        children=list(children_at.values()),
        ready=list(ready_at.values()),
        converged=converged,
        converge_writes=converge_writes,
        converge_by_verb=converge_by_verb,
        idle_writes=idle_writes,
        idle_all=idle_all,
        idle_by_verb=idle_by_verb,
        rss_converged=rss_converged,
        rss_peak=rss_peak,
        cpu_seconds=cpu,
        one_more=one_more,
        cpu_by_process=cpu_by_process,
        plain_cpu_by_process=plain_cpu,
        passes=passes,
        reverts=reverts,
    )


def report_convergence(result: Convergence) -> None:
    children, ready, sites = result.children, result.ready, result.sites
    print(f"sites: {sites} applied at once (kubectl apply of one {sites}-document stream)")
    plain = result.plain_children
    print(
        f"children exist: median {statistics.median(children):.2f}s  "
        f"p99 {percentile(children, 0.99):.2f}s  last {max(children):.2f}s"
    )
    print(
        f"plain client:   median {statistics.median(plain):.2f}s  "
        f"p99 {percentile(plain, 0.99):.2f}s  last {max(plain):.2f}s  "
        f"(the same children, no operator, {WORKERS} threads)"
    )
    print(
        f"operator / plain client, all children exist: {max(children) / max(plain):.2f}x "
        f"(median {statistics.median(children) / statistics.median(plain):.2f}x)"
    )
    print(
        f"Ready=True:     median {statistics.median(ready):.2f}s  "
        f"p99 {percentile(ready, 0.99):.2f}s  last {max(ready):.2f}s  "
        f"(all converged {result.converged:.2f}s)"
    )
    print(
        f"operator peak RSS: {result.rss_converged:.1f} MiB at convergence, "
        f"{result.rss_peak:.1f} MiB overall"
    )
    print(
        f"operator CPU until convergence: {result.cpu_seconds:.1f}s for {result.passes} passes "
        f"({1000 * result.cpu_seconds / max(result.passes, 1):.1f} ms per pass, "
        "watch events and status writes included)"
    )
    cores = os.cpu_count() or 1
    for phase, spent, seconds in (
        ("operator", result.cpu_by_process, result.converged),
        ("plain client", result.plain_cpu_by_process, max(plain)),
    ):
        shares = ", ".join(
            f"{name} {value:.0f}s" for name, value in sorted(spent.items(), key=lambda i: -i[1])
        )
        print(
            f"CPU during the {phase}'s {seconds:.0f}s: {sum(spent.values()):.0f}s of "
            f"{cores * seconds:.0f}s on {cores} cores ({shares})"
        )
    print(
        f"operator API writes during convergence: {result.converge_writes} "
        f"({result.converge_writes / sites:.1f} per site) "
        f"{dict(sorted(result.converge_by_verb.items()))}"
    )
    print(
        f"operator API writes during {result.idle_seconds:.0f}s idle: {result.idle_writes} "
        f"{dict(sorted(result.idle_by_verb.items()))} (all clients: {result.idle_all})"
    )
    print(f"one more site, apply to Ready, with {sites} idle: {result.one_more:.2f}s")
    for behaviour, (seconds, deadline) in result.reverts.items():
        print(
            f"revert of a {behaviour} daedalus image (RollingUpdate, default thresholds): "
            f"{seconds:.1f}s; "
            f"Kubernetes alone reports it after its progress deadline, {deadline}s "
            f"({deadline / seconds:.0f}x later), and never reverts"
        )
    print(
        "a never-ready image is reverted after rollout.readyTimeoutSeconds (default 300s), "
        "half the 600s progress deadline; tests/integration/test_rollouts.py measures it at 15s"
    )


# --- ACME --------------------------------------------------------------------


@dataclass
class Issuance:
    """One certificate, as the operator logged it and the CertificateIssued Event says."""

    site: str
    names: int
    serial: str
    requests: int
    order_seconds: float | None = None


@dataclass
class AcmeRun:
    names_per_site: int
    # Seconds after each site's `kubectl apply`: a real certificate in <site>-tls;
    # CertificateReady=True with status.certificate.placeholder false.
    together_secret: dict[str, float] = field(default_factory=dict)
    together_ready: dict[str, float] = field(default_factory=dict)
    together_all: float = 0.0
    sequential_secret: dict[str, float] = field(default_factory=dict)
    sequential_ready: dict[str, float] = field(default_factory=dict)
    issuances: list[Issuance] = field(default_factory=list)
    pebble_requests: Counter[str] = field(default_factory=Counter)
    verified: int = 0
    operator_rss: float = 0.0
    operator_writes: int = 0
    writes_by_verb: dict[str, int] = field(default_factory=dict)
    renewed: dict[str, str] = field(default_factory=dict)  # site -> the ARI id it replaced
    fallback_seconds: float | None = None  # first CA stopped -> certificate from the second
    fallback_left: float | None = None  # how long the first CA's certificate had left then


def acme_manifest(name: str, **acme: Any) -> dict[str, Any]:
    """A site whose three names Pebble validates over HTTP-01 (challtestsrv: all 127.0.0.1)."""
    return {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": ACME_NAMESPACE},
        "spec": {
            "domains": [f"{name}.bench.example", f"www.{name}.bench.example"],
            "redirectDomains": [f"old-{name}.bench.example"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1.0.0"},
            "tls": {
                "acme": {
                    "server": PEBBLE_DIRECTORY,
                    "email": "ops@blog.example",
                    "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
                    # Pebble picks a random profile for an order without one.
                    "profile": "default",
                    **acme,
                }
            },
        },
    }


def real_chain(secret: dict[str, Any]) -> bytes | None:
    """The chain in a TLS Secret unless it is missing or the operator's placeholder."""
    encoded = (secret.get("data") or {}).get("tls.crt")
    if not encoded:
        return None
    chain = base64.b64decode(encoded)
    try:
        info = certs.certificate_info(chain)
    except ValueError:
        return None
    return None if info.is_placeholder else chain


def certificate_ready(site: dict[str, Any]) -> bool:
    status = site.get("status") or {}
    certificate = status.get("certificate") or {}
    return (
        certificate.get("placeholder") is False
        and bool(certificate.get("serialNumber"))
        and any(
            c["type"] == "CertificateReady" and c["status"] == "True"
            for c in status.get("conditions") or []
        )
    )


def wait_for_certificates(
    api: kube.Api, names: set[str], t0: float, timeout: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds after t0 at which each site's Secret held a real certificate, and at which
    the site said CertificateReady=True."""
    secret_at: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    while len(secret_at) < len(names) or len(ready_at) < len(names):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(
                f"ACME: after {timeout:.0f}s, {len(secret_at)}/{len(names)} real certificates "
                f"and {len(ready_at)}/{len(names)} CertificateReady; see "
                f"{ARTIFACTS}/bench-acme-*.log, bench-pebble/pebble.log, bench-challenge-server.log"
            )
        now = time.monotonic() - t0
        for secret in api.list_objects("Secret", ACME_NAMESPACE, ""):
            site = secret["metadata"]["name"].removesuffix("-tls")
            if site in names and site not in secret_at and real_chain(secret):
                secret_at[site] = now
        for site in api.list_objects(models.KIND, ACME_NAMESPACE, ""):
            name = site["metadata"]["name"]
            if name in names and name not in ready_at and certificate_ready(site):
                ready_at[name] = now
        time.sleep(0.1)
    return secret_at, ready_at


def verify_chain(chain: bytes, root_pem: bytes, names: list[str]) -> None:
    """Path validation as a TLS client does it, for every name; raises if it fails."""
    leaf, *intermediates = x509.load_pem_x509_certificates(chain)
    store = Store(x509.load_pem_x509_certificates(root_pem))
    for name in names:
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        verifier.verify(leaf, intermediates)


def pebble_requests(log_path: Path, start: int, end: int) -> Counter[str]:
    """Requests Pebble logged between two offsets of its log, per `METHOD /endpoint`."""
    counts: Counter[str] = Counter()
    with log_path.open("rb") as log:
        log.seek(start)
        for line in log.read(end - start).decode(errors="replace").splitlines():
            match = PEBBLE_REQUEST.match(line)
            if match:
                counts[f"{match['method']} /{match['path'].split('/')[0]}"] += 1
    return counts


def issuances(operator_log: Path, kubectl: list[str]) -> list[Issuance]:
    found = [
        Issuance(m["site"], int(m["names"]), m["serial"].lower(), int(m["requests"]))
        for m in ISSUED_LINE.finditer(operator_log.read_text(errors="replace"))
        if m["namespace"] == ACME_NAMESPACE
    ]
    events = subprocess.run(
        [*kubectl, "get", "events", "-n", ACME_NAMESPACE, "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds: dict[str, float] = {}
    for event in json.loads(events.stdout)["items"]:
        match = ISSUED_EVENT.search(event.get("message") or "")
        if event.get("reason") == "CertificateIssued" and match:
            seconds[event["involvedObject"]["name"]] = float(match["seconds"])
    for issuance in found:
        issuance.order_seconds = seconds.get(issuance.site)
    return found


def measure_acme(
    args: argparse.Namespace,
    *,
    env: dict[str, str],
    kubeconfig: str,
    kubectl: list[str],
    api: kube.Api,
    audit_log: Path,
) -> AcmeRun:
    subprocess.run(
        [*kubectl, "create", "namespace", ACME_NAMESPACE], check=True, capture_output=True
    )
    operator_log = ARTIFACTS / "bench-acme-operator.log"
    together = [acme_manifest(f"acme-{i:02d}") for i in range(args.acme_sites)]
    one_by_one = [acme_manifest(f"acme-seq-{i:02d}") for i in range(args.acme_sequential)]
    result = AcmeRun(names_per_site=len(expected_names(together + one_by_one)[0]))
    with ExitStack() as stack:
        pebble = stack.enter_context(running_pebble(PEBBLE_ENV, ARTIFACTS / "bench-pebble"))
        second = stack.enter_context(
            running_pebble(SECOND_PEBBLE_ENV, ARTIFACTS / "bench-pebble-2")
        )
        pebble_log = pebble.log_path
        ca_pem = pebble.ca_pem
        apply(
            kubectl,
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "pebble-ca", "namespace": ACME_NAMESPACE},
                    "data": {"ca.crt": base64.b64encode(ca_pem).decode()},
                }
            ],
        )
        # Stopped in reverse: the operator, the challenge server, then Pebble.
        challenges = ChallengeServer(
            kubeconfig, ACME_NAMESPACE, ARTIFACTS / "bench-challenge-server.log", port=HTTP01_PORT
        )
        challenges.start()
        stack.callback(challenges.stop)
        operator = start_operator(
            env,
            kubeconfig,
            ACME_NAMESPACE,
            operator_log,
            BLOGSITE_OPERATOR_ACME_SELF_CHECK=f"127.0.0.1:{HTTP01_PORT}",
            # Failures retried within seconds, as in the tests: the fallback
            # site's 60-second certificate cannot wait out a 5-minute backoff.
            BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS="2",
            BLOGSITE_OPERATOR_ACME_MAX_BACKOFF_SECONDS="8",
            # The second Pebble's DNS: it stays up when the first stops.
            BLOGSITE_OPERATOR_ACME_PREFLIGHT_RESOLVER=f"127.0.0.1:{second.dns_port}",
            BLOGSITE_OPERATOR_ACME_PREFLIGHT_HTTP_PORT=str(HTTP01_PORT),
        )
        stack.callback(stop, operator)
        pebble_start = pebble_log.stat().st_size
        audit_start = audit_mark(audit_log)
        if together:
            t0 = time.monotonic()
            apply(kubectl, together)
            result.together_secret, result.together_ready = wait_for_certificates(
                api, {m["metadata"]["name"] for m in together}, t0, args.acme_timeout
            )
            result.together_all = time.monotonic() - t0
        for manifest in one_by_one:
            t0 = time.monotonic()
            apply(kubectl, [manifest])
            secret_at, ready_at = wait_for_certificates(
                api, {manifest["metadata"]["name"]}, t0, args.acme_timeout
            )
            result.sequential_secret.update(secret_at)
            result.sequential_ready.update(ready_at)
        time.sleep(1)  # the last requests' log lines
        result.pebble_requests = pebble_requests(
            pebble_log, pebble_start, pebble_log.stat().st_size
        )
        result.renewed = renew(kubectl, api, [m["metadata"]["name"] for m in one_by_one], args)
        result.operator_rss = peak_rss_mib(operator.pid)
        result.operator_writes, _, result.writes_by_verb = operator_writes(audit_log, audit_start)
        root_pem = pebble.root_pem()
        for manifest in together + one_by_one:
            name = manifest["metadata"]["name"]
            secret = api.get("Secret", ACME_NAMESPACE, f"{name}-tls") or {}
            chain = real_chain(secret)
            if chain is None:
                raise SystemExit(f"{name}-tls no longer holds a real certificate")
            verify_chain(chain, root_pem, expected_names([manifest])[0])
            result.verified += 1
        result.fallback_seconds, result.fallback_left = fall_back(
            kubectl, api, pebble, second, args
        )
    result.issuances = issuances(operator_log, kubectl)
    return result


def issued_by(api: kube.Api, site: str) -> dict[str, Any]:
    """status.certificate.issuedBy, when it is the certificate served."""
    body = api.get(models.KIND, ACME_NAMESPACE, site) or {}
    certificate = (body.get("status") or {}).get("certificate") or {}
    by: dict[str, Any] = certificate.get("issuedBy") or {}
    return by if by.get("serialNumber") == certificate.get("serialNumber") else {}


def renew(
    kubectl: list[str], api: kube.Api, sites: list[str], args: argparse.Namespace
) -> dict[str, str]:
    """Each site renewed on request, one at a time: site -> the ARI id replaced."""
    replaced: dict[str, str] = {}
    for site in sites:
        before = issued_by(api, site).get("serialNumber")
        subprocess.run(
            [*kubectl, "annotate", "blogsite", site, "-n", ACME_NAMESPACE, "--overwrite",
             "blog.daedalus.dev/renew-certificate=bench"],
            check=True, capture_output=True,
        )  # fmt: skip
        deadline = time.monotonic() + args.acme_timeout
        while issued_by(api, site).get("serialNumber") in (before, None):
            if time.monotonic() > deadline:
                raise SystemExit(f"{site} was not renewed in {args.acme_timeout:.0f}s")
            time.sleep(0.2)
        replaced[site] = issued_by(api, site).get("replaced") or ""
    return replaced


def fall_back(
    kubectl: list[str], api: kube.Api, first: Pebble, second: Pebble, args: argparse.Namespace
) -> tuple[float, float]:
    """A 60-second certificate from the first Pebble, which then stops: the
    seconds until a certificate from the second, and how long the first's had
    left at that moment."""
    site = "acme-fallback"
    fallback = {
        "server": second.directory_url,
        "profile": "shortlived",
        "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
    }
    apply(kubectl, [acme_manifest(site, profile="shortlived", fallback=[fallback])])
    deadline = time.monotonic() + args.acme_timeout
    while issued_by(api, site).get("fallback") != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{site}: no certificate from the first CA")
        time.sleep(0.2)
    body = api.get(models.KIND, ACME_NAMESPACE, site) or {}
    not_after = body["status"]["certificate"]["notAfter"]
    first.stop()
    stopped = time.monotonic()
    deadline = stopped + args.acme_timeout
    while issued_by(api, site).get("fallback") != 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"{site}: no certificate from the fallback CA")
        time.sleep(0.2)
    seconds = time.monotonic() - stopped
    expiry = datetime.datetime.fromisoformat(not_after.replace("Z", "+00:00"))
    left = (expiry - datetime.datetime.now(tz=datetime.UTC)).total_seconds()
    return seconds, left


def expected_names(manifests: list[dict[str, Any]]) -> list[list[str]]:
    return [[*m["spec"]["domains"], *m["spec"]["redirectDomains"]] for m in manifests]


def spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f}s  p90 {percentile(values, 0.9):.2f}s  "
        f"max {max(values):.2f}s"
    )


def report_acme(result: AcmeRun) -> None:
    print(
        f"ACME: Pebble with HTTP-01 through the real challenge-server (validation sleep off), "
        f"{result.names_per_site} names per site; time from kubectl apply until"
    )
    order_seconds = {i.site: i.order_seconds for i in result.issuances if i.order_seconds}
    phases = (
        ("applied at once", result.together_secret, result.together_ready),
        ("applied one at a time", result.sequential_secret, result.sequential_ready),
    )
    for title, secret_at, ready_at in phases:
        if not secret_at:
            continue
        orders = [order_seconds[site] for site in secret_at if site in order_seconds]
        print(f"  {len(secret_at)} sites {title}:")
        print(f"    <site>-tls holds a real certificate: {spread(list(secret_at.values()))}")
        print(f"    CertificateReady=True:               {spread(list(ready_at.values()))}")
        if orders:
            print(f"    of which the ACME order itself:      {spread(orders)}  (its Event)")
    if result.together_secret:
        print(f"  all {len(result.together_secret)} at once done in {result.together_all:.2f}s")
    if result.together_secret and result.sequential_secret:
        together = list(result.together_secret.values())
        base = statistics.median(result.sequential_secret.values())
        ratios = [statistics.median(together), percentile(together, 0.9), max(together)]
        median, p90, most = (value / base for value in ratios)
        print(
            f"  at once vs one at a time (real certificate): median {median:.2f}x, "
            f"p90 {p90:.2f}x, max {most:.2f}x the one-at-a-time median"
        )
    first_per_site: dict[str, Issuance] = {}
    for issuance in result.issuances:
        first_per_site.setdefault(issuance.site, issuance)
    # First issuances of the sites applied above (Pebble's log covers them).
    measured = {*result.together_secret, *result.sequential_secret}
    issued = [i for i in first_per_site.values() if i.site in measured]
    if not issued:
        print("  no `issued a certificate` lines in the operator log")
        return
    requests = [i.requests for i in issued]
    names = [i.names for i in issued]
    sites = len({i.site for i in issued})
    print(
        f"  ACME requests per issuance (operator log, {len(issued)} issuances for {sites} "
        f"sites): min {min(requests)}  median {statistics.median(requests):g}  "
        f"max {max(requests)}; names per order: min {min(names)}  "
        f"median {statistics.median(names):g}  max {max(names)}"
    )
    renewals = [
        i for i in result.issuances if first_per_site[i.site] is not i and i.site in result.renewed
    ]
    if renewals:
        costs = [i.requests for i in renewals]
        with_replaces = sum(1 for site in result.renewed.values() if site)
        print(
            f"  ACME requests per renewal on request ({len(renewals)} renewals, "
            f"{with_replaces} of {len(result.renewed)} naming the certificate they replace): "
            f"min {min(costs)}  median {statistics.median(costs):g}  max {max(costs)}; "
            f"{statistics.median(costs) / statistics.median(requests):.2f}x a first issuance"
        )
    if result.fallback_seconds is not None and result.fallback_left is not None:
        print(
            f"  CA outage -> certificate from the fallback CA: {result.fallback_seconds:.1f}s "
            f"(60-second certificates: it waits for the last sixth of the lifetime; the "
            f"first CA's certificate had {result.fallback_left:.1f}s left)"
        )
    total = sum(result.pebble_requests.values())
    difference = total - sum(requests)
    renewal_info = sum(n for k, n in result.pebble_requests.items() if "/draft-ietf-acme-ari" in k)
    explained = (
        f"{renewal_info} renewal-info (ARI) checks after issuance, each a GET /dir and a GET"
        if renewal_info and difference == 2 * renewal_info
        else "not accounted for"
    )
    print(
        f"  Pebble's own request log over the same period: {total} requests, the operator "
        f"counted {sum(requests)}; the {difference} more: {explained}"
    )
    print(f"    {dict(sorted(result.pebble_requests.items()))}")
    print(
        f"  operator API writes during the ACME part: {result.operator_writes} "
        f"({result.operator_writes / sites:.1f} per site) "
        f"{dict(sorted(result.writes_by_verb.items()))}"
    )
    print(
        f"  {result.verified} certificates verify against Pebble's root for every name; "
        f"ACME operator peak RSS {result.operator_rss:.1f} MiB"
    )


# --- the whole bench -----------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=int(os.environ.get("BENCH_SITES", "200")))
    parser.add_argument("--idle", type=float, default=float(os.environ.get("BENCH_IDLE", "60")))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--acme-sites",
        type=int,
        default=int(os.environ.get("BENCH_ACME_SITES", "10")),
        help="ACME BlogSites applied at once (0: none)",
    )
    parser.add_argument(
        "--acme-sequential",
        type=int,
        default=int(os.environ.get("BENCH_ACME_SEQUENTIAL", "5")),
        help="ACME BlogSites applied one at a time after those (0: none)",
    )
    parser.add_argument("--acme-timeout", type=float, default=180, help="per ACME wait, seconds")
    phases = parser.add_mutually_exclusive_group()
    phases.add_argument("--no-acme", action="store_true", help="skip the ACME part")
    phases.add_argument("--acme-only", action="store_true", help="only the ACME part")
    parser.add_argument(
        "--runs",
        type=int,
        default=int(os.environ.get("BENCH_RUNS", "1")),
        help="convergence runs, each on a fresh cluster; more than one adds medians",
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench cluster afterwards")
    args = parser.parse_args()
    run_acme = not args.no_acme and (args.acme_sites > 0 or args.acme_sequential > 0)

    env = {
        **os.environ,
        "BLOGSITE_CLUSTER": "blogsite-bench",
        # KWOK only: the real node (one per machine) belongs to the tests and
        # `make run`, and its kube-proxy would program every bench Service.
        "BLOGSITE_REAL_NODE": "0",
        "BLOGSITE_AUDIT_POLICY": str(ROOT / "hack" / "kwok" / "audit-policy.yaml"),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    runs: list[Convergence] = []
    acme: AcmeRun | None = None
    for run in range(1, args.runs + 1):
        last = run == args.runs
        if args.runs > 1:
            print(f"--- run {run} of {args.runs}")
        kubeconfig, kubectl, audit_log, api = fresh_cluster(env)
        # What both parts measure against: this run's cluster.
        where: dict[str, Any] = {
            "env": env,
            "kubeconfig": kubeconfig,
            "kubectl": kubectl,
            "api": api,
            "audit_log": audit_log,
        }
        try:
            if not args.acme_only:
                runs.append(measure_convergence(args, **where))
                report_convergence(runs[-1])
            if run_acme and last:  # once: its figures are per site already
                started = time.monotonic()
                acme = measure_acme(args, **where)
                print(f"ACME part took {time.monotonic() - started:.1f}s")
        finally:
            if not (args.keep and last):
                cluster("down", env)

    if len(runs) > 1:
        report_runs(runs)
    if acme is not None:
        report_acme(acme)
    return 0 if all(r.idle_writes == 0 for r in runs) else 1


def fresh_cluster(env: dict[str, str]) -> tuple[str, list[str], Path, kube.Api]:
    """A new bench cluster with auditing on and the CRD established: kubeconfig,
    kubectl, audit log, API client."""
    cluster("down", env)  # nothing left over from a run before
    started = time.monotonic()
    cluster("up", env)
    print(f"cluster up in {time.monotonic() - started:.1f}s")
    tools = dict(line.split("=", 1) for line in cluster("env", env).splitlines() if "=" in line)
    kubeconfig = tools["KUBECONFIG"]
    kubectl = [tools["KUBECTL"], "--kubeconfig", kubeconfig]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(ROOT / "crds" / "blogsite.yaml")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd/blogsites.blog.daedalus.dev"],
        check=True,
        capture_output=True,
    )
    kube.load_config(kubeconfig)
    return kubeconfig, kubectl, Path(kubeconfig).parent / "logs" / "audit.log", kube.Api()


def report_runs(runs: list[Convergence]) -> None:
    """The headline figures as median (min to max) over the runs."""
    figures: dict[str, list[float]] = {
        "operator / plain client, all children exist (x)": [
            max(r.children) / max(r.plain_children) for r in runs
        ],
        "operator / plain client, medians (x)": [
            statistics.median(r.children) / statistics.median(r.plain_children) for r in runs
        ],
        "children exist, last (s)": [max(r.children) for r in runs],
        "plain client, last (s)": [max(r.plain_children) for r in runs],
        "Ready, median (s)": [statistics.median(r.ready) for r in runs],
        "Ready, last (s)": [max(r.ready) for r in runs],
        "operator peak RSS (MiB)": [r.rss_peak for r in runs],
        "operator CPU per pass (ms)": [1000 * r.cpu_seconds / max(r.passes, 1) for r in runs],
        "writes per site": [r.converge_writes / r.sites for r in runs],
        "writes during idle": [float(r.idle_writes) for r in runs],
        "one more site, apply to Ready (s)": [r.one_more for r in runs],
    }
    print(f"--- {len(runs)} runs of {runs[0].sites} sites: median (min to max)")
    for name, values in figures.items():
        print(f"{name}: {statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})")


if __name__ == "__main__":
    sys.exit(main())
