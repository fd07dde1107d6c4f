"""The reconcile pass against an in-memory API: what it writes, and when not."""

from __future__ import annotations

import copy
import datetime
from typing import Any, ClassVar

import pytest
from kubernetes.client.exceptions import ApiException

from blogsite_operator import certs, models
from blogsite_operator.policies.readiness import Verdict, component_facts, component_verdict
from blogsite_operator.reconcile import (
    _transition_events,
    is_subset,
    merge_patch,
    next_status,
    reconcile_site,
    relabel_kept_of_gone_site,
)
from blogsite_operator.render import RenderSettings
from blogsite_operator.render.site import (
    MANAGED_BY,
    SITE_LABEL,
    TLS_HASH_ANNOTATION,
    UPSTREAMS_ANNOTATION,
    UPSTREAMS_RESTART_ANNOTATION,
    Component,
    SiteFacts,
    SiteRef,
    render_site,
    render_tls_secret,
    version_of,
)
from blogsite_operator.rollouts import gate_deployments
from blogsite_operator.settings import AcmeSettings
from tests.unit.test_acme_driver import ca_signed


class MemoryApi:
    """Stores applied objects as the API would return them (plus server fields)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.status: dict[str, Any] | None = None
        # When set, the BlogSite's current resourceVersion: a status patch
        # from another one is refused, as the API server does.
        self.site_version: str | None = None
        # The API groups served beyond the built-in ones (installed CRDs).
        self.served: set[tuple[str, str]] = set()

    def serves(self, api_version: str, plural: str) -> bool:
        return (api_version, plural) in self.served

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """As the operator's cache answers, without a request: only objects
        labelled as its own."""
        obj = MemoryApi.get(self, kind, namespace, name)
        labels = (obj or {}).get("metadata", {}).get("labels") or {}
        return obj if labels.get("app.kubernetes.io/managed-by") == MANAGED_BY else None

    def apply_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]) in self.objects:
            self.writes.append(f"refused {obj['kind']} {obj['metadata']['name']}")
            return None
        return self.apply(obj)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        live = copy.deepcopy(obj)
        live["metadata"]["resourceVersion"] = str(len(self.writes) + 1)
        live["metadata"]["uid"] = f"uid-{obj['kind']}-{obj['metadata']['name']}"
        live["metadata"]["generation"] = 1
        if obj["kind"] == "Deployment":
            replicas = obj["spec"]["replicas"]
            live["status"] = {
                "observedGeneration": 1,
                "availableReplicas": replicas,
                "readyReplicas": replicas,
                "updatedReplicas": replicas,
            }
            # The API server drops zero values (omitempty).
            for c in live["spec"]["template"]["spec"]["containers"]:
                for probe in ("readinessProbe", "livenessProbe"):
                    if c.get(probe, {}).get("initialDelaySeconds") == 0:
                        del c[probe]["initialDelaySeconds"]
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = live
        self.writes.append(f"apply {obj['kind']} {obj['metadata']['name']}")
        return live

    def list_objects(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(","))
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind
            and ns == namespace
            and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
        ]

    def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        self.writes.append(f"delete {kind} {name}")
        del self.objects[(kind, namespace, name)]

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self.writes.append(f"patch {kind} {name}")
        self.objects[key] = merge(self.objects[key], patch)
        return copy.deepcopy(self.objects[key])

    def patch_blogsite_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> None:
        """Applies a JSON merge patch, as the API server does."""
        if self.site_version is not None and resource_version != self.site_version:
            raise ApiException(status=409, reason="Conflict")
        self.writes.append("status")
        self.status = merge(self.status or {}, status)

    def post_event(self, site: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# Today's plain rolling update, judged by pod health alone (the default is Canary).
ROLLING = {"strategy": "RollingUpdate"}


def site(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {
            "name": "blog",
            "namespace": "ns",
            "uid": "u1",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {"domains": ["blog.example.com"], "daedalus": {"image": "d:1"}, **spec},
    }
    if status is not None:
        body["status"] = status
    return body


class TestIsSubset:
    def test_server_added_fields_are_ignored(self) -> None:
        assert is_subset({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2], "d": 0}, "e": 1})

    def test_changed_value_is_noticed(self) -> None:
        assert not is_subset({"a": {"b": 1}}, {"a": {"b": 2}})

    def test_list_length_matters(self) -> None:
        assert not is_subset({"a": [1]}, {"a": [1, 2]})

    @pytest.mark.parametrize("empty", [0, False, "", None, [], {}])
    def test_omitted_zero_values_count_as_equal(self, empty: Any) -> None:
        assert is_subset({"a": empty}, {})

    def test_missing_nonzero_value_is_noticed(self) -> None:
        assert not is_subset({"a": 1}, {})

    def test_quantities_compare_as_the_api_server_stores_them(self) -> None:
        desired = {"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}}
        stored = {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}
        assert is_subset(desired, stored)
        assert is_subset(
            {"emptyDir": {"sizeLimit": "0.0625Gi"}}, {"emptyDir": {"sizeLimit": "64Mi"}}
        )

    def test_a_changed_quantity_is_noticed(self) -> None:
        desired = {"resources": {"limits": {"cpu": "0.5"}}}
        assert not is_subset(desired, {"resources": {"limits": {"cpu": "600m"}}})
        assert not is_subset(desired, {"resources": {"limits": {}}})

    def test_only_quantity_fields_compare_as_quantities(self) -> None:
        assert not is_subset({"labels": {"size": "1k"}}, {"labels": {"size": "1000"}})


class TestReconcileSite:
    def test_first_pass_creates_everything_and_reports_ready(self) -> None:
        api = MemoryApi()
        outcome = reconcile_site(api, site(), RenderSettings())
        nginx_config = next(n for k, _, n in api.objects if k == "ConfigMap" and "nginx" in n)
        assert sorted(outcome.applied) == [
            "ConfigMap blog-acme-http01",
            f"ConfigMap {nginx_config}",
            "Deployment blog-canary",
            "Deployment blog-cert-refresh",
            "Deployment blog-daedalus",
            "Deployment blog-frontend",
            "PodDisruptionBudget blog-daedalus",
            "PodDisruptionBudget blog-frontend",
            "Role blog-cert-refresh",
            "RoleBinding blog-cert-refresh",
            "Service blog-canary",
            "Service blog-cert-refresh",
            "Service blog-daedalus",
            "Service blog-frontend",
            "ServiceAccount blog-cert-refresh",
        ]
        assert api.status is not None
        conditions = {c["type"]: c for c in api.status["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert api.status["observedGeneration"] == 1
        assert api.status["url"] == "http://blog.example.com/"
        assert ("Normal", "Ready") in [(t, r) for t, r, _ in api.events]

    def test_converges_then_writes_nothing(self) -> None:
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        # The second pass learns that the first versions became available:
        # no Event for that, the first pass's Ready said it.
        learned = reconcile_site(api, site(status=api.status), RenderSettings())
        assert learned.applied == []
        assert learned.events == []
        assert learned.status_written
        writes = len(api.writes)
        for _ in range(3):
            outcome = reconcile_site(api, site(status=api.status), RenderSettings())
            assert outcome.applied == []
            assert not outcome.status_written
        assert len(api.writes) == writes

    def test_hand_edit_is_reverted(self) -> None:
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        api.objects[("Deployment", "ns", "blog-daedalus")]["spec"]["replicas"] = 7
        outcome = reconcile_site(api, site(status=api.status), RenderSettings())
        assert outcome.applied == ["Deployment blog-daedalus"]

    def test_a_new_sites_first_pass_creates_its_children_without_reading_any(self) -> None:
        class CountingApi(MemoryApi):
            def __init__(self) -> None:
                super().__init__()
                self.reads: list[str] = []

            def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
                self.reads.append(f"{kind} {name}")
                return super().get(kind, namespace, name)

        api = CountingApi()
        outcome = reconcile_site(api, site(), RenderSettings())
        assert api.reads == []
        wanted = render_site(
            SiteRef("blog", "ns", "u1"), models.parse_spec(site()["spec"]), RenderSettings()
        )
        assert sorted(outcome.applied) == sorted(
            f"{o['kind']} {o['metadata']['name']}" for o in wanted
        )
        assert api.writes.count("status") == 1

    def test_object_owned_by_someone_else_is_left_alone_and_reported(self) -> None:
        api = MemoryApi()
        foreign = {"kind": "Service", "metadata": {"name": "blog-frontend", "namespace": "ns"}}
        api.objects[("Service", "ns", "blog-frontend")] = foreign
        outcome = reconcile_site(api, site(), RenderSettings())
        assert outcome.conflicts == ["Service blog-frontend"]
        assert api.objects[("Service", "ns", "blog-frontend")] is foreign
        assert api.status is not None
        ready = next(c for c in api.status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
        assert any(t == "Warning" and r == "NameConflict" for t, r, _ in api.events)

    def test_an_orphan_of_a_blogsite_of_the_same_name_is_adopted(self) -> None:
        # `kubectl delete --cascade=orphan`, then the BlogSite applied again.
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        for obj in api.objects.values():
            obj["metadata"].pop("ownerReferences", None)
        outcome = reconcile_site(api, site(), RenderSettings())
        assert outcome.conflicts == []
        service = api.objects[("Service", "ns", "blog-frontend")]
        assert [ref["uid"] for ref in service["metadata"]["ownerReferences"]] == ["u1"]

    def test_a_child_of_a_deleted_blogsite_of_the_same_name_is_waited_for(self) -> None:
        # Deleted and applied again before the garbage collector removed it.
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        leftover = api.objects[("Service", "ns", "blog-frontend")]
        leftover["metadata"]["ownerReferences"][0]["uid"] = "u0"
        outcome = reconcile_site(api, site(status=api.status), RenderSettings())
        assert outcome.leftovers == ["Service blog-frontend"]
        assert outcome.conflicts == []
        assert api.objects[("Service", "ns", "blog-frontend")] is leftover
        assert api.status is not None
        reconciled = next(c for c in api.status["conditions"] if c["type"] == "Reconciled")
        assert (reconciled["status"], reconciled["reason"]) == ("False", "WaitingForCleanup")
        assert not any(r == "NameConflict" for _, r, _ in api.events)

    def test_labels_alone_do_not_make_another_owners_object_ours(self) -> None:
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        taken = api.objects[("Service", "ns", "blog-frontend")]
        taken["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "x", "uid": "u9"}]
        outcome = reconcile_site(api, site(status=api.status), RenderSettings())
        assert outcome.conflicts == ["Service blog-frontend"]

    def test_invalid_spec_is_reported_not_applied(self) -> None:
        api = MemoryApi()
        outcome = reconcile_site(api, site(daedalus={"image": "d:latest"}), RenderSettings())
        assert outcome.applied == []
        assert api.status is not None
        ready = next(c for c in api.status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec"
        assert "latest" in ready["message"]


def test_transition_time_kept_while_status_unchanged() -> None:
    verdicts = {Component.DAEDALUS: Verdict("True", "Available", "ok")}
    common: dict[str, Any] = {
        "spec": None,
        "generation": 1,
        "verdicts": verdicts,
        "deployments": {},
        "reconciled": Verdict("True", "Applied", "fine"),
    }
    first = next_status(previous={}, now="2026-01-01T00:00:00Z", **common)
    second = next_status(previous=first, now="2026-01-02T00:00:00Z", **common)
    assert first == second


def test_a_rollout_beside_serving_pods_keeps_ready_and_posts_no_not_ready_event() -> None:
    def frontend(updated: int, total: int) -> dict[str, Any]:
        return {
            "metadata": {"generation": 2},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "nginx"}]}}},
            "status": {
                "observedGeneration": 2,
                "replicas": total,
                "updatedReplicas": updated,
                "availableReplicas": 2,
            },
        }

    def status(deployment: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
        facts = component_facts(Component.FRONTEND, deployment)
        return next_status(
            spec=None,
            generation=2,
            previous=previous,
            verdicts={Component.FRONTEND: component_verdict(facts)},
            deployments={Component.FRONTEND: deployment},
            reconciled=Verdict("True", "Applied", "fine"),
            now="2026-01-01T00:00:00Z",
        )

    def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in body["conditions"]}

    settled = status(frontend(updated=2, total=2), {})
    assert conditions(settled)["Progressing"] == ("False", "Complete")
    # A new certificate rolls the frontend: one new pod surges beside the two old.
    rolling = status(frontend(updated=1, total=3), settled)
    assert conditions(rolling)["Ready"] == ("True", "Available")
    assert conditions(rolling)["Progressing"] == ("True", "RollingOut")
    assert _transition_events(settled, rolling) == []
    done = status(frontend(updated=2, total=2), rolling)
    assert conditions(done)["Progressing"] == ("False", "Complete")
    assert _transition_events(rolling, done) == []


class TestTls:
    def test_acme_site_gets_a_placeholder_once(self) -> None:
        api = MemoryApi()
        acme = {"acme": {"email": "ops@example.com"}}
        reconcile_site(api, site(tls=acme, redirectDomains=["old.example.com"]), RenderSettings())
        secret = api.objects[("Secret", "ns", "blog-tls")]
        assert secret["type"] == "kubernetes.io/tls"
        assert api.status is not None
        certificate = api.status["certificate"]
        assert certificate["placeholder"] is True
        assert sorted(certificate["dnsNames"]) == ["blog.example.com", "old.example.com"]
        ready = next(c for c in api.status["conditions"] if c["type"] == "CertificateReady")
        assert (ready["status"], ready["reason"]) == ("False", "Placeholder")
        # The pod template carries the certificate's hash, so a new one rolls out.
        frontend = api.objects[("Deployment", "ns", "blog-frontend")]
        annotations = frontend["spec"]["template"]["metadata"]["annotations"]
        assert len(annotations["blog.daedalus.dev/tls-certificate-sha256"]) == 64

        for _ in range(2):  # the second pass records the healthy versions
            again = site(tls=acme, redirectDomains=["old.example.com"], status=api.status)
            reconcile_site(api, again, RenderSettings())
        writes = len(api.writes)
        again = site(tls=acme, redirectDomains=["old.example.com"], status=api.status)
        reconcile_site(api, again, RenderSettings())
        assert len(api.writes) == writes
        assert api.objects[("Secret", "ns", "blog-tls")]["data"] == secret["data"]

    @staticmethod
    def kept_certificate(written_for: str) -> dict[str, Any]:
        """NAME-tls as an order wrote it for a BlogSite since deleted."""
        return render_tls_secret(
            SiteRef(written_for, "ns", "u0"),
            *certs.self_signed_placeholder(["blog.example.com"]),
            placeholder=False,
            issued_by=("job-1", "https://ca.example/dir"),
        )

    @staticmethod
    def reconciled_over(secret: dict[str, Any]) -> tuple[MemoryApi, dict[str, Any]]:
        """One pass of the ACME site "blog" over this Secret in the way."""
        api = MemoryApi()
        api.objects[("Secret", "ns", "blog-tls")] = copy.deepcopy(secret)
        reconcile_site(api, site(tls={"acme": {"email": "ops@example.com"}}), RenderSettings())
        assert "apply Secret blog-tls" not in api.writes
        assert api.status is not None
        return api, next(c for c in api.status["conditions"] if c["type"] == "Reconciled")

    def test_a_certificate_kept_from_a_deleted_blogsite_of_the_same_name_is_taken_up(
        self,
    ) -> None:
        placeholder = render_tls_secret(
            SiteRef("blog", "ns", "u0"), *certs.self_signed_placeholder(["blog.example.com"])
        )
        assert placeholder["metadata"]["ownerReferences"], "a placeholder goes with its site"
        kept = self.kept_certificate("blog")
        assert "ownerReferences" not in kept["metadata"], "an issued certificate is kept"
        _, reconciled = self.reconciled_over(kept)
        assert reconciled["status"] == "True", reconciled

    def test_a_kept_certificate_carries_no_label_a_gitops_tool_claims(self) -> None:
        labels = self.kept_certificate("blog")["metadata"]["labels"]
        assert "app.kubernetes.io/instance" not in labels  # Argo CD's label tracking
        assert labels[SITE_LABEL] == "blog"
        assert labels["app.kubernetes.io/managed-by"] == "blogsite-operator"

    @classmethod
    def kept_by_an_older_operator(cls) -> tuple[dict[str, Any], MemoryApi]:
        """blog's kept certificate, labelled as operators before SITE_LABEL did."""
        kept = cls.kept_certificate("blog")
        labels = kept["metadata"]["labels"]
        del labels[SITE_LABEL]
        labels["app.kubernetes.io/instance"] = "blog"
        api = MemoryApi()
        api.objects[("Secret", "ns", "blog-tls")] = copy.deepcopy(kept)
        return kept, api

    def test_a_certificate_kept_by_an_older_operator_is_relabelled_once(self) -> None:
        kept, api = self.kept_by_an_older_operator()
        reconcile_site(api, site(tls={"acme": {"email": "ops@example.com"}}), RenderSettings())
        relabelled = api.objects[("Secret", "ns", "blog-tls")]
        assert "app.kubernetes.io/instance" not in relabelled["metadata"]["labels"]
        assert relabelled["metadata"]["labels"][SITE_LABEL] == "blog"
        assert relabelled["data"] == kept["data"]
        assert not relabelled["metadata"].get("ownerReferences")
        assert api.writes.count("apply Secret blog-tls") == 1
        reconcile_site(api, site(tls={"acme": {"email": "ops@example.com"}}), RenderSettings())
        assert api.writes.count("apply Secret blog-tls") == 1

    def test_a_certificate_an_older_operator_kept_is_relabelled_before_its_site_returns(
        self,
    ) -> None:
        kept, api = self.kept_by_an_older_operator()
        relabel_kept_of_gone_site(api, "ns", "blog")
        relabelled = api.objects[("Secret", "ns", "blog-tls")]
        assert "app.kubernetes.io/instance" not in relabelled["metadata"]["labels"]
        assert relabelled["metadata"]["labels"][SITE_LABEL] == "blog"
        assert relabelled["data"] == kept["data"]
        assert not relabelled["metadata"].get("ownerReferences")
        relabel_kept_of_gone_site(api, "ns", "blog")
        relabel_kept_of_gone_site(api, "ns", "other")  # names another site's Secret
        assert api.writes == ["apply Secret blog-tls"]

    def test_a_gone_sites_name_on_a_secret_it_does_not_own_relabels_nothing(self) -> None:
        owned = render_tls_secret(
            SiteRef("blog", "ns", "u1"), *certs.self_signed_placeholder(["blog.example.com"])
        )
        api = MemoryApi()
        api.objects[("Secret", "ns", "blog-tls")] = copy.deepcopy(owned)
        relabel_kept_of_gone_site(api, "ns", "blog")
        assert api.writes == []

    def test_a_kept_certificate_of_another_name_is_someone_elses(self) -> None:
        kept = self.kept_certificate("other")
        kept["metadata"]["name"] = "blog-tls"  # in the way of "blog"
        _, reconciled = self.reconciled_over(kept)
        assert reconciled["reason"] == "NameConflict"

    def test_an_order_finishing_mid_pass_is_never_covered_by_a_placeholder(self) -> None:
        """The order writes its certificate just after the pass read the Secret:
        the pass must have asked "is an order running?" before it read."""
        issued = render_tls_secret(
            SiteRef("blog", "ns", "u1"),
            *certs.self_signed_placeholder(["blog.example.com"]),
            placeholder=False,
        )

        class Issuer:
            running = True
            settings = AcmeSettings()

            def state(self, key: tuple[str, str]) -> tuple[bool, None]:
                return self.running, None

            def submit(self, job: object) -> bool:
                return False

            def acknowledge(self, key: tuple[str, str], result: object) -> None:
                pass

        issuer = Issuer()

        class RacingApi(MemoryApi):
            def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
                read = super().get(kind, namespace, name)
                if kind == "Secret" and issuer.running:  # the order ends right now
                    issuer.running = False
                    self.objects[("Secret", "ns", "blog-tls")] = copy.deepcopy(issued)
                return read

        api = RacingApi()
        acme = {"acme": {"email": "ops@example.com"}}
        reconcile_site(api, site(tls=acme), RenderSettings(), issuer=issuer)
        assert api.objects[("Secret", "ns", "blog-tls")]["data"] == issued["data"]

    def test_placeholder_follows_the_names(self) -> None:
        api = MemoryApi()
        acme = {"acme": {"email": "ops@example.com"}}
        reconcile_site(api, site(tls=acme), RenderSettings())
        first = api.objects[("Secret", "ns", "blog-tls")]["data"]
        reconcile_site(api, site(tls=acme, domains=["new.example.com"]), RenderSettings())
        assert api.objects[("Secret", "ns", "blog-tls")]["data"] != first

    def test_missing_user_secret_is_reported_not_created(self) -> None:
        api = MemoryApi()
        reconcile_site(api, site(tls={"secretName": "mine"}), RenderSettings())
        assert ("Secret", "ns", "mine") not in api.objects
        assert api.status is not None
        ready = next(c for c in api.status["conditions"] if c["type"] == "CertificateReady")
        assert ready["reason"] == "SecretMissing"


class TestPruning:
    def test_pdb_removed_when_replicas_drop_to_one(self) -> None:
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        assert ("PodDisruptionBudget", "ns", "blog-daedalus") in api.objects
        reconcile_site(api, site(daedalus={"image": "d:1", "replicas": 1}), RenderSettings())
        assert ("PodDisruptionBudget", "ns", "blog-daedalus") not in api.objects
        assert ("PodDisruptionBudget", "ns", "blog-frontend") in api.objects

    def test_old_nginx_config_kept_while_a_replica_set_uses_it(self) -> None:
        api = MemoryApi()
        reconcile_site(api, site(), RenderSettings())
        (old,) = [n for k, _, n in api.objects if k == "ConfigMap" and "-nginx-" in n]
        frontend = api.objects[("Deployment", "ns", "blog-frontend")]
        replica_set = {
            "kind": "ReplicaSet",
            "metadata": {
                "name": "blog-frontend-1",
                "labels": frontend["spec"]["selector"]["matchLabels"],
            },
            "spec": {"template": copy.deepcopy(frontend["spec"]["template"])},
        }
        api.objects[("ReplicaSet", "ns", "blog-frontend-1")] = replica_set
        reconcile_site(api, site(redirectDomains=["old.example.com"]), RenderSettings())
        configs = {n for k, _, n in api.objects if k == "ConfigMap" and "-nginx-" in n}
        assert old in configs
        assert len(configs) == 2
        del api.objects[("ReplicaSet", "ns", "blog-frontend-1")]
        reconcile_site(api, site(redirectDomains=["old.example.com"]), RenderSettings())
        assert old not in {n for k, _, n in api.objects if k == "ConfigMap"}


def test_config_refused_by_nginx_is_not_rolled_out() -> None:
    api = MemoryApi()
    reconcile_site(api, site(), RenderSettings())
    frontend = api.objects[("Deployment", "ns", "blog-frontend")]
    configs = {n for k, _, n in api.objects if k == "ConfigMap"}

    broken = site(frontend={"extraConfig": "frobnicate on;"}, status=api.status)
    reconcile_site(api, broken, RenderSettings(), check_nginx=lambda _: 'unknown directive "x"')
    assert api.objects[("Deployment", "ns", "blog-frontend")] == frontend
    assert {n for k, _, n in api.objects if k == "ConfigMap"} == configs
    assert api.status is not None
    valid = next(c for c in api.status["conditions"] if c["type"] == "ConfigValid")
    assert (valid["status"], valid["reason"]) == ("False", "NginxConfigInvalid")
    assert any(r == "NginxConfigInvalid" for _, r, _ in api.events)


def _mounted_config(api: MemoryApi) -> str:
    deployment = api.objects[("Deployment", "ns", "blog-frontend")]
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "nginx-config"
    ]
    return str(volume["configMap"]["name"])


REFUSED = 'unknown directive "frobnicate"'


def test_a_refused_config_holds_back_only_the_configuration() -> None:
    # The frontend's replicas, its certificate, its existence and its rollout
    # memory go on; only the new nginx configuration waits.
    api = MemoryApi()
    acme = {"acme": {"email": "ops@example.com"}}
    reconcile_site(api, site(tls=acme), RenderSettings())
    reconcile_site(api, site(tls=acme, status=api.status), RenderSettings())
    accepted = _mounted_config(api)
    assert api.status is not None
    memory = api.status["components"]["frontend"]["lastGoodVersion"]
    assert memory is not None

    refused = site(
        tls=acme, frontend={"extraConfig": "frobnicate on;", "replicas": 3}, status=api.status
    )
    reconcile_site(api, refused, RenderSettings(), check_nginx=lambda _: REFUSED)
    deployment = api.objects[("Deployment", "ns", "blog-frontend")]
    assert deployment["spec"]["replicas"] == 3
    assert _mounted_config(api) == accepted
    assert api.status["components"]["frontend"]["lastGoodVersion"] == memory
    valid = next(c for c in api.status["conditions"] if c["type"] == "ConfigValid")
    assert (valid["status"], valid["reason"]) == ("False", "NginxConfigInvalid")
    assert accepted in valid["message"]

    # A renewed certificate still reaches the frontend's template.
    secret = api.objects[("Secret", "ns", "blog-tls")]
    cert_pem, key_pem = certs.self_signed_placeholder(["blog.example.com"])
    secret["data"] = render_tls_secret(REF, cert_pem, key_pem)["data"]
    reconcile_site(
        api, {**refused, "status": api.status}, RenderSettings(), check_nginx=lambda _: REFUSED
    )
    annotations = api.objects[("Deployment", "ns", "blog-frontend")]["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert (
        annotations[TLS_HASH_ANNOTATION]
        != deployment["spec"]["template"]["metadata"]["annotations"][TLS_HASH_ANNOTATION]
    )

    # A deleted frontend comes back, with the accepted configuration.
    del api.objects[("Deployment", "ns", "blog-frontend")]
    reconcile_site(
        api, {**refused, "status": api.status}, RenderSettings(), check_nginx=lambda _: REFUSED
    )
    assert _mounted_config(api) == accepted
    assert api.status["components"]["frontend"]["lastGoodVersion"] == memory


def test_a_new_site_whose_config_is_refused_serves_without_extra_config() -> None:
    api = MemoryApi()
    acme = {"acme": {"email": "ops@example.com"}}
    broken = site(tls=acme, frontend={"extraConfig": "frobnicate on;"})
    reconcile_site(api, broken, RenderSettings(), check_nginx=lambda _: REFUSED)
    plain = MemoryApi()
    reconcile_site(plain, site(tls=acme), RenderSettings())
    assert _mounted_config(api) == _mounted_config(plain)
    config_maps = {n for k, _, n in api.objects if k == "ConfigMap"}
    assert config_maps == {"blog-acme-http01", _mounted_config(plain)}
    assert api.status is not None
    valid = next(c for c in api.status["conditions"] if c["type"] == "ConfigValid")
    assert "serves without extraConfig" in valid["message"]


def test_status_from_a_stale_read_is_refused_not_written() -> None:
    api = MemoryApi()
    api.site_version = "2"  # the BlogSite changed after this pass read version 1
    with pytest.raises(ApiException, match="Conflict"):
        reconcile_site(api, site(), RenderSettings())
    assert api.status is None
    api.site_version = "1"
    reconcile_site(api, site(), RenderSettings())
    assert api.status is not None


def test_merge_patch_deletes_with_null_and_skips_equal_values() -> None:
    old = {"a": 1, "c": {"x": 1, "y": 2}, "l": [1]}
    assert merge_patch(old, {"a": 1, "c": {"x": 1, "y": 2}, "l": [1]}) == {}
    assert merge_patch(old, {"a": None}) == {"a": None}
    assert merge_patch(old, {"c": {"x": 1}}) == {"c": {"y": None}}
    assert merge_patch(old, {"c": {"x": 1, "y": 2, "z": None}}) == {}
    assert merge_patch(old, {"l": [1, 2]}) == {"l": [1, 2]}


def test_status_with_empty_rollout_memory_is_written_once() -> None:
    api = MemoryApi()
    reconcile_site(api, site(), RenderSettings())
    for _ in range(2):
        reconcile_site(api, site(status=api.status), RenderSettings())
    writes = len(api.writes)
    outcome = reconcile_site(api, site(status=api.status), RenderSettings())
    assert not outcome.status_written
    assert len(api.writes) == writes
    assert api.status is not None
    assert "failedVersion" not in api.status["components"]["daedalus"]


def test_a_field_removed_from_the_spec_is_removed_from_the_object() -> None:
    api = MemoryApi()
    annotated = {"service": {"annotations": {"lb.example.com/internal": "true"}}}
    reconcile_site(api, site(frontend=annotated), RenderSettings())
    service = api.objects[("Service", "ns", "blog-frontend")]
    assert service["metadata"]["annotations"]["lb.example.com/internal"] == "true"
    outcome = reconcile_site(api, site(status=api.status), RenderSettings())
    assert "Service blog-frontend" in outcome.applied
    service = api.objects[("Service", "ns", "blog-frontend")]
    assert "lb.example.com/internal" not in service["metadata"]["annotations"]


def test_a_revert_keeps_the_current_certificate() -> None:
    def frontend(certificate_hash: str, http: str) -> dict[str, Any]:
        spec = models.parse_spec(
            {
                "domains": ["example.com"],
                "daedalus": {"image": "d:1"},
                "frontend": {"http": http},
                "tls": {"acme": {"email": "ops@example.com"}},
            }
        )
        facts = SiteFacts(tls_certificate_hash=certificate_hash)
        objects = render_site(REF, spec, RenderSettings(), facts)
        return next(o for o in objects if o["metadata"]["name"] == "blog-frontend")

    good, bad = frontend("old", "serve"), frontend("new", "redirect")
    api = MemoryApi()
    replica_set = {
        "kind": "ReplicaSet",
        "metadata": {
            "name": "blog-frontend-1",
            "namespace": "ns",
            "labels": good["spec"]["template"]["metadata"]["labels"],
        },
        "spec": {"template": copy.deepcopy(good["spec"]["template"])},
    }
    api.objects[("ReplicaSet", "ns", "blog-frontend-1")] = replica_set
    memory = {"lastGoodVersion": version_of(good), "failedVersion": version_of(bad)}
    gate = gate_deployments(
        api,
        ref=REF,
        spec=models.parse_spec(
            {
                "domains": ["example.com"],
                "daedalus": {"image": "d:1"},
                "tls": {"acme": {"email": "ops@example.com"}},
            }
        ),
        objects=[bad],
        previous_status={"components": {"frontend": memory}},
        retry_token=None,
        now=datetime.datetime.now(tz=datetime.UTC),
    )
    (chosen,) = gate.objects
    template = chosen["spec"]["template"]
    assert version_of(chosen) == version_of(good)  # the last good version...
    assert (
        template["metadata"]["annotations"][TLS_HASH_ANNOTATION] == "new"
    )  # ...on today's certificate
    assert template["spec"] == good["spec"]["template"]["spec"]


REF = SiteRef("blog", "ns", "u1")


def test_an_event_the_api_refuses_does_not_fail_the_pass() -> None:
    class Throttled(MemoryApi):
        def post_event(
            self, site: dict[str, Any], event_type: str, reason: str, message: str
        ) -> None:
            self.events.append((event_type, reason, "refused"))
            raise ApiException(status=429, reason="Too Many Requests")

    api = Throttled()
    outcome = reconcile_site(api, site(), RenderSettings())  # no exception
    assert api.status is not None, "the status was written"
    assert len(api.events) == len(outcome.events) > 1, "every Event was tried"


class RollingApi(MemoryApi):
    """Deployments roll out as Kubernetes would for these tests: each applied
    template is kept as a ReplicaSet, and a daedalus image `d:bad` never
    becomes available, its pod restarting."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        live = super().apply(obj)
        if obj["kind"] != "Deployment":
            return live
        template = live["spec"]["template"]
        name = f"{obj['metadata']['name']}-{version_of(live)}"
        self.objects[("ReplicaSet", "ns", name)] = {
            "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "ns", "labels": template["metadata"]["labels"]},
            "spec": {"template": copy.deepcopy(template)},
        }
        if template["spec"]["containers"][0]["image"] == "d:bad":
            live["status"] = {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 1}
            crashing = {"name": "daedalus", "restartCount": 9, "ready": False}
            self.objects[("Pod", "ns", f"{name}-pod")] = {
                "kind": "Pod",
                "metadata": {"name": f"{name}-pod", "labels": template["metadata"]["labels"]},
                "status": {"containerStatuses": [crashing]},
            }
        return live


def test_a_revert_whose_status_write_fails_is_not_undone_by_the_next_pass() -> None:
    api = RollingApi()
    reconcile_site(api, site(), RenderSettings())
    reconcile_site(api, site(status=api.status), RenderSettings())
    good = version_of(api.objects[("Deployment", "ns", "blog-daedalus")])
    bad = site(daedalus={"image": "d:bad"}, status=api.status, rollout=ROLLING)
    reconcile_site(api, bad, RenderSettings())  # the bad version goes out
    assert version_of(api.objects[("Deployment", "ns", "blog-daedalus")]) != good
    status_before_revert = copy.deepcopy(api.status)

    api.site_version = "2"  # the revert's status write answers 409
    bad = site(daedalus={"image": "d:bad"}, status=status_before_revert, rollout=ROLLING)
    with pytest.raises(ApiException, match="Conflict"):
        reconcile_site(api, bad, RenderSettings())
    assert version_of(api.objects[("Deployment", "ns", "blog-daedalus")]) == good
    assert api.status == status_before_revert

    api.site_version = None
    outcome = reconcile_site(api, bad, RenderSettings())
    assert version_of(api.objects[("Deployment", "ns", "blog-daedalus")]) == good
    assert "Deployment blog-daedalus" not in outcome.applied
    assert api.status is not None
    assert api.status["components"]["daedalus"]["lastGoodVersion"] == good
    assert api.status["components"]["daedalus"]["failedVersion"] is not None
    rollout = next(c for c in api.status["conditions"] if c["type"] == "RolloutHealthy")
    assert rollout["reason"] == "RolledBack"
    # Its Event, never posted by the pass whose status write failed, comes now.
    assert [r for _, r, _ in api.events].count("RolledBack") == 1


def run_frontend_pods(api: MemoryApi, count: int) -> None:
    """Ready frontend pods started from the template as it is now."""
    template = api.objects[("Deployment", "ns", "blog-frontend")]["spec"]["template"]
    for i in range(count):
        api.objects[("Pod", "ns", f"frontend-{i}")] = {
            "kind": "Pod",
            "metadata": {
                "name": f"frontend-{i}",
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"],
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }


TODAY = datetime.datetime.now(tz=datetime.UTC)


def test_a_certificate_ready_pods_serve_without_a_new_name_is_not_ready() -> None:
    """A domain is added and its certificate written, while every Ready pod
    still serves the old one (the new pods wait for room on a node)."""
    api = MemoryApi()
    tls = {"secretName": "mine"}
    old_pem, old_key = ca_signed(["blog.example.com"], not_before=TODAY)
    api.objects[("Secret", "ns", "mine")] = {
        "kind": "Secret",
        "metadata": {"name": "mine", "namespace": "ns"},
        "data": render_tls_secret(REF, old_pem, old_key)["data"],
    }
    reconcile_site(api, site(tls=tls), RenderSettings())
    run_frontend_pods(api, 2)
    reconcile_site(api, site(tls=tls, status=api.status), RenderSettings())
    assert api.status is not None
    ready = next(c for c in api.status["conditions"] if c["type"] == "CertificateReady")
    assert ready["status"] == "True"

    names = ["blog.example.com", "new.example.com"]
    new_pem, new_key = ca_signed(names, not_before=TODAY)
    api.objects[("Secret", "ns", "mine")]["data"] = render_tls_secret(REF, new_pem, new_key)["data"]
    added = site(tls=tls, domains=names, status=api.status)
    reconcile_site(api, added, RenderSettings())
    ready = next(c for c in api.status["conditions"] if c["type"] == "CertificateReady")
    assert (ready["status"], ready["reason"]) == ("False", "NamesNotCovered"), ready
    assert "new.example.com" in ready["message"]
    assert api.status["certificate"]["dnsNames"] == ["blog.example.com"]

    for key in [k for k in api.objects if k[0] == "Pod"]:
        del api.objects[key]
    run_frontend_pods(api, 2)  # the new pods, now Ready
    reconcile_site(api, {**added, "status": api.status}, RenderSettings())
    ready = next(c for c in api.status["conditions"] if c["type"] == "CertificateReady")
    assert ready["status"] == "True"
    assert api.status["certificate"]["dnsNames"] == names


class TestLastIssuedCopy:
    """NAME-tls deleted or damaged: the certificate issued last is put back."""

    acme: ClassVar[dict[str, Any]] = {"acme": {"email": "ops@example.com"}}

    def issued_site(self, names: list[str] | None = None, days: int = 60) -> MemoryApi:
        api = MemoryApi()
        cert_pem, key_pem = ca_signed(
            names or ["blog.example.com"],
            not_before=TODAY - datetime.timedelta(days=max(0, 1 - days)),
            days=max(days, 1),
        )
        api.apply(
            render_tls_secret(
                REF, cert_pem, key_pem, placeholder=False, issued_by=("job-1", "https://ca/dir")
            )
        )
        reconcile_site(api, site(tls=self.acme), RenderSettings())
        reconcile_site(api, site(tls=self.acme, status=api.status), RenderSettings())
        return api

    def test_an_issued_certificate_is_copied_once(self) -> None:
        api = self.issued_site()
        copy = api.objects[("Secret", "ns", "blog-tls-last-issued")]
        assert copy["data"] == api.objects[("Secret", "ns", "blog-tls")]["data"]
        # Owned by the BlogSite, unlike an issued NAME-tls: it goes with it.
        assert [o["uid"] for o in copy["metadata"]["ownerReferences"]] == ["u1"]
        assert "ownerReferences" not in api.objects[("Secret", "ns", "blog-tls")]["metadata"]
        writes = len(api.writes)
        reconcile_site(api, site(tls=self.acme, status=api.status), RenderSettings())
        assert len(api.writes) == writes

    @pytest.mark.parametrize("damage", ["delete", "wrong key"])
    def test_a_deleted_or_damaged_secret_gets_the_issued_certificate_back(
        self, damage: str
    ) -> None:
        api = self.issued_site()
        issued = copy.deepcopy(api.objects[("Secret", "ns", "blog-tls")])
        frontend = api.objects[("Deployment", "ns", "blog-frontend")]
        if damage == "delete":
            del api.objects[("Secret", "ns", "blog-tls")]
        else:
            _, other_key = certs.self_signed_placeholder(["blog.example.com"])
            api.objects[("Secret", "ns", "blog-tls")]["data"]["tls.key"] = render_tls_secret(
                REF, b"", other_key
            )["data"]["tls.key"]
        reconcile_site(api, site(tls=self.acme, status=api.status), RenderSettings())
        assert api.objects[("Secret", "ns", "blog-tls")]["data"] == issued["data"]
        assert (
            api.objects[("Secret", "ns", "blog-tls")]["metadata"]["annotations"]
            == (issued["metadata"]["annotations"])
        )
        # The frontend keeps its pods: the same certificate, the same template.
        assert api.objects[("Deployment", "ns", "blog-frontend")] == frontend
        assert any(r == "CertificateRestored" for _, r, _ in api.events)
        assert api.status is not None
        assert api.status["certificate"]["placeholder"] is False

    def test_a_copy_of_another_blogsite_of_this_name_is_waited_for_not_written(self) -> None:
        api = self.issued_site()
        copy_key = ("Secret", "ns", "blog-tls-last-issued")
        api.objects[copy_key]["metadata"]["ownerReferences"][0]["uid"] = "u0"
        api.objects[copy_key]["data"] = {"tls.crt": "", "tls.key": ""}  # differs: would be written
        writes = len(api.writes)
        reconcile_site(api, site(tls=self.acme, status=api.status), RenderSettings())
        assert "apply Secret blog-tls-last-issued" not in api.writes[writes:]
        assert api.status is not None
        reconciled = next(c for c in api.status["conditions"] if c["type"] == "Reconciled")
        assert reconciled["reason"] == "WaitingForCleanup"

    @pytest.mark.parametrize(
        ("names", "days"), [(["blog.example.com", "other.example.com"], 60), (None, -1)]
    )
    def test_a_copy_for_other_names_or_expired_is_not_put_back(
        self, names: list[str] | None, days: int
    ) -> None:
        api = self.issued_site(names, days)
        del api.objects[("Secret", "ns", "blog-tls")]
        reconcile_site(api, site(tls=self.acme, status=api.status), RenderSettings())
        assert api.status is not None
        assert api.status["certificate"]["placeholder"] is True


class AddressingApi(MemoryApi):
    """Gives every Service it creates a new ClusterIP, as the API server does."""

    def __init__(self) -> None:
        super().__init__()
        self.next_address = 1

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        address = (self.objects.get(key) or {}).get("spec", {}).get("clusterIP")
        live = super().apply(obj)
        if obj["kind"] == "Service":
            if address is None:
                address, self.next_address = f"198.19.0.{self.next_address}", self.next_address + 1
            live["spec"]["clusterIP"] = address
        return live


def frontend_upstreams(api: MemoryApi) -> tuple[str | None, str | None]:
    """(the addresses the frontend Deployment records, those its pods restarted for)."""
    frontend = api.objects[("Deployment", "ns", "blog-frontend")]
    template = frontend["spec"]["template"]["metadata"].get("annotations") or {}
    return (
        (frontend["metadata"].get("annotations") or {}).get(UPSTREAMS_ANNOTATION),
        template.get(UPSTREAMS_RESTART_ANNOTATION),
    )


def test_a_service_created_again_with_a_new_address_rolls_the_frontend_as_the_same_version() -> (
    None
):
    api = AddressingApi()
    reconcile_site(api, site(), RenderSettings())
    version = version_of(api.objects[("Deployment", "ns", "blog-frontend")])
    # Known from its first pass: the first pods start after the Services exist.
    assert frontend_upstreams(api) == (
        "daedalus=198.19.0.1,canary=198.19.0.2,cert-refresh=198.19.0.3",
        None,
    )

    del api.objects[("Service", "ns", "blog-daedalus")]
    outcome = reconcile_site(api, site(status=api.status), RenderSettings())
    assert "Deployment blog-frontend" in outcome.applied
    new_address = api.objects[("Service", "ns", "blog-daedalus")]["spec"]["clusterIP"]
    assert new_address != "198.19.0.1"
    addresses = f"daedalus={new_address},canary=198.19.0.2,cert-refresh=198.19.0.3"
    assert frontend_upstreams(api) == (addresses, addresses)
    assert version_of(api.objects[("Deployment", "ns", "blog-frontend")]) == version
    assert reconcile_site(api, site(status=api.status), RenderSettings()).applied == []


def test_a_frontend_without_a_record_of_its_upstreams_is_not_rolled_for_one() -> None:
    # Applied by an operator from before the record (an upgrade).
    api = AddressingApi()
    reconcile_site(api, site(), RenderSettings())
    frontend = api.objects[("Deployment", "ns", "blog-frontend")]
    del frontend["metadata"]["annotations"][UPSTREAMS_ANNOTATION]
    # Nor any restart for them in its pod template.
    (frontend["spec"]["template"]["metadata"].get("annotations") or {}).pop(
        UPSTREAMS_RESTART_ANNOTATION, None
    )
    template = copy.deepcopy(frontend["spec"]["template"])
    reconcile_site(api, site(status=api.status), RenderSettings())
    assert api.objects[("Deployment", "ns", "blog-frontend")]["spec"]["template"] == template
    assert frontend_upstreams(api)[0] is not None


def test_an_upstream_that_is_not_the_sites_changes_nothing() -> None:
    api = AddressingApi()
    reconcile_site(api, site(), RenderSettings())
    before = frontend_upstreams(api)
    foreign = {"kind": "Service", "metadata": {"name": "blog-daedalus", "namespace": "ns"}}
    api.objects[("Service", "ns", "blog-daedalus")] = foreign
    reconcile_site(api, site(status=api.status), RenderSettings())
    assert frontend_upstreams(api) == before


def test_a_switch_from_a_users_secret_to_acme_keeps_serving_its_certificate() -> None:
    api = MemoryApi()
    cert_pem, key_pem = ca_signed(["blog.example.com"], not_before=TODAY)
    mine = {
        "kind": "Secret",
        "metadata": {"name": "mine", "namespace": "ns"},
        "data": render_tls_secret(REF, cert_pem, key_pem)["data"],
    }
    api.objects[("Secret", "ns", "mine")] = mine
    reconcile_site(api, site(tls={"secretName": "mine"}), RenderSettings())
    assert api.status is not None
    assert api.status["certificate"]["secretName"] == "mine"

    reconcile_site(
        api, site(tls={"acme": {"email": "ops@example.com"}}, status=api.status), RenderSettings()
    )
    copied = api.objects[("Secret", "ns", "blog-tls")]
    assert copied["data"] == mine["data"]
    assert copied["metadata"]["annotations"] == {"blog.daedalus.dev/copied-from": "mine"}
    assert any(r == "CertificateCopied" for _, r, _ in api.events)
    assert not any(r == "PlaceholderCertificate" for _, r, _ in api.events)


def test_a_certificate_of_a_test_ca_is_told_once_per_certificate() -> None:
    staging = {"issuer": "(STAGING) Counterfeit Cashew R10", "testIssuer": True}
    first = {"conditions": [], "certificate": {**staging, "serialNumber": "1"}}
    (event,) = _transition_events({"conditions": []}, first)
    assert (event.type, event.reason) == ("Warning", "TestCertificate")
    assert "(STAGING) Counterfeit Cashew R10" in event.message
    assert _transition_events(first, first) == []  # the same certificate again
    renewed = {"conditions": [], "certificate": {**staging, "serialNumber": "2"}}
    assert [e.reason for e in _transition_events(first, renewed)] == ["TestCertificate"]
    production = {"conditions": [], "certificate": {"issuer": "R12", "testIssuer": False}}
    assert _transition_events(renewed, production) == []


class GatewayApi(MemoryApi):
    """A cluster with the Gateway API and a Gateway whose implementation
    accepts every route (unless told to refuse one)."""

    GATEWAY: ClassVar[dict[str, Any]] = {
        "metadata": {"name": "shared", "namespace": "gateways"},
        "spec": {
            "listeners": [
                {"name": "web", "protocol": "HTTP", "port": 80},
                {"name": "tls", "protocol": "TLS", "port": 443, "tls": {"mode": "Passthrough"}},
            ]
        },
        "status": {"addresses": [{"type": "IPAddress", "value": "198.18.0.80"}]},
    }

    def __init__(self) -> None:
        super().__init__()
        self.served = {
            ("gateway.networking.k8s.io/v1", "httproutes"),
            ("gateway.networking.k8s.io/v1alpha2", "tlsroutes"),
        }
        self.objects[("Gateway", "gateways", "shared")] = copy.deepcopy(self.GATEWAY)
        self.refused: dict[str, tuple[str, str]] = {}  # kind: (reason, message)

    def judge_routes(self) -> None:
        """What the Gateway's controller does: a verdict per route."""
        for (kind, _, _), route in self.objects.items():
            if kind not in ("HTTPRoute", "TLSRoute"):
                continue
            reason, message = self.refused.get(kind, ("Accepted", ""))
            accepted = "True" if reason == "Accepted" else "False"
            route["status"] = {
                "parents": [
                    {
                        "parentRef": route["spec"]["parentRefs"][0],
                        "conditions": [
                            {
                                "type": "Accepted",
                                "status": accepted,
                                "reason": reason,
                                "message": message,
                                "observedGeneration": 1,
                            },
                            {
                                "type": "ResolvedRefs",
                                "status": "True",
                                "reason": "ResolvedRefs",
                                "message": "",
                                "observedGeneration": 1,
                            },
                        ],
                    }
                ]
            }


BEHIND_GATEWAY = {"gateway": {"name": "shared", "namespace": "gateways"}}
SECRET_TLS = {"secretName": "mine"}


class TestGateway:
    def conditions(self, api: MemoryApi) -> dict[str, dict[str, Any]]:
        assert api.status is not None
        return {c["type"]: c for c in api.status["conditions"]}

    def test_routes_are_created_and_the_gateway_verdict_makes_the_site_ready(self) -> None:
        api = GatewayApi()
        reconcile_site(api, site(frontend=BEHIND_GATEWAY), RenderSettings())
        assert ("HTTPRoute", "ns", "blog-frontend") in api.objects
        assert ("TLSRoute", "ns", "blog-frontend") not in api.objects  # no TLS
        assert api.objects[("Service", "ns", "blog-frontend")]["spec"]["type"] == "ClusterIP"
        pending = self.conditions(api)
        assert pending["GatewayAccepted"]["status"] == "Unknown"
        assert (pending["Ready"]["status"], pending["Ready"]["reason"]) == ("False", "RoutePending")

        api.judge_routes()
        outcome = reconcile_site(
            api, site(status=api.status, frontend=BEHIND_GATEWAY), RenderSettings()
        )
        accepted = self.conditions(api)
        assert accepted["GatewayAccepted"]["status"] == "True"
        assert accepted["Ready"]["status"] == "True"
        assert api.status is not None
        assert api.status["externalAddresses"] == ["198.18.0.80"]
        assert api.status["gateway"] == {
            "name": "shared",
            "namespace": "gateways",
            "routes": [
                {
                    "kind": "HTTPRoute",
                    "name": "blog-frontend",
                    "accepted": "True",
                    "resolvedRefs": "True",
                }
            ],
        }
        assert outcome.requeue_after is not None

    def test_a_refused_route_is_shown_with_the_gateways_words(self) -> None:
        api = GatewayApi()
        api.refused["TLSRoute"] = ("NotAllowedByListeners", "hostname not allowed")
        spec: dict[str, Any] = {"frontend": BEHIND_GATEWAY, "tls": SECRET_TLS}
        reconcile_site(api, site(**spec), RenderSettings())
        api.judge_routes()
        reconcile_site(api, site(status=api.status, **spec), RenderSettings())
        condition = self.conditions(api)["GatewayAccepted"]
        assert (condition["status"], condition["reason"]) == ("False", "NotAllowedByListeners")
        assert "hostname not allowed" in condition["message"]
        assert self.conditions(api)["Ready"]["reason"] == "NotAllowedByListeners"

    def test_without_the_gateway_api_nothing_is_applied_and_status_says_why(self) -> None:
        api = GatewayApi()
        api.served = set()
        reconcile_site(api, site(frontend=BEHIND_GATEWAY), RenderSettings())
        assert not [k for k in api.objects if k[0] in ("HTTPRoute", "TLSRoute")]
        assert self.conditions(api)["GatewayAccepted"]["reason"] == "GatewayAPINotInstalled"

    def test_leaving_the_gateway_deletes_the_routes_and_forgets_it(self) -> None:
        api = GatewayApi()
        spec: dict[str, Any] = {"frontend": BEHIND_GATEWAY, "tls": SECRET_TLS}
        reconcile_site(api, site(**spec), RenderSettings())
        assert ("TLSRoute", "ns", "blog-frontend") in api.objects
        own: dict[str, Any] = {"frontend": {"service": {"type": "NodePort"}}, "tls": SECRET_TLS}
        outcome = reconcile_site(api, site(status=api.status, **own), RenderSettings())
        assert sorted(d for d in outcome.deleted if "Route" in d) == [
            "HTTPRoute blog-frontend",
            "TLSRoute blog-frontend",
        ]
        assert api.objects[("Service", "ns", "blog-frontend")]["spec"]["type"] == "NodePort"
        assert api.status is not None
        assert "gateway" not in api.status
        assert "GatewayAccepted" not in self.conditions(api)

    def test_a_site_never_behind_a_gateway_never_asks_about_routes(self) -> None:
        class Asked(GatewayApi):
            def serves(self, api_version: str, plural: str) -> bool:
                raise AssertionError("asked")

        reconcile_site(Asked(), site(), RenderSettings())

    @pytest.mark.parametrize(
        "metadata",
        [
            {},
            # Labelled as this site's (copied from ours), owned by something else.
            {
                "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, SITE_LABEL: "blog"},
                "ownerReferences": [{"kind": "Application", "name": "blog", "uid": "argo"}],
            },
        ],
        ids=["unlabelled", "labelled-as-ours"],
    )
    def test_someone_elses_route_of_the_same_name_is_reported_never_written(
        self, metadata: dict[str, Any]
    ) -> None:
        api = GatewayApi()
        theirs = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "blog-frontend", "namespace": "ns", "uid": "theirs", **metadata},
            "spec": {"hostnames": ["other.example.com"]},
        }
        api.objects[("HTTPRoute", "ns", "blog-frontend")] = copy.deepcopy(theirs)
        outcome = reconcile_site(api, site(frontend=BEHIND_GATEWAY), RenderSettings())
        assert "HTTPRoute blog-frontend" in outcome.conflicts
        assert api.objects[("HTTPRoute", "ns", "blog-frontend")] == theirs
        assert self.conditions(api)["Reconciled"]["reason"] == "NameConflict"
        assert self.conditions(api)["GatewayAccepted"]["status"] == "Unknown"
        leaving = reconcile_site(api, site(status=api.status), RenderSettings())
        assert "HTTPRoute blog-frontend" not in " ".join(leaving.deleted)
        assert api.objects[("HTTPRoute", "ns", "blog-frontend")] == theirs
