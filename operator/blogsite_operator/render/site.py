"""Deployments and Services for the three components of a site."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from blogsite_operator import models
from blogsite_operator.render.nginx import CANARY_SPLIT_FILE, NginxFacts, render_nginx_conf
from blogsite_operator.render.routes import render_routes

MANAGED_BY = "blogsite-operator"
FIELD_MANAGER = "blogsite-operator"

# Unprivileged ports inside the pods; the Services map 80/443 onto them so
# nginx runs as non-root without NET_BIND_SERVICE.
FRONTEND_HTTP_PORT = 8080
FRONTEND_HTTPS_PORT = 8443
FRONTEND_HEALTH_PORT = 8081
CHALLENGE_SERVER_PORT = 8089
# cert-refresh's traffic collector: the frontends' per-request syslog (UDP).
TRAFFIC_PORT = 5514
NONROOT_UID = 65532
NGINX_CONFIG_DIR = "/etc/blogsite/nginx"
TLS_DIR = "/etc/blogsite/tls"
# Labels ConfigMaps of nginx.conf with the site they belong to, for clean-up.
NGINX_CONFIG_LABEL = "blog.daedalus.dev/nginx-config-of"
PLACEHOLDER_ANNOTATION = "blog.daedalus.dev/placeholder"
# The ConfigMap of ACME HTTP-01 answers (token -> key authorization) that the
# cert-refresh pod serves; labelled with its site so a local challenge server
# can serve every site of a cluster (`challenge-server --selector`).
CHALLENGES_LABEL = "blog.daedalus.dev/acme-http01-of"
TLS_HASH_ANNOTATION = "blog.daedalus.dev/tls-certificate-sha256"
UPSTREAMS_ANNOTATION = "blog.daedalus.dev/upstream-addresses"
UPSTREAMS_RESTART_ANNOTATION = "blog.daedalus.dev/upstreams-restart"
# Facts of the frontend's pod template that roll it without making a new
# version: a revert keeps today's values (see template_version).
NOT_VERSIONED_ANNOTATIONS = (TLS_HASH_ANNOTATION, UPSTREAMS_RESTART_ANNOTATION)
ISSUED_BY_JOB_ANNOTATION = "blog.daedalus.dev/acme-job"
ISSUED_BY_SERVER_ANNOTATION = "blog.daedalus.dev/acme-server"
# On NAME-tls holding a certificate copied from the Secret the site served
# before it switched to ACME: served until the first order replaces it.
COPIED_FROM_ANNOTATION = "blog.daedalus.dev/copied-from"
COPIED_ANNOTATIONS = (ISSUED_BY_JOB_ANNOTATION, ISSUED_BY_SERVER_ANNOTATION)
# The version of a pod template: a hash of everything else in it. Carried by
# the Deployment's template, so its ReplicaSets and pods say which they run.
VERSION_LABEL = "blog.daedalus.dev/version"


class Component(StrEnum):
    FRONTEND = "frontend"
    DAEDALUS = "daedalus"
    CERT_REFRESH = "cert-refresh"
    # The daedalus version under canary analysis, beside the stable one: its
    # own Deployment and Service (<name>-canary: a name of 50 characters
    # still fits 63), so the frontend can split requests between the two.
    CANARY = "canary"


COMPONENTS: tuple[Component, ...] = (Component.FRONTEND, Component.DAEDALUS, Component.CERT_REFRESH)


@dataclass(frozen=True)
class SiteRef:
    """Identity of the BlogSite being rendered (for names and owner references)."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class SiteFacts:
    """What the renderers need to know beyond the spec, gathered by the caller."""

    # sha256 of the served tls.crt: a new certificate changes the pod template,
    # so nginx picks it up through an ordinary (health-gated) rollout.
    tls_certificate_hash: str | None = None
    # The ClusterIPs of the daedalus and cert-refresh Services ("daedalus=IP,
    # cert-refresh=IP") as last seen, on the frontend Deployment; and, in its
    # pod template, the addresses of their last change: nginx resolves
    # upstream names once, when it starts, so a Service created again with a
    # new address rolls the frontend (see upstream_facts in reconcile.py).
    upstream_addresses: str | None = None
    upstreams_restart: str | None = None


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide defaults that are not part of a BlogSite."""

    # The Dockerfile's `frontend` target: the nginx the operator image checks with.
    frontend_image: str = "ghcr.io/daedalus-dev/blogsite-frontend:0.1.0"
    operator_image: str = "ghcr.io/daedalus-dev/blogsite-operator:0.1.0"


def child_name(site_name: str, component: Component) -> str:
    return f"{site_name}-{component.value}"


def label_selector(labels: dict[str, str]) -> str:
    """The API's labelSelector for exactly these labels."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def selector_labels(site_name: str, component: Component) -> dict[str, str]:
    """Labels that select a component's pods; immutable once a Deployment exists."""
    return {
        "app.kubernetes.io/name": "blogsite",
        "app.kubernetes.io/instance": site_name,
        "app.kubernetes.io/component": component.value,
    }


# The site of an object no BlogSite owns (a kept certificate), in place of
# app.kubernetes.io/instance: GitOps tools claim objects by that label (Argo
# CD's label tracking takes it for an Application's name) and would prune a
# certificate that is in no repository, forcing a new order.
SITE_LABEL = "blog.daedalus.dev/site"


def site_of(labels: Mapping[str, str]) -> str | None:
    """The BlogSite an object of this operator belongs to, by its labels."""
    return labels.get("app.kubernetes.io/instance") or labels.get(SITE_LABEL) or None


def _unowned(metadata: dict[str, Any], site_name: str) -> None:
    """Metadata for an object kept when its BlogSite goes: no owner, and no
    label a GitOps tool takes for its own."""
    del metadata["ownerReferences"]
    labels = metadata["labels"]
    del labels["app.kubernetes.io/instance"]
    labels[SITE_LABEL] = site_name


def _labels(site_name: str, component: Component) -> dict[str, str]:
    return {**selector_labels(site_name, component), "app.kubernetes.io/managed-by": MANAGED_BY}


def child_metadata(site: SiteRef, component: Component) -> dict[str, Any]:
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


def is_owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Does `obj` name the BlogSite with this uid among its owners?"""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _labelled_for(obj: dict[str, Any], site_name: str) -> bool:
    """Carries the labels this operator puts on the children of `site_name`."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == MANAGED_BY and site_of(labels) == site_name


def is_orphan_of(obj: dict[str, Any], site_name: str) -> bool:
    """A child a BlogSite of this name left with no owner at all: an issued
    certificate (kept on purpose, so that the next BlogSite of the name takes
    it up instead of ordering again), or anything after `kubectl delete
    --cascade=orphan`. The next BlogSite of the name adopts it, as a
    ReplicaSet adopts the orphaned pods its selector matches."""
    return _labelled_for(obj, site_name) and not (obj.get("metadata") or {}).get("ownerReferences")


def is_leftover_of(obj: dict[str, Any], site: SiteRef) -> bool:
    """A child of an earlier BlogSite of this name (deleted, then applied
    again) that the garbage collector has not removed yet: not someone
    else's, only late. A namespace holds one BlogSite of a name, so an owner
    of that name with another uid is a deleted one."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return (
        _labelled_for(obj, site.name)
        and bool(refs)
        and all(
            ref.get("kind") == models.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{models.GROUP}/")
            and ref.get("name") == site.name
            and ref.get("uid") != site.uid
            for ref in refs
        )
    )


def may_write_tls_secret(obj: dict[str, Any], site: SiteRef) -> bool:
    return is_owned_by(obj, site.uid) or is_orphan_of(obj, site.name)


# Requests from what the pods use on the real node (BENCHMARKS.md, "A
# site's footprint": frontend 3.9 MiB, cert-refresh 11.9 MiB idle and at 50
# requests/s) with room to spare; limits well above, for bursts. daedalus is
# the user's blog: its request is a guess a BlogSite's resources replace.
_DEFAULT_RESOURCES: dict[Component, dict[str, dict[str, str]]] = {
    Component.FRONTEND: {
        "requests": {"cpu": "20m", "memory": "16Mi"},
        "limits": {"memory": "128Mi"},
    },
    Component.DAEDALUS: {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "512Mi"},
    },
    Component.CERT_REFRESH: {
        "requests": {"cpu": "5m", "memory": "24Mi"},
        "limits": {"memory": "64Mi"},
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


def _container_security_context(
    user: int = NONROOT_UID, group: int = NONROOT_UID
) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": group,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# A terminating pod keeps serving this long before it gets SIGTERM: kube-proxy
# and the load balancers stop sending it new connections only once they have
# seen it terminate. Zero failed requests during a rollout depend on it.
DRAIN_SECONDS = 5


def _drain_first() -> dict[str, Any]:
    return {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}}


def _deployment(
    site: SiteRef,
    component: Component,
    *,
    replicas: int,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]] | None = None,
    image_pull_secrets: list[str] | None = None,
    fs_group: int = NONROOT_UID,
    affinity: dict[str, Any] | None = None,
    recreate: bool = False,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": fs_group},
        "containers": containers,
    }
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in image_pull_secrets]
    if volumes:
        pod_spec["volumes"] = volumes
    if affinity:
        pod_spec["affinity"] = affinity
    # Never take a serving pod away before its replacement is Ready, unless
    # the two cannot run at once (a volume only one pod may mount).
    strategy: dict[str, Any] = (
        {"type": "Recreate"}
        if recreate
        else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(site, component),
        "spec": {
            "replicas": replicas,
            # Enough history that the last known-good ReplicaSet is still there
            # when a revert needs it.
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": selector_labels(site.name, component)},
            "strategy": strategy,
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
    external_traffic_policy: str | None = None,
) -> dict[str, Any]:
    metadata = child_metadata(site, component)
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "type": service_type,
        "selector": selector_labels(site.name, component),
        "ports": ports,
    }
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if external_traffic_policy is not None:
        spec["externalTrafficPolicy"] = external_traffic_policy
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


def _one_node(site: SiteRef, component: Component) -> dict[str, Any]:
    """Every pod of the component on the node of the others: a ReadWriteOnce
    volume is mounted by one node at a time, so a replacement pod elsewhere
    would wait for ever (the scheduler lets the first pod go anywhere)."""
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": selector_labels(site.name, component)},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }


def render_daedalus(site: SiteRef, spec: models.BlogSiteSpec) -> list[dict[str, Any]]:
    daedalus = spec.daedalus
    check = daedalus.health_check
    user = daedalus.run_as_user if daedalus.run_as_user is not None else NONROOT_UID
    group = daedalus.run_as_group if daedalus.run_as_group is not None else NONROOT_UID
    container: dict[str, Any] = {
        "name": "daedalus",
        "image": daedalus.image,
        "ports": [{"name": "http", "containerPort": daedalus.port, "protocol": "TCP"}],
        "readinessProbe": _http_probe(check.path, "http", check),
        "livenessProbe": _http_probe(check.path, "http", check),
        "lifecycle": _drain_first(),
        "resources": _resources(Component.DAEDALUS, daedalus.resources),
        "securityContext": _container_security_context(user, group),
    }
    if daedalus.command is not None:
        container["command"] = list(daedalus.command)
    if daedalus.args is not None:
        container["args"] = list(daedalus.args)
    if daedalus.env:
        container["env"] = _env(daedalus.env)
    # What the blog writes to: an emptyDir each, the root filesystem read-only.
    volumes = [
        {"name": f"writable-{i}", "emptyDir": {}} for i in range(len(daedalus.writable_paths))
    ]
    mounts = [
        {"name": f"writable-{i}", "mountPath": path}
        for i, path in enumerate(daedalus.writable_paths)
    ]
    kept = daedalus.persistent_volume
    if kept is not None:
        volumes.append(
            {"name": "persistent", "persistentVolumeClaim": {"claimName": kept.claim_name}}
        )
        mounts.append({"name": "persistent", "mountPath": kept.mount_path})
    if mounts:
        container["volumeMounts"] = mounts
    access = kept.access_mode if kept is not None else None
    return [
        _deployment(
            site,
            Component.DAEDALUS,
            replicas=daedalus.replicas,
            containers=[container],
            volumes=volumes,
            image_pull_secrets=list(daedalus.image_pull_secrets),
            fs_group=group,
            affinity=(
                _one_node(site, Component.DAEDALUS)
                if access == models.VolumeAccessMode.READ_WRITE_ONCE
                else None
            ),
            recreate=access == models.VolumeAccessMode.READ_WRITE_ONCE_POD,
        ),
        _service(
            site,
            Component.DAEDALUS,
            ports=[{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        ),
    ]


def canary_template(template: dict[str, Any]) -> dict[str, Any]:
    """A daedalus pod template as the canary Deployment runs it: the same
    version (label included), selected as the canary."""
    template = copy.deepcopy(template)
    template["metadata"]["labels"]["app.kubernetes.io/component"] = Component.CANARY.value
    return template


def render_canary(site: SiteRef, daedalus: dict[str, Any]) -> list[dict[str, Any]]:
    """The canary Deployment (the version of `daedalus`, a stamped daedalus
    Deployment; no replicas until a rollout gives it some) and its Service."""
    deployment = copy.deepcopy(daedalus)
    deployment["metadata"] = child_metadata(site, Component.CANARY)
    deployment["spec"]["replicas"] = 0
    deployment["spec"]["selector"] = {"matchLabels": selector_labels(site.name, Component.CANARY)}
    deployment["spec"]["template"] = canary_template(daedalus["spec"]["template"])
    return [deployment, _canary_service(site)]


def _canary_service(site: SiteRef) -> dict[str, Any]:
    return _service(
        site,
        Component.CANARY,
        ports=[{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    )


def tls_secret_name_for(site_name: str) -> str:
    """The Secret the operator owns in ACME mode."""
    return f"{site_name}-tls"


def tls_secret_name(site_name: str, spec: models.BlogSiteSpec) -> str | None:
    """The Secret nginx serves: the user's own, the operator's ACME one, or none."""
    if spec.tls is None:
        return None
    return spec.tls.secret_name or tls_secret_name_for(site_name)


def cluster_nginx_facts(site: SiteRef, spec: models.BlogSiteSpec) -> NginxFacts:
    """Upstreams are the Services of this site; TLS files come from the Secret volume."""
    tls = spec.tls is not None

    def service_address(component: Component) -> str:
        return f"{child_name(site.name, component)}.{site.namespace}.svc:80"

    return NginxFacts(
        daedalus_upstream=service_address(Component.DAEDALUS),
        challenge_upstream=service_address(Component.CERT_REFRESH),
        canary_upstream=service_address(Component.CANARY),
        traffic_log=(
            f"{child_name(site.name, Component.CERT_REFRESH)}.{site.namespace}.svc:{TRAFFIC_PORT}"
        ),
        tls_certificate=f"{TLS_DIR}/tls.crt" if tls else None,
        tls_certificate_key=f"{TLS_DIR}/tls.key" if tls else None,
        http_port=FRONTEND_HTTP_PORT,
        https_port=FRONTEND_HTTPS_PORT,
        health_port=FRONTEND_HEALTH_PORT,
    )


def render_nginx_config_map(site: SiteRef, spec: models.BlogSiteSpec) -> dict[str, Any]:
    """Immutable and named by its content: a new config is a new pod template."""
    conf = render_nginx_conf(spec, cluster_nginx_facts(site, spec))
    digest = hashlib.sha256(conf.encode()).hexdigest()[:10]
    metadata = child_metadata(site, Component.FRONTEND)
    metadata["name"] = f"{site.name}-nginx-{digest}"
    metadata["labels"] = {**metadata["labels"], NGINX_CONFIG_LABEL: site.name}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "immutable": True,
        "data": {"nginx.conf": conf},
    }


def last_issued_secret_name(site_name: str) -> str:
    """A copy of the last certificate an order issued: NAME-tls is put back
    from it when NAME-tls is deleted or damaged, instead of a placeholder."""
    return f"{site_name}-tls-last-issued"


def render_tls_copy(
    site: SiteRef,
    name: str,
    source: dict[str, Any],
    *,
    copied_from: str | None = None,
    owned: bool = False,
) -> dict[str, Any]:
    """The certificate of the Secret `source` under `name`, with what says
    where it came from; owned by the BlogSite, or (NAME-tls) by no one, as an
    issued NAME-tls."""
    metadata = child_metadata(site, Component.FRONTEND)
    metadata["name"] = name
    if not owned:
        _unowned(metadata, site.name)
    annotations = (source.get("metadata") or {}).get("annotations") or {}
    kept = {k: annotations[k] for k in COPIED_ANNOTATIONS if k in annotations}
    if copied_from is not None:
        kept = {COPIED_FROM_ANNOTATION: copied_from}
    if kept:
        metadata["annotations"] = kept
    data = source.get("data") or {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": data["tls.crt"], "tls.key": data["tls.key"]},
    }


def render_tls_secret(
    site: SiteRef,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    placeholder: bool = True,
    issued_by: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The operator's own TLS Secret (ACME mode): a placeholder, or the issued
    chain with the job that ordered it and its server (`issued_by`), so a
    result lost to a restart is found again here instead of ordered again."""
    metadata = child_metadata(site, Component.FRONTEND)
    metadata["name"] = tls_secret_name_for(site.name)
    if placeholder:
        metadata["annotations"] = {PLACEHOLDER_ANNOTATION: "true"}
    elif issued_by is not None:
        job, server = issued_by
        metadata["annotations"] = {
            ISSUED_BY_JOB_ANNOTATION: job,
            ISSUED_BY_SERVER_ANNOTATION: server,
        }
        # Kept when the BlogSite goes (see is_orphan_of).
        _unowned(metadata, site.name)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }


def _await_certificate(settings: RenderSettings) -> dict[str, Any]:
    """An init container that holds nginx back until the kubelet has put the
    certificate the template names in the volume (see await_certificate.py).
    It reads the hash from the template's annotation, so a new certificate
    changes nothing here and stays the same version (template_version)."""
    annotation = f"metadata.annotations['{TLS_HASH_ANNOTATION}']"
    return {
        "name": "await-certificate",
        "image": settings.operator_image,
        "args": ["await-certificate", "--file", f"{TLS_DIR}/tls.crt"],
        "env": [
            {
                "name": "BLOGSITE_TLS_CERTIFICATE_SHA256",
                "valueFrom": {"fieldRef": {"fieldPath": annotation}},
            }
        ],
        "resources": _resources(Component.CERT_REFRESH, None),
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}],
    }


def render_frontend(
    site: SiteRef, spec: models.BlogSiteSpec, settings: RenderSettings, facts: SiteFacts
) -> list[dict[str, Any]]:
    frontend = spec.frontend
    config_map = render_nginx_config_map(site, spec)
    health_check = models.HealthCheck(path="/healthz", period_seconds=5)
    mounts = [
        # nginx writes its pid and temp files; the root filesystem stays read-only.
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        {"name": "nginx-config", "mountPath": NGINX_CONFIG_DIR, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "nginx-config", "configMap": {"name": config_map["metadata"]["name"]}},
    ]
    secret = tls_secret_name(site.name, spec)
    if secret is not None:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        # Only the two files nginx needs, whatever else the Secret holds.
        items = [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
        volumes.append({"name": "tls", "secret": {"secretName": secret, "items": items}})
    init_containers: list[dict[str, Any]] = []
    if secret is not None:
        init_containers.append(_await_certificate(settings))
    container = {
        "name": "nginx",
        "image": frontend.image or settings.frontend_image,
        # Bypass the image's entrypoint scripts: they expect a writable /etc/nginx.
        # -e stderr: nginx opens its error log before reading the configuration.
        "command": [
            "nginx",
            "-e",
            "stderr",
            "-c",
            f"{NGINX_CONFIG_DIR}/nginx.conf",
            "-g",
            "daemon off;",
        ],
        "ports": [
            {"name": "http", "containerPort": FRONTEND_HTTP_PORT, "protocol": "TCP"},
            {"name": "https", "containerPort": FRONTEND_HTTPS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": FRONTEND_HEALTH_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _http_probe("/healthz", "health", health_check),
        "livenessProbe": _http_probe("/healthz", "health", health_check),
        # nginx's own images stop it with SIGQUIT (graceful) after the drain.
        "lifecycle": _drain_first(),
        "resources": _resources(Component.FRONTEND, frontend.resources),
        "securityContext": _container_security_context(),
        "volumeMounts": mounts,
    }
    service = frontend.service
    ports = [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    cert_refresh = f"{child_name(site.name, Component.CERT_REFRESH)}.{site.namespace}.svc:80"
    in_pod = cluster_nginx_facts(site, spec)
    weights = {
        "name": "canary-weights",
        # The operator's frontend image, whatever frontend.image says: it has the script.
        "image": settings.frontend_image,
        "command": [
            "canary-weights",
            cert_refresh,
            f"{in_pod.temp_dir}/{CANARY_SPLIT_FILE}",
            in_pod.pid_file,
            # Where nginx sends the canary's share: a share waits for it to answer.
            f"{child_name(site.name, Component.CANARY)}.{site.namespace}.svc:80",
        ],
        # A bash loop, idle in a long poll: a few MiB.
        "resources": {
            "requests": {"cpu": "1m", "memory": "4Mi"},
            "limits": {"memory": "16Mi"},
        },
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    if spec.tls is not None:
        ports.append({"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"})
    deployment = _deployment(
        site,
        Component.FRONTEND,
        replicas=frontend.replicas,
        containers=[container, weights],
        volumes=volumes,
    )
    # The follower signals nginx (same user) to reload a new share.
    deployment["spec"]["template"]["spec"]["shareProcessNamespace"] = True
    if init_containers:
        deployment["spec"]["template"]["spec"]["initContainers"] = init_containers
    not_versioned = {
        TLS_HASH_ANNOTATION: facts.tls_certificate_hash,
        UPSTREAMS_RESTART_ANNOTATION: facts.upstreams_restart,
    }
    if any(not_versioned.values()):
        deployment["spec"]["template"]["metadata"]["annotations"] = {
            k: v for k, v in not_versioned.items() if v
        }
    if facts.upstream_addresses is not None:
        deployment["metadata"]["annotations"] = {UPSTREAMS_ANNOTATION: facts.upstream_addresses}
    return [
        config_map,
        deployment,
        _service(
            site,
            Component.FRONTEND,
            ports=ports,
            service_type=str(spec.frontend.service_type),
            annotations=service.annotations,
            source_ranges=service.load_balancer_source_ranges,
            external_traffic_policy=(
                str(service.external_traffic_policy) if service.external_traffic_policy else None
            ),
        ),
    ]


def nginx_config_of(deployment: dict[str, Any] | None) -> str | None:
    """The name of the nginx ConfigMap a frontend Deployment's pods mount."""
    volumes = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    for volume in volumes.get("volumes") or []:
        if volume.get("name") == "nginx-config" and "configMap" in volume:
            return str(volume["configMap"]["name"])
    return None


def with_nginx_config(deployment: dict[str, Any], config_map_name: str) -> dict[str, Any]:
    """The frontend Deployment with another nginx ConfigMap mounted (and its
    version stamped again): what runs when a new configuration is refused."""
    changed = copy.deepcopy(deployment)
    for volume in changed["spec"]["template"]["spec"]["volumes"]:
        if volume["name"] == "nginx-config":
            volume["configMap"]["name"] = config_map_name
    return stamp_version(changed)


def render_disruption_budget(
    site: SiteRef, component: Component, replicas: int
) -> list[dict[str, Any]]:
    """With several replicas, voluntary evictions take at most one at a time."""
    if replicas < 2:
        return []
    return [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": child_metadata(site, component),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(site.name, component)},
            },
        }
    ]


def challenges_config_map_name(site_name: str) -> str:
    return f"{site_name}-acme-http01"


ACME_ACCOUNT_LABEL = "blog.daedalus.dev/acme-account"


def acme_account_secret_name(server: str, email: str | None, eab_key_id: str = "") -> str:
    """One account per CA, contact and EAB key id in a namespace, shared by its sites
    (no contact: the same name as an empty one, so names from before stay)."""
    digest = hashlib.sha256(f"{server}\n{email or ''}\n{eab_key_id}".encode()).hexdigest()[:12]
    return f"blogsite-acme-account-{digest}"


def render_acme_account_secret(
    namespace: str, name: str, server: str, email: str | None, key_pem: bytes
) -> dict[str, Any]:
    """An ACME account key, generated once. Owned by no one site: it outlives
    them, as the account at the CA does."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, ACME_ACCOUNT_LABEL: "true"},
            "annotations": {
                "blog.daedalus.dev/acme-server": server,
                **({"blog.daedalus.dev/acme-email": email} if email else {}),
            },
        },
        "type": "Opaque",
        "data": {"key.pem": base64.b64encode(key_pem).decode()},
    }


def render_challenges_config_map(site: SiteRef) -> dict[str, Any]:
    """Where the operator publishes HTTP-01 answers; created empty, filled per order.

    The operator patches only `data`, so applying this again never drops
    answers in flight (an empty desired `data` is a subset of any).
    """
    metadata = child_metadata(site, Component.CERT_REFRESH)
    metadata["name"] = challenges_config_map_name(site.name)
    metadata["labels"] = {**metadata["labels"], CHALLENGES_LABEL: site.name}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}


def render_cert_refresh_access(site: SiteRef) -> list[dict[str, Any]]:
    """The cert-refresh pod's identity: it may read its one ConfigMap and nothing else."""
    name = child_name(site.name, Component.CERT_REFRESH)
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(site, Component.CERT_REFRESH),
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_metadata(site, Component.CERT_REFRESH),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                # list and watch are allowed by name only with a metadata.name
                # field selector, which is how the challenge server asks.
                "resourceNames": [challenges_config_map_name(site.name)],
                "verbs": ["list", "watch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_metadata(site, Component.CERT_REFRESH),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": site.namespace}],
    }
    return [account, role, binding]


def render_cert_refresh(site: SiteRef, settings: RenderSettings) -> list[dict[str, Any]]:
    """One replica: ACME HTTP-01 answers need no high availability."""
    check = models.HealthCheck(path="/healthz", period_seconds=10)
    container = {
        "name": "challenge-server",
        "image": settings.operator_image,
        "args": [
            "challenge-server",
            "--port",
            str(CHALLENGE_SERVER_PORT),
            "--namespace",
            site.namespace,
            "--configmap",
            challenges_config_map_name(site.name),
            "--traffic-port",
            str(TRAFFIC_PORT),
        ],
        "ports": [
            {"name": "http", "containerPort": CHALLENGE_SERVER_PORT, "protocol": "TCP"},
            {"name": "traffic", "containerPort": TRAFFIC_PORT, "protocol": "UDP"},
        ],
        "readinessProbe": _http_probe("/healthz", "http", check),
        "livenessProbe": _http_probe("/healthz", "http", check),
        "resources": _resources(Component.CERT_REFRESH, None),
        "securityContext": _container_security_context(),
    }
    deployment = _deployment(site, Component.CERT_REFRESH, replicas=1, containers=[container])
    pod_spec = deployment["spec"]["template"]["spec"]
    # The only pod that talks to the API server: it watches its answers.
    pod_spec["serviceAccountName"] = child_name(site.name, Component.CERT_REFRESH)
    pod_spec["automountServiceAccountToken"] = True
    return [
        *render_cert_refresh_access(site),
        render_challenges_config_map(site),
        deployment,
        _service(
            site,
            Component.CERT_REFRESH,
            ports=[
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "traffic",
                    "port": TRAFFIC_PORT,
                    "targetPort": "traffic",
                    "protocol": "UDP",
                },
            ],
        ),
    ]


def template_version(template: dict[str, Any]) -> str:
    """A short, stable hash of a pod template, ignoring its own version label
    and the certificate's hash.

    A renewed certificate rolls the frontend (new pods load the new Secret),
    but it is the same version: a renewal whose pods fail is not reverted to
    the old certificate, and a revert of a bad version keeps the current one.
    """
    metadata = dict(template.get("metadata") or {})
    labels = dict(metadata.get("labels") or {})
    labels.pop(VERSION_LABEL, None)
    metadata["labels"] = labels
    annotations = dict(metadata.pop("annotations", None) or {})
    for not_versioned in NOT_VERSIONED_ANNOTATIONS:
        annotations.pop(not_versioned, None)
    if annotations:
        metadata["annotations"] = annotations
    unlabelled = {**template, "metadata": metadata}
    canonical = json.dumps(unlabelled, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stamp_version(deployment: dict[str, Any]) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    template["metadata"]["labels"][VERSION_LABEL] = template_version(template)
    return deployment


def version_of(deployment: dict[str, Any] | None) -> str | None:
    if deployment is None:
        return None
    labels = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    version = labels.get(VERSION_LABEL)
    return str(version) if version is not None else None


def upstream_services(
    site: SiteRef, spec: models.BlogSiteSpec, settings: RenderSettings | None = None
) -> list[dict[str, Any]]:
    """The Services the frontend proxies to, as render_site renders them."""
    objects = [
        *render_daedalus(site, spec),
        _canary_service(site),
        *render_cert_refresh(site, settings or RenderSettings()),
    ]
    return [o for o in objects if o["kind"] == "Service"]


def render_site(
    site: SiteRef,
    spec: models.BlogSiteSpec,
    settings: RenderSettings | None = None,
    facts: SiteFacts | None = None,
) -> list[dict[str, Any]]:
    """Every object the operator keeps in place for this BlogSite, in apply order.

    (The TLS Secret is not among them: its content is generated, not rendered.)
    """
    settings = settings or RenderSettings()
    facts = facts or SiteFacts()
    daedalus = [
        stamp_version(o) if o["kind"] == "Deployment" else o for o in render_daedalus(site, spec)
    ]
    objects = [
        *daedalus,
        *render_canary(site, next(o for o in daedalus if o["kind"] == "Deployment")),
        *render_disruption_budget(site, Component.DAEDALUS, spec.daedalus.replicas),
        *render_cert_refresh(site, settings),
        *render_frontend(site, spec, settings, facts),
        *render_disruption_budget(site, Component.FRONTEND, spec.frontend.replicas),
        *render_routes(child_metadata(site, Component.FRONTEND), spec),
    ]
    return [o if o["kind"] != "Deployment" or version_of(o) else stamp_version(o) for o in objects]
