"""Does what the frontend pods present on the wire match what status says?

The served-certificate probe connects to each Ready frontend pod's TLS port
with SNI for each of the site's names and reads the certificate nginx
presents. CertificateReady is inferred from the certificate each pod was
started with (its hash annotation); this is the proof of it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Protocol

from blogsite_operator.certs import CertificateInfo
from blogsite_operator.policies.certificate import covers
from blogsite_operator.policies.readiness import (
    CONDITION_FALSE,
    CONDITION_TRUE,
    CONDITION_UNKNOWN,
    Verdict,
)
from blogsite_operator.timestamps import format_time


@dataclass(frozen=True)
class ProbeTarget:
    """A Ready frontend pod, as the pass that asked for the probe saw it."""

    pod: str
    address: str
    proxy_protocol: bool = False


@dataclass(frozen=True)
class Presented:
    """What one pod presented for one name: a certificate, or why none."""

    pod: str
    name: str
    info: CertificateInfo | None
    error: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    targets: frozenset[ProbeTarget]
    names: tuple[str, ...]
    finished: datetime.datetime
    presented: tuple[Presented, ...]


class Probe(Protocol):
    """What a pass needs of the probe (served_probe.ServedProbe)."""

    def look(
        self, key: tuple[str, str], targets: frozenset[ProbeTarget], names: tuple[str, ...]
    ) -> tuple[ProbeResult | None, float | None]: ...


def served_verdict(
    result: ProbeResult, *, known_serials: dict[str, str], now: datetime.datetime
) -> Verdict:
    """CertificateServed for one probe of every Ready pod and name.

    `known_serials` maps the serial of each certificate the operator says is
    served (status.certificate's; the Secret's while pods load it) to where
    it is described. True only when every pod presents, for every name, one
    of those certificates, covering the name and unexpired; False when any
    presents something else; Unknown when a pod could not be asked.
    """
    wrong: list[str] = []
    unreachable: list[str] = []
    for seen in result.presented:
        where = f"pod {seen.pod} for {seen.name}"
        info = seen.info
        # What users would be refused comes first: expired, then not covering.
        if info is None:
            unreachable.append(f"{where}: {seen.error or 'no certificate'}")
        elif info.not_after <= now:
            wrong.append(
                f"{where} presents serial {info.serial}, expired {format_time(info.not_after)}"
            )
        elif not covers(info.dns_names, seen.name):
            wrong.append(f"{where} presents serial {info.serial}, which does not cover the name")
        elif info.serial not in known_serials:
            described = ", ".join(f"{v} (serial {k})" for k, v in sorted(known_serials.items()))
            wrong.append(
                f"{where} presents serial {info.serial} (valid until "
                f"{format_time(info.not_after)}), not the certificate of "
                f"{described or 'any Secret or status'}"
            )
    if wrong:
        return Verdict(CONDITION_FALSE, "ServesOther", _listed(wrong))
    if unreachable:
        return Verdict(CONDITION_UNKNOWN, "Unreachable", _listed(unreachable))
    serials = sorted({seen.info.serial for seen in result.presented if seen.info is not None})
    pods = len(result.targets)
    return Verdict(
        CONDITION_TRUE,
        "Served",
        f"{pods} Ready frontend pod{'s' if pods != 1 else ''} present serial "
        f"{' and '.join(serials)} for every name (probed {format_time(result.finished)})",
    )


def earliest_expiry(result: ProbeResult) -> CertificateInfo | None:
    """The presented certificate that expires first: what users lose first."""
    infos = [seen.info for seen in result.presented if seen.info is not None]
    return min(infos, key=lambda info: info.not_after, default=None)


def _listed(problems: list[str]) -> str:
    shown = "; ".join(problems[:3])
    more = len(problems) - 3
    return shown + (f"; and {more} more" if more > 0 else "")
