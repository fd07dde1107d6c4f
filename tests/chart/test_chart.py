"""What the chart renders, for the default values and others, and what its
schema refuses. helm itself renders; the tests read the objects."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from blogsite_operator import models
from blogsite_operator.policies.kubernetes_version import MINIMUM
from blogsite_operator.render import RenderSettings, SiteRef, render_site
from blogsite_operator.render.site import CHALLENGE_SERVER_PORT
from tests.chart.conftest import CHART, ROOT, Helm

VALUE_SETS = [
    (),
    ("watchNamespaces={blogs,team-a}",),
    ("replicaCount=1", "leaderElection.enabled=false"),
    ("crds.install=false", "serviceAccount.create=false", "serviceAccount.name=existing"),
    ("image.digest=sha256:" + "a" * 64, "logFormat=json", "acme.selfCheck=frontend"),
]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = by_kind(documents, "Deployment")
    return found


def container_env(documents: list[dict[str, Any]]) -> dict[str, str]:
    container = deployment(documents)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.mark.parametrize("sets", VALUE_SETS, ids=lambda s: ",".join(s) or "defaults")
def test_helm_lint_passes(helm: Helm, sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in sets:
        args += ["--set", value]
    helm.run(*args)


def test_defaults_run_two_replicas_with_a_lease_and_cluster_wide_rights(helm: Helm) -> None:
    documents = helm.template()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    spec = deployment(documents)["spec"]
    assert spec["replicas"] == 2
    # One at a time, as the README says, whatever replicaCount: the Lease
    # keeps writers apart, and a Ready standby is always there.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = container_env(documents)
    assert env["BLOGSITE_OPERATOR_LEADER_LEASE"] == "blogsite-system/blogsite-operator"
    assert env["BLOGSITE_OPERATOR_NAMESPACES"] == ""
    assert env["BLOGSITE_OPERATOR_ALLOW_EXTRA_CONFIG"] == "false"
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/daedalus-dev/blogsite-operator:0.1.0"
    assert env["BLOGSITE_OPERATOR_IMAGE"] == container["image"]  # cert-refresh runs it too
    (binding,) = by_kind(documents, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "blogsite-operator", "namespace": "blogsite-system"}
    ]


def test_the_pod_meets_the_restricted_pod_security_standard(helm: Helm) -> None:
    pod = deployment(helm.template())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 180  # a whole ACME order


def test_the_service_account_token_goes_only_to_the_operator_pod(helm: Helm) -> None:
    documents = helm.template()
    (account,) = by_kind(documents, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert deployment(documents)["spec"]["template"]["spec"]["automountServiceAccountToken"]


def rbac_roles(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(documents, "Role")


def rules(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for role in by_kind(documents, kind) for rule in role["rules"]]


@pytest.mark.parametrize("sets", VALUE_SETS, ids=lambda s: ",".join(s) or "defaults")
def test_no_rule_has_a_wildcard_or_deletes_blogsites(helm: Helm, sets: tuple[str, ...]) -> None:
    documents = helm.template(*sets)
    for rule in rules(documents, "ClusterRole") + rules(documents, "Role"):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        if "blogsites" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        if "blogsites/status" in rule["resources"]:
            assert rule["verbs"] == ["patch"], rule


def test_namespaced_mode_has_roles_in_the_watched_namespaces_only(helm: Helm) -> None:
    documents = helm.template("watchNamespaces={blogs,team-a}")
    assert not by_kind(documents, "ClusterRole")
    assert not by_kind(documents, "ClusterRoleBinding")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in rbac_roles(documents)}
    assert roles == {
        ("blogs", "blogsite-operator"),
        ("team-a", "blogsite-operator"),
        ("blogsite-system", "blogsite-operator-leader-election"),
    }
    assert container_env(documents)["BLOGSITE_OPERATOR_NAMESPACES"] == "blogs,team-a"


def test_gateways_are_only_read_and_routes_never_listed(helm: Helm) -> None:
    documents = helm.template("watchNamespaces={blogs}", "gatewayNamespaces={gateways,blogs}")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in rbac_roles(documents)}
    assert roles[("gateways", "blogsite-operator-gateways")]["rules"] == [
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get"]}
    ]
    assert ("blogs", "blogsite-operator-gateways") not in roles  # its site Role reads them
    bindings = {
        (b["metadata"]["namespace"], b["metadata"]["name"])
        for b in by_kind(documents, "RoleBinding")
    }
    assert ("gateways", "blogsite-operator-gateways") in bindings
    for documents in (helm.template(), helm.template("watchNamespaces={blogs}")):
        gateway_rules = [
            r
            for r in rules(documents, "ClusterRole") + rules(documents, "Role")
            if "gateway.networking.k8s.io" in r["apiGroups"]
        ]
        verbs = {resource: set(r["verbs"]) for r in gateway_rules for resource in r["resources"]}
        assert verbs == {
            "gateways": {"get"},
            "httproutes": {"get", "create", "patch", "delete"},
            "tlsroutes": {"get", "create", "patch", "delete"},
        }


def test_the_lease_role_names_its_lease(helm: Helm) -> None:
    documents = helm.template("leaderElection.leaseName=my-lease")
    (role,) = [r for r in by_kind(documents, "Role") if r["metadata"]["name"].endswith("election")]
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["my-lease"],
            "verbs": ["get", "update"],
        },
    ]


def test_without_leader_election_one_replica_is_replaced_not_rolled(helm: Helm) -> None:
    documents = helm.template("replicaCount=1", "leaderElection.enabled=false")
    assert deployment(documents)["spec"]["strategy"] == {"type": "Recreate"}
    assert "BLOGSITE_OPERATOR_LEADER_LEASE" not in container_env(documents)
    assert not by_kind(documents, "PodDisruptionBudget")
    assert not [r for r in by_kind(documents, "Role") if "election" in r["metadata"]["name"]]


def test_the_crd_is_the_projects_own_and_outlives_the_release(helm: Helm) -> None:
    (crd,) = by_kind(helm.template(), "CustomResourceDefinition")
    ours = yaml.safe_load((ROOT / "crds" / "blogsite.yaml").read_text(encoding="utf-8"))
    assert crd["spec"] == ours["spec"], "the chart's CRD is stale: run `make crd`"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (crd,) = by_kind(helm.template("crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]
    assert not by_kind(helm.template("crds.install=false"), "CustomResourceDefinition")


def test_a_digest_pins_the_image(helm: Helm) -> None:
    digest = "sha256:" + "a" * 64
    documents = helm.template("image.digest=" + digest, "image.tag=9.9.9")
    image = container_env(documents)["BLOGSITE_OPERATOR_IMAGE"]
    assert image == f"ghcr.io/daedalus-dev/blogsite-operator@{digest}"


def test_the_frontend_image_follows_the_operator_image_unless_named(helm: Helm) -> None:
    env = container_env(helm.template())
    assert env["BLOGSITE_OPERATOR_FRONTEND_IMAGE"] == "ghcr.io/daedalus-dev/blogsite-frontend:0.1.0"
    env = container_env(
        helm.template("image.tag=1.2.3", "frontendImageRepository=registry.example/nginx")
    )
    assert env["BLOGSITE_OPERATOR_FRONTEND_IMAGE"] == "registry.example/nginx:1.2.3"
    env = container_env(helm.template("frontendImage=registry.example/own:7"))
    assert env["BLOGSITE_OPERATOR_FRONTEND_IMAGE"] == "registry.example/own:7"


@pytest.mark.parametrize(("kube_version", "admitted"), [("1.30.14", False), ("1.31.0", True)])
def test_the_chart_admits_kubernetes_from_the_operators_floor(
    helm: Helm, kube_version: str, admitted: bool
) -> None:
    assert MINIMUM == "1.31"  # the operator's own start-up check says the same
    result = helm.run(
        "template", "blogsite-operator", str(CHART), "--kube-version", kube_version, check=False
    )
    assert (result.returncode == 0) is admitted, result.stderr
    if not admitted:
        assert "chart requires kubeVersion: >=1.31.0-0" in result.stderr


def test_names_are_cut_to_63_characters(helm: Helm) -> None:
    release = "a-release-name-as-long-as-helm-allows-it-to-be-53-chr"
    assert len(release) == 53
    for document in helm.template(release=release):
        metadata = document["metadata"]
        if document["kind"] != "CustomResourceDefinition":
            assert len(metadata["name"]) <= 63, metadata["name"]
        for value in (metadata.get("labels") or {}).values():
            assert len(value) <= 63, value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
        ("logFormat=xml", "at '/logFormat': value must be one of 'plain', 'full', 'json'"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("image.tag=has space", "at '/image/tag'"),
        ("image.digest=sha256:short", "at '/image/digest'"),
        ("acme.selfCheck=always", "at '/acme/selfCheck'"),
        ("healthPort=80", "at '/healthPort': minimum: got 80, want 1,024"),
        ("allowExtraConfig=maybe", "at '/allowExtraConfig': got string, want boolean"),
        (
            "leaderElection.enabled=false",
            "replicaCount above 1 needs leaderElection.enabled=true",
        ),
        (
            "serviceAccount.create=false",
            "serviceAccount.name is needed when serviceAccount.create is false",
        ),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_the_value(
    helm: Helm, value: str, message: str
) -> None:
    result = helm.run("template", "blogsite-operator", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_notes_say_what_to_do_next(helm: Helm) -> None:
    result = helm.run(
        "install",
        "blogsite-operator",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "blogsite-system",
        "--set",
        "watchNamespaces={blogs}",
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n blogsite-system rollout status deployment/blogsite-operator" in notes
    assert "the namespaces blogs" in notes
    assert "kubectl apply -n blogs -f blogsite.yaml" in notes
    assert "kubectl delete crd blogsites.blog.daedalus.dev" in notes
    # The default images are not published: the notes say so, and how.
    assert "WARNING: the images ghcr.io/daedalus-dev/blogsite-operator" in result.stdout
    own = helm.run(
        "install", "blogsite-operator", str(CHART), "--dry-run=client",
        "--set", "image.repository=registry.example/blogsite-operator",
        "--set", "frontendImageRepository=registry.example/blogsite-frontend",
    )  # fmt: skip
    assert "WARNING" not in own.stdout


def test_metrics_are_scraped_through_a_service_and_can_be_turned_off(helm: Helm) -> None:
    documents = helm.template("metrics.serviceMonitor.enabled=true")
    (service,) = by_kind(documents, "Service")
    (monitor,) = by_kind(documents, "ServiceMonitor")
    pod_labels = deployment(documents)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert container_env(documents)["BLOGSITE_OPERATOR_METRICS"] == "true"
    off = helm.template("metrics.enabled=false", "metrics.serviceMonitor.enabled=true")
    assert not by_kind(off, "Service")
    assert not by_kind(off, "ServiceMonitor")
    assert container_env(off)["BLOGSITE_OPERATOR_METRICS"] == "false"


def test_the_site_pod_monitor_selects_every_sites_traffic_collector(helm: Helm) -> None:
    assert not by_kind(helm.template(), "PodMonitor")
    (monitor,) = by_kind(helm.template("metrics.sitePodMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    # The pods it selects are the cert-refresh pods the operator renders, on
    # the port their collector serves /metrics on.
    spec = models.parse_spec({"domains": ["blog.example"], "daedalus": {"image": "d:1"}})
    objects = render_site(SiteRef("blog", "blogs", "uid"), spec, RenderSettings())
    pods = [
        o["spec"]["template"]
        for o in objects
        if o["kind"] == "Deployment"
        and o["spec"]["template"]["metadata"]["labels"].items()
        >= monitor["spec"]["selector"]["matchLabels"].items()
    ]
    assert [p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods] == [
        "cert-refresh"
    ]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p for c in pods[0]["spec"]["containers"] for p in c.get("ports", [])}
    assert ports[endpoint["port"]]["containerPort"] == CHALLENGE_SERVER_PORT
    assert endpoint["path"] == "/metrics"
    (watching,) = by_kind(
        helm.template("metrics.sitePodMonitor.enabled=true", "watchNamespaces={blogs,team-a}"),
        "PodMonitor",
    )
    assert watching["spec"]["namespaceSelector"] == {"matchNames": ["blogs", "team-a"]}


def test_the_prometheus_rule_carries_the_projects_alert_rules(helm: Helm) -> None:
    assert not by_kind(helm.template(), "PrometheusRule")
    (rule,) = by_kind(helm.template("prometheusRule.enabled=true"), "PrometheusRule")
    rules_file = ROOT / "deploy" / "prometheus" / "blogsite-operator.rules.yaml"
    ours = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == ours["groups"], (
        f"the chart's files/alerts.yaml is stale: copy {rules_file.relative_to(ROOT)} over it"
    )
