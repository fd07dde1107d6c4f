"""Wait until the kubelet has put the certificate a pod was made for in its volume.

The kubelet fills a Secret volume from its own watch of that Secret, so a pod
created just after the Secret changed can be given the content from before.
nginx reads its certificate once, when it starts: such a pod would serve the
old certificate (at first, the self-signed placeholder) for its whole life.
The frontend's init container runs this with the hash its pod template
carries, so nginx starts only once that certificate is there. The kubelet
brings a volume up to date on its next sync of the pod (within about a
minute); until then the pod is not Ready and the old pods keep serving.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def await_content(
    path: Path,
    sha256: str,
    *,
    interval: float = 0.5,
    report_every: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Return once `path` holds content with this hash; the seconds it took.

    An empty `sha256` (the template names no certificate: the Secret was
    missing or unreadable when it was made) waits for nothing."""
    started = clock()
    reported = started
    while sha256:
        found = file_sha256(path)
        if found == sha256:
            break
        if clock() - reported >= report_every:
            reported = clock()
            logger.info(
                "waiting %.0fs so far for the kubelet to put the certificate with sha256 %s "
                "in %s; it holds %s",
                reported - started,
                sha256,
                path,
                found or "nothing",
            )
        sleep(interval)
    return clock() - started
