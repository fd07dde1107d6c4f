"""Operator settings from the environment (settings.py)."""

from __future__ import annotations

import pytest

from blogsite_operator.policies.ledger import Limits
from blogsite_operator.settings import OperatorSettings


def test_defaults_watch_every_namespace_without_leader_election() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.namespaces == ()
    assert settings.leader_lease is None
    assert settings.allow_extra_config is False
    assert settings.acme.self_check == "frontend"  # on unless turned off
    assert settings.metrics is True
    assert OperatorSettings.from_env({"BLOGSITE_OPERATOR_METRICS": "false"}).metrics is False
    assert settings.watch_dead_seconds == 60
    assert settings.watch_timeout_seconds == 300


def test_values_are_read_and_trimmed() -> None:
    settings = OperatorSettings.from_env(
        {
            "BLOGSITE_OPERATOR_NAMESPACES": " blogs, other ,",
            "BLOGSITE_OPERATOR_LEADER_LEASE": "blogsite-system/blogsite-operator",
            "BLOGSITE_OPERATOR_ALLOW_EXTRA_CONFIG": "true",
            "BLOGSITE_OPERATOR_ACME_SELF_CHECK": "frontend",
            "BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS": "2.5",
            "BLOGSITE_OPERATOR_LOG_FORMAT": "json",
        }
    )
    assert settings.namespaces == ("blogs", "other")
    assert settings.leader_lease == ("blogsite-system", "blogsite-operator")
    assert settings.allow_extra_config is True
    assert settings.acme.self_check == "frontend"
    assert settings.acme.backoff_seconds == 2.5
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("LEADER_LEASE", "blogsite-operator", "LEADER_LEASE must be NAMESPACE/NAME"),
        ("LEADER_LEASE", "Blogs/lease", "LEADER_LEASE must be NAMESPACE/NAME"),
        ("LEADER_LEASE", "blogs/", "LEADER_LEASE must be NAMESPACE/NAME"),
        ("NAMESPACES", "blogs,team-*", "'team-\\*' is not a namespace name"),
        ("METRICS", "maybe", "METRICS must be true or false"),
        ("WATCH_DEAD_SECONDS", "0", "WATCH_DEAD_SECONDS must be positive"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be plain, full or json"),
        ("ACME_BACKOFF_SECONDS", "soon", "ACME_BACKOFF_SECONDS must be a number"),
        ("ACME_BACKOFF_SECONDS", "-1", "ACME_BACKOFF_SECONDS must be positive"),
        ("ACME_SELF_CHECK", "http://x", "ACME_SELF_CHECK must be off, frontend or host:port"),
        ("ACME_RATE_LIMITS", "{", "ACME_RATE_LIMITS: not JSON"),
        ("ACME_RATE_LIMITS", '{"https://ca/dir": 5}', "ACME_RATE_LIMITS: an object of"),
        ("ACME_RATE_LIMITS", '{"https://ca/dir": {"orders": 0}}', "must be a positive integer"),
    ],
)
def test_bad_values_are_refused_by_name(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorSettings.from_env({f"BLOGSITE_OPERATOR_{key}": value})


def test_rate_limits_are_lets_encrypts_unless_a_server_says_otherwise() -> None:
    raw = '{"https://ca.example/dir": {"certificatesPerNames": 10}}'
    acme = OperatorSettings.from_env({"BLOGSITE_OPERATOR_ACME_RATE_LIMITS": raw}).acme
    assert acme.limits_for("https://ca.example/dir").certificates_per_names == 10
    assert acme.limits_for("https://ca.example/dir").orders == 300
    assert acme.limits_for("https://acme-v02.api.letsencrypt.org/directory") == Limits()
