"""The rate-limit ledger: what an account ordered, held against the CA's limits."""

from __future__ import annotations

import datetime

import pytest

from blogsite_operator.policies.ledger import (
    Ledger,
    Limits,
    Recorded,
    hold,
    names_digest,
    record,
)

NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)
LIMITS = Limits()
SET = ("a.example.com", "b.example.com")


def issued(ledger: Ledger, names: tuple[str, ...], at: datetime.datetime) -> Ledger:
    return record(ledger, Recorded(orders=1, certificate_for=names, now=at), LIMITS)


def test_the_sixth_certificate_for_one_exact_set_waits_for_the_first_to_age_out() -> None:
    ledger = Ledger()
    for hours in range(5):
        assert hold(ledger, SET, NOW, LIMITS) is None
        ledger = issued(ledger, SET, NOW - datetime.timedelta(hours=10 - hours))
    held = hold(ledger, SET, NOW, LIMITS)
    assert held is not None
    # The first of the five, 10 hours ago, leaves the 168-hour window then.
    assert held.until == NOW - datetime.timedelta(hours=10) + datetime.timedelta(hours=168)
    assert "5 certificates for exactly these names in 168 hours" in held.message
    assert "the next order goes at 2026-12-12T02:00:00Z" in held.message
    # Another set of names, or the same names in another order, is not this set.
    assert hold(ledger, ("a.example.com",), NOW, LIMITS) is None
    assert names_digest(["B.example.com", "a.example.com"]) == names_digest(list(SET))
    assert hold(ledger, SET, held.until, LIMITS) is None


def test_an_ari_renewal_of_the_same_names_is_never_held_nor_counted() -> None:
    ledger = Ledger()
    for _ in range(5):
        ledger = issued(ledger, SET, NOW)
    assert hold(ledger, SET, NOW, LIMITS, exempt=True) is None
    renewed = record(ledger, Recorded(orders=1, certificate_for=SET, exempt=True, now=NOW), LIMITS)
    assert renewed == ledger


def test_new_orders_per_account_and_failed_validations_per_name() -> None:
    limits = Limits(orders=3, failed_authorizations=2)
    ledger = record(Ledger(), Recorded(orders=3, now=NOW), limits)
    held = hold(ledger, SET, NOW, limits)
    assert held is not None
    assert "3 new orders by this account in 3 hours" in held.message
    assert held.until == NOW + datetime.timedelta(hours=3)
    failing = record(Ledger(), Recorded(orders=1, failed_names=("b.example.com",), now=NOW), limits)
    failing = record(
        failing,
        Recorded(
            orders=1, failed_names=("b.example.com",), now=NOW + datetime.timedelta(minutes=5)
        ),
        limits,
    )
    held = hold(failing, SET, NOW + datetime.timedelta(minutes=10), limits)
    assert held is not None
    assert "2 failed validations of b.example.com in 1 hours" in held.message
    assert hold(failing, ("a.example.com",), NOW, limits) is None


def test_the_longest_wait_wins_and_old_entries_are_dropped() -> None:
    limits = Limits(certificates_per_names=1, orders=1)
    ledger = issued(Ledger(), SET, NOW - datetime.timedelta(hours=1))
    held = hold(ledger, SET, NOW, limits)
    assert held is not None
    assert held.until == NOW + datetime.timedelta(hours=167)  # not the orders' 2 hours
    aged = issued(Ledger(), SET, NOW - datetime.timedelta(hours=200))
    assert record(aged, Recorded(now=NOW), limits) == Ledger()


def test_the_annotation_round_trips_and_a_damaged_one_is_empty() -> None:
    ledger = record(
        issued(Ledger(), SET, NOW),
        Recorded(orders=2, failed_names=("a.example.com",), now=NOW),
        LIMITS,
    )
    assert Ledger.from_annotation(ledger.to_annotation()) == ledger
    for damaged in (None, "", "{", "[]", '{"orders": ["x"]}', '{"certificates": [1]}'):
        assert Ledger.from_annotation(damaged) == Ledger()


def test_limits_per_server_are_counts_and_nothing_else() -> None:
    assert Limits.from_json({"certificatesPerNames": 2}).certificates_per_names == 2
    with pytest.raises(ValueError, match="unknown rate limits"):
        Limits.from_json({"perDomain": 50})
    with pytest.raises(ValueError, match="positive integer"):
        Limits.from_json({"orders": 0})
