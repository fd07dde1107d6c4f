"""Leader election on a coordination.k8s.io Lease, so that of several operator
replicas exactly one reconciles and orders certificates.

A candidate waits until it holds the Lease, then the operator starts. A thread
renews the Lease; if it cannot renew for the renew deadline, the process
exits at once (as client-go's controllers do) and comes back as a candidate.
Since a candidate takes over only after a whole lease duration of silence,
the old leader has stopped writing before the new one starts.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from blogsite_operator import kube
from blogsite_operator.policies.lease import LeaseTimings, claimed, may_take, released

logger = logging.getLogger("blogsite_operator.leader")


class LeaderElector:
    def __init__(
        self,
        api: kube.Api,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaseTimings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api  # without retries: see the setter
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings or LeaseTimings()
        self.clock = clock
        self.leading = False
        # The Lease as last seen, and when (our clock) it was first seen so.
        self._seen_version: str | None = None
        self._seen_at = 0.0
        # The renewal thread and what stops it, once leading.
        self._renewal: tuple[threading.Event, threading.Thread] | None = None

    @property
    def api(self) -> kube.Api:
        return self._api

    @api.setter
    def api(self, api: kube.Api) -> None:
        # Every request bounded by its own timeout, never tried again behind
        # our back: a renewal must give up before the renew deadline.
        self._api = api.without_retries()

    def try_acquire_or_renew(self, timeout: float) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        try:
            lease = self.api.get("Lease", self.namespace, self.name, timeout=timeout)
            now = datetime.datetime.now(datetime.UTC)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": claimed({}, self.identity, now, self.timings),
                }
                self.api.create(body, timeout=timeout)
                return True
            version = lease["metadata"]["resourceVersion"]
            if version != self._seen_version:
                self._seen_version, self._seen_at = version, self.clock()
            spec = lease.get("spec") or {}
            if not may_take(spec, self.identity, self.clock() - self._seen_at, self.timings):
                return False
            lease["spec"] = claimed(spec, self.identity, now, self.timings)
            self.api.replace(lease, timeout=timeout)
        except ApiException as error:
            if error.status != 409:  # 409: another candidate wrote first
                logger.warning("leader lease: %s", kube.describe_error(error))
            return False
        except Exception as error:  # noqa: BLE001 - timeouts, refused connections: try again
            logger.warning("leader lease: %s", kube.describe_error(error))
            return False
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process leads (True) or `stop` is set (False)."""
        logger.info("waiting to lead: Lease %s/%s, as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if self.try_acquire_or_renew(timeout=self.timings.retry_period):
                self.leading = True
                logger.info("leading: Lease %s/%s", self.namespace, self.name)
                return True
            # Jitter keeps two candidates from colliding on every try.
            stop.wait(self.timings.retry_period * (1 + random.random() * 0.2))  # noqa: S311
        return False

    def renew_until_lost(self, stop: threading.Event) -> None:
        """Renew every retry period; return when renewing has failed for the
        renew deadline (leadership lost) or `stop` is set."""
        last_renewed = self.clock()
        while not stop.wait(self.timings.retry_period):
            left = self.timings.renew_deadline - (self.clock() - last_renewed)
            # Never wait on one request past the deadline.
            if left > 0 and self.try_acquire_or_renew(timeout=max(0.5, min(left, 5.0))):
                last_renewed = self.clock()
            elif self.clock() - last_renewed >= self.timings.renew_deadline:
                self.leading = False
                logger.error(
                    "lost the leader Lease %s/%s: not renewed for %.0fs",
                    self.namespace,
                    self.name,
                    self.clock() - last_renewed,
                )
                return

    def keep_leading(self, on_lost: Callable[[], None]) -> threading.Event:
        """Renew in a daemon thread; `on_lost` runs in it if leadership is
        lost. Setting the returned event stops renewing."""
        stop = threading.Event()

        def renew() -> None:
            self.renew_until_lost(stop)
            if not stop.is_set():
                on_lost()

        thread = threading.Thread(target=renew, name="leader-lease", daemon=True)
        self._renewal = (stop, thread)
        thread.start()
        return stop

    def release(self) -> None:
        """Give the Lease up (after the operator stopped writing), so a standby
        takes over at its next try."""
        if not self.leading:
            return
        # Stop renewing first, and wait out a renewal in flight: a try after
        # the release would see no holder and claim the Lease again.
        if self._renewal is not None:
            stop, thread = self._renewal
            stop.set()
            thread.join(timeout=self.timings.renew_deadline)
        self.leading = False
        try:
            lease = self.api.get("Lease", self.namespace, self.name, timeout=5)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = released(lease["spec"], datetime.datetime.now(datetime.UTC))
            self.api.replace(lease, timeout=5)
            logger.info("released the leader Lease %s/%s", self.namespace, self.name)
        except Exception as error:  # noqa: BLE001 - it expires on its own
            logger.warning("could not release the leader Lease: %s", kube.describe_error(error))
