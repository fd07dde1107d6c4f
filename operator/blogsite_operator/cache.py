"""The children of every BlogSite, as the watch streams last showed them.

Like an informer's store: kopf's watch events keep it current, and the
reconcile pass reads from it instead of asking the API server for every
object on every pass. Once every watch has listed, a child missing from it
does not exist (`lookup`); an entry too old to trust is read again, so a
lagging cache costs a request, never correctness; what the operator applies or
deletes is recorded at once, so the next pass does not act on stale data.
A watch that expires (410 Gone) lists again, and a list reports no deletion
it missed: from then on only what the new list brings counts (`relisting`),
so a pod deleted during an outage is not judged for ever after.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from blogsite_operator import kube
from blogsite_operator.render.site import site_of

# A single entry not confirmed by a watch event or a read for this long is
# read again before it is trusted.
MAX_AGE_SECONDS = 300.0
SERVES_MAX_AGE_SECONDS = 60.0

# Kinds that carry the operator's labels and are watched (handlers.py).
CACHED_KINDS = (
    "Deployment",
    "Service",
    "ConfigMap",
    "PodDisruptionBudget",
    "Secret",
    "Pod",
    "ServiceAccount",
    "Role",
    "RoleBinding",
)


# Every child carries it; a pass selects a site's children by it.
INSTANCE_LABEL = "app.kubernetes.io/instance"


def _key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    return (kind, namespace, name)


@dataclass(frozen=True, slots=True)
class _Entry:
    # The object as compact JSON: about a fifth of the memory of its parsed
    # form (a Deployment: 5 KB against 26 KB), and every read parses its own
    # copy, so no caller can change what the next pass reads.
    body: bytes
    labels: dict[str, str]
    resource_version: int | None
    stored_at: float  # time.monotonic()

    def group(self, key: tuple[str, str, str]) -> tuple[str, str, str]:
        """(kind, namespace, site): what a pass's select looks up."""
        return (key[0], key[1], site_of(self.labels) or "")


def _resource_version(obj: dict[str, Any]) -> int | None:
    """resourceVersions are opaque, but etcd's are integers that only grow."""
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return None


class ChildCache:
    """Thread-safe: watch events arrive on the event loop, reconciles run in threads."""

    def __init__(self, max_age: float = MAX_AGE_SECONDS) -> None:
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        # The keys of each site's children of a kind: a select reads these
        # instead of every cached object (at a thousand sites, 14000).
        self._groups: dict[tuple[str, str, str], set[tuple[str, str, str]]] = {}
        # (kind, namespace or None for all): when its watch expired and listed again.
        self._relisted_at: dict[tuple[str, str | None], float] = {}
        self._max_age = max_age
        self._lock = threading.Lock()

    def relisting(self, kind: str, namespace: str | None) -> None:
        """The watch of `kind` expired (410 Gone) and lists again. A list
        sends no DELETED for what went meanwhile: from now on an entry counts
        only if the new list (or a later event or read) stored it again."""
        with self._lock:
            self._relisted_at[(kind, namespace)] = time.monotonic()

    def sweep(self, grace: float) -> int:
        """Drop the entries a re-list at least `grace` seconds ago did not
        store again (a deletion the watch missed): a select drops them too,
        but a deleted site's children are never selected again. How many."""
        now = time.monotonic()
        with self._lock:
            stale = [
                key
                for key, entry in self._entries.items()
                if not self._is_current(key, entry) and now - self._relisted(key) >= grace
            ]
            for key in stale:
                self._drop(key)
        return len(stale)

    def _relisted(self, key: tuple[str, str, str]) -> float:
        """When the watch of this entry's kind last listed again. Lock held."""
        kind, namespace, _ = key
        return max(
            self._relisted_at.get((kind, namespace), float("-inf")),
            self._relisted_at.get((kind, None), float("-inf")),
        )

    def _is_current(self, key: tuple[str, str, str], entry: _Entry) -> bool:
        """Called with the lock held."""
        return entry.stored_at > self._relisted(key)

    def store(self, obj: dict[str, Any]) -> None:
        obj = _slim(obj)
        metadata = obj["metadata"]
        key = _key(obj["kind"], metadata["namespace"], metadata["name"])
        version = _resource_version(obj)
        entry = _Entry(
            json.dumps(obj, separators=(",", ":")).encode(),
            dict(metadata.get("labels") or {}),
            version,
            time.monotonic(),
        )
        with self._lock:
            current = self._entries.get(key)
            if current is not None:
                known = current.resource_version
                if version is not None and known is not None and version < known:
                    return  # a late watch event must not undo what we just applied
                self._groups[current.group(key)].discard(key)
            self._entries[key] = entry
            self._groups.setdefault(entry.group(key), set()).add(key)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._drop(_key(kind, namespace, name))

    def _drop(self, key: tuple[str, str, str]) -> None:
        """Called with the lock held."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            group = entry.group(key)
            self._groups[group].discard(key)
            if not self._groups[group]:
                del self._groups[group]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The cached object, or None when absent or too old to trust."""
        key = _key(kind, namespace, name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry.stored_at > self._max_age:
                return None
            if not self._is_current(key, entry):
                return None
        found: dict[str, Any] = json.loads(entry.body)
        return found

    def lookup(self, kind: str, namespace: str, name: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the cache can answer, the object). With every watch
        listed, no entry means the operator has no such object; an entry too
        old or from before a re-list cannot answer either way."""
        key = _key(kind, namespace, name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return True, None
            if time.monotonic() - entry.stored_at > self._max_age:
                return False, None
            if not self._is_current(key, entry):
                return False, None
        return True, json.loads(entry.body)

    def select(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            if INSTANCE_LABEL in labels:
                keys = list(self._groups.get((kind, namespace, labels[INSTANCE_LABEL]), ()))
            else:
                keys = [k for k in self._entries if k[0] == kind and k[1] == namespace]
            matches = []
            for key in keys:
                entry = self._entries[key]
                if not self._is_current(key, entry):
                    self._drop(key)  # gone unless listed again, and then stored anew
                elif labels.items() <= entry.labels.items():
                    matches.append(entry.body)
        return [json.loads(body) for body in matches]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# What a pass reads of a pod (policies/rollout.py, reconcile.py): its
# metadata, how its containers and conditions stand, and its address (the
# served-certificate probe connects to it); never its spec.
_POD_STATUS_FIELDS = (
    "phase",
    "conditions",
    "containerStatuses",
    "initContainerStatuses",
    "podIP",
)
_CONTAINER_STATUS_FIELDS = ("name", "ready", "restartCount", "state")


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what no pass reads. managedFields is often the bulk
    of an object; a pod's spec and the details of its status are the rest of
    it (a pod parses to about 38 KB of Python objects, 9 KB slimmed; at a
    thousand sites there are five thousand pods)."""
    metadata = obj["metadata"]
    if "managedFields" in metadata:
        metadata = {k: v for k, v in metadata.items() if k != "managedFields"}
    if obj["kind"] != "Pod":
        return {**obj, "metadata": metadata} if metadata is not obj["metadata"] else obj
    slim: dict[str, Any] = {k: obj[k] for k in ("kind", "apiVersion") if k in obj}
    slim["metadata"] = metadata
    if "status" in obj:
        status = obj["status"] or {}
        slim["status"] = {k: status[k] for k in _POD_STATUS_FIELDS if k in status}
        for field in ("containerStatuses", "initContainerStatuses"):
            if field in slim["status"]:
                slim["status"][field] = [
                    {k: c[k] for k in _CONTAINER_STATUS_FIELDS if k in c}
                    for c in slim["status"][field]
                ]
    return slim


class CachedApi(kube.Api):
    """kube.Api that reads children from the cache and records its own writes."""

    def __init__(self, cache: ChildCache, api: Any = None) -> None:
        super().__init__(api)
        self.cache = cache
        self._served: dict[tuple[str, str], tuple[bool, float]] = {}

    def serves(self, api_version: str, plural: str) -> bool:
        """As kube.Api, asked again at most once a minute: a pass of a site
        behind a gateway asks whether the route kinds exist, and CRDs
        installed later are still noticed."""
        key = (api_version, plural)
        known = self._served.get(key)
        if known is not None and time.monotonic() - known[1] < SERVES_MAX_AGE_SECONDS:
            return known[0]
        found = super().serves(api_version, plural)
        self._served[key] = (found, time.monotonic())
        return found

    def get(
        self, kind: str, namespace: str, name: str, timeout: float | None = None
    ) -> dict[str, Any] | None:
        if kind in CACHED_KINDS:
            cached = self.cache.get(kind, namespace, name)
            if cached is not None:
                return cached
        live = super().get(kind, namespace, name, timeout)
        if live is not None and kind in CACHED_KINDS and _is_managed(live):
            self.cache.store({**live, "kind": kind})
        return live

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The operator's own object, answered by the cache alone when it can:
        a new site's children are not each asked for and found missing."""
        if kind not in CACHED_KINDS:
            return super().get_child(kind, namespace, name)
        known, cached = self.cache.lookup(kind, namespace, name)
        if known:
            return cached
        live = self.get(kind, namespace, name)
        return live if live is not None and _is_managed(live) else None

    def apply_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        live = super().apply_if_absent(obj)
        if live is not None and obj["kind"] in CACHED_KINDS:
            self.cache.store({**live, "kind": obj["kind"]})
        return live

    def list_objects(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        if kind in CACHED_KINDS and label_selector and "!" not in label_selector:
            labels = dict(pair.split("=", 1) for pair in label_selector.split(","))
            return self.cache.select(kind, namespace, labels)
        return super().list_objects(kind, namespace, label_selector)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        live = super().apply(obj)
        if obj["kind"] in CACHED_KINDS:
            self.cache.store({**live, "kind": obj["kind"]})
        return live

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        live = super().merge_patch(kind, namespace, name, patch)
        if kind in CACHED_KINDS:
            self.cache.store({**live, "kind": kind})
        return live

    def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        super().delete(kind, namespace, name, uid)
        self.cache.forget(kind, namespace, name)


def _is_managed(obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == "blogsite-operator"
