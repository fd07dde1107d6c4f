"""The rate-limit ledger: what an ACME account ordered, against the CA's limits.

Let's Encrypt refuses an order past its published limits, and some of them
cannot be waited out quickly (5 certificates per exact set of names per 7
days, with no override). The operator keeps its own account of what it
ordered, per ACME account (one account Secret: a server, a contact and an
EAB key id in a namespace), and never sends an order those limits would
refuse. What the ledger can enforce, and at what scope:

* certificates per exact set of names: per account. Let's Encrypt counts
  them across accounts: another namespace (another account) or another
  client ordering the same names is not seen;
* new orders per account: exactly the CA's scope;
* failed authorizations per name per account: exactly the CA's scope.

The per registered domain limit (50 a week) spans accounts and names the
operator does not know of (a domain's other hosts): not enforced. Orders
that name the certificate they replace (ARI, RFC 9773) and ask for the
same names are renewals, which Let's Encrypt exempts from every limit:
never held, never counted.

Pure: the ledger is a value kept in an annotation of the account Secret;
the issuer records into it, the reconciler reads it before ordering.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from blogsite_operator.timestamps import ceil_second, format_time

LEDGER_ANNOTATION = "blog.daedalus.dev/acme-ledger"
HOUR = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Limits:
    """A CA's limits; Let's Encrypt's by default (letsencrypt.org/docs/rate-limits)."""

    certificates_per_names: int = 5
    certificates_window: datetime.timedelta = 168 * HOUR
    orders: int = 300
    orders_window: datetime.timedelta = 3 * HOUR
    failed_authorizations: int = 5
    failed_window: datetime.timedelta = HOUR

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Limits:
        """{"certificatesPerNames": 5, "orders": 300, "failedAuthorizations": 5}: the
        counts (windows stay Let's Encrypt's); unknown keys refused."""
        known = ("certificatesPerNames", "orders", "failedAuthorizations")
        unknown = set(raw) - set(known)
        if unknown:
            raise ValueError(f"unknown rate limits {sorted(unknown)}: {list(known)} are known")

        def count(key: str, default: int) -> int:
            value = raw.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"rate limit {key} must be a positive integer, not {value!r}")
            return value

        defaults = cls()
        return cls(
            certificates_per_names=count("certificatesPerNames", defaults.certificates_per_names),
            orders=count("orders", defaults.orders),
            failed_authorizations=count("failedAuthorizations", defaults.failed_authorizations),
        )


def names_digest(names: tuple[str, ...] | list[str]) -> str:
    """The exact set of names, as the CA compares them (order and case aside)."""
    joined = "\n".join(sorted({name.lower() for name in names}))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Ledger:
    """Unix seconds of what was ordered, newest last."""

    certificates: tuple[tuple[int, str], ...] = ()  # (time, names_digest)
    orders: tuple[int, ...] = ()
    failed: tuple[tuple[int, str], ...] = ()  # (time, name)

    @classmethod
    def from_annotation(cls, raw: str | None) -> Ledger:
        """The ledger an account Secret carries; an unreadable one is empty
        (and the next write starts it afresh), never an error."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                certificates=tuple((int(t), str(d)) for t, d in data.get("certificates", [])),
                orders=tuple(int(t) for t in data.get("orders", [])),
                failed=tuple((int(t), str(n)) for t, n in data.get("failed", [])),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_annotation(self) -> str:
        return json.dumps(
            {
                "certificates": [list(entry) for entry in self.certificates],
                "orders": list(self.orders),
                "failed": [list(entry) for entry in self.failed],
            },
            separators=(",", ":"),
        )

    def pruned(self, now: datetime.datetime, limits: Limits) -> Ledger:
        """Only what still counts against a limit."""
        return Ledger(
            certificates=tuple(
                e for e in self.certificates if _within(e[0], now, limits.certificates_window)
            ),
            orders=tuple(t for t in self.orders if _within(t, now, limits.orders_window)),
            failed=tuple(e for e in self.failed if _within(e[0], now, limits.failed_window)),
        )


def _within(at: int, now: datetime.datetime, window: datetime.timedelta) -> bool:
    return at > (now - window).timestamp()


def _seconds(moment: datetime.datetime) -> int:
    return int(moment.timestamp())


@dataclass
class Recorded:
    """What one order did, for the ledger."""

    orders: int = 0  # newOrder requests the CA took
    certificate_for: tuple[str, ...] | None = None  # the names, when issued
    failed_names: tuple[str, ...] = ()  # names whose authorization failed
    exempt: bool = False  # an ARI renewal of the same names
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))


def record(ledger: Ledger, what: Recorded, limits: Limits) -> Ledger:
    """The ledger with one order's outcome in it (an exempt renewal: nothing)."""
    ledger = ledger.pruned(what.now, limits)
    if what.exempt:
        return ledger
    at = _seconds(what.now)
    certificates = ledger.certificates
    if what.certificate_for is not None:
        certificates += ((at, names_digest(what.certificate_for)),)
    return Ledger(
        certificates=certificates,
        orders=ledger.orders + (at,) * what.orders,
        failed=ledger.failed + tuple((at, name) for name in what.failed_names),
    )


@dataclass(frozen=True)
class Hold:
    """An order the CA would refuse now: when it would not, and why."""

    until: datetime.datetime
    message: str


def hold(
    ledger: Ledger,
    names: list[str] | tuple[str, ...],
    now: datetime.datetime,
    limits: Limits,
    *,
    exempt: bool = False,
) -> Hold | None:
    """None when an order for `names` may go now; else the longest wait any
    limit imposes (the order must pass all of them)."""
    if exempt:
        return None
    ledger = ledger.pruned(now, limits)
    digest = names_digest(list(names))
    candidates = [
        _over(
            [t for t, d in ledger.certificates if d == digest],
            limits.certificates_per_names,
            limits.certificates_window,
            "certificates for exactly these names",
        ),
        _over(
            list(ledger.orders), limits.orders, limits.orders_window, "new orders by this account"
        ),
        *(
            _over(
                [t for t, n in ledger.failed if n.lower() == name],
                limits.failed_authorizations,
                limits.failed_window,
                f"failed validations of {name}",
            )
            for name in sorted({n.lower() for n in names})
        ),
    ]
    holds = [h for h in candidates if h is not None]
    if not holds:
        return None
    longest = max(holds, key=lambda h: h.until)
    return Hold(
        longest.until,
        f"{longest.message}: the next order goes at {format_time(longest.until)}",
    )


def _over(times: list[int], limit: int, window: datetime.timedelta, what: str) -> Hold | None:
    """`limit` or more in `window`: held until enough of them have aged out
    that one more would be within the limit."""
    if len(times) < limit:
        return None
    oldest = sorted(times)[len(times) - limit]
    until = datetime.datetime.fromtimestamp(oldest, datetime.UTC) + window
    return Hold(
        ceil_second(until), f"{len(times)} {what} in {_hours(window)} (the CA allows {limit})"
    )


def _hours(window: datetime.timedelta) -> str:
    return f"{window.total_seconds() / 3600:g} hours"
