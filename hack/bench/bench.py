"""`make bench`: N BlogSites at once against the local control plane.

Reports, per site, the time from `kubectl apply` until every child exists and
until the BlogSite is Ready (median, p99, total); the operator's peak RSS; and
the API write requests the operator made, counted from the API server's audit
log (not from the operator's own counters): during convergence, and during an
idle period after it (which must be 0).

Runs on its own cluster (blogsite-bench, created fresh with auditing on) so
nothing else competes with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from blogsite_operator import kube, models  # noqa: E402
from blogsite_operator.render import RenderSettings, SiteRef, render_site  # noqa: E402

NAMESPACE = "bench"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
OPERATOR_AGENTS = ("blogsite-operator/", "kopf/")
REVERT_BEHAVIOURS = ("crash-loop", "image-pull-fail")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def site_manifest(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {"name": f"site-{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "domains": [f"site-{index:04d}.example.com", f"www.site-{index:04d}.example.com"],
            "redirectDomains": [f"site-{index:04d}.example.net"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1.0.0"},
        },
    }


def expected_children(manifest: dict[str, Any]) -> set[tuple[str, str]]:
    spec = models.parse_spec(manifest["spec"])
    objects = render_site(
        SiteRef(manifest["metadata"]["name"], NAMESPACE, "x"), spec, RenderSettings()
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


def operator_writes(audit_log: Path, start: int) -> tuple[int, int, dict[str, int]]:
    """(writes by the operator, writes by anyone, operator writes per verb) after `start`."""
    mine, everyone, per_verb = 0, 0, {}
    with audit_log.open("rb") as log:
        log.seek(start)
        for line in log:
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
    api: kube.Api, expected: dict[str, set[tuple[str, str]]], t0: float, timeout: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds after t0 at which each site had all its children, and was Ready."""
    children_at: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    while len(ready_at) < len(expected) or len(children_at) < len(expected):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out: {len(ready_at)}/{len(expected)} Ready")
        now = time.monotonic() - t0
        for site in api.list_objects(models.KIND, NAMESPACE, ""):
            name = site["metadata"]["name"]
            conditions = (site.get("status") or {}).get("conditions") or []
            if name not in ready_at and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            ):
                ready_at[name] = now
        present: dict[str, set[tuple[str, str]]] = {}
        for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"):
            for obj in api.list_objects(kind, NAMESPACE, "app.kubernetes.io/name=blogsite"):
                instance = obj["metadata"]["labels"]["app.kubernetes.io/instance"]
                present.setdefault(instance, set()).add((kind, obj["metadata"]["name"]))
        for name, wanted in expected.items():
            if name not in children_at and wanted <= present.get(name, set()):
                children_at[name] = now
        time.sleep(0.25)
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
    while image() != bad["spec"]["daedalus"]["image"]:
        time.sleep(0.1)
    while image() != good_image:
        if time.monotonic() > deadline + timeout:
            raise SystemExit(f"{name}: no revert within {timeout}s")
        time.sleep(0.2)
    found = deployment() or {}
    return time.monotonic() - started, int(found["spec"].get("progressDeadlineSeconds", 600))


def main() -> int:  # noqa: PLR0915 - a linear script: set up, measure, report
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=int(os.environ.get("BENCH_SITES", "200")))
    parser.add_argument("--idle", type=float, default=float(os.environ.get("BENCH_IDLE", "60")))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the bench cluster afterwards")
    args = parser.parse_args()

    env = {
        **os.environ,
        "BLOGSITE_CLUSTER": "blogsite-bench",
        "BLOGSITE_AUDIT_POLICY": str(ROOT / "hack" / "bench" / "audit-policy.yaml"),
    }
    cluster("down", env)  # a fresh cluster: auditing on, nothing left over
    started = time.monotonic()
    cluster("up", env)
    print(f"cluster up in {time.monotonic() - started:.1f}s")
    tools = dict(line.split("=", 1) for line in cluster("env", env).splitlines() if "=" in line)
    kubectl = [tools["KUBECTL"], "--kubeconfig", tools["KUBECONFIG"]]
    audit_log = Path(tools["KUBECONFIG"]).parent / "logs" / "audit.log"
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
    subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True, capture_output=True)

    kube.load_config(tools["KUBECONFIG"])
    api = kube.Api()
    log_path = ROOT / ".artifacts" / "bench-operator.log"
    log_path.parent.mkdir(exist_ok=True)
    operator = subprocess.Popen(
        [sys.executable, "-m", "blogsite_operator", "run", "-n", NAMESPACE],
        env={**env, "KUBECONFIG": tools["KUBECONFIG"], "PYTHONPATH": str(ROOT / "operator")},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        while "Initial authentication has finished" not in log_path.read_text(errors="replace"):
            time.sleep(0.2)
        manifests = [site_manifest(i) for i in range(args.sites)]
        expected = {m["metadata"]["name"]: expected_children(m) for m in manifests}
        audit_start = audit_log.stat().st_size

        t0 = time.monotonic()
        apply(kubectl, manifests)
        children_at, ready_at = wait_for_convergence(api, expected, t0, args.timeout)
        converged = time.monotonic() - t0
        time.sleep(5)  # let the last status writes and events land
        converge_writes, _, converge_by_verb = operator_writes(audit_log, audit_start)
        rss_converged = peak_rss_mib(operator.pid)

        idle_start = audit_log.stat().st_size
        time.sleep(args.idle)
        idle_writes, idle_all, idle_by_verb = operator_writes(audit_log, idle_start)
        rss_peak = peak_rss_mib(operator.pid)

        reverts = {b: measure_revert(api, kubectl, b, args.timeout) for b in REVERT_BEHAVIOURS}
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        if not args.keep:
            cluster("down", env)

    children = list(children_at.values())
    ready = list(ready_at.values())
    print(
        f"sites: {args.sites} applied at once (kubectl apply of one {args.sites}-document stream)"
    )
    print(
        f"children exist: median {statistics.median(children):.2f}s  "
        f"p99 {percentile(children, 0.99):.2f}s  last {max(children):.2f}s"
    )
    print(
        f"Ready=True:     median {statistics.median(ready):.2f}s  "
        f"p99 {percentile(ready, 0.99):.2f}s  last {max(ready):.2f}s  "
        f"(all converged {converged:.2f}s)"
    )
    print(f"operator peak RSS: {rss_converged:.1f} MiB at convergence, {rss_peak:.1f} MiB overall")
    print(
        f"operator API writes during convergence: {converge_writes} "
        f"({converge_writes / args.sites:.1f} per site) {dict(sorted(converge_by_verb.items()))}"
    )
    print(
        f"operator API writes during {args.idle:.0f}s idle: {idle_writes} "
        f"{dict(sorted(idle_by_verb.items()))} (all clients: {idle_all})"
    )
    for behaviour, (seconds, deadline) in reverts.items():
        print(
            f"revert of a {behaviour} daedalus image (default thresholds): {seconds:.1f}s; "
            f"Kubernetes alone reports it after its progress deadline, {deadline}s "
            f"({deadline / seconds:.0f}x later), and never reverts"
        )
    print(
        "a never-ready image is reverted after rollout.readyTimeoutSeconds (default 300s), "
        "half the 600s progress deadline; tests/integration/test_rollouts.py measures it at 15s"
    )
    return 0 if idle_writes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
