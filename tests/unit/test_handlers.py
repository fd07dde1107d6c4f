"""The kopf wiring: what the operator registers, and what it spares kopf."""

from __future__ import annotations

import asyncio

import kopf

from blogsite_operator.handlers import NoDiffBase, SiteQueue, register
from blogsite_operator.metrics import METRICS
from blogsite_operator.settings import OperatorSettings


def test_no_changing_handler_is_registered_so_no_diff_base_is_needed() -> None:
    # NoDiffBase is only right while kopf has no on.create/update/delete/
    # resume handler to compute a diff for.
    registry = kopf.OperatorRegistry()
    register(registry, OperatorSettings())
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert len(registry._watching.get_all_handlers()) == 10  # BlogSites and nine children


def test_the_diff_base_keeps_nothing_and_writes_nothing() -> None:
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {"a": 1}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch


class GoneApi:
    """The API as a pass sees it once its BlogSite is deleted."""

    def get(self, kind: str, namespace: str, name: str) -> None:
        return None


def _site_series(namespace: str) -> int:
    return sum(
        1
        for family in METRICS.registry.collect()
        for sample in family.samples
        if sample.labels.get("namespace") == namespace
    )


def test_a_create_and_delete_cycle_leaves_no_lock_series_or_cache_entry_behind() -> None:
    """Each site: created, then TLS removed, then deleted while its children's
    watch was down (a re-list brings no DELETED), the garbage collector's
    events bringing passes that find it gone."""
    queue = SiteQueue(OperatorSettings())
    queue._api = GoneApi()  # type: ignore[assignment]
    namespace, sites = "cycle", 1000
    with_tls = {"conditions": [{"type": "Ready"}, {"type": "CertificateReady"}]}
    without_tls = {"conditions": [{"type": "Ready"}]}

    async def cycle() -> None:
        for i in range(sites):
            key = (namespace, f"site-{i}")
            queue.known.add(key)
            queue.cache.store(
                {
                    "kind": "Pod",
                    "metadata": {
                        "name": f"site-{i}-pod",
                        "namespace": namespace,
                        "resourceVersion": str(i + 1),
                        "labels": {"app.kubernetes.io/instance": key[1]},
                    },
                }
            )
            METRICS.observe_site(*key, with_tls)
            METRICS.observe_site(*key, without_tls)
        queue.cache.relisting("Pod", namespace)
        for i in range(sites):
            queue.forget((namespace, f"site-{i}"))  # the BlogSite's DELETED event
            await queue.trigger(namespace, f"site-{i}")  # a child's event after it

    def counts() -> tuple[int, int, int]:
        queue.cache.sweep(grace=0)
        return len(queue.locks), _site_series(namespace), len(queue.cache)

    before = counts()
    asyncio.run(cycle())
    after_one = counts()
    asyncio.run(cycle())
    assert before == after_one == counts() == (0, 0, 0)
