"""Deployments and Services for the three components of a site."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from blogsite_operator import models

MANAGED_BY = "blogsite-operator"
FIELD_MANAGER = "blogsite-operator"

# Unprivileged ports inside the pods; the Services map 80/443 onto them so
# nginx runs as non-root without NET_BIND_SERVICE.
FRONTEND_HTTP_PORT = 8080
FRONTEND_HTTPS_PORT = 8443
FRONTEND_HEALTH_PORT = 8081
CHALLENGE_SERVER_PORT = 8089
NONROOT_UID = 65532


class Component(StrEnum):
    FRONTEND = "frontend"
    DAEDALUS = "daedalus"
    CERT_REFRESH = "cert-refresh"


COMPONENTS: tuple[Component, ...] = (Component.FRONTEND, Component.DAEDALUS, Component.CERT_REFRESH)


@dataclass(frozen=True)
class SiteRef:
    """Identity of the BlogSite being rendered (for names and owner references)."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide defaults that are not part of a BlogSite."""

    frontend_image: str = "docker.io/nginxinc/nginx-unprivileged:1.29.3-alpine"
    operator_image: str = "ghcr.io/daedalus-dev/blogsite-operator:0.1.0"


def child_name(site_name: str, component: Component) -> str:
    return f"{site_name}-{component.value}"


def selector_labels(site_name: str, component: Component) -> dict[str, str]:
    """Labels that select a component's pods; immutable once a Deployment exists."""
    return {
        "app.kubernetes.io/name": "blogsite",
        "app.kubernetes.io/instance": site_name,
        "app.kubernetes.io/component": component.value,
    }


def _labels(site_name: str, component: Component) -> dict[str, str]:
    return {**selector_labels(site_name, component), "app.kubernetes.io/managed-by": MANAGED_BY}


def _metadata(site: SiteRef, component: Component) -> dict[str, Any]:
    return {
        "name": child_name(site.name, component),
        "namespace": site.namespace,
        "labels": _labels(site.name, component),
        "ownerReferences": [
            {
                "apiVersion": f"{models.GROUP}/{models.VERSION}",
                "kind": models.KIND,
                "name": site.name,
                "uid": site.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


_DEFAULT_RESOURCES: dict[Component, dict[str, dict[str, str]]] = {
    Component.FRONTEND: {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    },
    Component.DAEDALUS: {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    },
    Component.CERT_REFRESH: {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    },
}


def _resources(component: Component, override: models.Resources | None) -> dict[str, Any]:
    """The component's defaults, with each value the user set replacing its default."""
    result = {kind: dict(values) for kind, values in _DEFAULT_RESOURCES[component].items()}
    if override is not None:
        for kind in ("requests", "limits"):
            values = getattr(override, kind)
            if values is not None:
                result.setdefault(kind, {}).update(values.model_dump(exclude_none=True))
    return result


def _container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _deployment(
    site: SiteRef,
    component: Component,
    *,
    replicas: int,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": NONROOT_UID},
        "containers": containers,
    }
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(site, component),
        "spec": {
            "replicas": replicas,
            # Enough history that the last known-good ReplicaSet is still there
            # when a revert needs it.
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": selector_labels(site.name, component)},
            # Never take a serving pod away before its replacement is Ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": _labels(site.name, component)},
                "spec": pod_spec,
            },
        },
    }


def _service(
    site: SiteRef,
    component: Component,
    *,
    ports: list[dict[str, Any]],
    service_type: str = "ClusterIP",
    annotations: dict[str, str] | None = None,
    source_ranges: list[str] | None = None,
) -> dict[str, Any]:
    metadata = _metadata(site, component)
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "type": service_type,
        "selector": selector_labels(site.name, component),
        "ports": ports,
    }
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def _http_probe(path: str, port: int | str, check: models.HealthCheck) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": check.initial_delay_seconds,
        "periodSeconds": check.period_seconds,
        "timeoutSeconds": check.timeout_seconds,
        "failureThreshold": check.failure_threshold,
    }


def _env(env: list[models.EnvVar]) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    for var in env:
        if var.secret_key_ref is not None:
            ref = var.secret_key_ref
            rendered.append(
                {
                    "name": var.name,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
        else:
            rendered.append({"name": var.name, "value": var.value})
    return rendered


def render_daedalus(site: SiteRef, spec: models.BlogSiteSpec) -> list[dict[str, Any]]:
    daedalus = spec.daedalus
    check = daedalus.health_check
    container: dict[str, Any] = {
        "name": "daedalus",
        "image": daedalus.image,
        "ports": [{"name": "http", "containerPort": daedalus.port, "protocol": "TCP"}],
        "readinessProbe": _http_probe(check.path, "http", check),
        "livenessProbe": _http_probe(check.path, "http", check),
        "resources": _resources(Component.DAEDALUS, daedalus.resources),
        "securityContext": _container_security_context(),
    }
    if daedalus.env:
        container["env"] = _env(daedalus.env)
    return [
        _deployment(site, Component.DAEDALUS, replicas=daedalus.replicas, containers=[container]),
        _service(
            site,
            Component.DAEDALUS,
            ports=[{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        ),
    ]


def render_frontend(
    site: SiteRef, spec: models.BlogSiteSpec, settings: RenderSettings
) -> list[dict[str, Any]]:
    frontend = spec.frontend
    health_check = models.HealthCheck(path="/healthz", period_seconds=5)
    container = {
        "name": "nginx",
        "image": frontend.image or settings.frontend_image,
        "ports": [
            {"name": "http", "containerPort": FRONTEND_HTTP_PORT, "protocol": "TCP"},
            {"name": "https", "containerPort": FRONTEND_HTTPS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": FRONTEND_HEALTH_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _http_probe("/healthz", "health", health_check),
        "livenessProbe": _http_probe("/healthz", "health", health_check),
        "resources": _resources(Component.FRONTEND, frontend.resources),
        "securityContext": _container_security_context(),
        # nginx writes its pid and temp files; the root filesystem stays read-only.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    service = frontend.service
    return [
        _deployment(
            site,
            Component.FRONTEND,
            replicas=frontend.replicas,
            containers=[container],
            volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        ),
        _service(
            site,
            Component.FRONTEND,
            ports=[
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"},
            ],
            service_type=str(service.type),
            annotations=service.annotations,
            source_ranges=service.load_balancer_source_ranges,
        ),
    ]


def render_cert_refresh(site: SiteRef, settings: RenderSettings) -> list[dict[str, Any]]:
    """One replica: ACME HTTP-01 answers need no high availability."""
    check = models.HealthCheck(path="/healthz", period_seconds=10)
    container = {
        "name": "challenge-server",
        "image": settings.operator_image,
        "args": ["challenge-server", "--port", str(CHALLENGE_SERVER_PORT)],
        "ports": [{"name": "http", "containerPort": CHALLENGE_SERVER_PORT, "protocol": "TCP"}],
        "readinessProbe": _http_probe("/healthz", "http", check),
        "livenessProbe": _http_probe("/healthz", "http", check),
        "resources": _resources(Component.CERT_REFRESH, None),
        "securityContext": _container_security_context(),
    }
    return [
        _deployment(site, Component.CERT_REFRESH, replicas=1, containers=[container]),
        _service(
            site,
            Component.CERT_REFRESH,
            ports=[{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        ),
    ]


def render_site(
    site: SiteRef, spec: models.BlogSiteSpec, settings: RenderSettings | None = None
) -> list[dict[str, Any]]:
    """Every object the operator keeps in place for this BlogSite, in apply order."""
    settings = settings or RenderSettings()
    return [
        *render_daedalus(site, spec),
        *render_cert_refresh(site, settings),
        *render_frontend(site, spec, settings),
    ]
