"""The operator as a real process against the real control plane."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from blogsite_operator import certs, kube, models
from blogsite_operator.reconcile import Outcome, reconcile_site
from blogsite_operator.render import RenderSettings
from blogsite_operator.render.site import SiteRef, render_site, render_tls_secret
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.integration.test_health import probe
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "blogsite.yaml"
# Every site's Deployments and Services: the canary's are there, empty, at rest.
COMPONENTS = ("frontend", "daedalus", "canary", "cert-refresh")


OWNED_KINDS = (
    "deployments,services,configmaps,secrets,poddisruptionbudgets,serviceaccounts,"
    "roles,rolebindings"
)


def children(
    kubectl: Kubectl, namespace: str, kinds: str = "deployments,services"
) -> dict[str, dict[str, Any]]:
    items = kubectl.json("get", kinds, "-n", namespace, "-l", "app.kubernetes.io/instance=lethain")[
        "items"
    ]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in items}


def condition(site: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in site.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return {}


def site_ready(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    site = kubectl.json("get", "blogsite", "lethain", "-n", namespace)
    return site if condition(site, "Ready").get("status") == "True" else None


def wait_for_reconciled_reason(kubectl: Kubectl, namespace: str, reason: str) -> dict[str, Any]:
    """The BlogSite once its Reconciled condition has this reason."""

    def reported() -> dict[str, Any] | None:
        site = kubectl.json("get", "blogsite", "lethain", "-n", namespace)
        return site if condition(site, "Reconciled").get("reason") == reason else None

    site: dict[str, Any] = wait_for(reported, timeout=60, what=f"Reconciled reason {reason}")
    return site


def apply_example_until_ready(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """Apply deploy/examples/blogsite.yaml; the BlogSite once it is Ready."""
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    site: dict[str, Any] = wait_for(
        lambda: site_ready(kubectl, namespace), timeout=90, what="Ready=True"
    )
    return site


def test_blogsite_becomes_ready_with_owned_children(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    site = apply_example_until_ready(kubectl, namespace)

    objects = children(kubectl, namespace)
    expected = {f"{k}/lethain-{c}" for k in ("Deployment", "Service") for c in COMPONENTS}
    assert set(objects) == expected
    for obj in objects.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["kind"] == "BlogSite"
        assert ref["uid"] == site["metadata"]["uid"]
        assert ref["controller"] is True
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "blogsite-operator"
        assert labels["app.kubernetes.io/name"] == "blogsite"

    status = site["status"]
    assert status["observedGeneration"] == site["metadata"]["generation"]
    assert status["url"] == "http://lethain.com/"
    assert status["components"]["daedalus"]["availableReplicas"] == 2
    assert condition(site, "FrontendAvailable")["status"] == "True"
    # The Deployments really are available, as KWOK reports them.
    for component in COMPONENTS:
        deployment = objects[f"Deployment/lethain-{component}"]
        assert deployment["status"].get("availableReplicas", 0) == deployment["spec"]["replicas"]

    table = kubectl.run("get", "blogsites", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PRIMARY",
        "READY",
        "ADDRESS",
        "CERT-EXPIRY",
        "ROLLOUT",
        "IMAGE",
        "AGE",
    ]
    row = table[1].split()
    assert row[:3] == ["lethain", "lethain.com", "True"]
    assert {"Healthy", "Progressing"} & set(row)  # the Rollout column
    assert "registry.blogsite.test/daedalus-standin:local" in row

    events = kubectl.json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=lethain"
    )["items"]
    reasons = {e["reason"] for e in events}
    assert {"Created", "Ready"} <= reasons

    # kopf keeps no state on any object: no finalizers, no annotations of its
    # own, no status.kopf (so an idle operator writes nothing, and deleting a
    # BlogSite never waits for an operator that is gone).
    owned = children(kubectl, namespace, OWNED_KINDS)
    site = kubectl.json("get", "blogsite", "lethain", "-n", namespace)
    for obj in [site, *owned.values()]:
        metadata = obj["metadata"]
        assert not metadata.get("finalizers"), metadata
        assert not [a for a in metadata.get("annotations") or {} if "kopf" in a], metadata
    assert "kopf" not in site["status"]


def test_spec_change_propagates_and_drift_is_corrected(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    apply_example_until_ready(kubectl, namespace)

    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["spec"]["daedalus"]["image"] = "ghcr.io/example/daedalus:4a5b6c7"
    site["spec"]["daedalus"]["replicas"] = 3
    site["spec"]["rollout"] = {"strategy": "RollingUpdate"}  # the image on the Deployment at once
    kubectl.apply(site, namespace)

    def daedalus_updated() -> bool:
        deployment = kubectl.json("get", "deployment", "lethain-daedalus", "-n", namespace)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return bool(
            container["image"] == "ghcr.io/example/daedalus:4a5b6c7"
            and deployment["spec"]["replicas"] == 3
        )

    wait_for(daedalus_updated, timeout=30, what="the new image and replica count")

    kubectl.run("delete", "service", "lethain-daedalus", "-n", namespace)
    wait_for(
        lambda: kubectl.exists("service", "lethain-daedalus", namespace),
        timeout=30,
        what="the deleted Service to be restored",
    )
    kubectl.run("scale", "deployment", "lethain-frontend", "--replicas=5", "-n", namespace)
    wait_for(
        lambda: (
            kubectl.json("get", "deployment", "lethain-frontend", "-n", namespace)["spec"][
                "replicas"
            ]
            == 2
        ),
        timeout=30,
        what="the hand-scaled frontend to return to 2 replicas",
    )


def test_restart_touches_nothing_that_is_already_right(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    apply_example_until_ready(kubectl, namespace)
    assert operator_process.stop() == 0

    def versions() -> dict[str, str]:
        objects = children(kubectl, namespace, OWNED_KINDS)
        site = kubectl.json("get", "blogsite", "lethain", "-n", namespace)
        # The operator's Events (the scheduler's and controllers' come and go).
        events = [
            e
            for e in kubectl.json("get", "events", "-n", namespace)["items"]
            if (e.get("source") or {}).get("component") == "blogsite-operator"
        ]
        return {
            "BlogSite": site["metadata"]["resourceVersion"],
            "Events": str(sorted(e["metadata"]["name"] for e in events)),
            **{name: o["metadata"]["resourceVersion"] for name, o in objects.items()},
        }

    before = versions()
    assert before["Events"] != "[]"
    assert {k.split("/")[0] for k in before} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    }
    mark = operator_process.log_size()
    operator_process.start()
    # The new process's first pass over the site, not a line of the old one's.
    operator_process.wait_for_pass("lethain", after=mark)
    assert versions() == before


def api_writes(port: int) -> float:
    """The operator's own API writes so far, from its metrics."""
    status, metrics = probe(port, "/metrics")
    assert status == 200, metrics
    counts = re.findall(
        r'^blogsite_kube_api_requests_total\{code="\d+",verb="(?:create|update|patch|delete)"\} '
        r"([0-9.e+]+)$",
        metrics,
        re.M,
    )
    return sum(float(count) for count in counts)


def test_an_idle_operator_makes_no_api_writes_over_two_resync_periods(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """The README: an idle operator makes no API writes. Idle means every
    site right and nothing changing; the resync still passes over each site
    (every 5 s here), and those passes must write nothing."""
    port = free_port()
    operator = OperatorProcess(
        kubectl,
        namespace,
        tmp_path / "operator.log",
        extra_env={"BLOGSITE_OPERATOR_RESYNC_SECONDS": "5"},
        extra_args=["--health-address", f"127.0.0.1:{port}"],
    )
    operator.start()
    try:
        apply_example_until_ready(kubectl, namespace)
        wait_for(lambda: api_writes(port) > 0, what="the operator's writes counted")
        # Settled: a pass that began after the site was Ready, and ended.
        operator.wait_for_pass("lethain", after=operator.log_size())
        before = api_writes(port)
        mark = operator.log_size()
        # Two resync passes of an unchanged site (events, not a sleep).
        wait_for(
            lambda: operator.logs()[mark:].count(f"[{namespace}/lethain] pass ends") >= 2,
            timeout=60,
            what="two resync passes",
        )
        assert api_writes(port) == before, operator.logs()[mark:][-3000:]
    finally:
        assert operator.stop() == 0


def test_deleting_the_blogsite_removes_its_children(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_for(lambda: len(children(kubectl, namespace)) == 8, timeout=60, what="eight children")
    kubectl.run("delete", "blogsite", "lethain", "-n", namespace, "--wait=true", "--timeout=60s")
    # Garbage collection by the real kube-controller-manager.
    wait_for(
        lambda: children(kubectl, namespace) == {}, timeout=90, what="children to be collected"
    )


def owned_by_the_current_site(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    """The Ready BlogSite, once every child names it (its uid) as owner."""
    site = site_ready(kubectl, namespace)
    if site is None:
        return None
    kids = children(kubectl, namespace, OWNED_KINDS)
    owners = {
        key: [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []]
        for key, obj in kids.items()
        if not key.startswith("Secret/")  # an issued certificate outlives its site
    }
    uid = site["metadata"]["uid"]
    return site if len(owners) >= 6 and all(refs == [uid] for refs in owners.values()) else None


def test_a_blogsite_recreated_while_its_children_remain_takes_them_over(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    """Deleted and applied again before the garbage collector is done, or
    deleted with --cascade=orphan: the children of the same name are the
    site's own, not another owner's."""
    first = apply_example_until_ready(kubectl, namespace)
    held = "service/lethain-daedalus"

    def hold(finalizers: list[str]) -> None:
        patch = json.dumps({"metadata": {"finalizers": finalizers or None}})
        kubectl.run("patch", held, "-n", namespace, "--type=merge", "-p", patch)

    # Deleted, and applied again while one child, held by a finalizer, still
    # belongs to the deleted BlogSite: waited for, not a conflict.
    hold(["test.blog.daedalus.dev/hold"])
    kubectl.run("delete", "blogsite", "lethain", "-n", namespace, "--wait=false")
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))

    site = wait_for_reconciled_reason(kubectl, namespace, "WaitingForCleanup")
    assert "Service lethain-daedalus" in condition(site, "Reconciled")["message"]
    hold([])
    second = wait_for(
        lambda: owned_by_the_current_site(kubectl, namespace),
        timeout=90,
        what="children owned by the new BlogSite once the old one's are gone",
    )
    assert second["metadata"]["uid"] != first["metadata"]["uid"]

    # Deleted with --cascade=orphan (gone once its children lost their owner
    # reference) and applied again: the orphans are adopted.
    kubectl.run("delete", "blogsite", "lethain", "-n", namespace, "--cascade=orphan")
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    third = wait_for(
        lambda: owned_by_the_current_site(kubectl, namespace),
        timeout=90,
        what="the orphans adopted by the new BlogSite",
    )
    assert third["metadata"]["uid"] != second["metadata"]["uid"]
    assert condition(third, "Reconciled")["status"] == "True"
    warnings = kubectl.json("get", "events", "-n", namespace, "--field-selector", "type=Warning")[
        "items"
    ]
    assert not [e for e in warnings if e["reason"] == "NameConflict"], warnings


def test_name_taken_by_another_owner_is_reported_not_overwritten(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "lethain-daedalus", "labels": {"owner": "someone-else"}},
        "spec": {"ports": [{"port": 1234}], "selector": {"app": "other"}},
    }
    kubectl.apply(foreign, namespace)
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))

    site = wait_for_reconciled_reason(kubectl, namespace, "NameConflict")
    assert "Service lethain-daedalus" in condition(site, "Reconciled")["message"]
    assert condition(site, "Ready")["status"] == "False"
    service = kubectl.json("get", "service", "lethain-daedalus", "-n", namespace)
    assert service["spec"]["ports"][0]["port"] == 1234
    assert service["metadata"]["labels"] == {"owner": "someone-else"}
    warnings = kubectl.json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=lethain,type=Warning",
    )["items"]
    assert any(e["reason"] == "NameConflict" for e in warnings)


def test_tls_site_serves_a_placeholder_until_a_certificate_exists(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    # The example, its CA pointed at a closed port on loopback (a test never
    # reaches the Internet): the order fails and the placeholder stays.
    example = yaml.safe_load(
        (ROOT / "deploy/examples/production/blogsite-letsencrypt.yaml").read_text()
    )
    example["spec"]["tls"]["acme"]["server"] = "https://127.0.0.1:9/directory"
    kubectl.apply(example, namespace)

    def order_failed() -> dict[str, Any] | None:
        site = kubectl.json("get", "blogsite", "notes", "-n", namespace)
        certificate = (site.get("status") or {}).get("certificate") or {}
        return site if certificate.get("failedAttempts") else None

    site = wait_for(order_failed, timeout=60, what="a failed order while the placeholder serves")
    ready = condition(site, "CertificateReady")
    assert ready["status"] == "False"
    assert ready["reason"] == site["status"]["certificate"]["lastFailure"]["reason"]
    certificate = site["status"]["certificate"]
    assert certificate["placeholder"] is True
    assert sorted(certificate["dnsNames"]) == sorted(
        ["notes.example.org", "www.notes.example.org", "notes.example.net"]
    )
    secret = kubectl.json("get", "secret", "notes-tls", "-n", namespace)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == site["metadata"]["uid"]
    # The expiry column shows the served certificate's notAfter.
    row = kubectl.run("get", "blogsite", "notes", "-n", namespace, "--no-headers").stdout.split()
    assert row[1] == "notes.example.org"
    assert row[3] == certificate["notAfter"]

    frontend = kubectl.json("get", "deployment", "notes-frontend", "-n", namespace)
    template = frontend["spec"]["template"]
    assert "blog.daedalus.dev/tls-certificate-sha256" in template["metadata"]["annotations"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    config = kubectl.json(
        "get", "configmap", volumes["nginx-config"]["configMap"]["name"], "-n", namespace
    )
    assert config["immutable"] is True
    assert "server_name notes.example.org;" in config["data"]["nginx.conf"]
    assert volumes["tls"]["secret"]["secretName"] == "notes-tls"
    for name in ("notes-daedalus",):
        assert not kubectl.exists("poddisruptionbudget", name, namespace)  # one replica
    assert kubectl.exists("poddisruptionbudget", "notes-frontend", namespace)


def test_api_failure_is_reported_and_retried_until_it_clears(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-deployments"},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }
    kubectl.apply(quota, namespace)
    wait_for(
        lambda: (
            kubectl.json("get", "resourcequota", "no-deployments", "-n", namespace)
            .get("status", {})
            .get("hard")
        ),
        what="the quota to be enforced",
    )
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))

    def failure_event() -> list[dict[str, Any]]:
        events = kubectl.json(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=lethain"
        )["items"]
        return [e for e in events if e["reason"] == "ReconcileFailed"]

    (event, *_) = wait_for(failure_event, timeout=60, what="a ReconcileFailed Event")
    assert event["type"] == "Warning"
    assert "quota" in event["message"]

    kubectl.run("delete", "resourcequota", "no-deployments", "-n", namespace)
    wait_for(lambda: site_ready(kubectl, namespace), timeout=120, what="Ready after the retry")


def test_load_balancer_address_reaches_the_status(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    apply_example_until_ready(kubectl, namespace)
    # No cloud here: play the load-balancer controller and publish an address.
    kubectl.run(
        "patch",
        "service",
        "lethain-frontend",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}',
    )
    wait_for(
        lambda: (
            kubectl.json("get", "blogsite", "lethain", "-n", namespace)["status"].get(
                "externalAddresses"
            )
            == ["203.0.113.7"]
        ),
        timeout=30,
        what="status.externalAddresses",
    )


def test_old_nginx_configs_go_once_no_replica_set_needs_them(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    apply_example_until_ready(kubectl, namespace)

    def config_in_template() -> str:
        deployment = kubectl.json("get", "deployment", "lethain-frontend", "-n", namespace)
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        return str(next(v["configMap"]["name"] for v in volumes if v["name"] == "nginx-config"))

    first = config_in_template()
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["spec"]["redirectDomains"].append("lethain.org")
    kubectl.apply(site, namespace)
    second = wait_for(
        lambda: (name := config_in_template()) != first and name, what="a new nginx config"
    )
    assert (
        "lethain.org"
        in kubectl.json("get", "configmap", second, "-n", namespace)["data"]["nginx.conf"]
    )
    # The previous ReplicaSet still refers to the first config: it stays, so a
    # revert would find it (after a pass that could have deleted it).
    operator_process.looked_again("lethain")
    assert kubectl.exists("configmap", first, namespace)

    replica_sets = kubectl.json(
        "get", "replicasets", "-n", namespace, "-l", "app.kubernetes.io/component=frontend"
    )["items"]
    for replica_set in replica_sets:
        volumes = replica_set["spec"]["template"]["spec"]["volumes"]
        if any(v.get("configMap", {}).get("name") == first for v in volumes):
            kubectl.run("delete", "replicaset", replica_set["metadata"]["name"], "-n", namespace)
    kubectl.run("annotate", "blogsite", "lethain", "-n", namespace, "example.com/poke=1")
    wait_for(
        lambda: not kubectl.exists("configmap", first, namespace),
        timeout=30,
        what="the unused config to be deleted",
    )
    assert kubectl.exists("configmap", second, namespace)


def test_the_crd_check_before_start_tells_a_served_resource_from_a_missing_one(
    kubectl: Kubectl,
) -> None:
    """What `run` asks before it starts (it refuses to run without the CRD)."""
    api_client = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    try:
        api = kube.Api(api_client)
        assert api.serves("blog.daedalus.dev/v1alpha1", "blogsites")
        assert not api.serves("blog.daedalus.dev/v1alpha1", "blogposts")
        assert not api.serves("blog.daedalus.dev/v9", "blogsites")
        assert not api.serves("nothing.example.test/v1", "blogsites")
    finally:
        api_client.close()


def test_apply_if_absent_creates_each_child_kind_and_changes_nothing_that_exists(
    kubectl: Kubectl, namespace: str
) -> None:
    """The API server's own answer to the precondition the first pass relies
    on to skip a GET per child: every kind the operator creates is created
    with it, and one that exists (someone else's) is left exactly as it was."""
    spec = models.parse_spec(
        {
            "domains": ["a.example"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1"},
            "tls": {"acme": {"email": "a@example.org"}},
        }
    )
    ref = SiteRef("precondition", namespace, "0b2c4a1e-0000-4000-8000-000000000000")
    placeholder = certs.self_signed_placeholder(["a.example"])
    objects = [*render_site(ref, spec, RenderSettings()), render_tls_secret(ref, *placeholder)]
    assert {o["kind"] for o in objects} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Secret",
    }
    api_client = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    try:
        api = kube.Api(api_client)
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            # No such BlogSite: the garbage collector would take them at once.
            obj["metadata"].pop("ownerReferences", None)
            created = api.apply_if_absent(obj)
            assert created is not None, f"{kind} {name} was not created"
            assert created["metadata"]["resourceVersion"] != kube.NO_OBJECT_IS_AT
            labels = {**obj["metadata"]["labels"], "touched": "yes"}
            again = {**obj, "metadata": {**obj["metadata"], "labels": labels}}
            assert api.apply_if_absent(again) is None, f"{kind} {name} was applied twice"
            after = api.get(kind, namespace, name)
            assert after is not None
            assert "touched" not in after["metadata"]["labels"]
    finally:
        api_client.close()


def test_a_certificate_the_user_brings_is_served_and_never_written(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    cert_pem, key_pem = certs.self_signed_placeholder(["lethain.com", "www.lethain.com"])
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "mine"},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64.b64encode(cert_pem).decode(),
                "tls.key": base64.b64encode(key_pem).decode(),
            },
        },
        namespace,
    )
    before = kubectl.json("get", "secret", "mine", "-n", namespace)
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["spec"]["tls"] = {"secretName": "mine"}
    kubectl.apply(site, namespace)
    ready = wait_for(lambda: site_ready(kubectl, namespace), timeout=90, what="Ready=True")
    certificate = ready["status"]["certificate"]
    assert sorted(certificate["dnsNames"]) == ["lethain.com", "www.lethain.com"]
    frontend = kubectl.json("get", "deployment", "lethain-frontend", "-n", namespace)
    volumes = {v["name"]: v for v in frontend["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "mine"
    # Only the certificate and its key are mounted, whatever else the Secret holds.
    assert [i["key"] for i in volumes["tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    operator_process.looked_again("lethain")
    after = kubectl.json("get", "secret", "mine", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    assert not kubectl.exists("secret", "lethain-tls", namespace)


def test_json_logs_are_one_object_per_line_and_name_the_site(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    assert operator_process.stop() == 0
    operator_process.extra_args.append("--log-format=json")
    mark = operator_process.log_size()
    operator_process.start()
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    site = {"namespace": namespace, "name": "lethain"}

    def records() -> list[dict[str, Any]]:
        lines = operator_process.logs()[mark:].splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def about_the_site(record: dict[str, Any]) -> bool:
        return site.items() <= (record.get("object") or {}).items()

    wait_for(
        lambda: any(r["message"] == "pass ends" and about_the_site(r) for r in records()),
        what="a pass over the site, logged as JSON",
    )
    assert {"message", "timestamp", "severity"} <= records()[0].keys(), records()[0]
    # Every line of the pass names the site: the applies it made included.
    reconciled = [r for r in records() if r["message"].startswith("reconciled: applied")]
    assert reconciled, records()
    assert all(about_the_site(r) for r in reconciled), reconciled
    assert all(r["object"]["kind"] == "BlogSite" for r in reconciled)


@pytest.mark.exclusive
def test_with_no_namespaces_set_every_namespace_is_watched(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(
        kubectl,
        namespace,
        tmp_path / "cluster-wide.log",
        extra_env={"BLOGSITE_OPERATOR_NAMESPACES": ""},
        cluster_wide=True,
    )
    operator.start()
    try:
        apply_example_until_ready(kubectl, namespace)
    finally:
        assert operator.stop() == 0
    assert "Traceback" not in operator.logs()


def test_quantities_the_api_server_rewrites_make_no_write(kubectl: Kubectl, namespace: str) -> None:
    """`cpu: "0.5"` is stored as 500m and `1024Mi` as 1Gi: once converged, a
    pass against the real API server writes nothing, pass after pass."""
    resources = {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"memory": "1024Mi"}}
    site = {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": "quantities"},
        "spec": {
            "domains": ["quantities.example.test"],
            "daedalus": {"image": "ghcr.io/example/daedalus:1", "resources": resources},
            "frontend": {"resources": resources},
        },
    }
    kubectl.apply(site, namespace)
    api_client = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    try:
        api = kube.Api(api_client)

        def one_pass() -> Outcome:
            body = kubectl.json("get", "blogsite", "quantities", "-n", namespace)
            return reconcile_site(api, body, RenderSettings())

        wait_for(
            lambda: not ((outcome := one_pass()).applied or outcome.status_written),
            timeout=60,
            interval=1,
            what="a pass that writes nothing",
        )
        outcomes = [one_pass() for _ in range(3)]
    finally:
        api_client.close()
    assert [(o.applied, o.status_written, o.events) for o in outcomes] == [([], False, [])] * 3
    stored = kubectl.json("get", "deployment", "quantities-daedalus", "-n", namespace)
    (container,) = stored["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
