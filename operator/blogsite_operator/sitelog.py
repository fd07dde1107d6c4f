"""Every log line about a site names it.

A pass over a BlogSite, and an ACME job for it, run inside `about(namespace,
name)`; a filter on the log handler puts that site on each record as kopf's
object reference, which kopf's formatters print as a `[namespace/name]`
prefix on plain lines and as an `object` field in JSON ones. A context
variable follows the work into `asyncio.to_thread` and into tasks and
callbacks scheduled from it, so deep code (the ACME client, the rollout
gate) need not pass names around to log them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from blogsite_operator import models

_CURRENT_SITE: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "blogsite", default=None
)


@contextlib.contextmanager
def about(namespace: str, name: str) -> Iterator[None]:
    token = _CURRENT_SITE.set((namespace, name))
    try:
        yield
    finally:
        _CURRENT_SITE.reset(token)


class SiteReference(logging.Filter):
    """On a handler: names the current site on records that name no object."""

    def filter(self, record: logging.LogRecord) -> bool:
        site = _CURRENT_SITE.get()
        if site is not None and not hasattr(record, "k8s_ref"):
            record.k8s_ref = {
                "apiVersion": f"{models.GROUP}/{models.VERSION}",
                "kind": models.KIND,
                "namespace": site[0],
                "name": site[1],
            }
        return True
