"""Thin kopf wiring: watch events in, `reconcile_site` out.

Only `on.event` and `index`, nothing that persists state: kopf writes no
annotations, finalizers or `status.kopf` onto BlogSites or their children, so
an idle operator makes no API writes. The indexes fill the cache and hold
every event handler until each watch has listed once. Events for one BlogSite
are coalesced (a burst of child updates runs one reconcile) into a pass that
runs in a task of its own, off kopf's per-object worker, and failures are
retried with backoff, since `on.event` handlers are not retried by kopf itself.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from blogsite_operator import kube, models, sitelog
from blogsite_operator.cache import CachedApi, ChildCache
from blogsite_operator.issuance.issuer import CertificateIssuer
from blogsite_operator.metrics import METRICS
from blogsite_operator.nginx_check import NginxChecker
from blogsite_operator.reconcile import Outcome, reconcile_site, relabel_kept_of_gone_site
from blogsite_operator.render.site import MANAGED_BY, site_of
from blogsite_operator.scheduling import PassSlots
from blogsite_operator.served_probe import ServedProbe
from blogsite_operator.settings import OperatorSettings
from blogsite_operator.traffic_reader import read_traffic

logger = logging.getLogger("blogsite_operator")

CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Every BlogSite is looked at this often even without events: catches what a
# watch cannot show (a user's own TLS Secret rotated, deletions missed during
# an outage). A pass over a site that is right makes no writes.
RESYNC_SECONDS = 600.0
# A re-list has long been folded into the cache after this: entries from
# before it that it did not bring back are gone from the cluster.
CACHE_SWEEP_SECONDS = 300.0

# Children the operator watches to keep its cache current, each event also
# triggering a reconcile, so a child deleted or edited by hand is put back
# within seconds. Pods are watched so a rollout is judged the moment a new pod
# crash-loops or fails to pull, without polling. ReplicaSets are not watched:
# they are read only when an old nginx ConfigMap may be deleted.
WATCHED_CHILDREN: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("Deployment", ("apps", "v1", "deployments")),
    ("Service", ("", "v1", "services")),
    ("ConfigMap", ("", "v1", "configmaps")),
    ("Secret", ("", "v1", "secrets")),
    ("PodDisruptionBudget", ("policy", "v1", "poddisruptionbudgets")),
    ("Pod", ("", "v1", "pods")),
    ("ServiceAccount", ("", "v1", "serviceaccounts")),
    ("Role", ("rbac.authorization.k8s.io", "v1", "roles")),
    ("RoleBinding", ("rbac.authorization.k8s.io", "v1", "rolebindings")),
)


# A test hook (tests/integration/test_rollouts.py): sleep this long between a
# revert's apply and its status write, so a test can kill the process there.
PAUSE_AFTER_REVERT_SECONDS = float(
    os.environ.get("BLOGSITE_OPERATOR_TEST_PAUSE_AFTER_REVERT_SECONDS") or 0
)


def _pause_after_revert(outcome: Outcome) -> None:
    if outcome.reverts:
        logger.warning(
            "test hook: pausing %.0fs after a revert, before its status write",
            PAUSE_AFTER_REVERT_SECONDS,
        )
        time.sleep(PAUSE_AFTER_REVERT_SECONDS)


class EndlessBackoffs:
    """Watch-stream error backoffs that never run out (see DESIGN.md).

    kopf's default sequence ends after ~a minute, and a watcher that runs
    out of backoffs dies without being respawned: the operator goes blind.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8), itertools.repeat(10.0))


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds, copies and diffs a "last handled" essence of every object
    on every event, for on.create/update/delete handlers. This operator has
    none (only on.event and indexes), so that work, about a third of the CPU kopf
    spent per event in a profile at 200 sites, bought nothing. Registering a
    changing handler would need kopf's own storage back."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


class SiteQueue:
    """Serialises and coalesces reconciles per BlogSite; retries failures."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.pending: set[tuple[str, str]] = set()
        self.running: dict[tuple[str, str], float] = {}  # site -> when its pass began
        self.failures: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Future[None]] = set()
        self.known: set[tuple[str, str]] = set()
        # One slot per reconcile thread: passes wait here, not in the
        # executor's queue, so a changed spec can go before status refreshes.
        self.slots = PassSlots(settings.workers)
        # Set once kopf lets events through, which it does only after every
        # watch has listed once (see `register`): readiness, and proof that
        # the cache holds every kind.
        self.synced = threading.Event()
        self.cache = ChildCache()
        METRICS.cache_objects.set_function(lambda: len(self.cache))
        self.nginx = NginxChecker(
            settings.nginx_binary, allow_extra_config=settings.allow_extra_config
        )
        self.probe = (
            ServedProbe(settings.served_probe_seconds, self._trigger_soon)
            if settings.served_probe_seconds > 0
            else None
        )
        self._api: kube.Api | None = None
        self._issuer: CertificateIssuer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def issuer(self) -> CertificateIssuer:
        """ACME orders run in their own threads; a finished one triggers its site."""
        if self._issuer is None:
            self._issuer = CertificateIssuer(self.api, self.settings.acme, self._trigger_soon)
        return self._issuer

    def shutdown(self) -> None:
        """Cancel background tasks; drop ACME jobs not yet started."""
        for task in list(self.tasks):
            task.cancel()
        if self._issuer is not None:
            self._issuer.shutdown()
        if self.probe is not None:
            self.probe.shutdown()

    def wait_for_acme_jobs(self) -> None:
        """After the event loop stopped: a running order ends (its Secret
        written or not at all) before the process gives up the lead."""
        if self._issuer is not None:
            self._issuer.shutdown(wait=True)

    def _trigger_soon(self, namespace: str, name: str) -> None:
        """Thread-safe: called from an ACME thread when its job ends."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._spawn_trigger, namespace, name)

    @property
    def api(self) -> kube.Api:
        if self._api is None:
            self._api = CachedApi(self.cache, kube.api_client(pool_size=self.settings.workers))
        return self._api

    async def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key in self.pending:
            return  # a reconcile is already queued and will see the latest state
        self.pending.add(key)
        METRICS.queue_depth.set(len(self.pending))
        queued_at = time.monotonic()
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock, self.slots.slot(key):
            # Pending until a slot is free: events meanwhile are seen by this
            # pass, which has not read anything yet.
            self.pending.discard(key)
            METRICS.queue_depth.set(len(self.pending))
            METRICS.queue_wait.observe(time.monotonic() - queued_at)
            await self._run(key)
        if key not in self.known:
            self._drop_idle_lock(key)  # forgotten during the pass (a deleted site)

    async def _run(self, key: tuple[str, str]) -> None:
        retry = self.retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        with sitelog.about(*key):
            logger.debug("pass begins")
            started = self.running[key] = time.monotonic()
            outcome = "error"
            try:
                outcome = await self._pass(key)
            finally:
                del self.running[key]
                METRICS.reconcile_duration.observe(time.monotonic() - started)
                if outcome != "gone":
                    METRICS.reconciles.labels(outcome).inc()
                logger.debug("pass ends")

    async def _pass(self, key: tuple[str, str]) -> str:
        """One pass; its outcome: success, conflict, error or gone."""
        namespace, name = key
        site: dict[str, Any] | None = None
        try:
            site = await asyncio.to_thread(self.api.get, models.KIND, namespace, name)
            if site is None:
                await asyncio.to_thread(relabel_kept_of_gone_site, self.api, namespace, name)
            if site is None or site["metadata"].get("deletionTimestamp"):
                self.forget(key)
                return "gone"
            outcome = await asyncio.to_thread(
                reconcile_site,
                self.api,
                site,
                self.settings.render,
                self.nginx.check,
                self.issuer,
                before_status=_pause_after_revert if PAUSE_AFTER_REVERT_SECONDS else None,
                probe=self.probe,
                read_traffic=functools.partial(read_traffic, self.api),
            )
        except ApiException as error:
            if error.status == 404:  # deleted while we worked: nothing left to do
                self.forget(key)
                return "gone"
            if error.status == 409 and self.failures.get(key, 0) < 3:
                # The BlogSite changed during the pass: its status patch was
                # refused. Not a failure: a new pass starts from the new state.
                logger.info("changed during its pass; reconciling again")
                self.failures[key] = self.failures.get(key, 0) + 1
                self._spawn_trigger(*key)
                return "conflict"
            await self._failed(key, site, error)
            return "error"
        except Exception as error:  # noqa: BLE001 - any failure is retried, never fatal
            await self._failed(key, site, error)
            return "error"
        self.failures.pop(key, None)
        if outcome.status:
            METRICS.observe_site(namespace, name, outcome.status)
        for component, why in outcome.reverts:
            METRICS.reverts.labels(component, why).inc()
        if outcome.requeue_after is not None and key not in self.retries:
            loop = asyncio.get_running_loop()
            self.retries[key] = loop.call_later(outcome.requeue_after, self._spawn_trigger, *key)
        if outcome.applied or outcome.status_written or outcome.conflicts:
            logger.info(
                "reconciled: applied %s; status %s%s",
                ", ".join(outcome.applied) or "nothing",
                "updated" if outcome.status_written else "unchanged",
                f"; conflicts: {', '.join(outcome.conflicts)}" if outcome.conflicts else "",
            )
        return "success"

    async def _failed(
        self, key: tuple[str, str], site: dict[str, Any] | None, error: Exception
    ) -> None:
        """Retry with backoff; tell the user on the BlogSite the first time."""
        attempt = self.failures.get(key, 0)
        self._schedule_retry(key, error)
        if site is None or attempt % 10:
            return  # one Event for the first failure and then every tenth, not a flood
        message = f"reconcile failed, retrying with backoff: {kube.describe_error(error)}"
        try:
            await asyncio.to_thread(
                self.api.post_event, site, "Warning", "ReconcileFailed", message
            )
        except Exception:  # noqa: BLE001 - the API may be what is failing
            logger.warning("could not post the ReconcileFailed Event")

    def _schedule_retry(self, key: tuple[str, str], error: Exception) -> None:
        attempt = self.failures.get(key, 0)
        self.failures[key] = attempt + 1
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        logger.error(
            "reconcile failed (attempt %d); retrying in %.0fs: %s",
            attempt + 1,
            delay,
            kube.describe_error(error),
            exc_info=error if not isinstance(error, ApiException) else None,
        )
        loop = asyncio.get_running_loop()
        self.retries[key] = loop.call_later(delay, self._spawn_trigger, *key)

    def _spawn_trigger(self, namespace: str, name: str) -> None:
        task = asyncio.ensure_future(self.trigger(namespace, name))
        self.tasks.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self.tasks.discard)

    def longest_pass(self) -> tuple[tuple[str, str], float] | None:
        """The site whose running pass began first, and for how long it has run."""
        running = dict(self.running)  # read from the health thread
        if not running:
            return None
        key, started = min(running.items(), key=lambda item: item[1])
        return key, time.monotonic() - started

    def relisting(self, plural: str, namespace: str | None) -> None:
        """A watch expired and lists again (WatchFailures.on_expired)."""
        for kind, (_group, _version, watched) in WATCHED_CHILDREN:
            if watched == plural:
                self.cache.relisting(kind, namespace)

    def enqueue(self, namespace: str, name: str, *, urgent: bool = False) -> None:
        """From an event handler: the pass runs in a task of its own, so kopf's
        per-object worker is free at once for the next event. An urgent one
        (a spec not yet reconciled) goes before the others waiting."""
        self.synced.set()
        if urgent:
            self.slots.mark_urgent((namespace, name))
        self._spawn_trigger(namespace, name)

    async def confirm_synced_when_empty(self, namespaces: Sequence[str]) -> None:
        """Readiness needs an event to prove the watches have listed; when none
        of the watched objects exists there will be none, and one LIST of each
        kind that finds nothing proves there was nothing to wait for."""
        while True:
            try:
                found = await asyncio.to_thread(self._anything_to_list, namespaces)
                break
            except Exception as error:  # noqa: BLE001 - the API may not answer yet
                logger.debug("could not list the watched kinds: %s", kube.describe_error(error))
                await asyncio.sleep(2.0)
        if not found:
            self.synced.set()

    def _anything_to_list(self, namespaces: Sequence[str]) -> bool:
        watched = [(models.KIND, ""), *((kind, CHILD_SELECTOR) for kind, _ in WATCHED_CHILDREN)]
        scopes: list[str | None] = [*namespaces] or [None]  # None: all namespaces
        return any(
            self.api.list_raw(kind, scope, [("labelSelector", selector), ("limit", "1")])["items"]
            for kind, selector in watched
            for scope in scopes
        )

    def forget(self, key: tuple[str, str]) -> None:
        self.known.discard(key)
        self.slots.forget(key)
        METRICS.forget_site(*key)
        if self._issuer is not None:
            self._issuer.forget(key)
        if self.probe is not None:
            self.probe.forget(key)
        self.failures.pop(key, None)
        retry = self.retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        self._drop_idle_lock(key)

    def _drop_idle_lock(self, key: tuple[str, str]) -> None:
        """A running pass keeps its lock until it ends (and drops it then);
        one waited for is in `pending`."""
        lock = self.locks.get(key)
        if key not in self.pending and lock is not None and not lock.locked():
            del self.locks[key]

    async def sweep_cache_forever(self, interval: float = CACHE_SWEEP_SECONDS) -> None:
        """Drop what a re-list did not bring back, also of sites no pass reads again."""
        while True:
            await asyncio.sleep(interval)
            self.cache.sweep(grace=interval)

    async def resync_forever(self, interval: float = RESYNC_SECONDS) -> None:
        """Every known site once per interval, each at its own offset in it, so
        a thousand sites are not all reconciled in the same second."""
        loop = asyncio.get_running_loop()
        cycle = loop.time() + interval  # the first pass of every site follows its event
        while True:
            cycle += interval
            for offset, key in sorted((resync_offset(k, interval), k) for k in self.known):
                await asyncio.sleep(max(0.0, cycle + offset - interval - loop.time()))
                if key in self.known:
                    self._spawn_trigger(*key)
            await asyncio.sleep(max(0.0, cycle - loop.time()))


def spec_not_yet_reconciled(site: Mapping[str, Any]) -> bool:
    """A new BlogSite, or one whose spec changed since its last status."""
    generation = (site.get("metadata") or {}).get("generation")
    return generation != (site.get("status") or {}).get("observedGeneration")


def resync_offset(key: tuple[str, str], interval: float) -> float:
    """A site's place in the resync interval: stable across restarts, spread evenly."""
    digest = zlib.crc32(f"{key[0]}/{key[1]}".encode())
    return interval * digest / 2**32


async def _hold_events_until_listed(**_: Any) -> None:
    """An index that stores nothing, for BlogSites (children index into the
    cache). kopf calls no event handler until every indexed resource has been
    listed once and each listed object indexed, so no pass runs before the
    cache has seen every kind: a pass over half a list would find no pods and
    judge a rollout on nothing."""


def register(
    registry: kopf.OperatorRegistry, settings: OperatorSettings, namespaces: Sequence[str] = ()
) -> SiteQueue:
    """Register the handlers on `registry` for `namespaces` (None or empty:
    all); returns the queue for tests."""
    queue = SiteQueue(settings)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Reconciles run the synchronous client in threads: one per worker, and
        # the client's connection pool is sized to match (kube.api_client).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=queue.settings.workers, thread_name_prefix="reconcile")
        )
        settings.posting.enabled = False  # our Events are written by kube.Api
        settings.persistence.diffbase_storage = NoDiffBase()
        # Watched namespaces are exact names and the CRD is checked before
        # start (cli.py): kopf need not list namespaces or watch CRDs, which
        # would take cluster-wide rights the namespaced install must not have.
        settings.scanning.disabled = True
        settings.networking.error_backoffs = EndlessBackoffs()
        settings.watching.server_timeout = int(queue.settings.watch_timeout_seconds)
        settings.watching.client_timeout = int(queue.settings.watch_timeout_seconds) + 30
        settings.execution.max_workers = queue.settings.workers
        queue.loop = asyncio.get_running_loop()
        for background in (
            queue.resync_forever(queue.settings.resync_seconds),
            queue.sweep_cache_forever(),
            queue.confirm_synced_when_empty(namespaces),
        ):
            queue.tasks.add(asyncio.ensure_future(background))
        for _kind, (_group, _version, plural) in WATCHED_CHILDREN:
            # Filtered by the API server: only the operator's children are sent.
            settings.watching.label_selectors[plural] = CHILD_SELECTOR

    @kopf.on.event(models.GROUP, models.VERSION, models.PLURAL, registry=registry)
    async def blogsite_event(
        type: str,  # noqa: A002 - kopf passes the event type under this name
        body: kopf.Body,
        namespace: str | None,
        name: str,
        **_: Any,
    ) -> None:
        if namespace is None:
            return
        if type == "DELETED":
            queue.forget((namespace, name))
            return
        queue.known.add((namespace, name))
        queue.enqueue(namespace, name, urgent=spec_not_yet_reconciled(body))

    def make_child_handler(kind: str) -> Any:
        async def child_event(
            type: str | None,  # noqa: A002 - kopf's name for the event type
            body: kopf.Body,
            namespace: str | None,
            name: str,
            **_: Any,
        ) -> None:
            if namespace is None:
                return
            if type == "DELETED":
                queue.cache.forget(kind, namespace, name)
            # Every child, pods included, names its site in a label (and the
            # watch only sends objects labelled as managed by this operator).
            site = site_of(body.metadata.get("labels", {}))
            if site:
                queue.enqueue(namespace, site)
            else:
                queue.synced.set()

        return child_event

    def make_child_index(kind: str) -> Any:
        async def store_child(body: kopf.Body, **_: Any) -> None:
            # Indexing runs for every event before kopf's gate, so the cache
            # holds every listed object before the first pass starts.
            queue.cache.store({**dict(body), "kind": kind})

        return store_child

    managed = {"app.kubernetes.io/managed-by": MANAGED_BY}
    for kind, (group, version, plural) in WATCHED_CHILDREN:
        kopf.on.event(group, version, plural, registry=registry, labels=managed, id=kind)(
            make_child_handler(kind)
        )
        kopf.index(group, version, plural, registry=registry, labels=managed, id=f"{kind}-cache")(
            make_child_index(kind)
        )
    kopf.index(models.GROUP, models.VERSION, models.PLURAL, registry=registry, id="listed")(
        _hold_events_until_listed
    )

    @kopf.on.cleanup(registry=registry)
    async def stop_background_tasks(**_: Any) -> None:
        queue.shutdown()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the kubernetes client (in-cluster or kubeconfig).
        return kopf.login_via_client(**kwargs)

    @kopf.on.probe(id="alive", registry=registry)
    def alive(**_: Any) -> bool:
        return True

    return queue
