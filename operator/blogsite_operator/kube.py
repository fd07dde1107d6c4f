"""The only module that talks to the Kubernetes API.

Objects travel as plain dicts (camelCase, exactly as the API serves them):
responses are read with `_preload_content=False` and decoded as JSON, which is
cheaper than the client's model classes and keeps renderers and the API
speaking the same shape.
"""

from __future__ import annotations

import copy
import datetime
import json
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from blogsite_operator import models
from blogsite_operator.metrics import METRICS, verb_of
from blogsite_operator.render.site import FIELD_MANAGER
from blogsite_operator.timestamps import format_time
from blogsite_operator.watch_stream import WatchEndedError, watch_event, watch_query

USER_AGENT = "blogsite-operator/0.1.0"
# This process among all operator processes, ever: a pod's hostname is its
# name, and the suffix tells a restarted container from the one before.
PROCESS_IDENTITY = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"
# A resourceVersion no stored object has (see Api.apply_if_absent).
NO_OBJECT_IS_AT = "1"

_client_lock = threading.Lock()
_api_client: client.ApiClient | None = None


def load_config(kubeconfig: str | None = None) -> None:
    """In-cluster config when running in a pod, else the kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


# No request waits longer: an API server that stops answering mid-response
# must not hold a reconcile thread (and, all of them taken, the operator) for ever.
REQUEST_TIMEOUT_SECONDS = 30.0


def api_client(pool_size: int = 16) -> client.ApiClient:
    """One shared ApiClient, its connection pool sized to the worker threads."""
    global _api_client  # noqa: PLW0603 - one client per process, created lazily
    with _client_lock:
        if _api_client is None:
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = pool_size
            _api_client = client.ApiClient(configuration)
            # Named in audit logs, so its requests can be told from other
            # clients', and one process's from another's (leader election).
            _api_client.user_agent = f"{USER_AGENT} ({PROCESS_IDENTITY})"
        return _api_client


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """The object's path; with no namespace, the kind across all namespaces."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if namespace is None:
            return f"{prefix}/{self.plural}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{path}/{name}" if name else path


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps/v1", "deployments"),
    "Service": Kind("v1", "services"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "ReplicaSet": Kind("apps/v1", "replicasets"),
    "Pod": Kind("v1", "pods"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": Kind("coordination.k8s.io/v1", "leases"),
    "Gateway": Kind("gateway.networking.k8s.io/v1", "gateways"),
    "HTTPRoute": Kind("gateway.networking.k8s.io/v1", "httproutes"),
    "TLSRoute": Kind("gateway.networking.k8s.io/v1alpha2", "tlsroutes"),
    models.KIND: Kind(f"{models.GROUP}/{models.VERSION}", models.PLURAL),
}


class Api:
    """Thin, synchronous access to the few endpoints the operator needs."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self._api = api or api_client()

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self._api.configuration.host)

    def without_retries(self) -> Api:
        """The same API server through a client that never tries a request
        again by itself: urllib3 otherwise retries a read that timed out
        three times, so a 4 s timeout would hang for 16 s (leader election
        must know how long a request can take)."""
        configuration = copy.copy(self._api.configuration)
        configuration.retries = False
        api_client = client.ApiClient(configuration)
        api_client.user_agent = self._api.user_agent
        return Api(api_client)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The response, its body not yet read (so a watch can be streamed)."""
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self._api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        response = self._request(
            method,
            path,
            body=body,
            query=query,
            content_type=content_type,
            timeout=REQUEST_TIMEOUT_SECONDS if timeout is None else timeout,
        )
        METRICS.api_requests.labels(verb_of(method, path, query), str(response.status)).inc()
        response.read()
        text = response.data.decode("utf-8") if response.data else ""
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        data: dict[str, Any] = json.loads(text) if text else {}
        return data

    def get(
        self, kind: str, namespace: str, name: str, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        try:
            return self._call("GET", KINDS[kind].path(namespace, name), timeout=timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def server_version(self) -> dict[str, Any]:
        """The API server's /version (gitVersion, major, minor, ...)."""
        found: dict[str, Any] = self._call("GET", "/version")
        return found

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API serves this resource (its CRD is installed)."""
        try:
            found = self._call("GET", f"/apis/{api_version}")
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    def list_raw(
        self, kind: str, namespace: str | None, query: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """The List object itself: items and the resourceVersion to watch from."""
        return self._call("GET", KINDS[kind].path(namespace), query=query)

    def watch(
        self,
        kind: str,
        namespace: str | None,
        query: list[tuple[str, str]],
        resource_version: str,
        timeout_seconds: int,
    ) -> Iterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) as plain dicts until the server ends
        the watch; an ERROR event (410 Gone) is raised as ApiException."""
        params = watch_query(query, resource_version, timeout_seconds)
        response = self._request(
            "GET", KINDS[kind].path(namespace), query=params, timeout=timeout_seconds + 30
        )
        METRICS.api_requests.labels("watch", str(response.status)).inc()
        raw = response.response  # urllib3's, unread: events arrive one JSON line each
        try:
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=raw.read().decode())
            buffer = b""
            for chunk in raw.stream(4096, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    try:
                        event = watch_event(line)
                    except WatchEndedError as ended:
                        raise ApiException(status=ended.code, reason=ended.message) from None
                    if event is not None:
                        yield event
        finally:
            raw.release_conn()

    def list_objects(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = self._call(
            "GET", KINDS[kind].path(namespace), query=[("labelSelector", label_selector)]
        )
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    def events_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events about the BlogSite `name` (kubectl describe's list)."""
        query = [("fieldSelector", f"involvedObject.kind={models.KIND},involvedObject.name={name}")]
        result = self._call("GET", f"/api/v1/namespaces/{namespace}/events", query=query)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete exactly the object we looked at (uid precondition); gone already is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name), body=body)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager."""
        metadata = obj["metadata"]
        return self._call(
            "PATCH",
            KINDS[obj["kind"]].path(metadata["namespace"], metadata["name"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type=APPLY_CONTENT_TYPE,
        )

    def apply_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply that only creates: when an object of that name
        exists already (someone else's, or one not seen yet), nothing is
        changed and None comes back; the caller reads it and decides. The
        resourceVersion precondition is one no object can meet (etcd's
        revisions begin at 1 with the empty store, so every write is at 2 or
        later); a create ignores it. One request where a GET and an apply
        were two."""
        metadata = {**obj["metadata"], "resourceVersion": NO_OBJECT_IS_AT}
        try:
            return self.apply({**obj, "metadata": metadata})
        except ApiException as error:
            if error.status == 409:
                return None
            raise

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The operator's own object of this name (CachedApi answers from its
        cache); here, whatever the API server has."""
        return self.get(kind, namespace, name)

    def create(self, obj: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Create; 409 if it exists already."""
        path = KINDS[obj["kind"]].path(obj["metadata"]["namespace"])
        return self._call("POST", path, body=obj, timeout=timeout)

    def replace(self, obj: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Replace the whole object; 409 unless its resourceVersion is current."""
        metadata = obj["metadata"]
        path = KINDS[obj["kind"]].path(metadata["namespace"], metadata["name"])
        return self._call("PUT", path, body=obj, timeout=timeout)

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch: changes the fields named in `patch` and nothing else."""
        return self._call(
            "PATCH",
            KINDS[kind].path(namespace, name),
            body=patch,
            content_type=MERGE_PATCH_CONTENT_TYPE,
        )

    def patch_blogsite_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> None:
        """A merge patch of the status, computed from the BlogSite at
        `resource_version`: refused (409) if it changed since (another writer,
        or deleted and created again), so a stale pass never overwrites."""
        path = KINDS[models.KIND].path(namespace, name) + "/status"
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        self._call("PATCH", path, body=body, content_type=MERGE_PATCH_CONTENT_TYPE)

    def post_event(self, site: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the BlogSite, shown by `kubectl describe`."""
        metadata = site["metadata"]
        now = format_time(datetime.datetime.now(tz=datetime.UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{secrets.token_hex(8)}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": site.get("apiVersion", f"{models.GROUP}/{models.VERSION}"),
                "kind": models.KIND,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._call("POST", f"/api/v1/namespaces/{metadata['namespace']}/events", body=event)


def describe_error(error: Exception) -> str:
    """One line a person can act on: the API server's own message, no headers."""
    if isinstance(error, ApiException):
        message = ""
        try:
            message = str(json.loads(error.body or "{}").get("message", ""))
        except ValueError:
            message = str(error.body or "")[:300]
        return f"{error.status} {error.reason}: {message}".strip()
    return f"{type(error).__name__}: {error}"
