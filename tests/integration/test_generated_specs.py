"""Generated BlogSites, friendly and hostile, through the real API server.

Every one the API server accepts (a dry-run create: schema, CEL rules and
defaults all apply) the operator's models accept too; its whole rendered
nginx configuration passes the real `nginx -t` (a user's extraConfig passes
or fails as this file says it should, and the operator's verdict agrees);
a whole pass runs without an exception and every object it writes is
accepted by the real API server (dry-run). Every spec the API server
refuses is refused naming the very field that was broken, and the models
refuse it too. At least 500 per run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from blogsite_operator import models
from blogsite_operator.nginx_check import NginxChecker
from blogsite_operator.reconcile import reconcile_site
from blogsite_operator.render import RenderSettings
from tests.integration.conftest import Kubectl
from tests.nginx_harness import nginx_binary
from tests.support import FIGURES
from tests.unit.test_reconcile import MemoryApi

EXAMPLES = 520
SEEN: Counter[str] = Counter()


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
GOOD_NAME = st.lists(LABEL, min_size=2, max_size=4).map(".".join)
HOSTILE_TEXT = [
    "",
    " ",
    "a b",
    "a;b",
    "a\nb",
    "a\r\nX-Injected: 1",
    "{}",
    "${host}",
    "$host",
    "a'b",
    'a"b',
    "a\\b",
    "#comment",
    "\x00",
    "ünïcödé",
    "default_server",
    "return 200",
    "x" * 300,
]
HOSTILE = st.sampled_from(HOSTILE_TEXT)
# extraConfig snippets nginx accepts inside a server block; every other
# snippet of this file it must refuse.
GOOD_SNIPPETS = [
    "add_header X-Blog 1;",
    "location = /ping { return 204; }",
    "gzip on;",
]
NGINX_ACCEPTS = {"", " ", "#comment", *GOOD_SNIPPETS}
ODD_NAME = st.sampled_from(
    [
        "xn--bcher-kva.example",  # punycode: a valid name
        "bücher.example",  # unicode: must be punycode
        "UPPER.example.com",
        "*.example.com",
        "-leading.example.com",
        "trailing-.example.com",
        "a..b.example",
        "under_score.example",
        "example.com.",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4),  # 255 characters
        ".".join(["b" * 63] * 3 + ["c" * 61]),  # 253 characters: valid
        "localhost",
        "127.0.0.1",
    ]
)
IMAGES = [
    "ghcr.io/example/daedalus:1.0.0",
    "registry.example.test:5000/blog/daedalus@sha256:" + "a" * 64,
    "daedalus:3f2c1a9",
]
COUNT = st.integers(min_value=1, max_value=5)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A BlogSite spec every rule should accept."""
    names = draw(st.lists(GOOD_NAME, min_size=1, max_size=4, unique=True))
    split = draw(st.integers(min_value=1, max_value=len(names)))
    tls = draw(
        st.sampled_from(
            [
                None,
                {"secretName": "mine"},
                {"acme": {"email": "ops@example.com"}},
                {"acme": {"email": "ops@example.com", "server": "https://acme.example.test/dir"}},
            ]
        )
    )
    spec: dict[str, Any] = {
        "domains": names[:split],
        "daedalus": {
            "image": draw(st.sampled_from(IMAGES)),
            "port": draw(st.integers(min_value=1, max_value=65535)),
            "replicas": draw(COUNT),
            "healthCheck": {"path": draw(st.sampled_from(["/", "/healthz", "/a/b?c=d"]))},
            "env": [{"name": "BLOG_TITLE", "value": draw(st.sampled_from(["x", "a\nb", "{}"]))}],
        },
        "frontend": {
            "replicas": draw(COUNT),
            "http": draw(st.sampled_from(["serve", "redirect"])) if tls else "serve",
            "service": {
                "type": draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"])),
                "annotations": {"example.com/lb": draw(st.sampled_from(["v", "", "{}", "a b"]))},
            },
        },
        "rollout": {
            "autoRevert": draw(st.booleans()),
            "maxRestarts": draw(COUNT),
            "readyTimeoutSeconds": draw(st.integers(min_value=10, max_value=3600)),
        },
    }
    snippet = draw(st.sampled_from([None, *GOOD_SNIPPETS]))
    if snippet is not None:
        spec["frontend"]["extraConfig"] = snippet
    if names[split:]:
        spec["redirectDomains"] = names[split:]
    if tls is not None:
        spec["tls"] = tls
    return spec


# Where a spec can be broken, and with what: (field path, hostile values).
# Some of these the API server accepts (a 253-character name, a newline in
# an env value); the test only asks that everything lands on one side.
MUTATIONS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("domains", st.one_of(ODD_NAME, HOSTILE).map(lambda n: [n])),
    ("domains", st.just([])),
    ("domains", st.just([f"d{i}.example.com" for i in range(101)])),
    ("redirectDomains", st.one_of(ODD_NAME, HOSTILE).map(lambda n: [n])),
    ("daedalus.image", st.one_of(HOSTILE, st.sampled_from(["d:latest", "d", "D:1", "d:1 ;x"]))),
    ("daedalus.port", st.sampled_from([0, -1, 65536, "80"])),
    ("daedalus.replicas", st.sampled_from([0, -1, 51])),
    ("daedalus.healthCheck.path", st.one_of(HOSTILE, st.sampled_from(["healthz", "/a b"]))),
    ("daedalus.env", HOSTILE.map(lambda n: [{"name": n, "value": "x"}])),
    (
        "daedalus.env",
        st.just([{"name": "A", "value": "x", "secretKeyRef": {"name": "s", "key": "k"}}]),
    ),
    (
        "daedalus.env",
        HOSTILE.map(lambda k: [{"name": "A", "secretKeyRef": {"name": "s", "key": k}}]),
    ),
    (
        "daedalus.persistentVolume",
        st.sampled_from(
            [
                {"claimName": "Bad_Name", "mountPath": "/data"},
                {"claimName": "c", "mountPath": "/a/../b"},
                {"claimName": "c", "mountPath": "/data", "accessMode": "ReadOnlyMany"},
            ]
        ),
    ),
    ("frontend.http", st.one_of(HOSTILE, st.just("both"))),
    ("frontend.replicas", st.sampled_from([0, 51])),
    ("frontend.service.type", st.one_of(HOSTILE, st.just("ExternalName"))),
    ("frontend.service.annotations", HOSTILE.map(lambda k: {k: "v"})),
    (
        "frontend.service.loadBalancerSourceRanges",
        st.sampled_from([["x"], ["198.18.0.1"], ["198.18.0.1/33"]]),
    ),
    ("frontend.extraConfig", st.one_of(HOSTILE, st.sampled_from(GOOD_SNIPPETS))),
    ("tls.secretName", st.one_of(HOSTILE, st.just("Bad_Name"))),
    ("tls.acme", HOSTILE.map(lambda e: {"email": e})),
    (
        "tls.acme",
        st.sampled_from(["http://acme.example.test/dir", "staging", "ftp://x"]).map(
            lambda u: {"email": "ops@example.com", "server": u}
        ),
    ),
    ("tls.acme", st.just({"email": "ops@example.com", "keyAlgorithm": "DSA"})),
    ("tls", st.just({"acme": {"email": "ops@example.com"}, "secretName": "mine"})),
    ("tls", st.just({})),
    ("rollout.readyTimeoutSeconds", st.sampled_from([0, 9, 3601])),
    ("rollout.maxRestarts", st.sampled_from([0, 101])),
]


@st.composite
def blogsite_specs(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """A valid spec, or (half of the time) one with one field made hostile;
    with the path of that field."""
    spec = draw(valid_specs())
    if draw(st.booleans()):
        return spec, None
    path, values = draw(st.sampled_from(MUTATIONS))
    *parents, leaf = path.split(".")
    target = spec
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = draw(values)
    return spec, path


@pytest.fixture(scope="module")
def custom_objects(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


class DryRunApi(MemoryApi):
    """Stores what a pass writes, as the unit tests' API does, and sends
    every object to the real API server as a dry-run create: a child the
    server would refuse (a label too long, a port out of range) fails here."""

    def __init__(self, api_client: client.ApiClient) -> None:
        super().__init__()
        core = client.CoreV1Api(api_client)
        rbac = client.RbacAuthorizationV1Api(api_client)
        self.creators: dict[str, Callable[..., object]] = {
            "ConfigMap": core.create_namespaced_config_map,
            "Secret": core.create_namespaced_secret,
            "Service": core.create_namespaced_service,
            "ServiceAccount": core.create_namespaced_service_account,
            "Deployment": client.AppsV1Api(api_client).create_namespaced_deployment,
            "PodDisruptionBudget": client.PolicyV1Api(
                api_client
            ).create_namespaced_pod_disruption_budget,
            "Role": rbac.create_namespaced_role,
            "RoleBinding": rbac.create_namespaced_role_binding,
        }

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        try:
            self.creators[obj["kind"]](obj["metadata"]["namespace"], obj, dry_run="All")
        except ApiException as error:
            raise AssertionError(f"the API server refused {obj['kind']}: {error.body}") from error
        SEEN["dry-run writes"] += 1
        return super().apply(obj)


@pytest.fixture(scope="module")
def api_client(kubectl: Kubectl) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    return api


@pytest.fixture(scope="module")
def nginx() -> NginxChecker:
    # extraConfig allowed, so hostile snippets reach the real nginx -t.
    checker = NginxChecker(nginx_binary(), allow_extra_config=True)
    assert checker.binary, "nginx is missing: hack/system-deps.sh installs it"
    return checker


def with_snippet(snippet: str) -> tuple[dict[str, Any], str]:
    """A valid spec but for its extraConfig, which the API accepts as text."""
    spec = {
        "domains": ["snippet.example.com"],
        "daedalus": {"image": IMAGES[0]},
        "frontend": {"extraConfig": snippet},
    }
    return spec, "frontend.extraConfig"


def test_generated_blogsites_are_served_or_refused_by_name(
    custom_objects: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    nginx: NginxChecker,
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(blogsite_specs())
    # Snippets nginx refuses, always: drawn at random they come a few times
    # in a run at best, and both verdicts must be seen.
    @example(with_snippet("a b"))
    @example(with_snippet("return 200"))
    @example(with_snippet("{}"))
    def served_or_refused_by_name(generated: tuple[dict[str, Any], str | None]) -> None:
        spec, broken = generated
        SEEN["generated"] += 1
        body = {
            "apiVersion": f"{models.GROUP}/{models.VERSION}",
            "kind": models.KIND,
            "metadata": {"name": f"g{SEEN['generated']}"},
            "spec": spec,
        }
        try:
            created = custom_objects.create_namespaced_custom_object(
                models.GROUP, models.VERSION, namespace, models.PLURAL, body, dry_run="All"
            )
        except ApiException as error:
            refusal = error
        else:
            assert isinstance(created, dict)
            accepted(created, nginx, DryRunApi(api_client))
            return
        assert refusal.status == 422, f"{refusal.status}: {refusal.body}"
        assert broken is not None, f"a valid spec was refused: {refusal.body}"
        refused_by_name(spec, broken, json.loads(refusal.body or "{}"))

    served_or_refused_by_name()
    FIGURES.append(
        f"generated BlogSites through the API server: {SEEN['generated']} "
        f"({SEEN['accepted']} accepted, nginx -t on each, {SEEN['dry-run writes']} children "
        f"dry-run; {SEEN['refused']} refused by field)"
    )
    assert SEEN["generated"] >= 500
    # Both sides are exercised, not only one.
    assert SEEN["accepted"] >= 50, SEEN
    assert SEEN["refused"] >= 50, SEEN
    # Both verdicts of nginx on a user's snippet, not only one.
    assert SEEN["extraConfig refused"] >= 3, SEEN
    assert SEEN["extraConfig accepted"] >= 5, SEEN


def refused_by_name(spec: dict[str, Any], broken: str, status: dict[str, Any]) -> None:
    SEEN["refused"] += 1
    causes = [
        cause
        for cause in (status.get("details") or {}).get("causes") or []
        # The API server's own note that CEL rules waited for the schema.
        if "some validation rules were not checked" not in cause.get("message", "")
    ]
    assert causes, status
    fields = [str(cause.get("field", "")) for cause in causes]
    # kubectl prints `field: message`; a cause without a field, or naming
    # only the section (spec.daedalus for a bad port), leaves a user guessing
    # which of thirty fields is wrong. The one broken is named.
    assert all(field.startswith("spec.") for field in fields), status
    assert any(names_field(field, "spec." + broken) for field in fields), (broken, status)
    with pytest.raises(pydantic.ValidationError):
        models.parse_spec(spec)  # what the API server refuses, the operator does too


def names_field(field: str, path: str) -> bool:
    """`spec.daedalus.port` names spec.daedalus.port; so do its items and
    members (`spec.domains[0]`, `spec.tls.acme.email`); `spec.daedalus` does not."""
    return field == path or field.startswith((path + "[", path + "."))


def accepted(site: dict[str, Any], nginx: NginxChecker, api: DryRunApi) -> None:
    SEEN["accepted"] += 1
    spec = models.parse_spec(site["spec"])  # as stored, the server's defaults included
    snippet = spec.frontend.extra_config
    # The whole configuration, through the real nginx -t: what the renderer
    # makes of every field, not only the user's snippet.
    verdict = nginx.check_rendered(spec)
    nginx_accepts = snippet is None or snippet in NGINX_ACCEPTS
    assert (verdict is None) == nginx_accepts, (snippet, verdict)
    if snippet is not None:
        SEEN["extraConfig accepted" if nginx_accepts else "extraConfig refused"] += 1
    site["metadata"] = {**site["metadata"], "uid": "uid-generated", "generation": 1}
    site["metadata"].setdefault("resourceVersion", "1")
    reconcile_site(api, site, RenderSettings(), nginx.check)
    assert api.status is not None
    conditions = {c["type"]: c for c in api.status["conditions"]}
    assert conditions["Reconciled"]["status"] == "True", conditions["Reconciled"]
    # A snippet nginx refuses is reported and held back, never an exception.
    reason = "Valid" if nginx_accepts else "NginxConfigInvalid"
    assert conditions["ConfigValid"]["reason"] == reason, conditions["ConfigValid"]
