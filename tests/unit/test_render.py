"""Renderers: a BlogSite in, the objects the operator applies out. No cluster."""

from __future__ import annotations

from typing import Any

import pytest

from blogsite_operator import models
from blogsite_operator.render import RenderSettings, SiteFacts, SiteRef, render_site
from blogsite_operator.render.site import (
    DRAIN_SECONDS,
    acme_account_secret_name,
    render_acme_account_secret,
    template_version,
    version_of,
)

SITE = SiteRef(name="lethain", namespace="blogs", uid="uid-1")


def rendered(**overrides: Any) -> dict[tuple[str, str], dict[str, Any]]:
    raw: dict[str, Any] = {
        "domains": ["lethain.com", "www.lethain.com"],
        "redirectDomains": ["willarson.com"],
        "daedalus": {"image": "ghcr.io/example/daedalus:3f2c1a9"},
    }
    raw.update(overrides)
    objects = render_site(SITE, models.parse_spec(raw), RenderSettings())
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def container(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return result


class TestEveryObject:
    def test_deployments_services_budgets_and_nginx_config(self) -> None:
        objects = sorted(rendered())
        config_maps = [name for kind, name in objects if kind == "ConfigMap"]
        assert len(config_maps) == 2
        assert config_maps[0] == "lethain-acme-http01"
        assert config_maps[1].startswith("lethain-nginx-")
        assert [o for o in objects if o[0] != "ConfigMap"] == [
            ("Deployment", "lethain-canary"),
            ("Deployment", "lethain-cert-refresh"),
            ("Deployment", "lethain-daedalus"),
            ("Deployment", "lethain-frontend"),
            ("PodDisruptionBudget", "lethain-daedalus"),
            ("PodDisruptionBudget", "lethain-frontend"),
            ("Role", "lethain-cert-refresh"),
            ("RoleBinding", "lethain-cert-refresh"),
            ("Service", "lethain-canary"),
            ("Service", "lethain-cert-refresh"),
            ("Service", "lethain-daedalus"),
            ("Service", "lethain-frontend"),
            ("ServiceAccount", "lethain-cert-refresh"),
        ]

    def test_owned_by_the_blogsite_as_controller(self) -> None:
        for obj in rendered().values():
            (ref,) = obj["metadata"]["ownerReferences"]
            assert ref == {
                "apiVersion": "blog.daedalus.dev/v1alpha1",
                "kind": "BlogSite",
                "name": "lethain",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
            assert obj["metadata"]["namespace"] == "blogs"

    def test_recommended_labels(self) -> None:
        for (kind, name), obj in rendered().items():
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "blogsite"
            assert labels["app.kubernetes.io/instance"] == "lethain"
            assert labels["app.kubernetes.io/managed-by"] == "blogsite-operator"
            if kind != "ConfigMap":
                assert name == f"lethain-{labels['app.kubernetes.io/component']}"

    def test_rendering_is_deterministic(self) -> None:
        assert rendered() == rendered()


class TestDeployments:
    def test_selectors_match_pod_labels_and_services(self) -> None:
        objects = rendered()
        for component in ("frontend", "daedalus", "cert-refresh"):
            deployment = objects[("Deployment", f"lethain-{component}")]
            service = objects[("Service", f"lethain-{component}")]
            selector = deployment["spec"]["selector"]["matchLabels"]
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= pod_labels.items()
            assert service["spec"]["selector"] == selector
            budget = objects.get(("PodDisruptionBudget", f"lethain-{component}"))
            if budget is not None:
                assert budget["spec"]["selector"]["matchLabels"] == selector

    def test_rollouts_never_drop_serving_pods(self) -> None:
        for (kind, _), obj in rendered().items():
            if kind == "Deployment":
                assert obj["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
                # The README promises ten: the last good version's ReplicaSet is kept.
                assert obj["spec"]["revisionHistoryLimit"] == 10

    def test_serving_pods_drain_before_they_stop(self) -> None:
        objects = rendered()
        for component in ("frontend", "daedalus"):
            pod = container(objects[("Deployment", f"lethain-{component}")])
            assert pod["lifecycle"] == {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}}
            # The drain fits in the default grace period (30 s).
            assert DRAIN_SECONDS < 30

    def test_containers_are_locked_down(self) -> None:
        for (kind, _), obj in rendered().items():
            if kind != "Deployment":
                continue
            context = container(obj)["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            pod = obj["spec"]["template"]["spec"]
            # Only cert-refresh talks to the API server (to watch its answers).
            talks_to_api = obj["metadata"]["name"] == "lethain-cert-refresh"
            assert pod["automountServiceAccountToken"] is talks_to_api
            assert ("serviceAccountName" in pod) is talks_to_api


class TestDaedalus:
    def test_image_port_replicas_and_probes(self) -> None:
        health = {"path": "/healthz", "periodSeconds": 7}
        daedalus = {"image": "d:2", "port": 9000, "replicas": 3, "healthCheck": health}
        deployment = rendered(daedalus=daedalus)[("Deployment", "lethain-daedalus")]
        assert deployment["spec"]["replicas"] == 3
        c = container(deployment)
        assert c["image"] == "d:2"
        assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
        for probe in (c["readinessProbe"], c["livenessProbe"]):
            assert probe["httpGet"] == {"path": "/healthz", "port": "http"}
            assert probe["periodSeconds"] == 7

    def test_env_literal_and_secret(self) -> None:
        env = [
            {"name": "TITLE", "value": "Hello"},
            {"name": "TOKEN", "secretKeyRef": {"name": "blog-secrets", "key": "token"}},
        ]
        c = container(
            rendered(daedalus={"image": "d:2", "env": env})[("Deployment", "lethain-daedalus")]
        )
        assert c["env"] == [
            {"name": "TITLE", "value": "Hello"},
            {
                "name": "TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "blog-secrets", "key": "token"}},
            },
        ]

    def test_resources_override_defaults_field_by_field(self) -> None:
        resources = {"limits": {"memory": "1Gi"}}
        c = container(
            rendered(daedalus={"image": "d:2", "resources": resources})[
                ("Deployment", "lethain-daedalus")
            ]
        )
        assert c["resources"]["limits"]["memory"] == "1Gi"
        assert c["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}

    def test_real_blog_images_get_what_they_need_within_the_restricted_standard(self) -> None:
        daedalus = {
            "image": "registry.example/ghost:5",
            "imagePullSecrets": ["registry-login"],
            "command": ["/app/start"],
            "args": ["--port", "8080"],
            "writablePaths": ["/tmp", "/var/lib/ghost/content"],
            "runAsUser": 1000,
            "runAsGroup": 1000,
        }
        deployment = rendered(daedalus=daedalus)[("Deployment", "lethain-daedalus")]
        pod = deployment["spec"]["template"]["spec"]
        c = container(deployment)
        assert pod["imagePullSecrets"] == [{"name": "registry-login"}]
        assert (c["command"], c["args"]) == (["/app/start"], ["--port", "8080"])
        assert pod["volumes"] == [
            {"name": "writable-0", "emptyDir": {}},
            {"name": "writable-1", "emptyDir": {}},
        ]
        assert c["volumeMounts"] == [
            {"name": "writable-0", "mountPath": "/tmp"},
            {"name": "writable-1", "mountPath": "/var/lib/ghost/content"},
        ]
        security = c["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (1000, 1000)
        assert pod["securityContext"] == {"runAsNonRoot": True, "fsGroup": 1000}
        # Still restricted: non-root, read-only root, nothing escalates.
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}

    def test_by_default_the_image_runs_as_65532_with_nothing_writable(self) -> None:
        deployment = rendered()[("Deployment", "lethain-daedalus")]
        pod = deployment["spec"]["template"]["spec"]
        c = container(deployment)
        assert "volumes" not in pod
        assert "imagePullSecrets" not in pod
        assert "command" not in c
        assert "args" not in c
        assert c["securityContext"]["runAsUser"] == 65532

    def test_service_is_cluster_internal(self) -> None:
        service = rendered()[("Service", "lethain-daedalus")]
        assert service["spec"]["type"] == "ClusterIP"


class TestFrontend:
    def test_defaults(self) -> None:
        objects = rendered()
        deployment = objects[("Deployment", "lethain-frontend")]
        assert deployment["spec"]["replicas"] == 2
        assert container(deployment)["image"] == RenderSettings().frontend_image
        service = objects[("Service", "lethain-frontend")]
        assert service["spec"]["type"] == "LoadBalancer"
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, "http")]
        with_tls = rendered(tls={"secretName": "mine"})[("Service", "lethain-frontend")]
        assert [(p["port"], p["targetPort"]) for p in with_tls["spec"]["ports"]] == [
            (80, "http"),
            (443, "https"),
        ]

    def test_listens_on_unprivileged_ports(self) -> None:
        ports = container(rendered()[("Deployment", "lethain-frontend")])["ports"]
        assert all(p["containerPort"] >= 1024 for p in ports)

    @pytest.mark.parametrize("service_type", ["ClusterIP", "NodePort", "LoadBalancer"])
    def test_service_type(self, service_type: str) -> None:
        frontend = {"service": {"type": service_type}}
        assert (
            rendered(frontend=frontend)[("Service", "lethain-frontend")]["spec"]["type"]
            == service_type
        )

    def test_service_annotations_and_source_ranges(self) -> None:
        frontend = {
            "service": {
                "annotations": {"lb.example.com/class": "external"},
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
            }
        }
        service = rendered(frontend=frontend)[("Service", "lethain-frontend")]
        assert service["metadata"]["annotations"] == {"lb.example.com/class": "external"}
        assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]

    def test_external_traffic_policy_only_when_set(self) -> None:
        service = rendered()[("Service", "lethain-frontend")]
        assert "externalTrafficPolicy" not in service["spec"]  # the API server's default
        local = {"service": {"externalTrafficPolicy": "Local"}}
        service = rendered(frontend=local)[("Service", "lethain-frontend")]
        assert service["spec"]["externalTrafficPolicy"] == "Local"

    def test_image_override_and_operator_default(self) -> None:
        objects = render_site(
            SITE,
            models.parse_spec({"domains": ["a.com"], "daedalus": {"image": "d:1"}}),
            RenderSettings(frontend_image="nginx:1.29"),
        )
        frontend = next(o for o in objects if o["metadata"]["name"] == "lethain-frontend")
        assert container(frontend)["image"] == "nginx:1.29"
        custom = rendered(frontend={"image": "my/nginx:2"})[("Deployment", "lethain-frontend")]
        assert container(custom)["image"] == "my/nginx:2"


class TestCertRefresh:
    def test_one_replica_of_this_projects_challenge_server(self) -> None:
        deployment = rendered()[("Deployment", "lethain-cert-refresh")]
        assert deployment["spec"]["replicas"] == 1
        c = container(deployment)
        assert c["image"] == RenderSettings().operator_image
        assert c["args"][0] == "challenge-server"


class TestNginxConfig:
    def config_map(self, **overrides: Any) -> dict[str, Any]:
        return next(
            o
            for (k, n), o in rendered(**overrides).items()
            if k == "ConfigMap" and n.startswith("lethain-nginx-")
        )

    def test_immutable_and_named_by_content(self) -> None:
        first = self.config_map()
        assert first["immutable"] is True
        assert first == self.config_map()
        changed = self.config_map(redirectDomains=["other.example.com"])
        assert changed["metadata"]["name"] != first["metadata"]["name"]

    def test_frontend_mounts_it_and_points_nginx_at_it(self) -> None:
        objects = rendered()
        name = self.config_map()["metadata"]["name"]
        deployment = objects[("Deployment", "lethain-frontend")]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nginx-config"]["configMap"]["name"] == name
        command = container(deployment)["command"]
        assert command[0] == "nginx"
        assert command[command.index("-c") + 1] == "/etc/blogsite/nginx/nginx.conf"

    def test_upstreams_are_the_sites_services(self) -> None:
        conf = self.config_map()["data"]["nginx.conf"]
        assert "server lethain-daedalus.blogs.svc:80;" in conf
        assert "server lethain-cert-refresh.blogs.svc:80;" in conf

    def test_tls_secret_is_mounted_when_tls_is_on(self) -> None:
        deployment = rendered(tls={"secretName": "mine"})[("Deployment", "lethain-frontend")]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "mine"
        acme = rendered(tls={"acme": {"email": "a@example.com"}})
        volumes = {
            v["name"]: v
            for v in acme[("Deployment", "lethain-frontend")]["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["tls"]["secret"]["secretName"] == "lethain-tls"


class TestVersions:
    def frontend(self, certificate_hash: str | None, **overrides: Any) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "domains": ["lethain.com"],
            "daedalus": {"image": "ghcr.io/example/daedalus:3f2c1a9"},
            "tls": {"acme": {"email": "a@example.com"}},
            **overrides,
        }
        facts = SiteFacts(tls_certificate_hash=certificate_hash)
        objects = render_site(SITE, models.parse_spec(raw), RenderSettings(), facts)
        return next(o for o in objects if o["metadata"]["name"] == "lethain-frontend")

    def test_a_new_certificate_rolls_the_frontend_as_the_same_version(self) -> None:
        before, after = self.frontend("aaa"), self.frontend("bbb")
        assert before["spec"]["template"] != after["spec"]["template"]  # new pods load it
        assert version_of(before) == version_of(after)
        changed = self.frontend("aaa", frontend={"replicas": 2, "http": "redirect"})
        assert version_of(changed) != version_of(before)

    def test_nginx_starts_only_once_the_certificate_the_template_names_is_mounted(self) -> None:
        pod = self.frontend("aaa")["spec"]["template"]
        (init,) = pod["spec"]["initContainers"]
        assert init["args"] == ["await-certificate", "--file", "/etc/blogsite/tls/tls.crt"]
        (env,) = init["env"]
        # Read from the annotation, so the hash itself is in one place only.
        annotation = env["valueFrom"]["fieldRef"]["fieldPath"]
        assert annotation == "metadata.annotations['blog.daedalus.dev/tls-certificate-sha256']"
        assert pod["metadata"]["annotations"]["blog.daedalus.dev/tls-certificate-sha256"] == "aaa"
        assert init["volumeMounts"] == [
            {"name": "tls", "mountPath": "/etc/blogsite/tls", "readOnly": True}
        ]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        # No certificate known yet: the same template, so the same version.
        assert version_of(self.frontend(None)) == version_of(self.frontend("aaa"))
        assert "initContainers" not in self.frontend(None, tls=None)["spec"]["template"]["spec"]

    def test_templates_without_a_certificate_keep_their_version_hash(self) -> None:
        # The hash of such a template is what earlier operator versions
        # stamped; an upgrade must not roll every site.
        template = {"metadata": {"labels": {"a": "b"}}, "spec": {"x": 1}}
        assert template_version(template) == "258856622107b85b"


class TestDisruptionBudgets:
    def test_only_with_more_than_one_replica(self) -> None:
        objects = rendered(daedalus={"image": "d:1", "replicas": 1}, frontend={"replicas": 3})
        assert ("PodDisruptionBudget", "lethain-daedalus") not in objects
        budget = objects[("PodDisruptionBudget", "lethain-frontend")]
        assert budget["spec"]["maxUnavailable"] == 1


class TestAcmeAccount:
    SERVER = "https://acme-v02.api.letsencrypt.org/directory"

    def test_a_site_with_an_email_keeps_the_account_it_had(self) -> None:
        # The name every release so far gave this account: a new one would
        # mean a new registration, and the CA's per-account history lost.
        assert acme_account_secret_name(self.SERVER, "ops@example.com") == (
            "blogsite-acme-account-34ba4ed2338d"
        )

    def test_no_email_is_an_account_without_a_contact(self) -> None:
        name = acme_account_secret_name(self.SERVER, None)
        assert name == acme_account_secret_name(self.SERVER, "")
        assert name != acme_account_secret_name(self.SERVER, "ops@example.com")
        secret = render_acme_account_secret("blogs", name, self.SERVER, None, b"key")
        assert "blog.daedalus.dev/acme-email" not in secret["metadata"]["annotations"]
        with_email = render_acme_account_secret("blogs", name, self.SERVER, "a@b.co", b"key")
        assert with_email["metadata"]["annotations"]["blog.daedalus.dev/acme-email"] == "a@b.co"
