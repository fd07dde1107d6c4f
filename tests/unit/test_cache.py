"""The watch-fed cache of children: newest wins, misses fall back to the API."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from blogsite_operator.cache import CachedApi, ChildCache
from blogsite_operator.handlers import SiteQueue
from blogsite_operator.health import WatchFailures
from blogsite_operator.policies.rollout import RolloutThresholds, pod_failure
from blogsite_operator.settings import OperatorSettings


def obj(kind: str, name: str, version: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": version,
            "labels": {"app.kubernetes.io/managed-by": "blogsite-operator", **labels},
        },
    }


def test_a_late_event_does_not_replace_a_newer_object() -> None:
    cache = ChildCache()
    cache.store(obj("Service", "a", "10"))
    cache.store(obj("Service", "a", "9"))
    assert cache.get("Service", "ns", "a") == obj("Service", "a", "10")
    cache.store(obj("Service", "a", "11"))
    assert cache.get("Service", "ns", "a") == obj("Service", "a", "11")


def test_managed_fields_are_not_kept() -> None:
    cache = ChildCache()
    watched = obj("Pod", "p", "3")
    watched["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    cache.store(watched)
    assert cache.get("Pod", "ns", "p") == obj("Pod", "p", "3")
    assert "managedFields" in watched["metadata"], "the event's own body is left alone"


def test_a_pod_is_kept_with_only_what_a_pass_reads_of_it() -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    pod: dict[str, Any] = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {**obj("Pod", "p", "3", site="x")["metadata"], "managedFields": [{}]},
        "spec": {"containers": [{"name": "daedalus", "image": "d:1"}], "nodeName": "n"},
        "status": {
            "phase": "Running",
            "podIP": "198.18.0.7",
            "qosClass": "Burstable",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [
                {
                    "name": "daedalus",
                    "image": "d:1",
                    "imageID": "sha256:0123",
                    "containerID": "containerd://4567",
                    "ready": False,
                    "restartCount": 3,
                    "state": waiting,
                    "lastState": {"terminated": {"exitCode": 1}},
                }
            ],
        },
    }
    cache = ChildCache()
    cache.store(pod)
    (kept,) = cache.select("Pod", "ns", {"site": "x"})
    assert kept == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": obj("Pod", "p", "3", site="x")["metadata"],
        "status": {
            "phase": "Running",
            "podIP": "198.18.0.7",  # where the served-certificate probe connects
            "conditions": pod["status"]["conditions"],
            "containerStatuses": [
                {"name": "daedalus", "ready": False, "restartCount": 3, "state": waiting}
            ],
        },
    }
    thresholds = RolloutThresholds(max_restarts=3, ready_timeout_seconds=60)
    now = datetime.datetime.now(datetime.UTC)
    assert pod_failure(kept, thresholds, now) == pod_failure(pod, thresholds, now) is not None
    assert "spec" in pod, "the event's own body is left alone"


def test_what_a_caller_does_with_a_read_does_not_change_the_cache() -> None:
    cache = ChildCache()
    cache.store(obj("Service", "a", "1", site="x"))
    read = cache.get("Service", "ns", "a")
    assert read is not None
    read["metadata"]["labels"]["site"] = "changed"
    (selected,) = cache.select("Service", "ns", {"site": "x"})
    selected["metadata"]["name"] = "changed"
    assert cache.get("Service", "ns", "a") == obj("Service", "a", "1", site="x")


def test_select_by_labels() -> None:
    cache = ChildCache()
    cache.store(obj("ConfigMap", "a", "1", site="x"))
    cache.store(obj("ConfigMap", "b", "1", site="y"))
    cache.store(obj("Secret", "c", "1", site="x"))
    assert [o["metadata"]["name"] for o in cache.select("ConfigMap", "ns", {"site": "x"})] == ["a"]
    cache.forget("ConfigMap", "ns", "a")
    assert cache.select("ConfigMap", "ns", {"site": "x"}) == []


def test_cached_api_reads_cache_first_and_records_applies(monkeypatch: Any) -> None:
    cache = ChildCache()
    calls: list[str] = []

    def call(self: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        calls.append(f"{method} {path}")
        if method == "PATCH":
            body: dict[str, Any] = kwargs["body"]
            return {**body, "metadata": {**body["metadata"], "resourceVersion": "5"}}
        return obj("Service", "b", "3")

    monkeypatch.setattr(CachedApi, "_call", call)
    api = CachedApi(cache, api=object())
    cache.store(obj("Service", "a", "1"))
    assert api.get("Service", "ns", "a") == obj("Service", "a", "1")
    assert calls == []
    assert api.get("Service", "ns", "b") == obj("Service", "b", "3")  # a miss: one GET
    assert len(calls) == 1
    assert api.get("Service", "ns", "b") is not None  # now cached
    assert len(calls) == 1
    applied = api.apply(obj("Service", "c", "0"))
    assert cache.get("Service", "ns", "c") == applied


def test_a_child_the_cache_lacks_is_an_answer_and_one_it_cannot_trust_is_read(
    monkeypatch: Any,
) -> None:
    cache = ChildCache()
    calls: list[str] = []
    answers = {
        "/api/v1/namespaces/ns/services/stale": obj("Service", "stale", "9"),
        "/api/v1/namespaces/ns/services/foreign": {
            "kind": "Service",
            "metadata": {"name": "foreign", "namespace": "ns", "resourceVersion": "4"},
        },
    }

    def call(self: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        calls.append(f"{method} {path}")
        return answers[path]

    monkeypatch.setattr(CachedApi, "_call", call)
    api = CachedApi(cache, api=object())
    assert api.get_child("Service", "ns", "new") is None  # never created: no request
    assert calls == []
    cache.store(obj("Service", "stale", "1"))
    cache.relisting("Service", "ns")  # a 410: entries from before cannot answer
    assert api.get_child("Service", "ns", "stale") == obj("Service", "stale", "9")
    assert calls == ["GET /api/v1/namespaces/ns/services/stale"]
    cache.store(obj("Service", "foreign", "1"))
    cache.relisting("Service", "ns")
    assert api.get_child("Service", "ns", "foreign") is None  # there, but not the operator's
    assert len(calls) == 2


def test_entries_too_old_to_trust_are_misses() -> None:
    cache = ChildCache(max_age=0.0)
    cache.store(obj("Service", "a", "1"))
    assert cache.get("Service", "ns", "a") is None


def test_after_an_expired_watch_only_what_the_new_list_brings_counts() -> None:
    cache = ChildCache()
    cache.store(obj("Pod", "ghost", "5", app="x"))  # deleted while the watch was down
    cache.store(obj("Pod", "alive", "6", app="x"))
    other = {**obj("Pod", "elsewhere", "7", app="x")}
    other["metadata"] = {**other["metadata"], "namespace": "other"}
    cache.store(other)
    cache.relisting("Pod", "ns")
    cache.store(obj("Pod", "alive", "6", app="x"))  # the new list has it again
    assert [p["metadata"]["name"] for p in cache.select("Pod", "ns", {"app": "x"})] == ["alive"]
    assert cache.get("Pod", "ns", "ghost") is None
    assert len(cache) == 2  # the ghost is gone, not only hidden
    assert [p["metadata"]["name"] for p in cache.select("Pod", "other", {"app": "x"})] == [
        "elsewhere"
    ]
    cache.relisting("Pod", None)  # a cluster-wide watch: every namespace
    assert cache.select("Pod", "other", {"app": "x"}) == []


def test_kopfs_expired_watch_line_tells_the_queue_which_cache_to_distrust() -> None:
    queue = SiteQueue(OperatorSettings())
    failures = WatchFailures()
    failures.on_expired = queue.relisting
    queue.cache.store(obj("Pod", "ghost", "5", app="x"))
    queue.cache.store(obj("Deployment", "d", "5", app="x"))
    failures.emit(
        logging.LogRecord(
            "kopf._cogs.clients.watching",
            logging.DEBUG,
            __file__,
            1,
            "Restarting the watch-stream for pods.v1 in 'ns'.",
            None,
            None,
        )
    )
    assert queue.cache.select("Pod", "ns", {"app": "x"}) == []
    assert queue.cache.select("Deployment", "ns", {"app": "x"}) != []


def test_a_select_by_site_follows_relabelling_and_forgetting() -> None:
    cache = ChildCache()
    site = "app.kubernetes.io/instance"

    def names(labels: dict[str, str]) -> list[str]:
        return sorted(o["metadata"]["name"] for o in cache.select("Pod", "ns", labels))

    cache.store(obj("Pod", "a", "1", **{site: "s1"}))
    cache.store(obj("Pod", "b", "1", **{site: "s2"}))
    cache.store(obj("Service", "c", "1", **{site: "s2"}))
    assert names({site: "s1"}) == ["a"]
    cache.store(obj("Pod", "a", "2", **{site: "s2"}))  # relabelled: now the other site's
    assert names({site: "s1"}) == []
    assert names({site: "s2"}) == ["a", "b"]
    cache.forget("Pod", "ns", "b")
    assert names({site: "s2"}) == ["a"]
    assert names({}) == ["a"]  # no site named: every pod of the namespace
    cache.forget("Pod", "ns", "a")
    assert names({site: "s1"}) == names({site: "s2"}) == []
