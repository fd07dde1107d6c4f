"""The BlogSite API as pydantic models: the single source of the CRD schema.

`blogsite_operator.crd` turns these models into the CustomResourceDefinition
(OpenAPI schema plus CEL rules), so the API server enforces at admission what
the operator assumes here. Each constraint is written once, in `Field(...)` or
in a `cel(...)` rule next to the field it guards.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "blog.daedalus.dev"
VERSION = "v1alpha1"
KIND = "BlogSite"
PLURAL = "blogsites"
SINGULAR = "blogsite"
SHORT_NAMES = ("blog",)

MAX_NAMES = 100
# Child names append "-cert-refresh" (13 characters) and must stay DNS-1035
# labels of at most 63 characters, as Service names require.
MAX_SITE_NAME_LENGTH = 50
SITE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
SITE_NAME_MESSAGE = (
    f"a BlogSite name must be at most {MAX_SITE_NAME_LENGTH} characters of lowercase letters, "
    "digits and '-', starting with a letter (its objects are named <name>-cert-refresh etc.)"
)
MAX_HOSTNAME_LENGTH = 253

# RFC 1123 hostname, lowercase (what the API server and ACME CAs compare).
# RE2-compatible: the same pattern runs in CEL at admission and here.
HOSTNAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest].
IMAGE_PATTERN = (
    r"^([a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?(:[0-9]{1,5})?/)?"
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
IMAGE_PINNED_PATTERN = r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$"
IMAGE_LATEST_PATTERN = r":latest$"
# An absolute URL path for probes: no spaces, quotes, braces or semicolons,
# because it ends up in nginx.conf and in probe definitions.
HTTP_PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,=:@%/?-]*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# Kubernetes annotation key: optional DNS-subdomain prefix, then a name.
ANNOTATION_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"  # noqa: S105 - a name pattern


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL rule for `x-kubernetes-validations` (message names what is wrong)."""
    validation = {"rule": rule, "message": message}
    if field_path is not None:
        validation["fieldPath"] = field_path
    return validation


def schema_extra(*rules: dict[str, str], **extra: Any) -> dict[str, Any]:
    """JSON-schema additions for a model or field: CEL rules plus raw keywords."""
    result: dict[str, Any] = dict(extra)
    if rules:
        result["x-kubernetes-validations"] = list(rules)
    return result


class Model(BaseModel):
    """Frozen, camelCase on the wire, and strict about unknown fields."""

    model_config = ConfigDict(
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
        use_enum_values=True,
    )


def cel_string(value: str) -> str:
    """A CEL double-quoted string literal holding `value` exactly."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _must_match(pattern: str, message: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.search(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _must_not_match(pattern: str, message: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if compiled.search(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def text_field(pattern: str, message: str, *, max_length: int, min_length: int = 1) -> Any:
    """Length limits plus a CEL rule for a string checked by `pattern`.

    CEL rather than OpenAPI `pattern` so the API server's rejection says what
    is wrong in words instead of quoting a regular expression at the user.
    Pair it with `_must_match(pattern, message)` so Python checks the same.
    """
    return Field(
        min_length=min_length,
        max_length=max_length,
        json_schema_extra=schema_extra(cel(f"self.matches({cel_string(pattern)})", message)),
    )


HOSTNAME_MESSAGE = (
    "must be a lowercase RFC 1123 hostname such as blog.example.com "
    "(letters, digits, '-' and '.'; no wildcards, no trailing dot)"
)
IMAGE_MESSAGE = "must be an image reference such as ghcr.io/example/daedalus:1.2.3"
IMAGE_PINNED_MESSAGE = (
    "must carry a tag or a digest (e.g. :1.2.3 or @sha256:...), so every rollout is a "
    "deliberate version"
)
IMAGE_LATEST_MESSAGE = (
    "must not use the ':latest' tag: pin a version or digest so a revert has something "
    "to go back to"
)

Hostname = Annotated[
    str,
    text_field(HOSTNAME_PATTERN, HOSTNAME_MESSAGE, max_length=MAX_HOSTNAME_LENGTH),
    _must_match(HOSTNAME_PATTERN, HOSTNAME_MESSAGE),
]

ImageRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=512,
        json_schema_extra=schema_extra(
            cel(f"self.matches({cel_string(IMAGE_PATTERN)})", IMAGE_MESSAGE),
            cel(f"self.matches({cel_string(IMAGE_PINNED_PATTERN)})", IMAGE_PINNED_MESSAGE),
            cel(f"!self.matches({cel_string(IMAGE_LATEST_PATTERN)})", IMAGE_LATEST_MESSAGE),
        ),
    ),
    _must_match(IMAGE_PATTERN, IMAGE_MESSAGE),
    _must_match(IMAGE_PINNED_PATTERN, IMAGE_PINNED_MESSAGE),
    _must_not_match(IMAGE_LATEST_PATTERN, IMAGE_LATEST_MESSAGE),
]

HTTP_PATH_MESSAGE = (
    "must be an absolute URL path such as /healthz (no spaces, quotes, braces, semicolons "
    "or backslashes)"
)
HttpPath = Annotated[
    str,
    text_field(HTTP_PATH_PATTERN, HTTP_PATH_MESSAGE, max_length=1024),
    _must_match(HTTP_PATH_PATTERN, HTTP_PATH_MESSAGE),
]

# Same grammar as resource.Quantity; CEL's isQuantity is the authority at admission.
QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]i?|Ki)?$"
Quantity = Annotated[
    str,
    Field(
        max_length=64,
        json_schema_extra=schema_extra(
            cel("isQuantity(self)", "must be a Kubernetes quantity such as 100m, 0.5 or 256Mi"),
        ),
    ),
    _must_match(QUANTITY_PATTERN, "must be a Kubernetes quantity such as 100m, 0.5 or 256Mi"),
]

SECRET_NAME_MESSAGE = "must be a valid Secret name (lowercase letters, digits, '-' and '.')"  # noqa: S105
SecretName = Annotated[
    str,
    text_field(SECRET_NAME_PATTERN, SECRET_NAME_MESSAGE, max_length=253),
    _must_match(SECRET_NAME_PATTERN, SECRET_NAME_MESSAGE),
]
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105
SECRET_KEY_MESSAGE = "must be a Secret key (letters, digits, '-', '_' and '.')"  # noqa: S105
SecretKey = Annotated[
    str,
    text_field(SECRET_KEY_PATTERN, SECRET_KEY_MESSAGE, max_length=253),
    _must_match(SECRET_KEY_PATTERN, SECRET_KEY_MESSAGE),
]
ENV_NAME_MESSAGE = (
    "must be an environment variable name (letters, digits, '_', '-' and '.'; not starting "
    "with a digit)"
)
EnvName = Annotated[
    str,
    text_field(ENV_NAME_PATTERN, ENV_NAME_MESSAGE, max_length=256),
    _must_match(ENV_NAME_PATTERN, ENV_NAME_MESSAGE),
]
EMAIL_MESSAGE = "must be an email address such as ops@example.com"
Email = Annotated[
    str,
    text_field(EMAIL_PATTERN, EMAIL_MESSAGE, max_length=254),
    _must_match(EMAIL_PATTERN, EMAIL_MESSAGE),
]
# An absolute directory inside a container, with no '.' or '..' steps (a
# mount there would shadow a parent or escape nothing useful) and not '/'.
_SEGMENT = r"([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)"
CONTAINER_PATH_PATTERN = rf"^(/{_SEGMENT})+$"
CONTAINER_PATH_MESSAGE = (
    "must be an absolute directory such as /tmp or /var/cache/blog (letters, digits, "
    "'.', '_' and '-'; no '.' or '..' steps, not '/')"
)
ContainerPath = Annotated[
    str,
    text_field(CONTAINER_PATH_PATTERN, CONTAINER_PATH_MESSAGE, max_length=1024),
    _must_match(CONTAINER_PATH_PATTERN, CONTAINER_PATH_MESSAGE),
]
PROFILE_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
PROFILE_MESSAGE = "must be an ACME profile name (lowercase letters, digits, '.', '_' and '-')"
ProfileName = Annotated[
    str,
    text_field(PROFILE_PATTERN, PROFILE_MESSAGE, max_length=64),
    _must_match(PROFILE_PATTERN, PROFILE_MESSAGE),
]


class HttpPolicy(StrEnum):
    """What the frontend does with plain-HTTP requests for `domains`."""

    SERVE = "serve"
    REDIRECT = "redirect"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class ExternalTrafficPolicy(StrEnum):
    """Kubernetes' own: Local keeps the client's address (no SNAT) and sends
    traffic only to nodes running a frontend pod; Cluster spreads it."""

    CLUSTER = "Cluster"
    LOCAL = "Local"


class VolumeAccessMode(StrEnum):
    """A claim's access mode, as its PersistentVolumeClaim says it."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


class KeyAlgorithm(StrEnum):
    ECDSA_P256 = "ECDSAP256"
    RSA_2048 = "RSA2048"
    RSA_4096 = "RSA4096"


class HealthCheck(Model):
    """How Kubernetes decides a daedalus pod is alive and ready for traffic."""

    path: HttpPath = Field(default="/", description="HTTP path probed on the daedalus port.")
    initial_delay_seconds: int = Field(
        default=0, ge=0, le=600, description="Seconds to wait after start before probing."
    )
    period_seconds: int = Field(default=10, ge=1, le=300, description="Seconds between probes.")
    timeout_seconds: int = Field(
        default=2, ge=1, le=60, description="Seconds before a probe times out."
    )
    failure_threshold: int = Field(
        default=3, ge=1, le=30, description="Consecutive failures before a pod counts as unhealthy."
    )


class SecretKeyRef(Model):
    """A key of a Secret in the BlogSite's namespace."""

    name: SecretName = Field(description="Name of the Secret.")
    key: SecretKey = Field(description="Key inside the Secret.")


class EnvVar(Model):
    """An environment variable for daedalus: a literal value or a Secret key."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "has(self.value) != has(self.secretKeyRef)",
                "set exactly one of value or secretKeyRef",
            ),
        ),
    )

    name: EnvName = Field(description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    secret_key_ref: SecretKeyRef | None = Field(
        default=None, description="Take the value from a Secret key instead of a literal."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_key_ref is None):
            raise ValueError("set exactly one of value or secretKeyRef")
        return self


class ResourceList(Model):
    cpu: Quantity | None = Field(default=None, description="CPU, e.g. 100m.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 128Mi.")


class Resources(Model):
    """Compute requests and limits; omitted values get the operator's defaults."""

    requests: ResourceList | None = Field(default=None, description="Guaranteed resources.")
    limits: ResourceList | None = Field(default=None, description="Resource caps.")


class PersistentVolume(Model):
    """A PersistentVolumeClaim of the user's, mounted in every daedalus pod:
    files the blog keeps across pods and rollouts. The operator never creates
    or deletes it, so deleting the BlogSite keeps the files."""

    claim_name: SecretName = Field(
        description="The PersistentVolumeClaim, in the site's namespace."
    )
    mount_path: ContainerPath = Field(description="Where daedalus sees it, e.g. /var/lib/blog.")
    access_mode: VolumeAccessMode = Field(
        default=VolumeAccessMode.READ_WRITE_ONCE,
        description="The claim's access mode. ReadWriteMany: pods anywhere, rolling updates. "
        "ReadWriteOnce: every daedalus pod on one node (the node that mounts it), rolling "
        "updates. ReadWriteOncePod: one pod (replicas 1), and a rollout stops it before its "
        "replacement starts, so the blog is down for a moment.",
    )


class Daedalus(Model):
    """The blog binary: its image, how it listens and how it is health-checked."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "!has(self.persistentVolume) || self.persistentVolume.accessMode != "
                "'ReadWriteOncePod' || self.replicas == 1",
                "a ReadWriteOncePod claim admits one pod: replicas must be 1",
                field_path=".replicas",
            ),
            cel(
                "!has(self.persistentVolume) || !has(self.writablePaths) || "
                "!(self.persistentVolume.mountPath in self.writablePaths)",
                "the persistent volume's mountPath is also in writablePaths",
                field_path=".persistentVolume.mountPath",
            ),
        ),
    )

    image: ImageRef = Field(
        description="Container image with a tag or digest, e.g. ghcr.io/example/daedalus:3f2c1a9. "
        "':latest' is refused."
    )
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port daedalus listens on.")
    replicas: int = Field(default=2, ge=1, le=50, description="Number of daedalus pods.")
    health_check: HealthCheck = Field(
        default_factory=HealthCheck, description="Readiness and liveness probe settings."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=100,
        description="Environment variables for daedalus.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: Resources | None = Field(
        default=None, description="CPU and memory requests and limits for each daedalus pod."
    )
    image_pull_secrets: list[SecretName] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets of type kubernetes.io/dockerconfigjson in the site's namespace, "
        "for pulling a private image.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=64, description="Replaces the image's ENTRYPOINT."
    )
    args: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=256, description="Replaces the image's CMD."
    )
    writable_paths: list[ContainerPath] = Field(
        default_factory=list,
        max_length=16,
        description="Directories the blog writes to, such as /tmp or a cache: each an empty "
        "directory of its own (emptyDir), emptied when the pod is replaced. The rest of the "
        "root filesystem stays read-only.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    run_as_user: int | None = Field(
        default=None,
        ge=1,
        le=2147483647,
        description="The uid the blog runs as (never 0: the pod stays within the restricted "
        "Pod Security Standard); omitted: 65532.",
    )
    run_as_group: int | None = Field(
        default=None,
        ge=0,
        le=2147483647,
        description="The gid the blog runs as, which also owns its volumes; omitted: 65532.",
    )
    persistent_volume: PersistentVolume | None = Field(
        default=None,
        description="A claim of the user's for files the blog keeps (posts, uploads); "
        "without it every file written goes with its pod.",
    )

    @model_validator(mode="after")
    def _same_rules_as_the_crd(self) -> Daedalus:
        """The CEL rules above, checked in Python too."""
        volume = self.persistent_volume
        if volume is None:
            return self
        if volume.access_mode == VolumeAccessMode.READ_WRITE_ONCE_POD and self.replicas != 1:
            raise ValueError("a ReadWriteOncePod claim admits one pod: replicas must be 1")
        if volume.mount_path in self.writable_paths:
            raise ValueError("the persistent volume's mountPath is also in writablePaths")
        return self


class FrontendService(Model):
    """The Service in front of the nginx frontend (ports 80 and 443)."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "!has(self.loadBalancerSourceRanges) || size(self.loadBalancerSourceRanges) == 0 "
                "|| !has(self.type) || self.type == 'LoadBalancer'",
                "loadBalancerSourceRanges applies only to type LoadBalancer",
                field_path=".loadBalancerSourceRanges",
            ),
            cel(
                "!has(self.externalTrafficPolicy) || !has(self.type) || self.type != 'ClusterIP'",
                "externalTrafficPolicy applies only to types NodePort and LoadBalancer",
                field_path=".externalTrafficPolicy",
            ),
        ),
    )

    type: ServiceType | None = Field(
        default=None,
        description="Service type: ClusterIP, NodePort or LoadBalancer; omitted: "
        "LoadBalancer, or ClusterIP behind a gateway (frontend.gateway).",
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Annotations for the Service, e.g. for a cloud load balancer.",
        json_schema_extra=schema_extra(
            cel(
                "self.all(k, size(k) <= 253 && k.matches("
                + cel_string(ANNOTATION_KEY_PATTERN)
                + "))",
                "annotation keys must be valid Kubernetes annotation keys, "
                "e.g. example.com/setting",
            ),
        ),
    )
    load_balancer_source_ranges: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=64,
        description="Client CIDRs allowed to reach a LoadBalancer Service.",
        json_schema_extra=schema_extra(
            cel("self.all(r, isCIDR(r))", "every entry must be a CIDR such as 203.0.113.0/24"),
        ),
    )
    external_traffic_policy: ExternalTrafficPolicy | None = Field(
        default=None,
        description="Local keeps the client's address and serves from nodes with a frontend "
        "pod only; Cluster (Kubernetes' default) spreads traffic. NodePort and LoadBalancer.",
    )

    @model_validator(mode="after")
    def _same_rules_as_the_crd(self) -> FrontendService:
        """The CEL rules above, checked in Python too (the operator parses
        specs the API server stored before a CRD upgrade, and `render`)."""
        for key in self.annotations:
            if len(key) > 253 or not re.fullmatch(ANNOTATION_KEY_PATTERN, key):
                raise ValueError(
                    f"annotations: {key!r}: annotation keys must be valid Kubernetes "
                    "annotation keys, e.g. example.com/setting"
                )
        _check_cidrs("loadBalancerSourceRanges", self.load_balancer_source_ranges, "203.0.113.0/24")
        if self.load_balancer_source_ranges and self.type not in {None, ServiceType.LOAD_BALANCER}:
            raise ValueError("loadBalancerSourceRanges applies only to type LoadBalancer")
        if self.external_traffic_policy is not None and self.type == ServiceType.CLUSTER_IP:
            raise ValueError(
                "externalTrafficPolicy applies only to types NodePort and LoadBalancer"
            )
        return self


def _is_cidr(value: str) -> bool:
    """As CEL's isCIDR: an address and a prefix length (host bits may be set)."""
    address, slash, length = value.partition("/")
    if not slash or not length.isdigit():
        return False
    try:
        ipaddress.ip_network(f"{address}/{length}", strict=False)
    except ValueError:
        return False
    return True


def _check_cidrs(field: str, values: list[str], example: str) -> None:
    """The CRD's `self.all(r, isCIDR(r))`, in Python, with the same words."""
    for value in values:
        if not _is_cidr(value):
            raise ValueError(f"{field}: {value!r}: every entry must be a CIDR such as {example}")


NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
OBJECT_NAME_MESSAGE = "must be a lowercase DNS subdomain such as shared-gateway"
NAMESPACE_MESSAGE = "must be a namespace name: a lowercase DNS label such as gateway-system"

ObjectName = Annotated[
    str,
    text_field(HOSTNAME_PATTERN, OBJECT_NAME_MESSAGE, max_length=MAX_HOSTNAME_LENGTH),
    _must_match(HOSTNAME_PATTERN, OBJECT_NAME_MESSAGE),
]
NamespaceName = Annotated[
    str,
    text_field(NAMESPACE_PATTERN, NAMESPACE_MESSAGE, max_length=63),
    _must_match(NAMESPACE_PATTERN, NAMESPACE_MESSAGE),
]


class GatewayAttachment(Model):
    """A Gateway API Gateway the site shares with others.

    The operator creates an HTTPRoute (port 80: every domain and redirect
    domain) and a TLSRoute (TLS passthrough by SNI: nginx still terminates
    TLS with the site's own certificate), both pointing at the frontend
    Service, which becomes ClusterIP once both are accepted. It never edits
    the Gateway or anyone else's route.
    """

    name: ObjectName = Field(description="The Gateway's name.")
    namespace: NamespaceName | None = Field(
        default=None,
        description="The Gateway's namespace; omitted: the BlogSite's. Its listeners must "
        "allow routes from the BlogSite's namespace.",
    )
    http_listener: ObjectName | None = Field(
        default=None,
        description="The HTTP listener (sectionName) the HTTPRoute attaches to; omitted: "
        "every HTTP listener of the Gateway that accepts it.",
    )
    tls_listener: ObjectName | None = Field(
        default=None,
        description="The TLS listener in Passthrough mode (sectionName) the TLSRoute "
        "attaches to; omitted: every such listener that accepts it.",
    )


class Hsts(Model):
    """Strict-Transport-Security on the HTTPS answers for the site's names.

    Opt-in: a browser that saw it refuses plain HTTP for the name until
    maxAgeSeconds pass, whatever the site does later, so turning TLS off
    again strands those visitors. No `preload`: a submission to the browsers'
    preload lists is a decision to make by hand.
    """

    max_age_seconds: int = Field(
        default=31536000,
        ge=0,
        le=63072000,
        description="How long browsers remember to use HTTPS only (0 tells them to forget).",
    )
    include_sub_domains: bool = Field(
        default=False,
        description="Also every subdomain of each name: only when all of them serve HTTPS.",
    )


GATEWAY_SERVICE_MESSAGE = (
    "behind a gateway the frontend Service is ClusterIP unless service.type says otherwise: "
    "externalTrafficPolicy and loadBalancerSourceRanges need service.type"
)
GATEWAY_PROXY_PROTOCOL_MESSAGE = (
    "proxyProtocol cannot be used with gateway: the Gateway's HTTPRoute reaches port 80 as "
    "plain HTTP (the client's address comes in X-Forwarded-For, believed from trustedProxies)"
)


class Frontend(Model):
    """nginx: TLS termination, plain-HTTP policy, redirects, proxy to daedalus."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "!has(self.proxyProtocol) || !self.proxyProtocol "
                "|| (has(self.trustedProxies) && size(self.trustedProxies) > 0)",
                "proxyProtocol needs trustedProxies: the load balancer's addresses, from "
                "which the PROXY protocol's client address is believed",
                field_path=".proxyProtocol",
            ),
            cel(
                "!has(self.gateway) || !has(self.service) || has(self.service.type) "
                "|| (!has(self.service.externalTrafficPolicy) "
                "&& (!has(self.service.loadBalancerSourceRanges) "
                "|| size(self.service.loadBalancerSourceRanges) == 0))",
                GATEWAY_SERVICE_MESSAGE,
                field_path=".service",
            ),
            cel(
                "!has(self.gateway) || !has(self.proxyProtocol) || !self.proxyProtocol",
                GATEWAY_PROXY_PROTOCOL_MESSAGE,
                field_path=".proxyProtocol",
            ),
        ),
    )

    image: ImageRef | None = Field(
        default=None, description="nginx image; omitted: the operator's default nginx image."
    )
    replicas: int = Field(default=2, ge=1, le=50, description="Number of nginx pods.")
    http: HttpPolicy = Field(
        default=HttpPolicy.SERVE,
        description="Plain HTTP on port 80: 'serve' proxies it to daedalus, "
        "'redirect' sends a 301 to HTTPS (only when TLS is configured).",
    )
    service: FrontendService = Field(
        default_factory=FrontendService,
        description="The frontend Service (behind a gateway: ClusterIP, whatever its type).",
    )
    gateway: GatewayAttachment | None = Field(
        default=None,
        description="Share an existing Gateway API Gateway (HTTPRoute for port 80, TLSRoute "
        "passthrough for 443) instead of the site's own LoadBalancer or NodePort Service; "
        "omitted: the site's own Service, as `service` says.",
    )
    resources: Resources | None = Field(
        default=None, description="CPU and memory requests and limits for each nginx pod."
    )
    trusted_proxies: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=64,
        description="CIDRs of the load balancers and proxies in front of the frontend. Only "
        "from these are the client's address (X-Forwarded-For, or the PROXY protocol) and "
        "X-Forwarded-Proto believed; anyone else's are replaced by what nginx sees.",
        json_schema_extra=schema_extra(
            cel("self.all(r, isCIDR(r))", "every entry must be a CIDR such as 198.18.0.0/15"),
        ),
    )
    proxy_protocol: bool = Field(
        default=False,
        description="Ports 80 and 443 expect the PROXY protocol (v1 or v2) from the load "
        "balancer, which then gives the client's address; needs trustedProxies.",
    )
    hsts: Hsts | None = Field(
        default=None,
        description="Send Strict-Transport-Security on HTTPS (needs tls); omitted: not sent.",
    )
    extra_config: str | None = Field(
        default=None,
        max_length=16384,
        description="Opt-in raw nginx directives added to the server blocks of `domains` (both "
        "ports). Not interpreted by the operator: checked only by `nginx -t` before rollout. "
        "Leave it out unless you need it.",
    )

    @model_validator(mode="after")
    def _same_rules_as_the_crd(self) -> Frontend:
        _check_cidrs("trustedProxies", self.trusted_proxies, "198.18.0.0/15")
        if self.proxy_protocol and not self.trusted_proxies:
            raise ValueError("proxyProtocol needs trustedProxies")
        if self.proxy_protocol and self.gateway is not None:
            raise ValueError(GATEWAY_PROXY_PROTOCOL_MESSAGE)
        service = self.service
        if (
            self.gateway is not None
            and service.type is None
            and (service.external_traffic_policy or service.load_balancer_source_ranges)
        ):
            raise ValueError(GATEWAY_SERVICE_MESSAGE)
        return self

    @property
    def service_type(self) -> ServiceType:
        """The frontend Service's type: as written, else LoadBalancer, or
        ClusterIP behind a gateway. A site moving onto a gateway keeps the
        type it had until its owner changes it, after moving the names."""
        if self.service.type is not None:
            return ServiceType(self.service.type)
        return ServiceType.CLUSTER_IP if self.gateway is not None else ServiceType.LOAD_BALANCER


class ExternalAccountBinding(Model):
    """ACME External Account Binding, for CAs that require one."""

    key_id: str = Field(min_length=1, max_length=256, description="EAB key identifier from the CA.")
    hmac_key_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the base64url HMAC key from the CA."
    )


SERVER_RULE = (
    "self.server in ['letsencrypt', 'letsencrypt-staging'] || "
    "(isURL(self.server) && url(self.server).getScheme() == 'https')"
)
SERVER_MESSAGE = (
    "server must be 'letsencrypt', 'letsencrypt-staging' or an https:// ACME directory URL"
)


def _check_server(server: str) -> None:
    """SERVER_RULE, in Python."""
    named = server in ("letsencrypt", "letsencrypt-staging")
    if not named and urllib.parse.urlsplit(server).scheme != "https":
        raise ValueError(SERVER_MESSAGE)


class AcmeFallback(Model):
    """Another CA to order from when the first keeps failing."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(cel(SERVER_RULE, SERVER_MESSAGE, field_path=".server"))
    )

    server: str = Field(
        max_length=1024,
        description="ACME server: 'letsencrypt', 'letsencrypt-staging' or a directory URL "
        "(ZeroSSL: https://acme.zerossl.com/v2/DV90; Google Trust Services: "
        "https://dv.acme-v02.api.pki.goog/directory).",
    )
    profile: ProfileName | None = Field(
        default=None, description="ACME certificate profile to request from this CA, if any."
    )
    external_account_binding: ExternalAccountBinding | None = Field(
        default=None, description="This CA's External Account Binding, when it requires one."
    )
    ca_bundle_secret_ref: SecretKeyRef | None = Field(
        default=None, description="PEM CA bundle to trust for this ACME server."
    )

    @model_validator(mode="after")
    def _https_server(self) -> AcmeFallback:
        _check_server(self.server)
        return self


class Acme(Model):
    """Let the operator obtain and renew the certificate over ACME (HTTP-01)."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(SERVER_RULE, SERVER_MESSAGE, field_path=".server"),
            cel(
                "!has(self.fallback) || self.fallback.all(f, f.server != self.server && "
                "self.fallback.exists_one(g, g.server == f.server))",
                "each fallback server must differ from tls.acme.server and the other fallbacks",
                field_path=".fallback",
            ),
        ),
    )

    server: str = Field(
        default="letsencrypt-staging",
        max_length=1024,
        description="ACME server: 'letsencrypt', 'letsencrypt-staging' or a directory URL.",
    )
    email: Email | None = Field(
        default=None,
        description="Contact address for the ACME account. Optional: Let's Encrypt sends no "
        "expiry e-mail since June 2025 (the operator's own alerts do that job); a site that "
        "named one keeps its account.",
    )
    key_algorithm: KeyAlgorithm = Field(
        default=KeyAlgorithm.ECDSA_P256,
        description="Certificate key type: ECDSAP256 (default), RSA2048 or RSA4096.",
    )
    profile: ProfileName | None = Field(
        default=None, description="ACME certificate profile to request, if the CA offers profiles."
    )
    renew_before_seconds: int | None = Field(
        default=None,
        ge=3600,
        le=90 * 24 * 3600,
        description="Renew this long before expiry instead of following the CA's renewal info.",
    )
    external_account_binding: ExternalAccountBinding | None = Field(
        default=None, description="External Account Binding, when the CA requires one."
    )
    ca_bundle_secret_ref: SecretKeyRef | None = Field(
        default=None, description="PEM CA bundle to trust for a private ACME server."
    )
    fallback: list[AcmeFallback] | None = Field(
        default=None,
        max_length=3,
        description="Further CAs, in order: when the one before keeps failing for reasons "
        "that are not the site's (down, rate-limited) and the served certificate has less "
        "than a sixth of its lifetime left, the next is ordered from; the next renewal "
        "starts with `server` again. Each has its own account.",
    )

    @model_validator(mode="after")
    def _https_server(self) -> Acme:
        """The CEL rules above, checked in Python too."""
        _check_server(self.server)
        servers = [self.server, *(f.server for f in self.fallback or [])]
        if len(set(servers)) != len(servers):
            raise ValueError(
                "each fallback server must differ from tls.acme.server and the other fallbacks"
            )
        return self

    def servers(self) -> list[Acme]:
        """The CAs in order, each as the settings one order uses: `server`,
        then each fallback with the email, key and renewal settings shared."""
        first = self.model_copy(update={"fallback": None})
        return [first] + [
            first.model_copy(
                update={
                    "server": f.server,
                    "profile": f.profile,
                    "external_account_binding": f.external_account_binding,
                    "ca_bundle_secret_ref": f.ca_bundle_secret_ref,
                }
            )
            for f in self.fallback or []
        ]


class Tls(Model):
    """HTTPS settings: either ACME, or a certificate you provide in a Secret."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "has(self.acme) != has(self.secretName)",
                "set exactly one of tls.acme (the operator obtains the certificate) "
                "or tls.secretName (bring your own kubernetes.io/tls Secret)",
            ),
        ),
    )

    acme: Acme | None = Field(
        default=None, description="Obtain and renew the certificate over ACME."
    )
    secret_name: SecretName | None = Field(
        default=None,
        description="An existing kubernetes.io/tls Secret to serve instead of ACME.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Tls:
        if (self.acme is None) == (self.secret_name is None):
            raise ValueError("set exactly one of tls.acme or tls.secretName")
        return self


class RolloutStrategy(StrEnum):
    """How a new daedalus version reaches users."""

    CANARY = "Canary"
    ROLLING_UPDATE = "RollingUpdate"


class Canary(Model):
    """Canary steps and the analysis that judges each (README, "Rollouts")."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            # With list-type set (no repeats), sorted means increasing. Left
            # out, steps is not defaulted by the API server (the operator does).
            cel(
                "!has(self.steps) || self.steps.isSorted()",
                "canary.steps must increase",
                field_path=".steps",
            ),
            cel(
                "!has(self.stepSeconds) || !has(self.maxStepSeconds)"
                " || self.stepSeconds <= self.maxStepSeconds",
                "canary.stepSeconds must not exceed canary.maxStepSeconds",
                field_path=".stepSeconds",
            ),
        ),
    )

    steps: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default_factory=lambda: [5, 25, 50],
        min_length=1,
        max_length=10,
        description=(
            "The canary's share of requests (percent) at each step, increasing; after the last "
            "step it takes all requests for bakeSeconds, then becomes the stable version."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    step_seconds: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="A step passes no sooner than this, however clear the figures.",
    )
    max_step_seconds: int = Field(
        default=60,
        ge=1,
        le=86400,
        description=(
            "A step that has not seen enough requests to judge by then passes on the "
            "canary's health alone (status says so)."
        ),
    )
    bake_seconds: int = Field(
        default=120,
        ge=0,
        le=86400,
        description=(
            "After the last step the canary takes every request this long, the previous "
            "version kept running; a failure within it is reverted at once."
        ),
    )
    max_error_rate_increase: int = Field(
        default=5,
        ge=1,
        le=50,
        description=(
            "Percentage points of failed requests (5xx, refused or timed-out connections) "
            "above the stable version's rate that fail a step, once significant."
        ),
    )
    latency_ratio: int = Field(
        default=3,
        ge=2,
        le=100,
        description=(
            "A canary request is slow when it takes longer than this many times the stable "
            "version's 95th percentile (and than latencyFloorMilliseconds); slow requests are "
            "judged like failed ones."
        ),
    )
    latency_floor_milliseconds: int = Field(
        default=500,
        ge=1,
        le=600000,
        description="No request faster than this counts as slow.",
    )

    @model_validator(mode="after")
    def _steps_increase(self) -> Canary:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("canary.steps must increase")
        if self.step_seconds > self.max_step_seconds:
            raise ValueError("canary.stepSeconds must not exceed canary.maxStepSeconds")
        return self


class Rollout(Model):
    """How the operator judges a rollout and whether it reverts a failed one."""

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.CANARY,
        description=(
            "Canary (the default): a new daedalus version gets a share of real requests "
            "first, judged by their outcome (canary). RollingUpdate: every replica at once, "
            "judged by pod health alone."
        ),
    )
    canary: Canary = Field(default_factory=Canary, description="The canary's steps and analysis.")

    auto_revert: bool = Field(
        default=True, description="Put the last known-good version back when a rollout fails."
    )
    max_restarts: int = Field(
        default=3, ge=1, le=100, description="Container restarts in a new pod that mark it failed."
    )
    ready_timeout_seconds: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="Seconds a new pod may stay not Ready before the rollout counts as failed.",
    )


# A Gateway API route lists at most 16 hostnames; a site's routes list all its names.
MAX_ROUTE_HOSTNAMES = 16
GATEWAY_NAMES_MESSAGE = (
    f"behind a gateway, domains and redirectDomains together may hold at most "
    f"{MAX_ROUTE_HOSTNAMES} names (the hostnames of one Gateway API route)"
)


class BlogSiteSpec(Model):
    """A blog and its domains. The first domain is the primary one."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "!has(self.redirectDomains) || self.redirectDomains.all(d, !(d in self.domains))",
                "a name may appear in domains or in redirectDomains, not both",
                field_path=".redirectDomains",
            ),
            cel(
                f"size(self.domains) + (has(self.redirectDomains) ? size(self.redirectDomains) : 0)"
                f" <= {MAX_NAMES}",
                f"domains and redirectDomains together may hold at most {MAX_NAMES} names "
                "(the limit of one certificate)",
                field_path=".domains",
            ),
            cel(
                "!has(self.frontend) || !has(self.frontend.gateway) || size(self.domains) + "
                "(has(self.redirectDomains) ? size(self.redirectDomains) : 0) <= "
                f"{MAX_ROUTE_HOSTNAMES}",
                GATEWAY_NAMES_MESSAGE,
                field_path=".domains",
            ),
            cel(
                "!has(self.frontend) || !has(self.frontend.http) "
                "|| self.frontend.http != 'redirect'"
                " || has(self.tls)",
                "frontend.http 'redirect' needs tls: without a certificate there is no HTTPS "
                "to redirect to",
                field_path=".frontend.http",
            ),
            cel(
                "!has(self.frontend) || !has(self.frontend.hsts) || has(self.tls)",
                "frontend.hsts needs tls: Strict-Transport-Security is sent over HTTPS only",
                field_path=".frontend.hsts",
            ),
        ),
    )

    domains: list[Hostname] = Field(
        min_length=1,
        max_length=MAX_NAMES,
        description="Names the blog is served on; the first is the primary domain.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    redirect_domains: list[Hostname] = Field(
        default_factory=list,
        max_length=MAX_NAMES,
        description="Names that answer with a 301 to the primary domain (also on the certificate).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    daedalus: Daedalus = Field(description="The blog binary.")
    frontend: Frontend = Field(default_factory=Frontend, description="The nginx frontend.")
    tls: Tls | None = Field(
        default=None,
        description="HTTPS settings; omitted: the site is served over plain HTTP only.",
    )
    rollout: Rollout = Field(
        default_factory=Rollout, description="Rollout health and revert policy."
    )

    @model_validator(mode="after")
    def _names_are_consistent(self) -> BlogSiteSpec:
        all_names = [*self.domains, *self.redirect_domains]
        if len(all_names) > MAX_NAMES:
            raise ValueError(f"at most {MAX_NAMES} names in domains and redirectDomains together")
        duplicates = sorted({n for n in all_names if all_names.count(n) > 1})
        if duplicates:
            raise ValueError(f"names listed more than once: {', '.join(duplicates)}")
        if self.frontend.gateway is not None and len(all_names) > MAX_ROUTE_HOSTNAMES:
            raise ValueError(GATEWAY_NAMES_MESSAGE)
        if self.frontend.http == HttpPolicy.REDIRECT and self.tls is None:
            raise ValueError("frontend.http 'redirect' needs tls")
        if self.frontend.hsts is not None and self.tls is None:
            raise ValueError("frontend.hsts needs tls")
        return self

    @property
    def primary_domain(self) -> str:
        return self.domains[0]


class Condition(Model):
    """A status condition in the shape of metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed for."
    )


class ComponentStatus(Model):
    """What is running for one component (frontend, daedalus, cert-refresh)."""

    image: str | None = Field(default=None, description="Image currently rolled out.")
    replicas: int = Field(default=0, description="Desired replicas.")
    ready_replicas: int = Field(default=0, description="Replicas passing readiness.")
    available_replicas: int = Field(default=0, description="Replicas available to serve.")
    version: str | None = Field(
        default=None, description="Version (pod template hash) the Deployment runs."
    )
    last_good_version: str | None = Field(
        default=None, description="The last version that became fully available."
    )
    failed_version: str | None = Field(
        default=None, description="A version that failed and is not rolled out again."
    )
    failed_reason: str | None = Field(default=None, description="Why that version failed.")
    failed_at: str | None = Field(default=None, description="When it failed (RFC 3339).")


class CertificateFailure(Model):
    """The last failed ACME order or renewal-info check."""

    time: str | None = Field(default=None, description="When it failed (RFC 3339).")
    reason: str | None = Field(default=None, description="CamelCase reason.")
    message: str | None = Field(default=None, description="What went wrong.")
    names: list[str] = Field(
        default_factory=list,
        description="The names the failed order asked for: a change of names starts afresh.",
    )
    server: str | None = Field(default=None, description="The ACME server that failed.")


class RenewalInfoStatus(Model):
    """The CA's renewal information (ARI) for the served certificate."""

    serial_number: str | None = Field(default=None, description="Certificate asked about.")
    renewal_time: str | None = Field(
        default=None, description="Time the operator picked in the CA's suggested window."
    )
    next_check: str | None = Field(default=None, description="When to ask the CA again.")


class IssuedBy(Model):
    """Which ACME server issued the certificate the operator last obtained."""

    server: str | None = Field(default=None, description="ACME directory URL.")
    serial_number: str | None = Field(default=None, description="Serial number (hex).")
    replaced: str | None = Field(
        default=None,
        description="ARI identifier (RFC 9773) of the certificate the order replaced: a "
        "renewal that names it is exempt from the CA's rate limits.",
    )
    fallback: int | None = Field(
        default=None,
        description="Which CA of spec.tls.acme issued it: 0 for server, n for its n-th fallback.",
    )


class CertificateStatus(Model):
    """The certificate currently served, and (ACME) what is being done about it."""

    secret_name: str | None = Field(default=None, description="Secret holding it.")
    not_before: str | None = Field(default=None, description="Start of validity (RFC 3339).")
    not_after: str | None = Field(default=None, description="End of validity (RFC 3339).")
    renewal_time: str | None = Field(
        default=None, description="When renewal is planned (RFC 3339)."
    )
    issuer: str | None = Field(
        default=None, description="The CA that signed it (the certificate's issuer name)."
    )
    test_issuer: bool | None = Field(
        default=None,
        description="True for a staging or test CA browsers do not trust (Let's Encrypt "
        "staging, Pebble).",
    )
    dns_names: list[str] = Field(default_factory=list, description="Names on the certificate.")
    serial_number: str | None = Field(default=None, description="Serial number (hex).")
    placeholder: bool = Field(
        default=False, description="True while a self-signed placeholder is served."
    )
    sha256: str | None = Field(
        default=None,
        description="SHA-256 of the certificate (PEM) served: frontend pods name the one "
        "they loaded by it.",
    )
    failed_attempts: int | None = Field(
        default=None, description="ACME orders failed in a row (absent after a success)."
    )
    next_attempt: str | None = Field(
        default=None, description="Earliest next ACME order after a failure (RFC 3339)."
    )
    last_failure: CertificateFailure | None = Field(
        default=None, description="The last failure, until an order succeeds."
    )
    renewal_info: RenewalInfoStatus | None = Field(
        default=None, description="The CA's renewal information (ARI), when it offers it."
    )
    issued_by: IssuedBy | None = Field(
        default=None,
        description="The server of the last order; a certificate from a server "
        "spec.tls.acme no longer names is replaced (staging to production).",
    )
    ordering_from: str | None = Field(
        default=None,
        description="The fallback ACME server orders go to since spec.tls.acme.server kept "
        "failing, until one succeeds (absent: spec.tls.acme.server).",
    )
    renewal_request: str | None = Field(
        default=None,
        description="A digest (sha256) of the last value of the "
        "blog.daedalus.dev/renew-certificate annotation acted on.",
    )
    rate_limit_hold: str | None = Field(
        default=None,
        description="Why no order goes now, and until when: the CA's rate limits, as the "
        "account's ledger counts them, would refuse it.",
    )
    last_job: str | None = Field(
        default=None,
        description="The ACME job whose result this status records last: a result is taken "
        "in once, however often a pass is retried.",
    )


class CanaryStatus(Model):
    """Where a canary rollout of daedalus stands."""

    version: str = Field(description="The version under canary analysis.")
    phase: str = Field(description="Starting, Step, Bake or Promoting.")
    step: int = Field(default=0, description="The step under way (1-based).")
    steps: int = Field(default=0, description="How many steps there are.")
    weight: int = Field(default=0, description="The canary's share of requests, in percent.")
    paused: bool = Field(default=False, description="Held by kubectl blogsite pause.")
    since: str | None = Field(default=None, description="When the current share began.")
    health_only_steps: list[int] = Field(
        default_factory=list,
        description="Steps that saw too few requests to judge and passed on health alone.",
    )
    canary_requests: int | None = Field(
        default=None, description="Canary requests in the window being judged."
    )
    canary_failed: int | None = Field(
        default=None, description="Of those, answered 5xx or not at all."
    )
    stable_failed_rate: str | None = Field(
        default=None, description="The stable version's failed share the canary is held to."
    )
    failure: str | None = Field(
        default=None, description="Why the canary failed, when automatic revert is off."
    )
    message: str | None = Field(default=None, description="The step, in words.")


class RouteStatus(Model):
    """One route, as the Gateway's implementation judged it."""

    kind: str = Field(description="HTTPRoute or TLSRoute.")
    name: str = Field(description="The route's name (in the BlogSite's namespace).")
    accepted: str = Field(description="The Gateway's Accepted condition: True, False, Unknown.")
    resolved_refs: str = Field(description="The Gateway's ResolvedRefs condition.")
    message: str | None = Field(
        default=None, description="The Gateway's reason and message when not True."
    )


class GatewayStatus(Model):
    """The Gateway the site shares and how it took the site's routes."""

    name: str = Field(description="The Gateway's name.")
    namespace: str = Field(description="The Gateway's namespace.")
    routes: list[RouteStatus] = Field(
        default_factory=list, description="The site's routes and the Gateway's verdicts."
    )


class BlogSiteStatus(Model):
    """Written only by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the operator last acted on."
    )
    primary_domain: str | None = Field(default=None, description="The primary domain.")
    url: str | None = Field(default=None, description="The site's URL.")
    external_addresses: list[str] = Field(
        default_factory=list,
        description="Where the site is reached from outside: the Gateway's addresses behind "
        "a gateway, then the frontend Service's (load balancer ingress, external IPs).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready and the conditions that explain it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    components: dict[str, ComponentStatus] = Field(
        default_factory=dict, description="Per component: frontend, daedalus, cert-refresh."
    )
    certificate: CertificateStatus | None = Field(
        default=None, description="The certificate being served, when TLS is configured."
    )
    rollout_retry: str | None = Field(
        default=None,
        description="The last value of the blog.daedalus.dev/retry-rollout annotation acted on.",
    )
    rollout_command: str | None = Field(
        default=None,
        description="The last value of the blog.daedalus.dev/rollout-command annotation acted on.",
    )
    canary: CanaryStatus | None = Field(
        default=None, description="The canary rollout under way, if any."
    )
    gateway: GatewayStatus | None = Field(
        default=None,
        description="Behind a gateway: the Gateway and its verdict on each of the site's routes.",
    )


def parse_spec(spec: Any) -> BlogSiteSpec:
    """Validate a raw `spec` mapping (from the API or a file) into the model.

    Strictly, as JSON: a "80" where a number belongs is refused here as the
    API server refuses it, so `render -f` does not accept what it would not.
    """
    return BlogSiteSpec.model_validate_json(json.dumps(dict(spec or {})), strict=True)


def is_hostname(value: str) -> bool:
    return len(value) <= MAX_HOSTNAME_LENGTH and re.fullmatch(HOSTNAME_PATTERN, value) is not None
