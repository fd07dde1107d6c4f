"""The operator's side of the traffic collector: one reading of a site's counts.

Read from the Ready cert-refresh pod by its address (as the served probe
reaches frontend pods), with a short timeout: a pass waits for it, and an
unreachable collector only means no counts (the step then passes on health
alone once `maxStepSeconds` are up, and status says so).
"""

from __future__ import annotations

import http.client
import json
import logging
from typing import Any, Protocol

from blogsite_operator.policies.canary import counts_from_dict
from blogsite_operator.policies.canary_steps import Reading
from blogsite_operator.policies.rollout import is_ready
from blogsite_operator.render.site import (
    CHALLENGE_SERVER_PORT,
    Component,
    SiteRef,
    label_selector,
    selector_labels,
)

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 1.0


class PodLister(Protocol):
    def list_objects(
        self, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]: ...


def collector_address(api: PodLister, ref: SiteRef) -> str | None:
    selector = label_selector(selector_labels(ref.name, Component.CERT_REFRESH))
    for pod in api.list_objects("Pod", ref.namespace, selector):
        address = (pod.get("status") or {}).get("podIP")
        if address and is_ready(pod) and not pod["metadata"].get("deletionTimestamp"):
            return str(address)
    return None


def parse_reading(body: bytes) -> Reading:
    """A reading from GET /traffic's JSON (ValueError or TypeError when it is none)."""
    raw = json.loads(body)
    if not isinstance(raw, dict) or not isinstance(raw.get("boot"), str):
        raise TypeError("not a traffic reading")
    pools = raw.get("pools") or {}
    return Reading(
        raw["boot"],
        counts_from_dict(pools.get("daedalus")),
        counts_from_dict(pools.get("daedalus_canary")),
    )


def read_traffic(api: PodLister, ref: SiteRef, port: int = CHALLENGE_SERVER_PORT) -> Reading | None:
    """The site's counts now, or None when its collector cannot be read."""
    address = collector_address(api, ref)
    if address is None:
        return None
    connection = http.client.HTTPConnection(address, port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/traffic")
        response = connection.getresponse()
        body = response.read(1 << 20)
        reading = parse_reading(body) if response.status == 200 else None
    except (OSError, ValueError, TypeError) as error:
        logger.info("no traffic reading from %s:%d: %s", address, port, error)
        return None
    finally:
        connection.close()
    if reading is None:
        logger.info("no traffic reading from %s:%d: HTTP %d", address, port, response.status)
    return reading
