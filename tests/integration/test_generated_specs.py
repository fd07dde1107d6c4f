"""Generated BlogSites, friendly and hostile, through the real API server.

Every one the API server accepts (a dry-run create: schema, CEL rules and
defaults all apply) the operator's models accept too, renders, passes the
real `nginx -t` the operator runs and goes through a whole pass without an
exception; every one it refuses is refused with a message naming the field,
and the models refuse it too. At least 500 per run.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from blogsite_operator import models
from blogsite_operator.nginx_check import NginxChecker
from blogsite_operator.reconcile import reconcile_site
from blogsite_operator.render import RenderSettings
from tests.integration.conftest import Kubectl
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
    ("frontend.http", st.one_of(HOSTILE, st.just("both"))),
    ("frontend.replicas", st.sampled_from([0, 51])),
    ("frontend.service.type", st.one_of(HOSTILE, st.just("ExternalName"))),
    ("frontend.service.annotations", HOSTILE.map(lambda k: {k: "v"})),
    (
        "frontend.service.loadBalancerSourceRanges",
        st.sampled_from([["x"], ["198.18.0.1"], ["198.18.0.1/33"]]),
    ),
    ("frontend.extraConfig", HOSTILE),
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
def custom_objects(kubectl: Kubectl) -> client.CustomObjectsApi:
    api_client = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="module")
def nginx() -> NginxChecker:
    # extraConfig allowed, so hostile snippets reach the real nginx -t.
    checker = NginxChecker(allow_extra_config=True)
    assert checker.binary, "nginx is missing: hack/system-deps.sh installs it"
    return checker


def test_generated_blogsites_are_served_or_refused_by_name(
    custom_objects: client.CustomObjectsApi, namespace: str, nginx: NginxChecker
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(blogsite_specs())
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
            accepted(created, nginx)
            return
        assert refusal.status == 422, f"{refusal.status}: {refusal.body}"
        assert broken is not None, f"a valid spec was refused: {refusal.body}"
        refused_by_name(spec, broken, json.loads(refusal.body or "{}"))

    served_or_refused_by_name()
    FIGURES.append(
        f"generated BlogSites through the API server: {SEEN['generated']} "
        f"({SEEN['accepted']} accepted and reconciled, {SEEN['refused']} refused by field)"
    )
    assert SEEN["generated"] >= 500
    # Both sides are exercised, not only one.
    assert SEEN["accepted"] >= 50, SEEN
    assert SEEN["refused"] >= 50, SEEN


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
    # kubectl prints `field: message`; a cause without a field leaves a user
    # guessing which of thirty fields is wrong. The one broken is named.
    assert all(field.startswith("spec.") for field in fields), status
    section = "spec." + broken.split(".", maxsplit=1)[0]
    assert any(field.startswith(section) for field in fields), (broken, status)
    with pytest.raises(pydantic.ValidationError):
        models.parse_spec(spec)  # what the API server refuses, the operator does too


def accepted(site: dict[str, Any], nginx: NginxChecker) -> None:
    SEEN["accepted"] += 1
    spec = models.parse_spec(site["spec"])  # as stored, the server's defaults included
    raw_nginx = spec.frontend.extra_config is not None
    assert raw_nginx or nginx.check(spec) is None
    site["metadata"] = {**site["metadata"], "uid": "uid-generated", "generation": 1}
    site["metadata"].setdefault("resourceVersion", "1")
    api = MemoryApi()
    reconcile_site(api, site, RenderSettings(), nginx.check)
    assert api.status is not None
    conditions = {c["type"]: c for c in api.status["conditions"]}
    assert conditions["Reconciled"]["status"] == "True", conditions["Reconciled"]
    # A snippet nginx refuses is reported and held back, never an exception.
    valid = ("Valid", "NginxConfigInvalid") if raw_nginx else ("Valid",)
    assert conditions["ConfigValid"]["reason"] in valid, conditions["ConfigValid"]
