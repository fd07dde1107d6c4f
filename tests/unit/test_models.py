"""The models accept what the API accepts and refuse the same mistakes."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from blogsite_operator import models

DIGEST = "sha256:" + "a" * 64


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "domains": ["blog.example.com"],
        "daedalus": {"image": "ghcr.io/example/daedalus:1.0"},
    }
    base.update(overrides)
    return base


class TestDefaults:
    def test_minimal_spec_fills_defaults(self) -> None:
        parsed = models.parse_spec(spec())
        assert parsed.primary_domain == "blog.example.com"
        assert parsed.redirect_domains == []
        assert parsed.daedalus.port == 8080
        assert parsed.daedalus.replicas == 2
        assert parsed.daedalus.health_check.path == "/"
        assert parsed.frontend.http == "serve"
        assert parsed.frontend.service_type == "LoadBalancer"
        assert parsed.tls is None
        assert parsed.rollout.auto_revert is True

    def test_models_are_frozen(self) -> None:
        parsed = models.parse_spec(spec())
        with pytest.raises(pydantic.ValidationError, match="Instance is frozen"):
            parsed.domains = ["other.example.com"]  # type: ignore[misc]


class TestImages:
    @pytest.mark.parametrize(
        "image",
        [
            "ghcr.io/example/daedalus:3f2c1a9",
            "daedalus:1",
            "registry.local:5000/team/daedalus:v1.2.3-rc.1",
            f"ghcr.io/example/daedalus@{DIGEST}",
            f"ghcr.io/example/daedalus:1.0@{DIGEST}",
            f"ghcr.io/example/daedalus:latest@{DIGEST}",
        ],
    )
    def test_pinned_images_are_accepted(self, image: str) -> None:
        assert models.parse_spec(spec(daedalus={"image": image})).daedalus.image == image

    @pytest.mark.parametrize(
        ("image", "message"),
        [
            ("ghcr.io/example/daedalus", "tag or a digest"),
            ("registry.local:5000/daedalus", "tag or a digest"),
            ("ghcr.io/example/daedalus:latest", "latest"),
            ("Ghcr.io/Example/Daedalus:1", "image reference"),
            ("daedalus:1 ; rm", "image reference"),
        ],
    )
    def test_unpinned_or_malformed_images_are_refused(self, image: str, message: str) -> None:
        with pytest.raises(pydantic.ValidationError, match=message):
            models.parse_spec(spec(daedalus={"image": image}))


class TestNames:
    @pytest.mark.parametrize(
        "name", ["Blog.example.com", "*.example.com", "blog.example.com.", "-a.com", "a_b.com", ""]
    )
    def test_bad_hostnames_are_refused(self, name: str) -> None:
        message = "at least 1 character" if not name else "must be a lowercase RFC 1123 hostname"
        with pytest.raises(pydantic.ValidationError, match=message):
            models.parse_spec(spec(domains=[name]))

    def test_a_name_in_both_lists_is_refused(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="more than once"):
            models.parse_spec(spec(domains=["a.com"], redirectDomains=["a.com"]))

    def test_at_most_100_names(self) -> None:
        domains = [f"d{i}.example.com" for i in range(60)]
        redirects = [f"r{i}.example.com" for i in range(41)]
        with pytest.raises(pydantic.ValidationError, match="at most 100"):
            models.parse_spec(spec(domains=domains, redirectDomains=redirects))
        assert (
            len(models.parse_spec(spec(domains=domains, redirectDomains=redirects[:40])).domains)
            == 60
        )

    def test_is_hostname(self) -> None:
        assert models.is_hostname("a.b-c.example")
        assert not models.is_hostname("a" * 64 + ".com")


class TestTls:
    def test_acme_or_secret_not_both(self) -> None:
        tls = {"acme": {"email": "a@b.co"}, "secretName": "mine"}
        with pytest.raises(pydantic.ValidationError, match="exactly one"):
            models.parse_spec(spec(tls=tls))

    def test_an_acme_email_is_optional(self) -> None:
        parsed = models.parse_spec(spec(tls={"acme": {}}))
        assert parsed.tls is not None
        assert parsed.tls.acme is not None
        assert parsed.tls.acme.email is None
        with pytest.raises(pydantic.ValidationError, match="email"):
            models.parse_spec(spec(tls={"acme": {"email": "not an address"}}))

    def test_redirect_policy_needs_tls(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="needs tls"):
            models.parse_spec(spec(frontend={"http": "redirect"}))
        parsed = models.parse_spec(spec(frontend={"http": "redirect"}, tls={"secretName": "mine"}))
        assert parsed.frontend.http == "redirect"

    @pytest.mark.parametrize(
        "path", ["/", "/..", "/a/../b", "/a/.", "//a", "/a/", "tmp", "/a b", "/a;b"]
    )
    def test_writable_paths_are_plain_absolute_directories(self, path: str) -> None:
        with pytest.raises(pydantic.ValidationError, match="absolute directory"):
            models.parse_spec(spec(daedalus={"image": "d:1", "writablePaths": [path]}))

    def test_writable_paths_may_be_hidden_directories(self) -> None:
        parsed = models.parse_spec(
            spec(daedalus={"image": "d:1", "writablePaths": ["/tmp", "/home/app/.cache"]})
        )
        assert parsed.daedalus.writable_paths == ["/tmp", "/home/app/.cache"]

    def test_a_read_write_once_pod_claim_needs_one_replica(self) -> None:
        volume = {"claimName": "c", "mountPath": "/data", "accessMode": "ReadWriteOncePod"}
        with pytest.raises(pydantic.ValidationError, match="replicas must be 1"):
            models.parse_spec(spec(daedalus={"image": "d:1", "persistentVolume": volume}))
        parsed = models.parse_spec(
            spec(daedalus={"image": "d:1", "replicas": 1, "persistentVolume": volume})
        )
        assert parsed.daedalus.persistent_volume is not None

    def test_a_persistent_volume_is_not_also_a_writable_path(self) -> None:
        daedalus = {
            "image": "d:1",
            "writablePaths": ["/data"],
            "persistentVolume": {"claimName": "c", "mountPath": "/data"},
        }
        with pytest.raises(pydantic.ValidationError, match="also in writablePaths"):
            models.parse_spec(spec(daedalus=daedalus))

    @pytest.mark.parametrize("claim", ["", "Blog", "a_b", "-a"])
    def test_a_persistent_volume_names_a_valid_claim(self, claim: str) -> None:
        volume = {"claimName": claim, "mountPath": "/data"}
        with pytest.raises(pydantic.ValidationError, match="claimName"):
            models.parse_spec(spec(daedalus={"image": "d:1", "persistentVolume": volume}))

    def test_the_blog_never_runs_as_root(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
            models.parse_spec(spec(daedalus={"image": "d:1", "runAsUser": 0}))

    def test_trusted_proxies_are_cidrs_and_proxy_protocol_needs_them(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="must be a CIDR"):
            models.parse_spec(spec(frontend={"trustedProxies": ["198.18.0.1"]}))
        with pytest.raises(pydantic.ValidationError, match="proxyProtocol needs trustedProxies"):
            models.parse_spec(spec(frontend={"proxyProtocol": True}))
        parsed = models.parse_spec(
            spec(frontend={"trustedProxies": ["198.18.0.0/15"], "proxyProtocol": True})
        )
        assert parsed.frontend.proxy_protocol

    def test_a_gateway_is_named_and_excludes_the_proxy_protocol(self) -> None:
        parsed = models.parse_spec(
            spec(frontend={"gateway": {"name": "shared", "namespace": "gateway-system"}})
        )
        assert parsed.frontend.gateway == models.GatewayAttachment(
            name="shared", namespace="gateway-system"
        )
        for bad in ({"name": "Shared"}, {"name": "shared", "namespace": "a.b"}, {}):
            with pytest.raises(pydantic.ValidationError, match="gateway"):
                models.parse_spec(spec(frontend={"gateway": bad}))
        assert parsed.frontend.service_type == "ClusterIP"
        moving = {"gateway": {"name": "shared"}, "service": {"type": "NodePort"}}
        assert models.parse_spec(spec(frontend=moving)).frontend.service_type == "NodePort"
        local = {"gateway": {"name": "shared"}, "service": {"externalTrafficPolicy": "Local"}}
        with pytest.raises(pydantic.ValidationError, match=r"need service\.type"):
            models.parse_spec(spec(frontend=local))
        many = [f"n{i}.example.com" for i in range(17)]
        with pytest.raises(pydantic.ValidationError, match="at most 16 names"):
            models.parse_spec({**spec(frontend={"gateway": {"name": "shared"}}), "domains": many})
        both = {"gateway": {"name": "shared"}, "trustedProxies": ["198.18.0.0/15"]}
        with pytest.raises(pydantic.ValidationError, match="cannot be used with gateway"):
            models.parse_spec(spec(frontend={**both, "proxyProtocol": True}))

    def test_external_traffic_policy_needs_an_external_service(self) -> None:
        service = {"type": "ClusterIP", "externalTrafficPolicy": "Local"}
        with pytest.raises(pydantic.ValidationError, match="externalTrafficPolicy applies only"):
            models.parse_spec(spec(frontend={"service": service}))

    def test_hsts_needs_tls(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="hsts needs tls"):
            models.parse_spec(spec(frontend={"hsts": {}}))
        parsed = models.parse_spec(spec(frontend={"hsts": {}}, tls={"secretName": "mine"}))
        assert parsed.frontend.hsts == models.Hsts(max_age_seconds=31536000)


class TestOtherFields:
    def test_unknown_fields_are_refused(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
            models.parse_spec(spec(daedalus={"image": "d:1", "imagePullPolicy": "Always"}))

    @pytest.mark.parametrize("port", [0, 65536, -1])
    def test_port_range(self, port: int) -> None:
        with pytest.raises(pydantic.ValidationError, match=r"daedalus.port\n.*(equal to 1 |65535)"):
            models.parse_spec(spec(daedalus={"image": "d:1", "port": port}))

    @pytest.mark.parametrize("path", ["healthz", "/a b", "/x;y", '/"q"', "/{x}"])
    def test_health_paths_cannot_smuggle_config(self, path: str) -> None:
        with pytest.raises(pydantic.ValidationError, match="absolute URL path"):
            models.parse_spec(spec(daedalus={"image": "d:1", "healthCheck": {"path": path}}))

    def test_env_needs_exactly_one_source(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="exactly one"):
            models.parse_spec(spec(daedalus={"image": "d:1", "env": [{"name": "A"}]}))

    @pytest.mark.parametrize("quantity", ["100m", "0.5", "1Gi", "128Mi", "2"])
    def test_quantities(self, quantity: str) -> None:
        resources = {"requests": {"cpu": quantity}}
        parsed = models.parse_spec(spec(daedalus={"image": "d:1", "resources": resources}))
        assert parsed.daedalus.resources is not None

    def test_bad_quantity(self) -> None:
        resources = {"limits": {"memory": "lots"}}
        with pytest.raises(pydantic.ValidationError, match="quantity"):
            models.parse_spec(spec(daedalus={"image": "d:1", "resources": resources}))


def test_cel_string_round_trips_quotes_and_backslashes() -> None:
    assert models.cel_string("a'b\"c\\.d") == '"a\'b\\"c\\\\.d"'


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"service": {"annotations": {"bad key": "v"}}}, "annotation keys must be valid"),
        ({"service": {"loadBalancerSourceRanges": ["198.18.0.1"]}}, "must be a CIDR"),
        (
            {"service": {"type": "ClusterIP", "loadBalancerSourceRanges": ["198.18.0.0/15"]}},
            "applies only to type LoadBalancer",
        ),
    ],
)
def test_the_frontend_service_rules_of_the_crd_hold_in_python_too(
    change: dict[str, Any], message: str
) -> None:
    raw = {"domains": ["a.example.com"], "daedalus": {"image": "d:1"}, "frontend": change}
    with pytest.raises(pydantic.ValidationError, match=message):
        models.parse_spec(raw)


def test_an_acme_server_must_be_named_or_https_in_python_too() -> None:
    raw: dict[str, Any] = {
        "domains": ["a.example.com"],
        "daedalus": {"image": "d:1"},
        "tls": {"acme": {"email": "ops@example.com", "server": "http://acme.example/dir"}},
    }
    with pytest.raises(pydantic.ValidationError, match="https:// ACME directory URL"):
        models.parse_spec(raw)
    raw["tls"]["acme"]["server"] = "https://acme.example/dir"
    assert models.parse_spec(raw).tls is not None


def test_a_string_where_a_number_belongs_is_refused_as_the_api_server_refuses_it() -> None:
    raw = {"domains": ["a.example.com"], "daedalus": {"image": "d:1", "port": "80"}}
    with pytest.raises(pydantic.ValidationError, match=r"daedalus\.port"):
        models.parse_spec(raw)
