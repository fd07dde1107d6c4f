"""The watch-fed cache of children: newest wins, misses fall back to the API."""

from __future__ import annotations

from typing import Any

from blogsite_operator.cache import CachedApi, ChildCache


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


def test_entries_too_old_to_trust_are_misses() -> None:
    cache = ChildCache(max_age=0.0)
    cache.store(obj("Service", "a", "1"))
    assert cache.get("Service", "ns", "a") is None
